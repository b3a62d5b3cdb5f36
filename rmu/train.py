"""`python -m rmu.train` — unlearn with RMU and write the edited model.

    python -m rmu.train                                   # bundled model and data, CPU, ~2 min
    python -m rmu.train rmu.layer_id=5 trainer.max_steps=40 output_dir=outputs/l5
    python -m rmu.train experiment=zephyr_rmu             # the paper's Zephyr-7B recipe (GPU, WMDP corpora)

Every key is a Hydra override; `conf/` documents them. `train(cfg)` is the whole run and
is what the tests call; `rmu_step` is the method itself.
"""

from __future__ import annotations

import json
import sys
import time

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rmu.adapters import add_lora
from rmu.checkpoint import save_run, staged_output
from rmu.config import CONF_DIR, ConfigError, Plan, check_fsdp, check_train
from rmu.data import DataError, batch_texts, tokenize
from rmu.distributed import Ranks, ranks_from_slurm
from rmu.eval import evaluate, format_table
from rmu.export import ExportError, prepare, push
from rmu.harness import run_harness
from rmu.losses import forget_loss, mean_token_cosine, mean_token_norm, random_directions, retain_loss
from rmu.models import load_model
from rmu.optim import Updater
from rmu.report import write_report
from rmu.resume import Preemption, Resume, ResumeError
from rmu.span import LayerSpan
from rmu.sweep import in_sweep, job_output_dir
from rmu.tracking import Tracker


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); nothing has been written."""


def rmu_step(span: LayerSpan, updater: Updater, forget: dict, retain: dict, control: torch.Tensor,
             alpha: float, mask_padding: bool, step: int, ranks: Ranks | None = None) -> dict:
    """One RMU update on one forget batch of topic k and one retain batch.

        L = mean((h_ℓ^upd(x_f) − c_k·u_k)²) + α_k · mean((h_ℓ^upd(x_r) − h_ℓ^frozen(x_r))²)

    h_ℓ is the output of decoder layer ℓ. Means run over real tokens when `mask_padding`,
    over every position otherwise (the reference). Only the parameters handed to
    `optimizer` require gradients.

    The cost is what the loss needs (rmu/span.py): layers below the first updated one run
    once per batch without autograd and feed both the updated and the frozen pass; nothing
    after ℓ runs; the frozen pass uses saved copies of the updated tensors only.

    With several processes (`ranks`, rmu/distributed.py) each holds a slice of the batch:
    its means are weighted by its share of all ranks' positions, so the losses and (summed
    in the updater) the gradients over ranks are those of the whole batch.
    """
    forget_mask = forget["attention_mask"] if mask_padding else None
    retain_mask = retain["attention_mask"] if mask_padding else None
    with torch.no_grad():
        forget_in = span.prefix(forget)
        retain_in = span.prefix(retain)

    # Forget: steer the updated model's activations on forget text toward the control vector.
    h_forget = span.run(forget_in)  # (B, T, D)
    loss_forget = forget_loss(h_forget, control, forget_mask)

    # Retain: keep the updated model's activations on retain text where the frozen model has them.
    h_retain = span.run(retain_in)  # (B, T, D)
    with torch.no_grad():
        h_frozen = span.run(retain_in, frozen=True)
    loss_retain = retain_loss(h_retain, h_frozen, retain_mask)

    share_forget = ranks.share(forget_mask if mask_padding else torch.ones_like(forget["attention_mask"])) if ranks else 1.0
    share_retain = ranks.share(retain_mask if mask_padding else torch.ones_like(retain["attention_mask"])) if ranks else 1.0
    loss_forget, loss_retain = share_forget * loss_forget, share_retain * loss_retain  # 1.0 on one process
    loss = loss_forget + alpha * loss_retain
    if not torch.isfinite(loss):
        raise TrainingError(f"non-finite loss at step {step}: forget={loss_forget.item():.4g} "
                            f"retain={loss_retain.item():.4g} alpha={alpha}; lower optim.lr or "
                            f"rmu.steering_coeff, or use a wider dtype. Nothing was written.")
    applied = updater.step(loss)  # backward, then AdamW (float32 master copies for bf16/fp16: rmu/optim.py)

    total = ranks.total if ranks else (lambda x: x)  # sums over ranks: the whole batch's losses
    with torch.no_grad():
        return {
            "step": step,
            "loss": total(loss).item(),
            "skipped": not applied,
            "forget_loss": total(loss_forget).item(),
            "retain_loss": total(loss_retain).item(),
            "forget_norm": mean_token_norm(h_forget, forget_mask).item(),
            "forget_cos_control": mean_token_cosine(h_forget, control.expand_as(h_forget), forget_mask).item(),
            "retain_norm": mean_token_norm(h_retain, retain_mask).item(),
            "frozen_retain_norm": mean_token_norm(h_frozen, retain_mask).item(),
            "retain_cos_frozen": mean_token_cosine(h_retain, h_frozen, retain_mask).item(),
        }


@torch.no_grad()
def auto_coefficients(span: LayerSpan, tokenizer, plan: Plan, cfg, device, global_batch: int) -> list[float]:
    """Adaptive RMU: c_k = β × mean token norm of the frozen model at layer ℓ on topic k's
    first (global) forget batch; every rank computes it on the same texts, so all agree."""
    coeffs = []
    for corpus in plan.forget:
        batch = tokenize(tokenizer, batch_texts(corpus, 0, global_batch), corpus.max_length, device)
        h = span.run(span.prefix(batch), frozen=True)
        mask = batch["attention_mask"] if cfg.rmu.mask_padding else None
        coeffs.append(cfg.rmu.auto_beta * mean_token_norm(h, mask).item())
    return coeffs


class Preempted(RuntimeError):
    """SIGTERM arrived; the training state was saved and the same command resumes it."""


def train(cfg: DictConfig) -> dict:
    """The whole run: check, load, evaluate, unlearn, evaluate, save. Returns results.json's
    content (on the main process; other ranks of a multi-process run return {})."""
    t0 = time.perf_counter()
    plan = check_train(cfg)  # raises ConfigError / DataError before any weights load
    # One process, or the processes of accelerate launch / torchrun (rmu/distributed.py).
    ranks = Ranks(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    if ranks.fsdp:
        check_fsdp(cfg)
    cfg.output_dir = ranks.same(str(cfg.output_dir))  # one folder, even if ranks started in different seconds
    torch.manual_seed(cfg.seed)
    if ranks.fsdp:  # shard the layers a step does not train; the span stays whole on every rank
        model, tokenizer, n = ranks.load_sharded(cfg.model, cfg.seed, range(min(plan.update_layers), plan.layer_id + 1))
        if ranks.main:
            print(f"rmu: FSDP: {n} frozen decoder layers sharded over {ranks.size} processes; this rank holds "
                  f"{ranks.local_parameter_mib(model):.0f} MiB of parameters")
    else:
        model, tokenizer = load_model(cfg.model, cfg.seed, device=ranks.device if ranks.size > 1 else None)
    tokenizer.padding_side = cfg.data.padding_side
    device = ranks.device if ranks.fsdp else next(model.parameters()).device

    model.requires_grad_(False)
    peft_model = None
    if cfg.adapter is None:
        # Only the selected tensors require gradients: backward then computes nothing else.
        params = dict(model.named_parameters())
        updated = [params[name].requires_grad_(True) for name in plan.update_names]
        # The frozen model: the original values of just those tensors, kept by the span.
        span = LayerSpan(model, plan.layer_id, plan.update_names)
    else:
        # LoRA: only the adapter tensors train; the frozen model is this one with its adapters off.
        peft_model, model, names = add_lora(model, cfg.adapter, plan.update_layers)
        params = dict(model.named_parameters())
        updated = [params[name] for name in names]
        span = LayerSpan(model, plan.layer_id, names, disable_adapter=peft_model.disable_adapter)
    updater = Updater(updated, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                      weight_decay=cfg.optim.weight_decay, master_weights=cfg.optim.master_weights, ranks=ranks)
    t_load = time.perf_counter()

    base, harness = {}, {}
    if ranks.main or ranks.fsdp:  # sharded layers gather over all ranks: all run the eval forwards
        base = evaluate(model, tokenizer, plan.eval_sets, cfg.eval.batch_size)
    if ranks.main:
        if cfg.harness.tasks:  # lm-evaluation-harness tasks, before and after (rmu/harness.py)
            harness["base"] = run_harness(model, tokenizer, cfg.harness, cfg.model.path, cfg.model.revision)
    t_eval0 = time.perf_counter()

    global_batch = cfg.trainer.batch_size * ranks.size  # every rank trains on its slice of it
    coeffs = plan.steering_coeff or auto_coefficients(span, tokenizer, plan, cfg, device, global_batch)
    directions = random_directions(len(plan.topics), plan.hidden_size, cfg.seed)  # (K, D)
    controls = directions * torch.tensor(coeffs).unsqueeze(1)  # (K, D), ‖control_k‖ = c_k
    controls_dev = controls.to(device=device, dtype=model.dtype)
    what = (f"updating {len(plan.update_names)} tensors: {plan.update_names}" if peft_model is None else
            f"LoRA r={cfg.adapter.r} on {list(cfg.adapter.target_modules)} of layers {plan.update_layers}")
    if ranks.main:
        print(f"rmu: topics {plan.topics}, steering_coeff {[round(c, 2) for c in coeffs]}, alpha {plan.alpha}, "
              f"hooked layer {plan.layer_id}, {what}" + (f", {ranks.size} processes" if ranks.size > 1 else ""))

    # Resume where a preempted run with this config and output_dir stopped (rmu/resume.py).
    resume, rows, start = Resume(cfg), [], 0
    state = resume.load()
    if state is not None:
        Resume.restore(state, updated, updater)
        rows, start = state["rows"], state["step"]
        if ranks.main:
            print(f"rmu: resuming at step {start} from {resume.folder}")
    tracker = Tracker(cfg, ranks.main)  # logger=wandb; metrics.jsonl is written either way
    preemption = Preemption()
    bar = tqdm(range(start, cfg.trainer.max_steps), desc="rmu", disable=not (cfg.trainer.progress and ranks.main),
               initial=start, total=cfg.trainer.max_steps)
    try:
        for step in bar:
            k = step % len(plan.topics)
            index = step // len(plan.topics)
            forget_corpus, retain_corpus = plan.forget[k], plan.retain[k]
            forget = tokenize(tokenizer, ranks.shard(batch_texts(forget_corpus, index, global_batch)),
                              forget_corpus.max_length, device)
            retain = tokenize(tokenizer, ranks.shard(batch_texts(retain_corpus, index, global_batch)),
                              retain_corpus.max_length, device)
            record = rmu_step(span, updater, forget, retain, controls_dev[k],
                              plan.alpha[k], cfg.rmu.mask_padding, step, ranks)
            record["topic"] = plan.topics[k]
            rows.append(record)
            tracker.step(record)
            bar.set_postfix(topic=plan.topics[k], forget=f"{record['forget_loss']:.3g}",
                            retain=f"{record['retain_loss']:.3g}")
            stop = ranks.total(torch.tensor(float(preemption.requested))).item() > 0  # all ranks agree
            done = step + 1
            if done < cfg.trainer.max_steps and (stop or (cfg.trainer.save_every and done % cfg.trainer.save_every == 0)):
                if ranks.main:
                    resume.save(done, updated, updater, rows)
                ranks.barrier()
            if stop and done < cfg.trainer.max_steps:
                raise Preempted(f"stopped by SIGTERM after step {done}; the state is in {resume.folder}: "
                                f"run the same command again to resume")
    except BaseException:
        tracker.abort()
        raise
    finally:
        preemption.restore()
    t_train = time.perf_counter()
    unlearned = {}
    if ranks.main or ranks.fsdp:  # as before training: under FSDP every rank joins the eval forwards
        unlearned = evaluate(model, tokenizer, plan.eval_sets, cfg.eval.batch_size)
    # What save_run writes: the model's own state dict, or under FSDP the one gathered from all ranks.
    weights = ranks.full_state_dict(model) if ranks.fsdp else None
    if not ranks.main:  # rank 0 writes
        ranks.barrier()
        return {}

    with staged_output(cfg.output_dir, cfg.overwrite) as out:
        with open(out / "metrics.jsonl", "w") as log:
            log.writelines(json.dumps(r) + "\n" for r in rows)
        if cfg.harness.tasks:
            harness["unlearned"] = run_harness(model, tokenizer, cfg.harness, str(cfg.output_dir), None)
        t_eval1 = time.perf_counter()
        results = {
            "model": cfg.model.name,
            "output_dir": str(cfg.output_dir),
            "steps": cfg.trainer.max_steps,
            "processes": ranks.size,
            "fsdp": ranks.fsdp,
            "rank0_parameter_mib": round(ranks.local_parameter_mib(model), 3),
            "topics": plan.topics,
            "steering_coeff": coeffs,
            "alpha": plan.alpha,
            "layer_id": plan.layer_id,
            "update_layers": plan.update_layers,
            "updated_parameters": plan.update_names,
            "eval": {name: {"role": role, "base": base[name], "unlearned": unlearned[name]}
                     for name, role, _ in plan.eval_sets},
            "seconds": {"load": t_load - t0, "eval_before": t_eval0 - t_load, "train": t_train - t_eval0,
                        "eval_after": t_eval1 - t_train},
        }
        if peft_model is not None:  # a plain model with the adapters merged in, or the adapter folder
            model = peft_model.merge_and_unload() if cfg.adapter.merge else peft_model
        save_run(out, model, tokenizer, cfg, controls, plan.topics, coeffs, weights)
        if harness:
            results["harness"] = {"setup": {k: v for k, v in harness["base"]["setup"].items() if k != "model_path"},
                                  "base_model": cfg.model.path,
                                  **{when: h["tasks"] for when, h in harness.items()}}
        results["seconds"]["save"] = time.perf_counter() - t_eval1
        results["seconds"]["total"] = time.perf_counter() - t0
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        table = format_table(results["eval"]) if plan.eval_sets else ""
        for when, h in harness.items():
            table += f"\n\nlm-eval, {when} model:\n{h['table']}"
        table = table.strip()
        (out / "eval_table.txt").write_text(table + "\n")
        write_report(out)  # report.png (loss curves, accuracy bars) and report.md
    resume.clear()
    tracker.finish(results, cfg.output_dir)
    ranks.barrier()

    if table:
        print(table)
    s = results["seconds"]
    print(f"rmu: wrote {cfg.output_dir} in {s['total']:.1f}s (load {s['load']:.1f}s, eval {s['eval_before']:.1f}s + "
          f"{s['eval_after']:.1f}s, train {s['train']:.1f}s for {cfg.trainer.max_steps} steps, save {s['save']:.1f}s)")
    if cfg.export.repo_id:  # a Hub folder next to the run folder, and the upload if asked
        hub = prepare(cfg.output_dir, cfg.export.repo_id, overwrite=cfg.overwrite)
        print(f"rmu: prepared the Hub folder {hub}")
        if cfg.export.push:
            print(f"rmu: pushed to {push(hub, cfg.export.repo_id, cfg.export.private)}")
    return results


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    job_output_dir(cfg)  # in a -m sweep: <hydra.sweep.dir>/<job number> (rmu/sweep.py)
    ranks_from_slurm()  # a SLURM job of several tasks: one rank per task
    try:
        return train(cfg)
    except (ConfigError, DataError, TrainingError, ExportError, ResumeError, FileNotFoundError) as e:
        if in_sweep():  # Hydra records the failed job (the sweep summary shows why) and runs the others
            raise
        sys.exit(f"error: {e}")
    except Preempted as e:
        print(f"rmu: {e}")
        sys.exit(143)  # 128 + SIGTERM, what a scheduler expects from a terminated job


if __name__ == "__main__":
    main()
