"""FSDP, for models that do not fit one GPU (`accelerate launch --config_file
experiments/accelerate/fsdp.yaml`, which sets ACCELERATE_USE_FSDP).

The decoder layers an RMU step never trains — those below the first updated layer, which
only run forward without autograd, and those above ℓ, which never run in training — are
sharded over the ranks with torch's FSDP2 (`fully_shard`); each is gathered for its
forward and freed after it. The span first..ℓ (trained, and run a second time with the
original values for the frozen pass) and the embeddings, final norm and head stay whole
on every rank, so the step, its frozen pass and the gradient sum are the same as in plain
data parallel (rmu/run/distributed.py). Every rank joins the evaluation forwards and the
gather of the full weights for the checkpoint.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from rmu.errors import TrainingError
from rmu.models.hooks import decoder_layers
from rmu.models.loading import empty_model, load_model, load_tokenizer


def load_sharded(ranks, mcfg, seed: int, keep: range):
    """FSDP: (model, tokenizer) with the decoder layers outside `keep` sharded over the
    ranks and everything else whole on this rank's device.

    Only rank 0 reads the checkpoint (into CPU memory); the other ranks build the model on
    the meta device, so a node holds one CPU copy, not one per process. The model is
    sharded while still empty, storage for each rank's part is allocated, and rank 0
    broadcasts the weights tensor by tensor; each rank keeps its shard of the sharded ones.
    """
    source, tokenizer = ranks.on_main(lambda: load_model(mcfg, seed, device=torch.device("cpu"))) or (None, None)
    tokenizer = tokenizer or load_tokenizer(mcfg)
    model = empty_model(mcfg, tokenizer)

    mesh = init_device_mesh(ranks.device.type, (ranks.size,))
    offload = CPUOffloadPolicy() if ranks.offload_params else OffloadPolicy()
    sharded = [layer for i, layer in enumerate(decoder_layers(model)) if i not in keep]
    for layer in sharded:
        fully_shard(layer, mesh=mesh, reshard_after_forward=ranks.reshard_after_forward, offload_policy=offload)
    # Allocate this rank's storage: its shards (on the CPU when offloading; FSDP's own
    # to_empty keeps its bookkeeping) and everything outside the sharded layers whole.
    for layer in sharded:
        layer.to_empty(device=torch.device("cpu") if ranks.offload_params else ranks.device)
        buffers_to(layer, ranks.device)
    inside = {id(m) for layer in sharded for m in layer.modules()}
    for module in model.modules():
        if id(module) not in inside:
            module.to_empty(device=ranks.device, recurse=False)
    model.tie_weights()  # to_empty gave tied embeddings separate storage; make them one again

    fill_from_main(model, source, ranks)
    if ranks.main:  # from_config made it from config.json; the checkpoint's own file (eos list, sampling) is written
        model.generation_config = source.generation_config
    del source
    return model.train(), tokenizer, len(sharded)


def buffers_to(module, device) -> None:
    """Every buffer under `module` onto `device` (after a to_empty on the CPU for offloaded
    shards: the forward needs its buffers where it computes)."""
    for m in module.modules():
        for key, buffer in m._buffers.items():
            if buffer is not None:
                m._buffers[key] = buffer.to(device)


def fill_from_main(model, source, ranks) -> None:
    """Every parameter and buffer of `model` (on this rank, whole or sharded) set from rank 0's
    whole `source` (None on the other ranks), broadcast tensor by tensor so no rank but 0 ever
    holds the whole model; each rank keeps its shard of a sharded tensor. Buffers too: rotary
    inverse frequencies are not in the state dict but are computed in __init__, which an empty
    model skipped."""
    own = list(model.named_parameters()) + list(model.named_buffers())
    full = dict(source.named_parameters(remove_duplicate=False)) | dict(source.named_buffers()) if ranks.main else {}
    # Every rank checks rank 0's names, shapes and dtypes against its own empty model first: a
    # mismatch (a checkpoint loaded untied, a module kept in float32) is an error on every rank,
    # not a broadcast of the wrong size or a rank waiting for one that stopped.
    theirs = ranks.same({k: (tuple(v.shape), str(v.dtype)) for k, v in full.items()} if ranks.main else None)
    for name, tensor in own:
        if theirs.get(name) != (tuple(tensor.size()), str(tensor.dtype)):
            raise TrainingError(f"rank 0's model and the model built empty for FSDP differ at {name}: "
                                f"{theirs.get(name, 'absent')} against {(tuple(tensor.size()), str(tensor.dtype))}")
    with torch.no_grad():
        for name, tensor in own:
            # size(): the whole tensor's shape, also for a shard
            whole = full[name].to(ranks.device) if ranks.main else torch.empty(tensor.size(), dtype=tensor.dtype,
                                                                             device=ranks.device)
            dist.broadcast(whole, src=0)
            if isinstance(tensor, DTensor):
                shard = distribute_tensor(whole, tensor.device_mesh, tensor.placements, src_data_rank=None)
                tensor.to_local().copy_(shard.to_local())
            else:
                tensor.copy_(whole)


def shard_from_main(source, mcfg, tokenizer, ranks):
    """A copy of rank 0's whole model `source` (None on the other ranks) with every parameter
    sharded over the ranks (`shard_whole`), as rmu.distill and rmu.tar hold their two models.
    Every rank, rank 0 included, builds it empty (meta device) and shards it before any storage
    exists, then fills it from `source`: only rank 0 ever holds a whole copy."""
    model = empty_model(mcfg, tokenizer)
    shard_whole(model, ranks)
    # Storage for this rank's shards (on the CPU when offloading) and, on its device, the buffers.
    model.to_empty(device=torch.device("cpu") if ranks.offload_params else ranks.device)
    buffers_to(model, ranks.device)
    fill_from_main(model, source, ranks)
    if ranks.main:  # as in load_sharded
        model.generation_config = copy.deepcopy(source.generation_config)
    return model


def shard_whole(model, ranks) -> None:
    """FSDP over every parameter of `model` (on the meta device, as `shard_from_main` builds it,
    or whole on this rank): each decoder layer one unit, the embeddings, final norm and head
    the root's. Gradients are summed over the ranks, not averaged: each rank's loss is already
    its share of the global batch's mean (as plain data parallel sums them, rmu/run/distributed.py)."""
    mesh = init_device_mesh(ranks.device.type, (ranks.size,))
    offload = CPUOffloadPolicy() if ranks.offload_params else OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=ranks.reshard_after_forward, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=ranks.reshard_after_forward, offload_policy=offload)
    for unit in [*decoder_layers(model), model]:  # each FSDP unit reduces its own gradients
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo (CPU) has no pre-multiplied sum


def local_parameter_mib(model) -> float:
    """Parameter memory this rank holds (a sharded tensor counts its own shard only)."""

    local = (p.to_local() if isinstance(p, DTensor) else p for p in model.parameters())
    return sum(t.numel() * t.element_size() for t in local) / 2 ** 20


def full_state_dict(model) -> dict:
    """Every rank joins; rank 0 gets the whole model's weights on the CPU (others: {})."""
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # A tied tensor (input and output embeddings) is one parameter under two names; the gather
    # gives each name its own copy, which save_pretrained would write twice. Keep the first name.
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
    tied = {name for name, p in model.named_parameters(remove_duplicate=False) if first[id(p)] != name}
    return {k: v for k, v in weights.items() if k not in tied}
