"""The RMU recipe in three acts, over the step (rmu/unlearn/step.py):

- `setup(cfg)` checks everything (rmu/config/plan.py), then builds the model, marks what
  trains, keeps the frozen values, draws the control vectors and chooses the step once
  (the plain `rmu_step`, or `robust_step` when a robust stage is on);
- `fit(run, ...)` is the loop of that step;
- `write_run(run, ...)` writes the output folder.

`rmu.train` runs them inside the run's folder (rmu/run/folder.py); tests and the bench
call them directly, without a folder or a lock.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from omegaconf import DictConfig

from rmu.config.checks import check_fsdp, check_robust_processes, plain, robust_on
from rmu.config.plan import Plan, plan_train
from rmu.data import batch_texts, tokenize
from rmu.errors import ConfigError, Preempted, TrainingError
from rmu.evaluation.harness import run_harness
from rmu.evaluation.mcq import evaluate
from rmu.evaluation.results import RunResults
from rmu.models.adapters import add_lora
from rmu.models.architectures import checkpoint_names, fused_experts, keep_experts
from rmu.models.loading import configure_tokenizer, load_model
from rmu.report import write_report
from rmu.run.checkpoint import save_run, staged_output
from rmu.run.distributed import Ranks
from rmu.run.fsdp import full_state_dict, load_sharded, local_parameter_mib
from rmu.run import signals
from rmu.run.pause import pause_point
from rmu.run.progress import Progress
from rmu.run.resume import Preemption, Resume
from rmu.run.shards import gathered
from rmu.run.tracking import Tracker
from rmu.unlearn.losses import mean_token_norm, random_directions, reference_controls
from rmu.unlearn.optim import Updater
from rmu.unlearn.robust import Robust, active_stages, robust_step
from rmu.unlearn.span import LayerSpan
from rmu.unlearn.step import rmu_step


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
    robust: Robust | None  # the robust variants' stages (rmu/unlearn/robust.py); None when all are off
    # The step, chosen once: step(forget, retain, control, alpha, step_index) -> metrics.jsonl row.
    step: Callable[..., dict]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this run in its output's marker
    resumed_at: int = 0  # the step this process started at (> 0 when it resumed a state)


def check(cfg: DictConfig) -> tuple[Plan, Ranks]:
    """Every check that needs no weights: the config and the files it names, then what
    this launch (one process, data parallel, FSDP) can run."""
    plan = plan_train(cfg)  # raises ConfigError / DataError before any weights load
    # One process, or the processes of accelerate launch / torchrun (rmu/run/distributed.py).
    ranks = Ranks(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    if ranks.fsdp:
        check_fsdp(cfg)
    check_robust_processes(cfg.robust, ranks.size, ranks.fsdp)
    if cfg.trainer.one_pass and ranks.size > 1:
        raise ConfigError(f"trainer.one_pass=true: runs on one process only (the reference's short last batch does "
                          f"not split over {ranks.size} processes)")
    return plan, ranks


def setup(cfg: DictConfig) -> Run:
    """Check, then build: what tests and the bench call (`rmu.train` puts its run folder between the two)."""
    return build(cfg, *check(cfg))


def build(cfg: DictConfig, plan: Plan, ranks: Ranks) -> Run:
    """The model and what trains, once everything is checked."""
    torch.manual_seed(cfg.seed)
    model, tokenizer = load(cfg, plan, ranks)
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
    common = dict(ranks=ranks, mask_padding=cfg.rmu.mask_padding, model_dtype_loss=cfg.rmu.numerics == "reference")
    robust = None
    if robust_on(cfg.robust):
        robust = Robust(cfg.robust, cfg.seed, updated, plan.update_names if peft_model is None else [], model, ranks)
        step = partial(robust_step, span, updater, robust, **common)
    else:
        step = partial(rmu_step, span, updater, **common)
    return Run(cfg, plan, ranks, model, tokenizer, device, peft_model, span, updated, updater, coeffs, controls,
               tracker, robust, step)


def load(cfg: DictConfig, plan: Plan, ranks: Ranks):
    """(model, tokenizer), the tokenizer set up as `data` asks. The model whole on one
    process or on each rank's device; under FSDP with the layers a step never trains
    sharded (rmu/run/fsdp.py)."""
    if not ranks.fsdp:
        model, tokenizer = load_model(cfg.model, cfg.seed, device=ranks.device if ranks.size > 1 else None)
    else:
        model, tokenizer, n = load_sharded(ranks, cfg.model, cfg.seed,
                                           range(min(plan.update_layers), plan.layer_id + 1))
        ranks.print(f"rmu: FSDP: {n} frozen decoder layers sharded over {ranks.size} processes; this rank holds "
                    f"{local_parameter_mib(model):.0f} MiB of parameters")
    return model, configure_tokenizer(tokenizer, cfg.model, cfg.data)


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


def fit(run: Run, before: tuple, folder=None, preemption: Preemption | None = None) -> list[dict]:
    """The training loop: step i trains topic i % K on batch i // K of its forget and retain
    corpora (each rank its slice of the global batch). Returns every step's record
    (metrics.jsonl). With the run's `folder` (rmu/run/folder.py) it continues the state
    the folder holds, saves one every `trainer.save_every` steps, and on `preemption`
    (SIGTERM) saves and stops."""
    plan, ranks, t = run.plan, run.ranks, run.cfg.trainer
    controls = run.controls.to(device=run.device, dtype=run.model.dtype)
    global_batch = t.batch_size * ranks.size
    rows, start = [], 0
    if folder is not None and folder.state is not None:
        Resume.restore(folder.state, run.updated, run.updater, run.robust)
        rows, start = folder.state["rows"], folder.state["step"]
        run.resumed_at = start
        ranks.print(f"rmu: resuming at step {start} from {folder.resume.folder}")
    progress = Progress(t.progress and ranks.main, start, plan.steps)
    try:
        for step in range(start, plan.steps):
            k, stage, forget_texts, retain_texts = step_texts(run, step, global_batch)
            forget, retain = (tokenize(run.tokenizer, ranks.shard(texts), corpus.max_length, run.device)
                              for texts, corpus in ((forget_texts, plan.forget[k]), (retain_texts, plan.retain[k])))
            record = run.step(forget, retain, controls[k], plan.alpha[k], step)
            record["topic"] = plan.topics[k]
            if stage is not None:
                record["stage"] = stage
            rows.append(record)
            run.tracker.step(record)
            progress.update(record)
            if folder is not None:
                save_or_stop(run, folder, preemption, rows, before)
    except TrainingError as e:  # say what the disk holds now, whatever the cause
        raise TrainingError(f"{e}{folder.resume.kept_note() if folder is not None else ''}") from None
    finally:
        progress.close()
    return rows


def step_texts(run: Run, step: int, global_batch: int) -> tuple[int, int | None, list[str], list[str]]:
    """(topic, stage, forget texts, retain texts) of a step's global batch. Step i trains topic
    i % K on batch i // K of its corpora. With `rmu.layered` the steps form K stages; stage s
    (1-based) trains topics 1..s in turn from its first step, and the second half of its retain batch is forget
    text of topics s+1..K, which this stage must keep (stage None without layering)."""
    plan, wrap = run.plan, not run.cfg.trainer.one_pass
    n = len(plan.topics)
    if not run.cfg.rmu.layered:
        k, index = step % n, step // n
        return (k, None, batch_texts(plan.forget[k], index, global_batch, wrap),
                batch_texts(plan.retain[k], index, global_batch, wrap))
    stage = min(step * n // plan.steps, n - 1) + 1
    local = step - -(-(stage - 1) * plan.steps // n)  # the step's place in its stage
    k, index = local % stage, local // stage
    retain = batch_texts(plan.retain[k], index, global_batch)
    later = plan.forget[stage:]
    if later:  # keep the topics not yet unlearned: half the retain batch is their text
        half = global_batch // 2
        kept = [batch_texts(later[j % len(later)], index * half + j // len(later), 1)[0] for j in range(half)]
        retain = retain[:global_batch - half] + kept
    return k, stage, batch_texts(plan.forget[k], index, global_batch), retain


def save_or_stop(run: Run, folder, preemption: Preemption | None, rows: list[dict], before: tuple) -> None:
    """After a step: save the state every `save_every` steps, or when any rank got a signal
    (SIGTERM, SIGINT, SIGHUP; then stop, every rank alike)."""
    done, steps, ranks = len(rows), run.plan.steps, run.ranks
    pause_point(f"step-{done}")
    stop = ranks.any(preemption is not None and preemption.requested)  # SIGTERM on any rank stops all of them
    if preemption is not None:
        preemption.requested = stop  # every rank then takes the same path after training too
    every = run.cfg.trainer.save_every
    if done < steps and (stop or (every and done % every == 0)):
        # FSDP shards of the trained tensors (rmu.distill, rmu.tar): every rank joins gathering them whole first.
        whole = gathered(run.updated, run.updater.optimizer, run.updater.masters) if run.updater.sharded else None
        ranks.on_main(lambda: folder.resume.save(done, run.updated, run.updater, rows, run.robust, before, whole))
        if folder.resume.moved and not stop:  # training goes on: say where its state went
            ranks.print(folder.resume.moved)
            folder.resume.moved = None
    if stop and done < steps:
        signum = preemption.signum or signal.SIGTERM  # None: another rank's signal
        raise Preempted(folder.stopped_message(f"after step {done}", signals.name(signum)), signum)


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


def run_results(run: Run, before: tuple, after: tuple, seconds: dict) -> RunResults:
    """results.json's content: what was run, how, and the scores before and after."""
    cfg, plan = run.cfg, run.plan
    (base, harness_base), (unlearned, harness_after) = before, after
    results = RunResults(
        model=cfg.model.name, output_dir=str(cfg.output_dir), steps=plan.steps, processes=run.ranks.size,
        fsdp=run.ranks.fsdp, rank0_parameter_mib=round(local_parameter_mib(run.model), 3), topics=plan.topics,
        steering_coeff=run.coeffs, alpha=plan.alpha, layer_id=plan.layer_id, update_layers=plan.update_layers,
        updated_parameters=plan.update_names, seconds=seconds, resumed_at=run.resumed_at,
        checkpoint_parameters=(checkpoint_names(run.model, plan.update_names, plain(cfg.rmu.experts))
                               if run.peft_model is None else None),
        optimizer=cfg.optim.name, numerics=cfg.rmu.numerics,
        robust=active_stages(cfg.robust) if run.robust is not None else None,
        eval={name: {"role": role, "base": base[name], "unlearned": unlearned[name]}
              for name, role, _ in plan.eval_sets})
    if harness_base is not None:
        results.harness = {"setup": {k: v for k, v in harness_base["setup"].items() if k != "model_path"},
                           "base_model": cfg.model.path, "base": harness_base["tasks"],
                           "unlearned": harness_after["tasks"]}
    return results


