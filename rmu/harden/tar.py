"""Tamper-resistant training (TAR, Tamirisa et al., ICLR 2025) of an unlearned model.

Each outer step samples a fine-tuning adversary — its data (forget text, retain text, or
retain text switching to forget text at a Beta-distributed point), its learning rate, a fresh
AdamW — and lets it run K steps on the model. Every `tr_every` of those steps the
tamper-resistance loss is taken on a held-out forget batch: the negative entropy of the
next-token distribution, weighted 4·exp(0.0625·(i − K + 1)) so that late steps count most,
and its gradient at the adversary's weights is added up (first order: the adversary's path is
not differentiated). Then the weights are restored, the retain loss (next-token loss plus
the mean over layers of ‖h − h_start‖₂ on retain text) adds its gradient, and the outer AdamW
takes one step with the sum. The model learns to stay ignorant wherever the sampled
adversaries take it; attacks outside that family are the test (make lab-robust).

Optionally `tar.safeguard_steps` steps of the paper's initial safeguard come first: on forget
text every layer's hidden state is pushed toward a fixed random vector of its token id
(1 − |cos|, mean over layers), with the next-token loss on retain text.

On several processes every batch size (the adversary's, the tamper-resistance batch, the
retain batch) is per process, as in rmu.train: the global batch is that times the processes,
each takes its slice, each loss is its rank's share of the global batch's mean and the
gradients are summed over the ranks before any optimizer steps (plain data parallel, or FSDP's
reduce-scatter when the model and its starting copy are sharded). Every rank's adversary takes
the same steps, and two processes with batch b train what one does with 2b.

As rmu/harden/distill.py: `check`, `build`, `fit` (the loop of `tar_step`), `write`;
`python -m rmu.tar` (rmu/tar.py) runs them inside the run's folder.
"""

from __future__ import annotations

import copy
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rmu.config.checks import fail
from rmu.data import batch_texts, tokenize
from rmu.errors import TrainingError
from rmu.evaluation.results import RunResults
from rmu.harden.output import scores_on_ranks, write_hardened
from rmu.harden.plan import TarPlan, plan_tar
from rmu.models.loading import configure_tokenizer, load_model, load_tokenizer
from rmu.run.distributed import Ranks
from rmu.run.fsdp import full_state_dict, local_parameter_mib, shard_from_main
from rmu.run.progress import Progress
from rmu.run.resume import Preemption, Resume
from rmu.run.tracking import Tracker
from rmu.unlearn.optim import Updater, learning_rate
from rmu.unlearn.recipe import save_or_stop


@dataclass
class Tar:
    """What `build` makes for `fit` and `write` (the names save_or_stop and rmu/run/lifecycle.py read)."""
    cfg: DictConfig
    plan: TarPlan
    ranks: Ranks
    model: torch.nn.Module  # trained in place
    start: torch.nn.Module  # the starting model, frozen: the retain loss's reference
    tokenizer: object
    device: torch.device
    updated: list[torch.Tensor]  # every parameter
    updater: Updater  # the outer AdamW
    mapping: torch.Tensor | None  # (vocabulary, hidden) fixed random vectors of the initial safeguard
    tracker: Tracker
    robust: None = None
    resumed_at: int = 0  # the step this process started at (> 0 when it resumed a state)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Adversary:
    data: str  # forget | retain | retain_then_forget
    lr: float
    switch: int  # retain_then_forget: the first inner step on forget text


def next_token_mask(batch: dict) -> torch.Tensor:
    """Positions whose next token is a real token (both it and the position not padding)."""
    m = batch["attention_mask"]
    return (m[:, :-1] * m[:, 1:]).float()


def global_count(mask: torch.Tensor, ranks: Ranks | None) -> torch.Tensor:
    """How many positions `mask` holds over every rank (one all-reduce)."""
    return mask.sum() if ranks is None else ranks.total(mask.sum())


def masked_mean(values: torch.Tensor, mask: torch.Tensor, ranks: Ranks | None = None,
                count: torch.Tensor | None = None) -> torch.Tensor:
    """Σ values·mask over the masked count of every rank (`count`, when the caller has it):
    this rank's share of the global mean (summed over the ranks, the mean over the whole
    batch; on one process, the mean)."""
    return (values * mask).sum() / (global_count(mask, ranks) if count is None else count)


