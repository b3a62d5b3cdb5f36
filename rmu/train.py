"""`python -m rmu.train` — unlearn with RMU and write the edited model.

    python -m rmu.train                                   # bundled model and data, CPU, ~2 min
    python -m rmu.train debug=tiny                        # a 4-layer random model, seconds
    python -m rmu.train rmu.layer_id=5 trainer.max_steps=40 output_dir=outputs/l5
    python -m rmu.train experiment=zephyr_rmu             # the paper's Zephyr-7B recipe (GPU, WMDP corpora)

Every key is a Hydra override; `conf/` documents them. The recipe reads in three acts:
`setup(cfg)` checks everything and builds the model, the frozen values and the optimizer;
`fit(run)` is the loop of `rmu_step`, the method itself; `write_run(...)` writes the
output folder. `train(cfg)` runs them with an evaluation before and after, and is what
the tests call.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rmu.adapters import add_lora
from rmu.architectures import checkpoint_names, fused_experts, keep_experts
from rmu.checkpoint import clean_leftovers, published_by, save_run, staged_output
from rmu.checks import check_fsdp, check_robust_processes, command_line_keys, plain, robust_on
from rmu.cli import run_command
from rmu.data import batch_texts, tokenize
from rmu.distributed import Ranks
from rmu.errors import ConfigError, Preempted, ResumeError, TrainingError
from rmu.eval import evaluate
from rmu.export import prepare, push
from rmu.fsdp import full_state_dict, load_sharded, local_parameter_mib
from rmu.harness import run_harness
from rmu.lock import OutputLock, held
from rmu.losses import (forget_loss, mean_token_cosine, mean_token_norm, random_directions, reference_controls,
                        retain_loss)
from rmu.models import load_model, load_tokenizer
from rmu.optim import Updater
from rmu.plan import Plan, plan_train
from rmu.report import write_report
from rmu.results import RunResults
from rmu.pause import pause_point
from rmu.resume import Interrupted, Preemption, Resume, find_interrupted
from rmu.robust import Robust
from rmu.schema import CONF_DIR
from rmu.span import LayerSpan
from rmu.sweep import in_sweep
from rmu.tracking import Tracker


def rmu_step(span: LayerSpan, updater: Updater, forget: dict, retain: dict, control: torch.Tensor,
             alpha: float, mask_padding: bool, step: int, ranks: Ranks | None = None,
             robust: Robust | None = None, model_dtype_loss: bool = False) -> dict:
    """One RMU update on one forget batch of topic k and one retain batch.

        L = mean((h_ℓ^upd(x_f) − c_k·u_k)²) + α_k · mean((h_ℓ^upd(x_r) − h_ℓ^frozen(x_r))²)

    h_ℓ is the output of decoder layer ℓ. Means run over real tokens when `mask_padding`,
    over every position otherwise (the reference). Only the parameters handed to
    `updater` require gradients.

    The cost is what the loss needs (rmu/span.py): layers below the first updated one run
    once per batch without autograd and feed both the updated and the frozen pass; nothing
    after ℓ runs; the frozen pass uses saved copies of the updated tensors only.

    With several processes (`ranks`, rmu/distributed.py) each holds a slice of the batch:
    its means are weighted by its share of all ranks' positions, so the losses and (summed
    in the updater) the gradients over ranks are those of the whole batch. The finiteness
    check reads the losses summed over ranks, so every rank takes the same decision.

    `robust` (rmu/robust.py, the `robust` config section) adds the robust variants' stages,
    marked below; without it, or with every stage off, this is the plain step.
    `model_dtype_loss` computes both MSEs in the model's dtype, as the reference does
    (`rmu.numerics=reference`); otherwise in float32.
    """
    forget_mask = forget["attention_mask"] if mask_padding else None
    retain_mask = retain["attention_mask"] if mask_padding else None
    averaged = lambda batch: batch["attention_mask"] if mask_padding else torch.ones_like(batch["input_ids"])  # noqa: E731
    # This rank's share of the global token mean (1.0 on one process).
    forget_share = ranks.share(averaged(forget)) if ranks is not None else 1.0
    retain_share = ranks.share(averaged(retain)) if ranks is not None else 1.0
    with torch.no_grad():
        forget_in = span.prefix(forget)
        retain_in = span.prefix(retain)
    if robust is not None:
        control = robust.targets(control, forget, step)  # robust 1: a direction per text or token
        forget_in = robust.perturb(span, forget_in, control, forget_mask)  # robust 2: the latent adversary's δ
        source = (forget_in, forget_mask) if robust.cfg.collapse_source == "forget" else (retain_in, retain_mask)
        robust.observe(span, source[0], control, source[1], step)  # robust 4: the collapse bases
    separate = robust is not None and robust.separate

    # Forget: steer the updated model's activations on forget text toward the control vector
    # (robust 3, meta-unlearning: at the tensors a relearning attacker reaches from here).
    with robust.relearned(span, forget, forget_in, forget_mask) if robust is not None else nullcontext():
        h_forget = span.run(forget_in)  # (B, T, D)
        loss_forget = forget_share * forget_loss(h_forget, control, forget_mask, model_dtype_loss)
        g_forget = torch.autograd.grad(loss_forget, updater.params) if separate else None

    # Retain: keep the updated model's activations on retain text where the frozen model has them.
    h_retain = span.run(retain_in)  # (B, T, D)
    with torch.no_grad():
        h_frozen = span.run(retain_in, frozen=True)
    loss_retain = retain_share * retain_loss(h_retain, h_frozen, retain_mask, model_dtype_loss)
    loss = loss_forget + alpha * loss_retain

    total = ranks.total if ranks else (lambda x: x.detach())  # sums over ranks: the whole batch's losses
    total_loss, total_forget, total_retain = total(loss).item(), total(loss_forget).item(), total(loss_retain).item()
    if not math.isfinite(total_loss):  # the same sums on every rank: all stop, or none
        raise TrainingError(f"non-finite loss at step {step}: forget={total_forget:.4g} retain={total_retain:.4g} "
                            f"alpha={alpha}; lower optim.lr or rmu.steering_coeff, or use a wider dtype")
    kept = None
    if not separate:
        applied = updater.step(loss)  # backward, then AdamW (float32 master copies for bf16/fp16: rmu/optim.py)
    else:  # robust 4-6: collapse, normalise and mask the forget gradient, then one AdamW step
        g_retain = torch.autograd.grad(alpha * loss_retain, updater.params)
        grads, keep = robust.combine(robust.total(g_forget), robust.total(g_retain))
        applied = updater.apply(grads, keep)
        if keep is not None:
            kept = sum(k.sum().item() for k in keep) / sum(k.numel() for k in keep)

    with torch.no_grad():
        record = {
            "step": step,
            "loss": total_loss,
            "skipped": not applied,
            "forget_loss": total_forget,
            "retain_loss": total_retain,
            "forget_norm": mean_token_norm(h_forget, forget_mask).item(),
            "forget_cos_control": mean_token_cosine(h_forget, control.expand_as(h_forget), forget_mask).item(),
            "retain_norm": mean_token_norm(h_retain, retain_mask).item(),
            "frozen_retain_norm": mean_token_norm(h_frozen, retain_mask).item(),
            "retain_cos_frozen": mean_token_cosine(h_retain, h_frozen, retain_mask).item(),
        }
        if kept is not None:
            record["mask_kept"] = kept  # the share of entries the disruption mask let move
        return record


@dataclass
class Run:
    """What `setup` builds for `fit` and `write_run`."""
    cfg: DictConfig
    plan: Plan
    ranks: Ranks
    model: torch.nn.Module  # the transformers model (under LoRA: the one inside the peft wrapper)
    tokenizer: object
    device: torch.device  # where batches go (this rank's device under FSDP)
    peft_model: torch.nn.Module | None  # adapter=lora
    span: LayerSpan
    updated: list[torch.Tensor]  # the tensors the optimizer moves
    updater: Updater
    coeffs: list[float]  # c_k
    controls: torch.Tensor  # (K, D) float32 on the CPU, ‖control_k‖ = c_k; what control_vectors.safetensors holds
    tracker: Tracker
    robust: Robust | None  # the robust variants' stages (rmu/robust.py); None when all are off
    lock: OutputLock  # this run's claim on output_dir (taken by rank 0)
    resume: Resume  # where the training state is saved (rmu/resume.py)
    state: dict | None  # the saved state this run resumes from, checked before the model loaded
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this run in its output's marker


def setup(cfg: DictConfig) -> Run:
    """Check the config and read every file (rmu/plan.py), then load the model, mark what
    trains, keep the frozen values and draw the control vectors."""
    plan = plan_train(cfg)  # raises ConfigError / DataError before any weights load
    # One process, or the processes of accelerate launch / torchrun (rmu/distributed.py).
    ranks = Ranks(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    if ranks.fsdp:
        check_fsdp(cfg)
    check_robust_processes(cfg.robust, ranks.size, ranks.fsdp)
    if cfg.trainer.one_pass and ranks.size > 1:
        raise ConfigError(f"trainer.one_pass=true: runs on one process only (the reference's short last batch does "
                          f"not split over {ranks.size} processes)")
    if "output_dir" not in command_line_keys() and not in_sweep():
        # The default timestamped folder: the same command continues an interrupted run of this config.
        interrupted = ranks.on_main(lambda: find_interrupted(cfg))
        if interrupted:
            ranks.print(f"rmu: continuing the interrupted run {interrupted} (same config; set output_dir to start "
                        f"a new run instead)")
            cfg.output_dir = interrupted
    cfg.output_dir = ranks.same(str(cfg.output_dir))  # one folder, even if ranks started in different seconds
    lock = OutputLock(cfg.output_dir)
    note = ranks.on_main(lock.acquire)  # a second run into this output_dir stops here
    try:
        for line in ranks.on_main(lambda: clean_leftovers(cfg.output_dir, held)) or []:
            ranks.print(line)
        if note:
            ranks.print(note)
        resume = Resume(cfg)
        state = ranks.on_main(resume.load)  # checked before the weights load: a bad state fails in seconds
        if not ranks.main:
            state = resume.load()
        step = ranks.same(None if state is None else state["step"])
        if (None if state is None else state["step"]) != step:  # e.g. an output_dir on a node-local disk
            raise ResumeError(f"rank {ranks.rank} finds {'no resume state' if state is None else 'another state'} "
                              f"in {resume.folder} than rank 0 (step {step}); put output_dir on a shared disk")
        return build(cfg, plan, ranks, lock, resume, state)
    except BaseException:
        lock.release()
        raise


def build(cfg: DictConfig, plan: Plan, ranks: Ranks, lock: OutputLock, resume: Resume, state: dict | None) -> Run:
    """The second half of `setup`, once everything is checked: the model and what trains."""
    torch.manual_seed(cfg.seed)
    model, tokenizer = load(cfg, plan, ranks)
    if not cfg.data.fast_tokenizer:
        tokenizer = load_tokenizer(cfg.model, fast=False)
    if cfg.data.pad_with_eos:  # the reference pads with eos even where the tokenizer has a pad token
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = cfg.data.padding_side
    if cfg.data.truncation_side is not None:
        tokenizer.truncation_side = cfg.data.truncation_side
    model.requires_grad_(False)
    # Both passes without dropout: activations matched to the frozen model's must not be
    # noised (only LoRA's own dropout, adapter.dropout, stays on).
    model.eval()
    peft_model = None
    if cfg.adapter is None:
        # Only the selected tensors require gradients: backward then computes nothing else.
        params = dict(model.named_parameters())
        updated = [params[name].requires_grad_(True) for name in plan.update_names]
        if cfg.rmu.experts is not None:  # a mixture of experts: only the chosen routed experts change
            for name in plan.update_names:
                if fused_experts(name):
                    keep_experts(params[name], list(cfg.rmu.experts))
        # The frozen model: the original values of just those tensors, kept by the span.
        span = LayerSpan(model, plan.layer_id, plan.update_names)
    else:
        # LoRA: only the adapter tensors train; the frozen model is this one with its adapters off.
        peft_model, model, names = add_lora(model, cfg.adapter, plan.update_layers, plan.lora_targets,
                                            plan.layers_prefix, plan.lora_parameters)
        params = dict(model.named_parameters())
        updated = [params[name] for name in names]
        span = LayerSpan(model, plan.layer_id, names, disable_adapter=peft_model.disable_adapter)
    o = cfg.optim
    updater = Updater(updated, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                      master_weights=o.master_weights, ranks=ranks, reference=o.name == "adamw_reference")
    device = ranks.device if ranks.fsdp else next(model.parameters()).device
    coeffs = plan.steering_coeff or auto_coefficients(span, tokenizer, plan, cfg, device, ranks.size)
    if cfg.rmu.numerics == "reference":  # torch.rand in the model's dtype on its device, right after seeding
        controls = reference_controls(coeffs, plan.hidden_size, cfg.seed, model.dtype, device)
    else:
        controls = random_directions(len(plan.topics), plan.hidden_size, cfg.seed) * torch.tensor(coeffs).unsqueeze(1)
    what = (f"updating {len(plan.update_names)} tensors: {plan.update_names}" if peft_model is None else
            f"LoRA r={cfg.adapter.r} on {plan.lora_targets + plan.lora_parameters} of layers {plan.update_layers}")
    ranks.print(f"rmu: topics {plan.topics}, steering_coeff {[round(c, 2) for c in coeffs]}, alpha {plan.alpha}, "
                f"hooked layer {plan.layer_id}, {what}" + (f", {ranks.size} processes" if ranks.size > 1 else ""))
    tracker = ranks.on_main(lambda: Tracker(cfg, True)) or Tracker(cfg, False)  # logger=wandb: rank 0 logs
    names = plan.update_names if peft_model is None else []
    robust = Robust(cfg.robust, cfg.seed, updated, names, model, ranks) if robust_on(cfg.robust) else None
    return Run(cfg, plan, ranks, model, tokenizer, device, peft_model, span, updated, updater, coeffs, controls,
               tracker, robust, lock, resume, state)


def load(cfg: DictConfig, plan: Plan, ranks: Ranks):
    """(model, tokenizer): whole on one process or on each rank's device; under FSDP with
    the layers a step never trains sharded (rmu/fsdp.py)."""
    if not ranks.fsdp:
        return load_model(cfg.model, cfg.seed, device=ranks.device if ranks.size > 1 else None)
    model, tokenizer, n = load_sharded(ranks, cfg.model, cfg.seed, range(min(plan.update_layers), plan.layer_id + 1))
    ranks.print(f"rmu: FSDP: {n} frozen decoder layers sharded over {ranks.size} processes; this rank holds "
                f"{local_parameter_mib(model):.0f} MiB of parameters")
    return model, tokenizer


@torch.no_grad()
def auto_coefficients(span: LayerSpan, tokenizer, plan: Plan, cfg, device, n_ranks: int) -> list[float]:
    """Adaptive RMU: c_k = β × mean token norm of the frozen model at layer ℓ on topic k's
    first (global) forget batch; every rank computes it on the same texts, so all agree."""
    coeffs = []
    for corpus in plan.forget:
        batch = tokenize(tokenizer, batch_texts(corpus, 0, cfg.trainer.batch_size * n_ranks), corpus.max_length, device)
        h = span.run(span.prefix(batch), frozen=True)
        mask = batch["attention_mask"] if cfg.rmu.mask_padding else None
        coeffs.append(cfg.rmu.auto_beta * mean_token_norm(h, mask).item())
    return coeffs


def fit(run: Run, preemption: Preemption, before: tuple) -> list[dict]:
    """The training loop: step i trains topic i % K on batch i // K of its forget and retain
    corpora (each rank its slice of the global batch). Resumes a preempted run with this
    config and output_dir (rmu/resume.py); SIGTERM saves the state and stops. Returns
    every step's record (metrics.jsonl)."""
    cfg, plan, ranks, t = run.cfg, run.plan, run.ranks, run.cfg.trainer
    device = run.device
    controls = run.controls.to(device=device, dtype=run.model.dtype)
    global_batch = t.batch_size * ranks.size
    resume, rows, start = run.resume, [], 0
    if run.state is not None:
        Resume.restore(run.state, run.updated, run.updater, run.robust)
        rows, start = run.state["rows"], run.state["step"]
        ranks.print(f"rmu: resuming at step {start} from {resume.folder}")
    progress = Progress(t.progress and ranks.main, start, plan.steps)
    try:
        for step in range(start, plan.steps):
            k, index = step % len(plan.topics), step // len(plan.topics)
            wrap = not t.one_pass
            forget = tokenize(run.tokenizer, ranks.shard(batch_texts(plan.forget[k], index, global_batch, wrap)),
                              plan.forget[k].max_length, device)
            retain = tokenize(run.tokenizer, ranks.shard(batch_texts(plan.retain[k], index, global_batch, wrap)),
                              plan.retain[k].max_length, device)
            record = rmu_step(run.span, run.updater, forget, retain, controls[k], plan.alpha[k],
                              cfg.rmu.mask_padding, step, ranks, run.robust, cfg.rmu.numerics == "reference")
            record["topic"] = plan.topics[k]
            rows.append(record)
            run.tracker.step(record)
            progress.update(record)
            done = step + 1
            pause_point(f"step-{done}")
            stop = ranks.any(preemption.requested)  # SIGTERM on any rank stops all of them
            preemption.requested = stop  # every rank then takes the same path after training too
            if done < plan.steps and (stop or (t.save_every and done % t.save_every == 0)):
                ranks.on_main(lambda: resume.save(done, run.updated, run.updater, rows, run.robust, before))
            if stop and done < plan.steps:
                raise Preempted(stopped_message(run, f"after step {done}"))
    except TrainingError as e:  # say what the disk holds now, whatever the cause
        raise TrainingError(f"{e}{resume.kept_note()}") from None
    finally:
        progress.close()
    return rows


