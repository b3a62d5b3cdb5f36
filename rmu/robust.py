"""Robust variants of the RMU step: the stages `rmu_step` (rmu/train.py) adds when the
`robust` section asks for them. All off (conf/robust/default.yaml) is the plain step.

In the order the step runs them:

1. **targets** (`robust.targets`). Plain RMU steers every forget token of topic k toward
   one fixed vector c_k·u_k; that shared direction is exactly what a mean-difference
   ablation removes. `sample` draws a fresh direction per forget text and step, `token`
   one per token and step, `token_id` a fixed one per vocabulary id (TAR's random
   mapping: the same token always gets the same target, so the map can be learnt), each
   of norm c_k. They are Gaussian directions: `torch.rand` vectors (the reference's u)
   all lie in the positive orthant and share the all-ones direction (cosine ≈ 0.75
   between two of them), Gaussian ones share none (cosine ≈ 0).
2. **latent adversary** (`robust.lat_eps`; RMU-LAT, Sheshadri et al. 2024). A per-token
   perturbation δ of the hidden state entering the updated span, ‖δ_t‖ ≤ ε·‖h_t‖, found
   by `lat_steps` steps of normalised gradient ascent on the forget loss (the adversary
   undoes the unlearning in the latent space); the forget loss is then taken with δ.
3. **meta-unlearning** (`robust.meta_steps` = k; MUDMAN's meta-learning, a light TAR). The
   updated tensors are forked, a relearning attacker takes k signed-gradient steps (AdamW's
   first steps) on the forget batch
   (`meta_attack`: next-token loss, or pulling h_ℓ back to the frozen model's), the forget
   gradient is taken at that point, and the tensors are restored before the update: the
   step unlearns what k steps of relearning would bring back. k = 0 is the plain step.
4. **collapse** (`robust.collapse_components` = r; CIR, Sondej & Yang 2025). For each
   updated weight W (d_out × d_in), Q_in is an orthonormal basis of the mean and top r
   principal components of W's inputs, Q_out the same of the gradients at W's output
   (of the forget loss, on `collapse_source` text, recomputed every `collapse_every`
   steps). The forget gradient becomes (I − Q_out Q_outᵀ) ∇W (I − Q_in Q_inᵀ): the update
   no longer moves the directions that text shares across tokens, only the specific ones.
5. **normalise** (`robust.normalize`; MUDMAN). Each tensor's forget gradient is rescaled
   to the norm that tensor's forget gradient had at the run's first step.
6. **mask** (`robust.mask`; MUDMAN's disruption masking). The combined gradient
   g_f + α·g_r is kept only at entries where the forget gradient and the retain gradient
   (or its running mean, `mask_ema`) agree in sign, or the retain gradient is zero (it is
   zero everywhere at the start, when the updated model still equals the frozen one).
   The other entries do not move at all this step, not even by AdamW's momentum.

Stages 3–6 need the forget and the retain gradient apart, so with any of them the step
takes two gradients instead of one backward of the summed loss.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from rmu.errors import ConfigError
from rmu.losses import forget_loss, retain_loss

TARGETS = ("topic", "sample", "token", "token_id")
META_ATTACKS = ("lm", "activations")
SOURCES = ("forget", "retain")


class Robust:
    """The `robust` config section as stages, with the state they carry between steps
    (the retain-gradient mean, the first step's norms, the collapse bases), which goes
    into the resume state (rmu/resume.py)."""

    def __init__(self, cfg, seed: int, updated: list[torch.Tensor], names: list[str], model: nn.Module, ranks=None):
        self.cfg, self.seed, self.ranks = cfg, seed, ranks
        self.updated = updated
        modules = dict(model.named_modules())
        # The module each updated weight belongs to (collapse hooks its input and output).
        self.modules = [modules[n.rsplit(".", 1)[0]] for n in names] if cfg.collapse_components else []
        if not all(isinstance(m, nn.Linear) for m in self.modules):
            raise ConfigError(f"robust.collapse_components: the updated tensors {names} are not all weights of linear "
                              "layers; choose rmu.update_params that are")
        self.retain_mean: list[torch.Tensor] | None = None  # mask_ema's running mean of the retain gradient
        self.first_norms: list[torch.Tensor] | None = None  # normalize: ‖g_f‖ per tensor at the first step
        self.bases: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # collapse: (Q_in, Q_out) per tensor
        self.table = None  # targets=token_id: one fixed unit direction per vocabulary id, (V, D)
        if cfg.targets == "token_id":
            vocab, hidden = model.get_input_embeddings().weight.shape
            table = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(seed))
            self.table = table / table.norm(dim=-1, keepdim=True)

    @property
    def separate(self) -> bool:
        """Whether the step needs the forget and the retain gradient apart."""
        c = self.cfg
        return bool(c.meta_steps or c.collapse_components or c.normalize or c.mask)

    # 1. targets
    def targets(self, control: torch.Tensor, batch: dict, step: int) -> torch.Tensor:
        """The control for each forget text (B, 1, D) or token (B, T, D), or `control` (D,)
        itself with `targets: topic`. Drawn from a generator seeded by (seed, step), for the
        global batch (each rank takes its slice), so reruns, resumes and ranks agree."""
        kind = self.cfg.targets
        if kind == "topic":
            return control
        if kind == "token_id":  # a lookup: the same token gets the same direction in every text and step
            self.table = self.table.to(control.device)
            return (self.table[batch["input_ids"]] * control.float().norm()).to(control.dtype)
        b, t = batch["input_ids"].shape
        size, rank = (self.ranks.size, self.ranks.rank) if self.ranks else (1, 0)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        shape = (b * size, 1 if kind == "sample" else t, control.shape[-1])
        u = torch.randn(shape, generator=gen)[rank * b:(rank + 1) * b]
        u = u / u.norm(dim=-1, keepdim=True)
        return (u * control.float().norm()).to(device=control.device, dtype=control.dtype)

    # 2. latent adversary
    def perturb(self, span, calls: dict, control: torch.Tensor, mask: torch.Tensor | None) -> dict:
        """The span's forget input with the adversary's δ added (or `calls` as they are)."""
        eps = self.cfg.lat_eps
        if not eps:
            return calls
        h0 = calls[span.first][0][0].detach()  # (B, T, D): what enters the first updated layer
        radius = eps * h0.float().norm(dim=-1, keepdim=True)  # (B, T, 1)
        step_size = 2.5 * radius / self.cfg.lat_steps  # the usual PGD step: the ball's edge in a few steps
        delta = torch.zeros_like(h0, dtype=torch.float32)
        for _ in range(self.cfg.lat_steps):
            delta.requires_grad_(True)
            loss = forget_loss(span.run(with_hidden(calls, span.first, h0 + delta.to(h0.dtype))), control, mask)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + step_size * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = project_to_ball(delta, radius)
                if mask is not None:
                    delta = delta * mask.unsqueeze(-1).to(delta.dtype)  # padding is left alone
        return with_hidden(calls, span.first, h0 + delta.detach().to(h0.dtype))

    # 3. meta-unlearning
    @contextmanager
    def relearned(self, span, batch: dict, calls: dict, mask: torch.Tensor | None):
        """Inside: the updated tensors where k signed-gradient steps of the attacker's loss on the forget
        batch take them (gradients summed over ranks, like the step's); on exit, their values
        again. `meta_attack: lm` is next-token loss (the fine-tuning attack; a whole forward
        and backward of the model per step); `activations` pulls h_ℓ on the forget text back
        to the frozen model's (the move that undoes RMU directly; a span pass per step)."""
        k = self.cfg.meta_steps
        if not k:
            yield
            return
        if self.cfg.meta_attack == "activations":
            with torch.no_grad():
                h_frozen = span.run(calls, frozen=True)
            share = self.ranks.share(mask if mask is not None else torch.ones_like(batch["input_ids"])) \
                if self.ranks is not None else 1.0  # this rank's part of the global mean
            attacker_loss = lambda: share * retain_loss(span.run(calls), h_frozen, mask)  # noqa: E731
        else:
            attacker_loss = lambda: next_token_loss(span.model, batch, self.ranks)  # noqa: E731
        saved = [p.detach().clone() for p in self.updated]
        try:
            for _ in range(k):
                grads = torch.autograd.grad(attacker_loss(), self.updated)
                with torch.no_grad():  # a signed step: what AdamW's first steps amount to, whatever the loss's scale
                    for p, g in zip(self.updated, self.total(grads)):
                        p.sub_(self.cfg.meta_lr * torch.sign(g).to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.updated, saved):
                    p.copy_(v)

    # 4. collapse: the bases
    def observe(self, span, calls: dict, control: torch.Tensor, mask: torch.Tensor | None, step: int) -> None:
        """Recompute the collapse bases from this batch every `collapse_every` steps."""
        r = self.cfg.collapse_components
        if not r or (self.bases is not None and step % self.cfg.collapse_every):
            return
        inputs, outputs = [], []

        def record(module, args, out):  # returns None: the output goes on unchanged
            inputs.append(args[0].detach())
            outputs.append(out)

        hooks = [m.register_forward_hook(record) for m in self.modules]
        try:
            loss = forget_loss(span.run(calls), control, mask)
        finally:
            for h in hooks:
                h.remove()
        out_grads = torch.autograd.grad(loss, outputs)
        keep = (mask.reshape(-1) > 0) if mask is not None else slice(None)
        self.bases = [(principal_basis(x.reshape(-1, x.shape[-1])[keep].float(), r),
                       principal_basis(g.reshape(-1, g.shape[-1])[keep].float(), r))
                      for x, g in zip(inputs, out_grads)]

    # 4.–6. the update
    def combine(self, g_forget: list[torch.Tensor], g_retain: list[torch.Tensor]):
        """(gradients for the optimizer, entries allowed to move or None) from the forget
        gradient and the α-weighted retain gradient, both already summed over ranks."""
        c = self.cfg
        if c.collapse_components:
            g_forget = [collapse(g, q_in, q_out) for g, (q_in, q_out) in zip(g_forget, self.bases)]
        if c.normalize:
            if self.first_norms is None:
                self.first_norms = [g.float().norm() for g in g_forget]
            g_forget = [rescale(g, n) for g, n in zip(g_forget, self.first_norms)]
        grads = [f + r for f, r in zip(g_forget, g_retain)]
        if not c.mask:
            return grads, None
        reference = g_retain
        if c.mask_ema:
            self.retain_mean = (g_retain if self.retain_mean is None else
                                [c.mask_ema * m + (1 - c.mask_ema) * r for m, r in zip(self.retain_mean, g_retain)])
            reference = self.retain_mean
        keep = [agree(f, r) for f, r in zip(g_forget, reference)]
        return [torch.where(k, g, torch.zeros_like(g)) for k, g in zip(keep, grads)], keep

    def total(self, tensors) -> list[torch.Tensor]:
        """Each tensor summed over ranks (as it is on one process)."""
        return [self.ranks.total(t) for t in tensors] if self.ranks is not None and self.ranks.size > 1 else \
            [t.detach() for t in tensors]

    def state_dict(self) -> dict:
        return {"retain_mean": self.retain_mean, "first_norms": self.first_norms, "bases": self.bases}

    def load_state_dict(self, state: dict) -> None:
        self.retain_mean, self.first_norms, self.bases = state["retain_mean"], state["first_norms"], state["bases"]


def with_hidden(calls: dict, first: int, h: torch.Tensor) -> dict:
    """The span's call arguments with another hidden state entering layer `first`."""
    args, kwargs = calls[first]
    return {**calls, first: ((h, *args[1:]), kwargs)}


def project_to_ball(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Each token's δ_t scaled down onto ‖δ_t‖ ≤ radius_t where it lies outside."""
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(radius / norm.clamp_min(1e-12), max=1.0)


def next_token_loss(model: nn.Module, batch: dict, ranks=None) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's real tokens (this rank's share of the
    global mean under several processes): the relearning attacker's loss."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = batch["input_ids"][:, 1:]
    real = batch["attention_mask"][:, 1:] * batch["attention_mask"][:, :-1]  # both ends of each pair are text
    ce = nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
    total = real.sum().float()
    if ranks is not None and ranks.size > 1:
        total = ranks.total(total)
    return (ce * real.flatten()).sum() / total


def principal_basis(x: torch.Tensor, r: int) -> torch.Tensor:
    """Orthonormal basis (d, ≤ r+1) of the mean of the rows of x (N, d) and their top r
    principal components."""
    mean = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh (min(N, d), d)
    q, _ = torch.linalg.qr(torch.cat([mean[None], vh[:r]]).T)  # (d, r+1), orthonormal columns
    return q


def collapse(g: torch.Tensor, q_in: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
    """(I − Q_out Q_outᵀ) g (I − Q_in Q_inᵀ) for a weight gradient g (d_out, d_in)."""
    g32 = g.float()
    g32 = g32 - q_out @ (q_out.T @ g32)
    g32 = g32 - (g32 @ q_in) @ q_in.T
    return g32.to(g.dtype)


def rescale(g: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """g with its Frobenius norm set to `norm` (a zero gradient stays zero)."""
    return (g.float() * (norm / g.float().norm().clamp_min(1e-30))).to(g.dtype)


def agree(g_forget: torch.Tensor, g_retain: torch.Tensor) -> torch.Tensor:
    """Entries where the forget update is first-order harmless to the retain loss: the two
    gradients have the same sign, or the retain gradient is zero there."""
    return (torch.sign(g_forget) == torch.sign(g_retain)) | (g_retain == 0)