def lm_loss(model, batch: dict, ranks: Ranks | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the non-padding positions."""
    logits = model(**batch).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    return masked_mean(ce, next_token_mask(batch), ranks)


def negative_entropy(logits: torch.Tensor, mask: torch.Tensor, ranks: Ranks | None = None) -> torch.Tensor:
    """The tamper-resistance loss: mean over the masked positions of Σ_v p(v)·log p(v), the
    negative entropy of the next-token distribution (minimising it keeps the model unsure)."""
    logp = logits.float().log_softmax(-1)
    return masked_mean((logp.exp() * logp).sum(-1), mask, ranks)


def tr_weight(i: int, k: int) -> float:
    """The weight of the tamper-resistance loss after inner step i of K (0-based): 4·exp(0.0625·(i − K + 1))."""
    return 4.0 * math.exp(0.0625 * (i - k + 1))


def retain_loss(model, start, batch: dict, ranks: Ranks | None = None) -> torch.Tensor:
    """Next-token loss plus the mean over layers of the mean over tokens of ‖h − h_start‖₂."""
    out = model(**batch, output_hidden_states=True)
    with torch.no_grad():
        ref = start(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].float()
    count = global_count(mask, ranks)
    drift = torch.stack([masked_mean((h.float() - r.float()).norm(dim=-1), mask, count=count)
                         for h, r in zip(out.hidden_states[1:], ref[1:])]).mean()
    logits = out.logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    return masked_mean(ce, next_token_mask(batch), ranks) + drift


def random_mapping_loss(model, batch: dict, mapping: torch.Tensor, ranks: Ranks | None = None) -> torch.Tensor:
    """The initial safeguard's forget loss: mean over layers of the mean over tokens of
    1 − |cos(h, r_id)|, r_id the fixed random vector of the token's id."""
    hidden = model(**batch, output_hidden_states=True).hidden_states[1:]
    targets = mapping[batch["input_ids"]].to(hidden[0].dtype)
    mask = batch["attention_mask"].float()
    count = global_count(mask, ranks)
    per_layer = [masked_mean(1 - torch.nn.functional.cosine_similarity(h.float(), targets.float(), dim=-1).abs(),
                             mask, count=count) for h in hidden]
    return torch.stack(per_layer).mean()


def sample_adversary(a, seed: int, step: int, k: int) -> Adversary:
    """The adversary of outer step `step`: a function of (seed, step), so a resumed run meets
    the same ones. `a` is tar.adversary (data kinds, lrs, switch_beta)."""
    rng = random.Random(f"tar-{seed}-{step}")
    data = rng.choice(list(a.data))
    switch = int(rng.betavariate(*a.switch_beta) * k) if data == "retain_then_forget" else 0
    return Adversary(data, rng.choice(list(a.lrs)), switch)


def inner_texts(t: Tar, adv: Adversary, step: int, i: int) -> list[str]:
    """The adversary's batch at inner step i of outer step `step` (every rank's texts)."""
    c, plan = t.cfg.tar, t.plan
    forget = adv.data == "forget" or (adv.data == "retain_then_forget" and i >= adv.switch)
    corpora = plan.attack_forget if forget else plan.retain
    corpus = corpora[(step + i) % len(corpora)]
    return batch_texts(corpus, step * c.inner_steps + i, c.adversary.batch_size * t.ranks.size)


def local_batch(t: Tar, corpus, index: int, per_process: int) -> dict:
    """This rank's slice of batch `index` of `corpus` (per_process texts per rank), tokenized onto its device."""
    texts = batch_texts(corpus, index, per_process * t.ranks.size)
    return tokenize(t.tokenizer, t.ranks.shard(texts), t.plan.max_length, t.device)


def gradients(t: Tar, loss: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of `loss` for every updated tensor, summed over the ranks (FSDP's backward
    reduces its shards itself), left out of the tensors' .grad. A tensor the loss does not
    reach gets zeros (every rank then reduces the same list)."""
    for p in t.updated:
        p.grad = None
    loss.backward()
    for p in t.updated:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not t.updater.sharded:
        t.ranks.sum_grads(t.updated)
    grads = [p.grad for p in t.updated]
    for p in t.updated:
        p.grad = None
    return grads


def tamper_gradients(t: Tar, step: int, adv: Adversary) -> tuple[list[torch.Tensor], dict]:
    """Run the adversary K steps from the current weights, adding up the weighted first-order
    gradient of the tamper-resistance loss every `tr_every` steps; restore the weights.
    Returns (the accumulated gradients, one per updated tensor; a record)."""
    c, plan, params = t.cfg.tar, t.plan, t.updated
    saved = [p.detach().clone() for p in params]
    total = [torch.zeros_like(p) for p in params]
    optimizer = torch.optim.AdamW(params, lr=adv.lr)  # a fresh attacker every outer step
    heldout = local_batch(t, plan.tr_forget[step % len(plan.tr_forget)], step, c.tr_batch_size)
    tr_values = []
    try:
        for i in range(c.inner_steps):
            batch = tokenize(t.tokenizer, t.ranks.shard(inner_texts(t, adv, step, i)), plan.max_length, t.device)
            for p, g in zip(params, gradients(t, lm_loss(t.model, batch, t.ranks))):
                p.grad = g
            optimizer.step()
            if (i + 1) % c.tr_every == 0:
                loss = negative_entropy(t.model(**heldout).logits[:, :-1], next_token_mask(heldout), t.ranks)
                for acc, g in zip(total, gradients(t, tr_weight(i, c.inner_steps) * loss)):
                    acc.add_(g)
                tr_values.append(t.ranks.total(loss).item())
    finally:
        with torch.no_grad():  # θ as it was, whatever happened inside
            for p, s in zip(params, saved):
                p.copy_(s)
            for p in params:
                p.grad = None
    return total, {"adversary": adv.data, "adversary_lr": adv.lr, "switch": adv.switch,
                   "tr_loss_last": tr_values[-1] if tr_values else None}


def tar_step(t: Tar, step: int, lr: float) -> dict:
    """One outer step: the sampled adversary's tamper-resistance gradient plus the retain
    gradient, one AdamW step. With K = 0 (tar.inner_steps) only the retain update remains."""
    c, plan = t.cfg.tar, t.plan
    for group in t.updater.optimizer.param_groups:
        group["lr"] = lr
    adv = sample_adversary(c.adversary, t.cfg.seed, step, c.inner_steps)
    tr, record = tamper_gradients(t, step, adv)
    retain = local_batch(t, plan.retain[step % len(plan.retain)], step, t.cfg.trainer.batch_size)
    loss = retain_loss(t.model, t.start, retain, t.ranks)
    grads = gradients(t, c.retain_coef * loss)
    t.updater.apply([g + c.tr_coef * a for g, a in zip(grads, tr)])
    return {"phase": "tar", "retain_loss": t.ranks.total(loss).item(), **record, "lr": lr}


def safeguard_step(t: Tar, step: int, lr: float) -> dict:
    """One step of the initial safeguard: random mapping on forget text, next-token loss on retain text."""
    plan, bs = t.plan, t.cfg.trainer.batch_size
    for group in t.updater.optimizer.param_groups:
        group["lr"] = lr
    forget = local_batch(t, plan.attack_forget[step % len(plan.attack_forget)], step, bs)
    retain = local_batch(t, plan.retain[step % len(plan.retain)], step, bs)
    mapping, lm = random_mapping_loss(t.model, forget, t.mapping, t.ranks), lm_loss(t.model, retain, t.ranks)
    t.updater.step(mapping + lm)
    return {"phase": "safeguard", "mapping_loss": t.ranks.total(mapping).item(), "retain_loss": t.ranks.total(lm).item(),
            "lr": lr}


def check(cfg: DictConfig) -> tuple[TarPlan, Ranks]:
    ranks = Ranks(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    plan = plan_tar(cfg)
    missing = [name for name, _, _ in plan.eval_sets if name not in plan.teacher_results.eval]
    if missing:
        fail("eval.sets", [name for name, _, _ in plan.eval_sets],
             f"the starting run's results.json has no base-model score for the set {missing[0]!r}; use the "
             f"evaluation sets it was trained with")
    return plan, ranks


def setup(cfg: DictConfig) -> Tar:
    return build(cfg, *check(cfg))


def build(cfg: DictConfig, plan: TarPlan, ranks: Ranks) -> Tar:
    """The model, its frozen starting copy and the outer AdamW. Under FSDP rank 0 alone loads
    the model, in CPU memory; every rank builds both sharded and empty and receives its shards
    from that one copy (as rmu.distill's: rmu/run/fsdp.py `shard_from_main`)."""
    if ranks.fsdp:
        source, tokenizer = ranks.on_main(lambda: load_model(cfg.model, cfg.seed, device=torch.device("cpu"))) \
            or (None, None)
        tokenizer = tokenizer or load_tokenizer(cfg.model)
        model, start = (shard_from_main(source, cfg.model, tokenizer, ranks) for _ in range(2))
        del source
    else:
        model, tokenizer = load_model(cfg.model, cfg.seed, device=ranks.device if ranks.size > 1 else None)
        start = copy.deepcopy(model)
    tokenizer = configure_tokenizer(tokenizer, cfg.model, cfg.data)
    start.requires_grad_(False).eval()
    model.eval()  # no dropout: the adversary's and the retain passes see the same function
    device = ranks.device if ranks.fsdp else next(model.parameters()).device
    updated = [p.requires_grad_(True) for p in model.parameters()]
    c = cfg.tar
    updater = Updater(updated, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=0.0, master_weights=c.master_weights,
                      ranks=ranks)
    mapping = None
    if c.safeguard_steps:
        g = torch.Generator().manual_seed(cfg.seed)
        mapping = torch.randn(model.config.vocab_size, model.config.hidden_size, generator=g).to(device)
    ranks.print(f"rmu: TAR from {cfg.model.path}: {c.safeguard_steps} safeguard steps, then {c.outer_steps} outer "
                f"steps of K = {c.inner_steps} adversary steps (tamper-resistance loss every {c.tr_every}); "
                f"{plan.passes_per_step} forward/backward passes per outer step"
                + (f"; {ranks.size} processes" if ranks.size > 1 else "") + (" (FSDP: both models sharded)" if ranks.fsdp else ""))
    tracker = ranks.on_main(lambda: Tracker(cfg, True)) or Tracker(cfg, False)
    return Tar(cfg, plan, ranks, model, start, tokenizer, device, updated, updater, mapping, tracker)


def fit(t: Tar, before: tuple, folder=None, preemption: Preemption | None = None) -> list[dict]:
    """The safeguard steps, then the outer steps; resumable as rmu.train is (save_or_stop)."""
    c, plan = t.cfg.tar, t.plan
    rows, start = [], 0
    if folder is not None and folder.state is not None:
        Resume.restore(folder.state, t.updated, t.updater)
        rows, start = folder.state["rows"], folder.state["step"]
        t.resumed_at = start
        t.ranks.print(f"rmu: resuming at step {start} from {folder.resume.folder}")
    show = lambda r: {"phase": r["phase"], "retain": f"{r['retain_loss']:.4g}"}  # noqa: E731
    progress = Progress(t.cfg.trainer.progress and t.ranks.main, start, plan.steps, name="tar", show=show)
    try:
        for step in range(start, plan.steps):
            began = time.perf_counter()
            if step < c.safeguard_steps:
                record = safeguard_step(t, step, learning_rate(step, c.safeguard_steps, c.safeguard_lr, 0, 1.0))
            else:
                outer = step - c.safeguard_steps
                record = tar_step(t, outer, learning_rate(outer, c.outer_steps, c.lr, c.warmup, c.final_lr_ratio))
            record = {"step": step, **record, "seconds": round(time.perf_counter() - began, 3)}
            rows.append(record)
            t.tracker.step(record)
            progress.update(record)
            if folder is not None:
                save_or_stop(t, folder, preemption, rows, before)
    except TrainingError as e:
        raise TrainingError(f"{e}{folder.resume.kept_note() if folder is not None else ''}") from None
    finally:
        progress.close()
    return rows


def evaluate_start(t: Tar) -> tuple[dict, None]:
    return scores_on_ranks(t, t.start), None


def evaluate_trained(t: Tar) -> tuple[dict, None]:
    t.model.eval()
    return scores_on_ranks(t, t.model), None


def tar_results(t: Tar, rows: list[dict], before: tuple, after: tuple, seconds: dict) -> RunResults:
    """results.json: the starting run's (how RMU made it) with this run's folder, times and
    the scores after TAR against the original base model's, and a `tar` section."""
    cfg, plan, c = t.cfg, t.plan, t.cfg.tar
    results = copy.deepcopy(plan.teacher_results)
    results.output_dir, results.seconds, results.harness = str(cfg.output_dir), seconds, None
    results.resumed_at = t.resumed_at  # this run's, not the start's
    results.processes, results.fsdp = t.ranks.size, t.ranks.fsdp
    results.rank0_parameter_mib = round(local_parameter_mib(t.model), 3)
    results.eval = {name: {"role": role, "base": plan.teacher_results.eval[name]["base"], "unlearned": after[0][name]}
                    for name, role, _ in plan.eval_sets}
    outer = [r for r in rows if r["phase"] == "tar"]
    results.tar = {
        "start": str(Path(cfg.model.path).expanduser().absolute()), "start_eval": before[0],
        "safeguard_steps": c.safeguard_steps, "outer_steps": c.outer_steps, "inner_steps": c.inner_steps,
        "tr_every": c.tr_every, "adversary": OmegaConf.to_container(c.adversary, resolve=True),
        "passes_per_outer_step": plan.passes_per_step,
        # seconds["train"] is this process's (resumed_at); the per-step mean covers every process's steps
        "seconds_per_outer_step": round(sum(r["seconds"] for r in outer) / len(outer), 3) if outer else None}
    return results


def write(t: Tar, rows: list[dict], before: tuple, after: tuple, seconds: dict, started: float,
          folder=None) -> RunResults:
    """The output folder, atomically, on rank 0: the weights, the starting run's RMU files as
    they are, tar_config.yaml, tar_metrics.jsonl, results.json, eval_table.txt and the report."""
    weights = full_state_dict(t.model) if t.ranks.fsdp else None  # every rank joins the gather
    return t.ranks.on_main(lambda: write_hardened(t, "tar", tar_results(t, rows, before, after, seconds), rows,
                                                  started, folder, weights))
