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

Decisions that end a run are taken by all ranks together, so that no rank waits forever
in a collective for one that has stopped: the non-finite-loss check reads losses summed
over ranks (the same number everywhere), SIGTERM is reduced into one flag, and what only
rank 0 does (evaluate, write) goes through `on_main`, which hands its failure to every
rank. FSDP loading is in rmu/run/fsdp.py.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rmu.errors import ConfigError, RankFailed


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
            raise ConfigError(f"FSDP_VERSION={env['FSDP_VERSION']}: rmu shards with FSDP2; set fsdp_version: 2 "
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

    def same(self, value):
        """Rank 0's value on every rank (e.g. an output_dir with a timestamp in it)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on at least one (one all_reduce)."""
        if self.size == 1:
            return flag
        return self.total(torch.tensor(float(flag), device=self.device)).item() > 0

    def print(self, *args, **kwargs) -> None:
        if self.main:
            print(*args, **kwargs)

    def on_main(self, fn):
        """`fn()` on rank 0 only; its result there, None elsewhere. If it raises, rank 0
        re-raises and every other rank raises RankFailed with the same message, instead of
        waiting at the next collective for a rank that is gone."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the other ranks, then re-raised
                error = e
        message = self.same(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise RankFailed(f"rank 0 failed, so this rank stops too: {message}")
        return result
