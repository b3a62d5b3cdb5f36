"""Data parallelism over the processes `accelerate launch` or `torchrun` starts.

    accelerate launch --num_processes 2 -m rmu.train trainer.batch_size=4     # 2 × 4 texts per step
    torchrun --nproc_per_node 2 -m rmu.train trainer.batch_size=4

accelerate's `PartialState` reads the launcher's environment (RANK, WORLD_SIZE, …) and
sets up torch.distributed (NCCL on GPUs, gloo on CPU); a plain `python -m rmu.train` is a
single process and everything here is a no-op.

Each step every rank takes its own slice of the step's global batch
(`trainer.batch_size` × processes texts, so no two ranks see the same forget or retain
text), computes its losses as its share of the global token mean (sum over its tokens /
all ranks' tokens), and the gradients are summed over ranks before the optimizer step.
That is exactly the gradient of the full batch on one process, so N processes with
batch b end where one process with batch N·b does. The control vectors come from a
seeded generator and are the same on every rank; only rank 0 evaluates, logs and writes.

FSDP, for models that do not fit one GPU (`accelerate launch --config_file
experiments/accelerate/fsdp.yaml`, which sets ACCELERATE_USE_FSDP): the decoder layers an
RMU step never trains — those below the first updated layer, which only run forward
without autograd, and those above ℓ, which never run in training — are sharded over the
ranks with torch's FSDP2 (`fully_shard`); each is gathered for its forward and freed
after it. The span first..ℓ (trained, and run a second time with the original values for
the frozen pass) and the embeddings, final norm and head stay whole on every rank, so the
step, its frozen pass and the gradient sum are the same as in plain data parallel. Every
rank joins the evaluation forwards and the gather of the full weights for the checkpoint.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def ranks_from_slurm() -> None:
    """In a SLURM job of several tasks started by submitit (hydra/launcher=slurm with
    tasks_per_node or nodes > 1), set the torch.distributed variables (RANK, WORLD_SIZE,
    MASTER_ADDR, …) from SLURM's, so each task is one rank. Each rank keeps seeing all of
    its node's GPUs and takes the one of its LOCAL_RANK."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class Ranks:
    def __init__(self, cpu: bool):
        from accelerate import PartialState

        # `cpu`: processes on CPU (gloo); accelerate only sets those up when asked.
        self.state = PartialState(cpu=cpu)
        self.rank, self.size = self.state.process_index, self.state.num_processes
        self.main = self.state.is_main_process
        env = os.environ
        self.fsdp = self.size > 1 and env.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if self.fsdp and env.get("FSDP_VERSION", "2") != "2":
            raise ValueError(f"FSDP_VERSION={env['FSDP_VERSION']}: rmu shards with FSDP2; set fsdp_version: 2 "
                             "in the accelerate config (experiments/accelerate/fsdp.yaml)")
        self.reshard_after_forward = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
        self.offload_params = env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true"

    @property
    def device(self) -> torch.device:
        return self.state.device

    def shard(self, texts: list[str]) -> list[str]:
        """This rank's contiguous slice of the global batch (len(texts) = size × per-rank batch)."""
        per = len(texts) // self.size
        return texts[self.rank * per:(self.rank + 1) * per]

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a copy; `x` itself is unchanged)."""
        x = x.detach().clone()
        if self.size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def share(self, mask: torch.Tensor) -> float:
        """This rank's fraction of all ranks' averaged positions (1.0 on one process)."""
        local = mask.sum().float()
        return (local / self.total(local)).item() if self.size > 1 else 1.0

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        if self.size > 1:
            for p in params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def load_sharded(self, mcfg, seed: int, keep: range):
        """FSDP: (model, tokenizer) with the decoder layers outside `keep` sharded over the
        ranks and everything else whole on this rank's device.

        Only rank 0 reads the checkpoint (into CPU memory); the other ranks build the model on
        the meta device, so a node holds one CPU copy, not one per process. The model is
        sharded while still empty, storage for each rank's part is allocated, and rank 0
        broadcasts the weights tensor by tensor; each rank keeps its shard of the sharded ones.
        """
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
        from torch.distributed.tensor import DTensor, distribute_tensor

        from rmu.hooks import decoder_layers
        from rmu.models import empty_model, load_model, load_tokenizer

        source, tokenizer = load_model(mcfg, seed, device=torch.device("cpu")) if self.main else (None, None)
        tokenizer = tokenizer or load_tokenizer(mcfg)
        model = empty_model(mcfg, tokenizer)

        mesh = init_device_mesh(self.device.type, (self.size,))
        offload = CPUOffloadPolicy() if self.offload_params else OffloadPolicy()
        sharded = [layer for i, layer in enumerate(decoder_layers(model)) if i not in keep]
        for layer in sharded:
            fully_shard(layer, mesh=mesh, reshard_after_forward=self.reshard_after_forward, offload_policy=offload)
        # Allocate this rank's storage: its shards (on the CPU when offloading; FSDP's own
        # to_empty keeps its bookkeeping) and everything outside the sharded layers whole.
        for layer in sharded:
            layer.to_empty(device=torch.device("cpu") if self.offload_params else self.device)
        inside = {id(m) for layer in sharded for m in layer.modules()}
        for module in model.modules():
            if id(module) not in inside:
                module.to_empty(device=self.device, recurse=False)
        model.tie_weights()  # to_empty gave tied embeddings separate storage; make them one again

        # Buffers too: rotary inverse frequencies are not in the state dict but are computed in __init__.
        own = list(model.named_parameters()) + list(model.named_buffers())
        full = dict(source.named_parameters(remove_duplicate=False)) | dict(source.named_buffers()) if self.main else {}
        with torch.no_grad():
            for name, tensor in own:
                # size(): the whole tensor's shape, also for a shard
                whole = full[name].to(self.device) if self.main else torch.empty(tensor.size(), dtype=tensor.dtype,
                                                                                device=self.device)
                dist.broadcast(whole, src=0)
                if isinstance(tensor, DTensor):
                    shard = distribute_tensor(whole, tensor.device_mesh, tensor.placements, src_data_rank=None)
                    tensor.to_local().copy_(shard.to_local())
                else:
                    tensor.copy_(whole)
        del source, full
        return model.train(), tokenizer, len(sharded)

    @staticmethod
    def local_parameter_mib(model) -> float:
        """Parameter memory this rank holds (a sharded tensor counts its own shard only)."""
        from torch.distributed.tensor import DTensor

        local = (p.to_local() if isinstance(p, DTensor) else p for p in model.parameters())
        return sum(t.numel() * t.element_size() for t in local) / 2 ** 20

    def full_state_dict(self, model) -> dict:
        """Every rank joins; rank 0 gets the whole model's weights on the CPU (others: {})."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def same(self, value):
        """Rank 0's value on every rank (e.g. an output_dir with a timestamp in it)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()