class Progress:
    """A tqdm bar on a terminal; in a log file (SLURM, nohup) one plain line per 10 % of
    the run instead of carriage-return frames that `tail` cannot read."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.total, self.every = enabled, total, max(1, total // 10)
        self.bar = tqdm(desc="rmu", initial=start, total=total) if self.tty else None

    def update(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(topic=record["topic"], forget=f"{record['forget_loss']:.3g}",
                                 retain=f"{record['retain_loss']:.3g}")
        elif self.enabled and ((record["step"] + 1) % self.every == 0 or record["step"] + 1 == self.total):
            print(f"rmu: step {record['step'] + 1}/{self.total} {record['topic']} forget {record['forget_loss']:.4g} "
                  f"retain {record['retain_loss']:.4g}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stopped_message(run: Run, when: str) -> str:
    """What a preempted run says: where the state is and the exact command that resumes it."""
    args = [a for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") not in ("output_dir", "overwrite")]
    module = getattr(sys.modules.get("__main__"), "__spec__", None)
    command = shlex.join(["python", "-m", module.name if module else "rmu.train", *args,
                          f"output_dir={run.cfg.output_dir}"])
    return (f"stopped by SIGTERM {when}; the state is in {run.resume.folder}: run the same command again to "
            f"resume, or exactly: {command}")


def evaluate_run(run: Run, model_path: str, revision: str | None) -> tuple[dict, dict | None]:
    """(built-in set scores, lm-eval results or None) of the model as it is now. Under FSDP
    every rank joins the forwards (the sharded layers gather over all ranks); otherwise
    rank 0 evaluates alone."""
    cfg, ranks = run.cfg, run.ranks
    scores = lambda: evaluate(run.model, run.tokenizer, run.plan.eval_sets, cfg.eval.batch_size)  # noqa: E731
    sets = scores() if ranks.fsdp else ranks.on_main(scores)
    harness = ranks.on_main(lambda: run_harness(run.model, run.tokenizer, cfg.harness, model_path, revision)
                            if cfg.harness.tasks else None)
    return sets or {}, harness


def write_run(run: Run, rows: list[dict], before: tuple, after: tuple, seconds: dict,
              started: float) -> RunResults | None:
    """The output folder, atomically (rmu/checkpoint.py): weights, tokenizer, config, control
    vectors, metrics.jsonl, results.json, eval_table.txt, report. Rank 0 writes; under
    FSDP every rank first joins the gather of the full weights. Returns the results on
    rank 0 (None on the others); `started` is when the run began (seconds.total)."""
    cfg, plan, ranks = run.cfg, run.plan, run.ranks
    t0 = time.perf_counter()
    weights = full_state_dict(run.model) if ranks.fsdp else None

    def write() -> RunResults:
        (base, harness_base), (unlearned, harness_after) = before, after
        results = RunResults(
            model=cfg.model.name, output_dir=str(cfg.output_dir), steps=plan.steps, processes=ranks.size,
            fsdp=ranks.fsdp, rank0_parameter_mib=round(local_parameter_mib(run.model), 3), topics=plan.topics,
            steering_coeff=run.coeffs, alpha=plan.alpha, layer_id=plan.layer_id, update_layers=plan.update_layers,
            updated_parameters=plan.update_names, seconds=seconds,
            checkpoint_parameters=(checkpoint_names(run.model, plan.update_names, plain(cfg.rmu.experts))
                                   if run.peft_model is None else None),
            eval={name: {"role": role, "base": base[name], "unlearned": unlearned[name]}
                  for name, role, _ in plan.eval_sets})
        if harness_base is not None:
            results.harness = {"setup": {k: v for k, v in harness_base["setup"].items() if k != "model_path"},
                               "base_model": cfg.model.path, "base": harness_base["tasks"],
                               "unlearned": harness_after["tasks"]}
        with staged_output(cfg.output_dir, cfg.overwrite, run.run_id) as out:
            with open(out / "metrics.jsonl", "w") as log:
                log.writelines(json.dumps(r) + "\n" for r in rows)
            model = run.model
            if run.peft_model is not None:  # a plain model with the adapters merged in, or the adapter folder
                model = run.peft_model.merge_and_unload() if cfg.adapter.merge else run.peft_model
            save_run(out, model, run.tokenizer, cfg, run.controls, plan.topics, run.coeffs, weights)
            results.seconds["save"] = time.perf_counter() - t0
            results.seconds["total"] = time.perf_counter() - started
            results.write(out)
            (out / "eval_table.txt").write_text(results.table() + "\n")
            write_report(out)  # report.png (loss curves, accuracy bars) and report.md
        run.resume.clear()
        run.tracker.finish(results)
        return results

    return ranks.on_main(write)


def train(cfg: DictConfig) -> RunResults | None:
    """The whole run: set up, evaluate, unlearn, evaluate, write (and export when asked).
    Returns results.json's content on rank 0 (None on the other ranks)."""
    t0 = time.perf_counter()
    run = setup(cfg)
    try:
        preemption = Preemption()  # SIGTERM: save the state and stop (rmu/resume.py)
        try:
            t_load = time.perf_counter()
            if run.state is not None and run.state.get("before") is not None:
                before = tuple(run.state["before"])  # measured before the interruption: not redone
            else:
                before = evaluate_run(run, cfg.model.path, cfg.model.revision)
            t_eval = time.perf_counter()
            rows = fit(run, preemption, before)
            t_train = time.perf_counter()
            try:
                preemption.at_once()  # from here a SIGTERM saves the trained state at once
                pause_point("eval_after")
                after = evaluate_run(run, str(cfg.output_dir), None)
                seconds = {"load": t_load - t0, "eval_before": t_eval - t_load, "train": t_train - t_eval,
                           "eval_after": time.perf_counter() - t_train}
                results = write_run(run, rows, before, after, seconds, started=t0)
                preemption.raise_at_once = False  # written: a later SIGTERM has nothing left to save
            except Interrupted:
                interrupted_after_training(run, rows, before)
        except BaseException:
            run.tracker.abort()  # the wandb run ends as failed
            raise
        finally:
            preemption.raise_at_once = False
            preemption.restore()
    finally:
        run.lock.release()
    if results is None:
        return None
    if results.eval or results.harness:
        print(results.table())
    s = results.seconds
    print(f"rmu: wrote {cfg.output_dir} in {s['total']:.1f}s (load {s['load']:.1f}s, eval {s['eval_before']:.1f}s + "
          f"{s['eval_after']:.1f}s, train {s['train']:.1f}s for {run.plan.steps} steps, save {s['save']:.1f}s)")
    if cfg.export.repo_id:  # a Hub folder next to the run folder, and the upload if asked
        hub = prepare(cfg.output_dir, cfg.export.repo_id, overwrite=cfg.overwrite)
        print(f"rmu: prepared the Hub folder {hub}")
        if cfg.export.push:
            print(f"rmu: pushed to {push(hub, cfg.export.repo_id, cfg.export.private)}")
    return results


def interrupted_after_training(run: Run, rows: list[dict], before: tuple):
    """SIGTERM during the final evaluation or the save: keep the trained tensors so that a
    rerun only evaluates and writes. Rank 0 saves without waiting for the others (they
    may be inside a collective that will not complete)."""
    out = run.cfg.output_dir
    if published_by(Path(out).expanduser().absolute(), run.run_id):  # the signal came after the folder was published
        run.resume.clear()
        raise Preempted(f"stopped by SIGTERM after {out} was written; the run is complete")
    if run.ranks.main:
        run.resume.save(run.plan.steps, run.updated, run.updater, rows, run.robust, before)
    raise Preempted(stopped_message(run, "after training, before the output was written"))


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> RunResults | None:
    return run_command(train, cfg)


if __name__ == "__main__":
    main()
