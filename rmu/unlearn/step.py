"""The RMU step: the method itself, top to bottom.

Its sibling `robust_step` (rmu/unlearn/robust.py) adds the robust variants' stages; both
share the helpers below, which say what one step measures and records.
"""

from __future__ import annotations

import math

import torch

from rmu.errors import TrainingError
from rmu.run.distributed import Ranks
from rmu.unlearn.losses import forget_loss, mean_token_cosine, mean_token_norm, retain_loss
from rmu.unlearn.optim import Updater
from rmu.unlearn.span import LayerSpan


def rmu_step(span: LayerSpan, updater: Updater, forget: dict, retain: dict, control: torch.Tensor,
             alpha: float, step: int, ranks: Ranks, mask_padding: bool = True,
             model_dtype_loss: bool = False) -> dict:
    """One RMU update on one forget batch of topic k and one retain batch.

        L = mean((h_ℓ^upd(x_f) − c_k·u_k)²) + α_k · mean((h_ℓ^upd(x_r) − h_ℓ^frozen(x_r))²)

    h_ℓ is the output of decoder layer ℓ; only the tensors handed to `updater` require
    gradients. Means run over real tokens when `mask_padding`, over every position
    otherwise (the reference); `model_dtype_loss` takes them in the model's dtype, as the
    reference does (otherwise float32). The span (rmu/unlearn/span.py) runs layers below
    the first updated one once per batch without autograd and nothing after ℓ. With
    several processes each holds a slice of the batch, and its means are weighted by its
    share of all positions, so the summed losses and gradients are the whole batch's.
    """
    forget_mask, retain_mask = padding_masks(forget, retain, mask_padding)
    with torch.no_grad():
        forget_in, retain_in = span.prefix(forget), span.prefix(retain)

    # Forget: steer the activations on forget text toward the control vector.
    h_forget = span.run(forget_in)  # (B, T, D)
    loss_forget = ranks.share(averaged(forget, mask_padding)) * forget_loss(h_forget, control, forget_mask,
                                                                            model_dtype_loss)
    # Retain: keep the activations on retain text where the frozen model has them.
    h_retain = span.run(retain_in)  # (B, T, D)
    with torch.no_grad():
        h_frozen = span.run(retain_in, frozen=True)
    loss_retain = ranks.share(averaged(retain, mask_padding)) * retain_loss(h_retain, h_frozen, retain_mask,
                                                                            model_dtype_loss)
    loss = loss_forget + alpha * loss_retain

    totals = finite_totals(ranks, step, alpha, loss, loss_forget, loss_retain)
    applied = updater.step(loss)  # backward, then AdamW (float32 master copies for bf16/fp16: rmu/unlearn/optim.py)
    return step_record(step, totals, applied, (h_forget, control, forget_mask), (h_retain, h_frozen, retain_mask))


def padding_masks(forget: dict, retain: dict, mask_padding: bool) -> tuple:
    """(forget mask, retain mask): the batches' attention masks, or None to average over every position."""
    return (forget["attention_mask"], retain["attention_mask"]) if mask_padding else (None, None)


def averaged(batch: dict, mask_padding: bool) -> torch.Tensor:
    """The positions a loss averages over (B, T): what this rank's share of the global mean counts."""
    return batch["attention_mask"] if mask_padding else torch.ones_like(batch["input_ids"])


def finite_totals(ranks: Ranks, step: int, alpha: float, loss, loss_forget, loss_retain) -> tuple[float, float, float]:
    """(loss, forget, retain) summed over ranks, the whole batch's values; a non-finite
    loss stops the run. Every rank reads the same sums, so all stop or none does."""
    total, forget, retain = (ranks.total(x).item() for x in (loss, loss_forget, loss_retain))
    if not math.isfinite(total):
        raise TrainingError(f"non-finite loss at step {step}: forget={forget:.4g} retain={retain:.4g} alpha={alpha}; "
                            f"lower optim.lr or rmu.steering_coeff, or use a wider dtype")
    return total, forget, retain


@torch.no_grad()
def step_record(step: int, totals: tuple, applied: bool, forget: tuple, retain: tuple) -> dict:
    """metrics.jsonl's row for a step: the losses and what the activations of the model
    being trained look like. `forget` is (h_ℓ, control, mask), `retain` (h_ℓ, h_ℓ^frozen, mask)."""
    (h_forget, control, forget_mask), (h_retain, h_frozen, retain_mask) = forget, retain
    loss, loss_forget, loss_retain = totals
    return {
        "step": step,
        "loss": loss,
        "skipped": not applied,  # a float16 overflow skipped the update
        "forget_loss": loss_forget,
        "retain_loss": loss_retain,
        "forget_norm": mean_token_norm(h_forget, forget_mask).item(),
        "forget_cos_control": mean_token_cosine(h_forget, control.expand_as(h_forget), forget_mask).item(),
        "retain_norm": mean_token_norm(h_retain, retain_mask).item(),
        "frozen_retain_norm": mean_token_norm(h_frozen, retain_mask).item(),
        "retain_cos_frozen": mean_token_cosine(h_retain, h_frozen, retain_mask).item(),
    }
