"""FSDP shards and whole tensors: what the optimizer, the resume state and the checkpoint need
when the trained tensors themselves are sharded (rmu.distill and rmu.tar under FSDP, rmu/run/fsdp.py
`shard_whole`). Each helper leaves an unsharded tensor as it is."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's values of a tensor: a shard's local part, or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (every rank joins when it is sharded)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`value`, a whole tensor, laid out as `target`: sharded the same way, or as it is."""
    if not isinstance(target, DTensor):
        return value
    return distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)


def gathered(updated: list[torch.Tensor], optimizer, masters=None) -> dict:
    """Whole CPU copies of the trained tensors, the optimizer's state and any float32 masters,
    for the resume state rank 0 writes (every rank joins)."""
    sd = optimizer.state_dict()
    state = {i: {k: full(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for i, s in sd["state"].items()}
    return {"updated": [full(p.detach()).cpu() for p in updated],
            "optimizer": {"state": state, "param_groups": sd["param_groups"]},
            "masters": [full(m.detach()).cpu() for m in masters] if masters else None}


def sharded_optimizer_state(sd: dict, params: list[torch.Tensor]) -> dict:
    """A saved optimizer state (whole tensors) laid out as `params` are, before load_state_dict."""
    state = {i: {k: like(v, params[int(i)]) if isinstance(v, torch.Tensor) and v.shape == params[int(i)].shape else v
                 for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}
