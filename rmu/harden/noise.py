"""The student of distillation starts as a damaged copy of its teacher (UNDO, Lee et al. 2025):

    every weight matrix   θ ← (1 − α)·θ + α·β·N,   N ~ Xavier-uniform for that shape
    every 1-D parameter   θ ← (1 − α)·θ

α = 0 leaves the teacher's weights, α = 1 with β = 1 leaves none of them (matrices drawn as at
Xavier initialisation, norms and biases at zero; training regrows them from the teacher's
outputs). β = 0 only shrinks. The idea: what the teacher still holds in its weights (the
knowledge unlearning hid rather than removed) is what the damage erases, while its outputs,
which distillation copies back, no longer show it.
"""

from __future__ import annotations

import math

import torch


def xavier_uniform(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """U(−a, a) with a = √(6 / (fan_in + fan_out)), the fans of one matrix (rows = fan_out,
    columns = fan_in; a stack of experts' matrices, E × out × in, draws each alike); float32
    on the CPU."""
    fan_out, fan_in = shape[-2:]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


@torch.no_grad()
def damage(model: torch.nn.Module, alpha: float, beta: float, seed: int) -> dict[str, int]:
    """Shrink and noise `model`'s parameters in place, as the module docstring says. The
    noise comes from its own generator seeded with `seed`, in parameter order, so the same
    seed damages the same way on every machine and every rank. Tied tensors (input and
    output embeddings) are damaged once. Returns how many tensors of each kind changed."""
    generator = torch.Generator().manual_seed(seed)
    counts = {"matrices": 0, "vectors": 0}
    for _, p in model.named_parameters():  # named_parameters lists a shared tensor once
        if p.dim() >= 2:  # a matrix, or a mixture of experts' fused stack of them
            noise = xavier_uniform(p.shape, generator) if alpha > 0 and beta != 0 else None
            p.mul_(1 - alpha)
            if noise is not None:
                p.add_((alpha * beta * noise).to(device=p.device, dtype=p.dtype))
            counts["matrices"] += 1
        else:
            p.mul_(1 - alpha)
            counts["vectors"] += 1
    return counts
