"""The RMU losses and control vectors, as formulas.

    u_k ~ Uniform[0, 1)^D  (torch.rand),   control_k = c_k · u_k / ||u_k||
    L_forget = mean over (token, dim) of (h_ℓ^upd(x_f) − control_k)²
    L_retain = mean over (token, dim) of (h_ℓ^upd(x_r) − h_ℓ^frozen(x_r))²

With a padding mask the mean runs over real tokens only (pad positions contribute
nothing); without it every position counts, as in the reference code.
"""

from __future__ import annotations

import torch


def random_directions(n_topics: int, hidden_size: int, seed: int) -> torch.Tensor:
    """One unit vector per topic, drawn with `torch.rand` (not randn) from its own seeded
    generator, so the draw is the same on every device and every process. (K, D), float32."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n_topics, hidden_size, generator=gen)
    return u / u.norm(dim=-1, keepdim=True)


def reference_controls(coeffs: list[float], hidden_size: int, seed: int, dtype, device) -> torch.Tensor:
    """The reference code's control vectors: after seeding, one `torch.rand(1, 1, D)` per
    topic in the model's dtype on the model's device, scaled in that dtype. Returned as
    float32 on the CPU (K, D): exact copies of those values."""
    torch.manual_seed(seed)
    rows = []
    for c in coeffs:
        u = torch.rand(1, 1, hidden_size, dtype=dtype, device=device)
        rows.append((u / torch.norm(u) * c).view(-1).float().cpu())
    return torch.stack(rows)


def masked_mse(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
               model_dtype: bool = False) -> torch.Tensor:
    """Mean squared error over (B, T, D); `mask` (B, T) of 1 = real token, 0 = pad, or None.
    `model_dtype`: in x's dtype as `F.mse_loss` does (the reference), not float32."""
    if model_dtype and mask is None:
        return torch.nn.functional.mse_loss(x, target.to(x.dtype))
    sq = (x.float() - target.float()).pow(2)  # (B, T, D); float32 so bf16 runs do not lose the sum
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype).unsqueeze(-1)  # (B, T, 1)
    return (sq * m).sum() / (m.sum() * x.shape[-1])


def forget_loss(h: torch.Tensor, control: torch.Tensor, mask: torch.Tensor | None,
                model_dtype: bool = False) -> torch.Tensor:
    """Push the updated model's layer-ℓ activations on forget text toward control (D,)."""
    return masked_mse(h, control.expand_as(h), mask, model_dtype)


def retain_loss(h: torch.Tensor, h_frozen: torch.Tensor, mask: torch.Tensor | None,
                model_dtype: bool = False) -> torch.Tensor:
    """Keep the updated model's layer-ℓ activations on retain text at the frozen model's."""
    return masked_mse(h, h_frozen, mask, model_dtype)


def mean_token_norm(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean L2 norm of the per-token hidden vectors (B, T, D) → scalar, over real tokens."""
    norms = h.float().norm(dim=-1)  # (B, T)
    if mask is None:
        return norms.mean()
    m = mask.to(norms.dtype)
    return (norms * m).sum() / m.sum()


def mean_token_cosine(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean cosine similarity between matching token vectors of a and b (B, T, D)."""
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)  # (B, T)
    if mask is None:
        return cos.mean()
    m = mask.to(cos.dtype)
    return (cos * m).sum() / m.sum()
