"""Distillation of an unlearned teacher into a damaged copy of itself (UNDO, Lee et al. 2025).

The teacher (a run folder of rmu.train) is frozen. The student starts as the teacher's
weights shrunk and noised (rmu/harden/noise.py) and learns to match the teacher's
next-token distribution: the forward KL(teacher ‖ student) over the whole vocabulary, at
every position of packed rows of forget-domain and retain text. The teacher's outputs on
forget text no longer carry the knowledge, so a student rebuilt from them has nothing to
bring back when it is fine-tuned, while what the teacher kept in its weights is what the
damage erased.

As in rmu/unlearn/recipe.py: `check` (no weights), `build`, `fit` (the loop of
`distill_step`), `write`. `python -m rmu.distill` (rmu/distill.py) runs them inside the
run's folder.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from rmu.config.checks import fail
from rmu.data import TokenStream, tokenize
from rmu.errors import TrainingError
from rmu.evaluation.results import RunResults
from rmu.harden.noise import damage
from rmu.harden.output import scores_on_ranks, write_hardened
from rmu.harden.plan import DistillPlan, plan_distill
from rmu.models.loading import configure_tokenizer, load_model, load_tokenizer
from rmu.run.distributed import Ranks
from rmu.run.fsdp import full_state_dict, local_parameter_mib, shard_from_main
from rmu.run.progress import Progress
from rmu.run.resume import Preemption, Resume
from rmu.run.tracking import Tracker
from rmu.unlearn.optim import Updater, learning_rate
from rmu.unlearn.recipe import save_or_stop


@dataclass
class Distill:
    """What `build` makes for `fit` and `write` (the names `save_or_stop` and rmu/run/lifecycle.py read)."""
    cfg: DictConfig
    plan: DistillPlan
    ranks: Ranks
    teacher: torch.nn.Module  # frozen, eval mode
    model: torch.nn.Module  # the student
    tokenizer: object
    device: torch.device
    updated: list[torch.Tensor]  # every parameter of the student
    updater: Updater
    forget_rows: TokenStream | None  # packed forget-domain rows (None when distill.forget_fraction is 0)
    retain_rows: TokenStream | None  # packed retain rows (None when it is 1)
    teacher_ce: float  # the teacher's retain CE on the held-out texts
    damaged: dict  # how many matrices and vectors the damage changed
    tracker: Tracker
    robust: None = None  # no robust stages: what save_or_stop and the resume state expect
    resumed_at: int = 0  # the step this process started at (> 0 when it resumed a state)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over the positions where `mask` is 1 of KL(p_teacher ‖ p_student), how many positions).
    Over the whole vocabulary, in float32: Σ_v p_t(v)·(log p_t(v) − log p_s(v))."""
    log_t = teacher_logits.float().log_softmax(-1)
    log_s = student_logits.float().log_softmax(-1)
    per_position = (log_t.exp() * (log_t - log_s)).sum(-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum(), mask.sum()


def hidden_mse(student_hidden: tuple, teacher_hidden: tuple) -> torch.Tensor:
    """Mean over layers (the embeddings' output included) of the mean squared difference."""
    return torch.stack([(s.float() - t.float()).pow(2).mean() for s, t in zip(student_hidden, teacher_hidden)]).mean()


@torch.no_grad()
def retain_ce(model, tokenizer, texts: list[str], max_length: int, device, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy of `model` over the non-padding positions of `texts`."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[i:i + batch_size], max_length, device)
        logits = model(**batch).logits[:, :-1].float()
        targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:] * batch["attention_mask"][:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total += (ce * mask).sum().item()
        count += int(mask.sum())
    return total / max(count, 1)


def check(cfg: DictConfig) -> tuple[DistillPlan, Ranks]:
    """Every check that needs no weights, then what this launch can run."""
    ranks = Ranks(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    plan = plan_distill(cfg, ranks.size, shards=ranks.size if ranks.fsdp else 1)
    missing = [name for name, _, _ in plan.eval_sets if name not in plan.teacher_results.eval]
    if missing:
        fail("eval.sets", [name for name, _, _ in plan.eval_sets],
             f"the teacher's results.json has no base-model score for the set {missing[0]!r}; distill with the "
             f"evaluation sets the teacher was trained with (their base scores head the student's table)")
    return plan, ranks


def setup(cfg: DictConfig) -> Distill:
    """Check, then build (what the tests call; rmu.distill puts its run folder between the two)."""
    return build(cfg, *check(cfg))


def build(cfg: DictConfig, plan: DistillPlan, ranks: Ranks) -> Distill:
    """The frozen teacher, the damaged student, the optimizer and the packed rows. Under FSDP
    rank 0 alone loads the teacher, in CPU memory; every rank builds both models sharded and
    empty and receives its shards from that one copy, damaged in place between the two fills
    (rmu/run/fsdp.py `shard_from_main`)."""
    d = cfg.distill
    if ranks.fsdp:
        source, tokenizer = ranks.on_main(lambda: load_model(cfg.model, cfg.seed, device=torch.device("cpu"))) \
            or (None, None)
        tokenizer = tokenizer or load_tokenizer(cfg.model)
        teacher = shard_from_main(source, cfg.model, tokenizer, ranks)
        damaged = ranks.same(ranks.on_main(lambda: damage(source, d.alpha, d.beta, cfg.seed)))
        student = shard_from_main(source, cfg.model, tokenizer, ranks)
        del source
    else:
        teacher, tokenizer = load_model(cfg.model, cfg.seed, device=ranks.device if ranks.size > 1 else None)
        student = copy.deepcopy(teacher)
        damaged = damage(student, d.alpha, d.beta, cfg.seed)
    tokenizer = configure_tokenizer(tokenizer, cfg.model, cfg.data)
    teacher.requires_grad_(False).eval()
    student.train()
    device = ranks.device if ranks.fsdp else next(teacher.parameters()).device
    teacher_ce = retain_ce(teacher, tokenizer, plan.heldout, plan.retain[0].max_length, device)
    updated = [p.requires_grad_(True) for p in student.parameters()]
    updater = Updater(updated, lr=d.lr, betas=d.betas, eps=d.eps, weight_decay=0.0, master_weights=d.master_weights,
                      ranks=ranks)
    docs = lambda corpora: tokenizer([t for c in corpora for t in c.texts], add_special_tokens=False).input_ids  # noqa: E731
    eos = tokenizer.eos_token_id
    forget = (TokenStream(docs(plan.forget), eos, d.seq_len, plan.forget_rows, cfg.seed)
              if plan.forget_rows else None)
    retain = (TokenStream(docs(plan.retain), eos, d.seq_len, plan.global_rows - plan.forget_rows, cfg.seed + 1)
              if plan.global_rows > plan.forget_rows else None)
    ranks.print(f"rmu: distilling {cfg.model.path} into a student damaged with alpha {d.alpha}, beta {d.beta} "
                f"({damaged['matrices']} matrices, {damaged['vectors']} vectors); {plan.steps} steps of "
                f"{plan.global_rows} x {d.seq_len} tokens ({plan.forget_rows} forget rows); teacher retain CE "
                f"{teacher_ce:.4f}" + (f", {ranks.size} processes" if ranks.size > 1 else "")
                + (" (FSDP: both models sharded)" if ranks.fsdp else ""))
    tracker = ranks.on_main(lambda: Tracker(cfg, True)) or Tracker(cfg, False)
    return Distill(cfg, plan, ranks, teacher, student, tokenizer, device, updated, updater, forget, retain,
                   teacher_ce, damaged, tracker)


def rows_of(d: Distill, step: int) -> torch.Tensor:
    """This process's rows of step `step`: its contiguous slice of the global batch, the
    forget rows first. The batch is a function of the step alone, so a resumed run sees
    what an uninterrupted one saw."""
    parts = [s.batch(step) for s in (d.forget_rows, d.retain_rows) if s is not None]
    rows = torch.cat(parts)
    per = len(rows) // d.ranks.size
    return rows[d.ranks.rank * per:(d.ranks.rank + 1) * per].to(d.device)


def distill_step(d: Distill, ids: torch.Tensor, lr: float) -> dict:
    """One step: the teacher's and the student's next-token distributions on the same rows,
    the KL between them (and the hidden-state MSE when weighted), one AdamW step."""
    for group in d.updater.optimizer.param_groups:
        group["lr"] = lr
    hidden = d.cfg.distill.hidden_mse > 0
    with torch.no_grad():
        teacher = d.teacher(input_ids=ids, output_hidden_states=hidden)
    student = d.model(input_ids=ids, output_hidden_states=hidden)
    # Packed rows have no padding: every position but the last has a next token to predict.
    mask = torch.ones(ids.shape[0], ids.shape[1] - 1, device=ids.device)
    kl_sum, positions = kl_divergence(student.logits[:, :-1], teacher.logits[:, :-1], mask)
    all_positions = d.ranks.total(positions)
    loss = kl_sum / all_positions  # summed over processes, the gradient of the mean over the global batch
    record = {}
    if hidden:
        mse = hidden_mse(student.hidden_states, teacher.hidden_states) * (positions / all_positions)
        loss = loss + d.cfg.distill.hidden_mse * mse
        record["hidden_mse"] = d.ranks.total(mse).item()
    d.updater.step(loss, max_norm=d.cfg.distill.grad_clip)
    return {"kl": (d.ranks.total(kl_sum) / all_positions).item(), **record, "lr": lr,
            "grad_norm": d.updater.grad_norm}


def fit(d: Distill, before: tuple, folder=None, preemption: Preemption | None = None) -> list[dict]:
    """The loop: `distill_step` on each step's rows, the held-out retain CE every
    `distill.eval_every` steps, until the budget is spent or the CE is within
    `distill.retain_ce_gap` of the teacher's. With the run's `folder` it resumes and saves as
    rmu.train does (save_or_stop)."""
    cfg, plan, ranks = d.cfg, d.plan, d.ranks
    c = cfg.distill
    rows, start = [], 0
    if folder is not None and folder.state is not None:
        Resume.restore(folder.state, d.updated, d.updater)
        rows, start = folder.state["rows"], folder.state["step"]
        d.resumed_at = start
        ranks.print(f"rmu: resuming at step {start} from {folder.resume.folder}")
    show = lambda r: {"kl": f"{r['kl']:.4g}", **({"retain_ce": f"{r['retain_ce']:.4f}"} if "retain_ce" in r else {})}  # noqa: E731
    progress = Progress(cfg.trainer.progress and ranks.main, start, plan.steps, name="distill", show=show)
    tokens_per_step = plan.global_rows * c.seq_len
    try:
        for step in range(start, plan.steps):
            lr = learning_rate(step, plan.steps, c.lr, c.warmup, c.final_lr_ratio)
            record = {"step": step, **distill_step(d, rows_of(d, step), lr), "tokens": (step + 1) * tokens_per_step}
            done = step + 1
            if done % c.eval_every == 0 or done == plan.steps:
                record["retain_ce"] = retain_ce(d.model, d.tokenizer, plan.heldout, plan.retain[0].max_length, d.device)
                record["retain_ce_gap"] = record["retain_ce"] - d.teacher_ce
            rows.append(record)
            d.tracker.step(record)
            progress.update(record)
            if c.retain_ce_gap is not None and record.get("retain_ce_gap", float("inf")) <= c.retain_ce_gap:
                ranks.print(f"rmu: the student's retain CE is within {c.retain_ce_gap} of the teacher's after "
                            f"{done} steps: stopping")
                break
            if folder is not None:
                save_or_stop(d, folder, preemption, rows, before)
    except TrainingError as e:
        raise TrainingError(f"{e}{folder.resume.kept_note() if folder is not None else ''}") from None
    finally:
        progress.close()
    return rows


def evaluate_teacher(d: Distill) -> tuple[dict, None]:
    return scores_on_ranks(d, d.teacher), None


def evaluate_student(d: Distill) -> tuple[dict, None]:
    d.model.eval()
    return scores_on_ranks(d, d.model), None


def distill_results(d: Distill, rows: list[dict], before: tuple, after: tuple, seconds: dict) -> RunResults:
    """results.json: the teacher's (how RMU made it) with this run's folder, times and the
    student's scores against the original base model's, and a `distill` section that says
    how the student was made."""
    cfg, plan, c = d.cfg, d.plan, d.cfg.distill
    teacher_scores, student_scores = before[0], after[0]
    results = copy.deepcopy(plan.teacher_results)
    results.output_dir, results.seconds, results.harness = str(cfg.output_dir), seconds, None
    results.resumed_at = d.resumed_at  # this run's, not the teacher's
    results.processes, results.fsdp = d.ranks.size, d.ranks.fsdp
    results.rank0_parameter_mib = round(local_parameter_mib(d.model), 3)
    results.eval = {name: {"role": role, "base": plan.teacher_results.eval[name]["base"], "unlearned": student_scores[name]}
                    for name, role, _ in plan.eval_sets}
    ces = [r for r in rows if "retain_ce" in r]
    stopped = "retain_ce_gap" if (c.retain_ce_gap is not None and ces and ces[-1]["retain_ce_gap"] <= c.retain_ce_gap
                                  ) else "max_tokens"
    results.distill = {
        "teacher": str(Path(cfg.model.path).expanduser().absolute()), "alpha": c.alpha, "beta": c.beta,
        "damaged": d.damaged, "steps": len(rows), "budget_steps": plan.steps, "tokens": rows[-1]["tokens"] if rows else 0,
        "max_tokens": c.max_tokens, "stopped": stopped, "lr": c.lr, "seq_len": c.seq_len,
        "batch_rows": plan.global_rows, "forget_rows": plan.forget_rows, "hidden_mse": c.hidden_mse,
        "teacher_retain_ce": d.teacher_ce, "student_retain_ce": ces[-1]["retain_ce"] if ces else None,
        "teacher_eval": teacher_scores,
        # seconds["train"] is this process's (resumed_at says from which step): the throughput
        # counts the steps it ran itself
        "tokens_per_s": (round((len(rows) - d.resumed_at) * plan.global_rows * c.seq_len / seconds["train"])
                         if seconds["train"] else None)}
    return results


def write(d: Distill, rows: list[dict], before: tuple, after: tuple, seconds: dict, started: float,
          folder=None) -> RunResults | None:
    """The output folder, atomically, on rank 0: the student's weights and tokenizer, the
    teacher's RMU files as they are (TEACHER_FILES), distill_config.yaml, distill_metrics.jsonl,
    results.json, eval_table.txt and the report."""
    weights = full_state_dict(d.model) if d.ranks.fsdp else None  # every rank joins the gather
    return d.ranks.on_main(lambda: write_hardened(d, "distill", distill_results(d, rows, before, after, seconds),
                                                  rows, started, folder, weights))
