"""The robust RMU step: the plain step (rmu/unlearn/step.py) with the robust variants'
stages, chosen by the `robust` config section. `robust_step` runs them in this order:

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
3. **collapse bases** (`robust.collapse_components` = r; CIR, Sondej & Yang 2025). For
   each updated weight W (d_out × d_in), Q_in is an orthonormal basis of the mean and top
   r principal components of W's inputs, Q_out the same of the gradients at W's output
   (of the forget loss, on `collapse_source` text), recomputed every `collapse_every` steps.
4. **meta-unlearning** (`robust.meta_steps` = k; MUDMAN's meta-learning, a light TAR). The
   updated tensors are forked, a relearning attacker takes k signed-gradient steps (AdamW's
   first steps) on the forget batch (`meta_attack`: next-token loss, or pulling h_ℓ back
   to the frozen model's), the forget gradient is taken at that point, and the tensors
   are restored: the step unlearns what k steps of relearning would bring back. Without
   it the forget gradient is taken at the current tensors.
5. **retain gradient**, at the current tensors, as in the plain step.
6. **collapse**: the forget gradient becomes (I − Q_out Q_outᵀ) ∇W (I − Q_in Q_inᵀ): the
   update no longer moves the directions that text shares across tokens.
7. **normalise** (`robust.normalize`; MUDMAN). Each tensor's forget gradient is rescaled
   to the norm that tensor's forget gradient had at the run's first step.
8. **mask** (`robust.mask`; MUDMAN's disruption masking). The combined gradient
   g_f + α·g_r is kept only at entries where the forget gradient and the retain gradient
   (or its running mean, `mask_ema`) agree in sign, or the retain gradient is zero (it is
   zero everywhere at the start, when the updated model still equals the frozen one).
   The other entries do not move at all this step, not even by AdamW's momentum.

The step always takes the forget and the retain gradient apart (stages 4–8 need them
apart), then one AdamW step on their combination.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from rmu.errors import ConfigError
from rmu.run.distributed import Ranks
from rmu.unlearn.losses import forget_loss, retain_loss
from rmu.unlearn.optim import Updater
from rmu.unlearn.span import LayerSpan
from rmu.unlearn.step import averaged, finite_totals, padding_masks, step_record

TARGETS = ("topic", "sample", "token", "token_id")
META_ATTACKS = ("lm", "activations")
SOURCES = ("forget", "retain")


def robust_step(span: LayerSpan, updater: Updater, robust: Robust, forget: dict, retain: dict,
                control: torch.Tensor, alpha: float, step: int, ranks: Ranks, mask_padding: bool = True,
                model_dtype_loss: bool = False) -> dict:
    """One robust RMU update: the plain step's losses (rmu/unlearn/step.py), with the
    stages of this module's docstring in its order. metrics.jsonl's row describes the
    model being trained (with meta-unlearning, not the attacker's point)."""
    forget_mask, retain_mask = padding_masks(forget, retain, mask_padding)
    forget_share = ranks.share(averaged(forget, mask_padding))
    with torch.no_grad():
        forget_in, retain_in = span.prefix(forget), span.prefix(retain)
    control = robust.targets(control, forget, step)  # 1: a direction per text, token or token id
    forget_in = robust.perturb(span, forget_in, control, forget_mask)  # 2: the latent adversary's δ
    robust.observe(span, control, step, forget=(forget_in, forget_mask), retain=(retain_in, retain_mask))  # 3

    def loss_forget_of(h):
        return forget_share * forget_loss(h, control, forget_mask, model_dtype_loss)

    with robust.relearned(span, forget, forget_in, forget_mask):  # 4: at the attacker's point when meta_steps
        g_forget = torch.autograd.grad(loss_forget_of(span.run(forget_in)), updater.params)
    with torch.no_grad():  # what the model being trained does on the forget batch (metrics.jsonl)
        h_forget = span.run(forget_in)
        loss_forget = loss_forget_of(h_forget)

    h_retain = span.run(retain_in)  # 5: the retain gradient, as in the plain step
    with torch.no_grad():
        h_frozen = span.run(retain_in, frozen=True)
    loss_retain = ranks.share(averaged(retain, mask_padding)) * retain_loss(h_retain, h_frozen, retain_mask,
                                                                            model_dtype_loss)
    g_retain = torch.autograd.grad(alpha * loss_retain, updater.params)
    totals = finite_totals(ranks, step, alpha, loss_forget + alpha * loss_retain.detach(), loss_forget, loss_retain)

    grads, keep = robust.combine(robust.total(g_forget), robust.total(g_retain))  # 6-8: collapse, normalise, mask
    record = step_record(step, totals, updater.apply(grads, keep), (h_forget, control, forget_mask),
                         (h_retain, h_frozen, retain_mask))
    if keep is not None:  # the share of entries the disruption mask let move
        record["mask_kept"] = sum(k.sum().item() for k in keep) / sum(k.numel() for k in keep)
    return record


class Robust:
    """The `robust` config section as stages, with the state they carry between steps
    (the retain-gradient mean, the first step's norms, the collapse bases), which goes
    into the resume state (rmu/run/resume.py)."""

    def __init__(self, cfg, seed: int, updated: list[torch.Tensor], names: list[str], model: nn.Module, ranks: Ranks):
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
        size, rank = self.ranks.size, self.ranks.rank
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
        h0 = span.hidden_in(calls).detach()  # (B, T, D): what enters the first updated layer
        radius = eps * h0.float().norm(dim=-1, keepdim=True)  # (B, T, 1)
        step_size = 2.5 * radius / self.cfg.lat_steps  # the usual PGD step: the ball's edge in a few steps
        delta = torch.zeros_like(h0, dtype=torch.float32)
        for _ in range(self.cfg.lat_steps):
            delta.requires_grad_(True)
            loss = forget_loss(span.run(span.with_hidden(calls, h0 + delta.to(h0.dtype))), control, mask)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + step_size * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = project_to_ball(delta, radius)
                if mask is not None:
                    delta = delta * mask.unsqueeze(-1).to(delta.dtype)  # padding is left alone
        return span.with_hidden(calls, h0 + delta.detach().to(h0.dtype))

    # 4. meta-unlearning
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
            share = self.ranks.share(mask if mask is not None else torch.ones_like(batch["input_ids"]))
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

    # 3. collapse: the bases
    def observe(self, span, control: torch.Tensor, step: int, forget: tuple, retain: tuple) -> None:
        """Recompute the collapse bases every `collapse_every` steps, from the span's input
        and mask of this step's `collapse_source` batch (`forget` or `retain`)."""
        r = self.cfg.collapse_components
        if not r or (self.bases is not None and step % self.cfg.collapse_every):
            return
        calls, mask = forget if self.cfg.collapse_source == "forget" else retain
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

    # 6.-8. the update
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
        return [self.ranks.total(t) for t in tensors]

    def state_dict(self) -> dict:
        return {"retain_mean": self.retain_mean, "first_norms": self.first_norms, "bases": self.bases}

    def load_state_dict(self, state: dict) -> None:
        self.retain_mean, self.first_norms, self.bases = state["retain_mean"], state["first_norms"], state["bases"]


def active_stages(r) -> dict:
    """The robust stages the `robust` section `r` switches on, each with its settings:
    results.json's `robust`, and what the model card says."""
    stages = {}
    if r.targets != "topic":
        stages["targets"] = r.targets
    if r.lat_eps:
        stages["latent_adversary"] = {"eps": r.lat_eps, "steps": r.lat_steps}
    if r.collapse_components:
        stages["collapse"] = {"components": r.collapse_components, "source": r.collapse_source,
                              "every": r.collapse_every}
    if r.meta_steps:
        stages["meta_unlearning"] = {"steps": r.meta_steps, "lr": r.meta_lr, "attack": r.meta_attack}
    if r.normalize:
        stages["normalize"] = True
    if r.mask:
        stages["mask"] = {"ema": r.mask_ema}
    return stages


def describe_targets(targets: str) -> str:
    """Where the forget activations are pushed, in words (the model card)."""
    return {"topic": "toward one fixed random direction per forget topic",
            "sample": "toward a fresh random direction per forget text at every step",
            "token": "toward a fresh random direction per forget token at every step",
            "token_id": "toward a fixed random direction per vocabulary token (the same token, the same target)"}[targets]


def project_to_ball(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Each token's δ_t scaled down onto ‖δ_t‖ ≤ radius_t where it lies outside."""
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(radius / norm.clamp_min(1e-12), max=1.0)


def next_token_loss(model: nn.Module, batch: dict, ranks: Ranks) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's real tokens (this rank's share of the
    global mean under several processes): the relearning attacker's loss."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = batch["input_ids"][:, 1:]
    real = batch["attention_mask"][:, 1:] * batch["attention_mask"][:, :-1]  # both ends of each pair are text
    ce = nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
    total = ranks.total(real.sum().float())
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
