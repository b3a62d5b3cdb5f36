"""The optimizer over the updated tensors, and what half precision needs around it.

In float32 this is plain AdamW on the updated tensors. When the model runs in bfloat16
or float16 the forward and backward stay in that dtype, but with `optim.master_weights`
AdamW updates float32 copies of the updated tensors (they are few, so this is cheap) and
writes them back after each step: a 5e-5 step on a weight of 0.02 is below bfloat16's
resolution there and would otherwise round away, and AdamW's second moment (grad²)
underflows in float16. Float16 also scales the loss before backward so small gradients
do not flush to zero, halving the scale and skipping the step when a gradient overflows
(the usual dynamic loss scaling).
"""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from rmu.errors import TrainingError
from rmu.run.shards import local

INITIAL_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 200  # steps without overflow before the float16 loss scale doubles


class ReferenceAdamW(torch.optim.Optimizer):
    """AdamW as transformers' `AdamW` (4.38 and before) computes it, which the WMDP
    reference code uses: eps is added to √v before the bias correction,

        m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²
        p ← p − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + eps),   then p ← p − lr·wd·p

    where torch's AdamW divides by √(v/(1−β₂ᵗ)) + eps. With eps 1e-6 the effective eps is
    ~3e-5 at step 1, so the two differ most early on. The moments are kept in the
    parameter's dtype, as there."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def clip_(grads: list[torch.Tensor], max_norm: float | None, ranks=None) -> float | None:
    """Scales `grads` in place to a global L2 norm of `max_norm` at most, and returns their norm
    before; None (and nothing computed) without a `max_norm`. With `ranks`, the gradients are
    FSDP shards: the squares of every rank's shards are summed for the norm."""
    if max_norm is None:
        return None
    if ranks is not None:
        squares = sum(local(g).float().pow(2).sum() for g in grads)
        norm = ranks.total(squares).sqrt().item()
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


class Updater:
    def __init__(self, params: list[torch.Tensor], lr: float, betas, eps: float, weight_decay: float,
                 master_weights: bool, ranks=None, reference: bool = False):
        self.params = params
        self.ranks = ranks  # several processes: gradients are summed over them (rmu/run/distributed.py)
        # FSDP shards of trained tensors (rmu.distill and rmu.tar under FSDP): FSDP has summed their gradients,
        # and each rank holds part of every tensor, so checks and norms combine the ranks' parts.
        self.sharded = any(isinstance(p, DTensor) for p in params)
        half = params[0].dtype in (torch.bfloat16, torch.float16)
        self.masters = ([p.detach().float().clone().requires_grad_(True) for p in params]
                        if half and master_weights else None)
        self.scale = INITIAL_SCALE if params[0].dtype == torch.float16 else 1.0
        self.good_steps = 0
        self.grad_norm: float | None = None  # the last step's, when it clipped (step's max_norm)
        kind = ReferenceAdamW if reference else torch.optim.AdamW  # optim.name: adamw_reference | adamw
        self.optimizer = kind(self.masters or params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _sum_over_ranks(self):
        if self.ranks is not None and not self.sharded:
            self.ranks.sum_grads(self.params)

    def _finite_or_stop(self, tensors, what: str) -> None:
        """A non-finite gradient or weight stops the run before it reaches a saved state
        (summed over ranks first, or for shards checked on every rank, so every rank stops together)."""
        finite = all(bool(torch.isfinite(local(t)).all()) for t in tensors if t is not None)
        if self.sharded:
            finite = not self.ranks.any(not finite)
        if not finite:
            raise TrainingError(f"{what} not finite; the step was not applied" if what.startswith("a gradient")
                                else f"{what} not finite after the step")

    def step(self, loss: torch.Tensor, max_norm: float | None = None) -> bool:
        """Backward and one AdamW step; False when a float16 overflow skipped it. With
        `max_norm`, the gradients (summed over ranks) are first scaled down to that global
        norm at most; `grad_norm` keeps the norm before clipping."""
        for p in self.params:
            p.grad = None
        if self.masters is None:  # float32, or bfloat16 updated in place (optim.master_weights=false)
            loss.backward()
            self._sum_over_ranks()
            self._finite_or_stop([p.grad for p in self.params], "a gradient is")
            self.grad_norm = clip_([p.grad for p in self.params], max_norm, self.ranks if self.sharded else None)
            self.optimizer.step()
            self._finite_or_stop(self.params, "the updated tensors are")
            return True
        (loss * self.scale).backward()
        self._sum_over_ranks()
        grads = [p.grad.float() / self.scale for p in self.params]  # unscaled, float32
        for p in self.params:
            p.grad = None
        if self.scale != 1.0 and not all(torch.isfinite(g).all() for g in grads):
            self.scale /= 2
            self.good_steps = 0
            return False
        self._finite_or_stop(grads, "a gradient is")
        self.grad_norm = clip_(grads, max_norm, self.ranks if self.sharded else None)
        for m, g in zip(self.masters, grads):
            m.grad = g
        self.optimizer.step()
        self._finite_or_stop(self.masters, "the updated tensors are")
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
        self.good_steps += 1
        if self.scale != 1.0 and self.good_steps % GROWTH_INTERVAL == 0:
            self.scale *= 2
        return True

    def apply(self, grads: list[torch.Tensor], keep: list[torch.Tensor] | None = None) -> bool:
        """One AdamW step with gradients computed elsewhere (already summed over ranks: the
        robust stages, rmu/unlearn/robust.py). Entries where `keep` is False end the step where they
        began, whatever AdamW's momentum or weight decay would do to them. Not for float16,
        whose loss scaling needs the backward (rmu/config/checks.py refuses that combination)."""
        targets = self.masters or self.params
        self._finite_or_stop(grads, "a gradient is")
        before = [t.detach().clone() for t in targets] if keep is not None else None
        for t, g in zip(targets, grads):
            t.grad = g.to(t.dtype)
        self.optimizer.step()
        with torch.no_grad():
            if keep is not None:
                for t, b, k in zip(targets, before, keep):
                    t.copy_(torch.where(k, t, b))
            if self.masters is not None:
                for p, m in zip(self.params, self.masters):
                    p.copy_(m)
        for t in targets:
            t.grad = None
        self._finite_or_stop(targets, "the updated tensors are")
        return True


def learning_rate(step: int, steps: int, peak: float, warmup: int, final_ratio: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `final_ratio`·peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * done)))