def write_run(run: Run, rows: list[dict], before: tuple, after: tuple, seconds: dict,
              started: float, folder=None) -> RunResults | None:
    """The output folder, atomically (rmu/run/checkpoint.py): weights, tokenizer, config,
    control vectors, metrics.jsonl, results.json, eval_table.txt, report. Rank 0 writes;
    under FSDP every rank first joins the gather of the full weights. Returns the results
    on rank 0 (None on the others); `started` is when the run began (seconds.total). Once
    written, the run `folder`'s resume state is cleared."""
    cfg, ranks = run.cfg, run.ranks
    t0 = time.perf_counter()
    weights = full_state_dict(run.model) if ranks.fsdp else None

    def write() -> RunResults:
        results = run_results(run, before, after, seconds)
        with staged_output(cfg.output_dir, cfg.overwrite, run.run_id) as out:
            with open(out / "metrics.jsonl", "w") as log:
                log.writelines(json.dumps(r) + "\n" for r in rows)
            model = run.model
            if run.peft_model is not None:  # a plain model with the adapters merged in, or the adapter folder
                model = run.peft_model.merge_and_unload() if cfg.adapter.merge else run.peft_model
            save_run(out, model, run.tokenizer, cfg, run.controls, run.plan.topics, run.coeffs, weights)
            results.seconds["save"] = time.perf_counter() - t0
            results.seconds["total"] = time.perf_counter() - started
            results.write(out)
            (out / "eval_table.txt").write_text(results.table() + "\n")
            write_report(out)  # report.png (loss curves, accuracy bars) and report.md
        if folder is not None:
            folder.resume.clear()
        run.tracker.finish(results)
        return results

    return ranks.on_main(write)
