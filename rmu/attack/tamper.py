"""Tamper groups: fine-tuning adversaries in named groups, each group scored at several step counts.

A safeguard trained against fine-tuning (TAR, rmu/harden/tar.py) is trained against a
family of adversaries. Checking it only with those adversaries measures what it was fitted
to; the durability evaluations of Qi et al. 2024 broke such safeguards with settings outside
the family (warm-up + cosine, larger batches, benign data, LoRA, other learning rates). So
the adversaries come in groups (e.g. `in_dist`: TAR's own; `out_dist`: the others), and
each group reports, per step count, its strongest adversary: the one whose fine-tuned model
has the highest mean forget accuracy. The same adversary on the base model (and the oracle)
is the control, as for every attack (rmu/attack/control.py).

A constant-rate adversary is one run scored after each step count; a scheduled one
(`warmup_cosine`) is one run per step count, its schedule spanning that run, as an attacker
who plans a 10-step attack would schedule it.
"""

from __future__ import annotations

from rmu.attack.relearn import finetune_checkpoints
from rmu.config.checks import tamper_adversaries


def interleave(corpora: list[list[str]], n: int) -> list[str]:
    """The first `n` texts taking one from each corpus in turn: every forget topic is in the
    adversary's data, not only the first corpus listed."""
    out, i = [], 0
    while len(out) < n and any(i < len(c) for c in corpora):
        out += [c[i] for c in corpora if i < len(c)]
        i += 1
    return out[:n]


def adversary_curve(model, tokenizer, texts: list[str], run: dict, steps: list[int], max_length: int, seed: int,
                    evaluate) -> dict[str, dict]:
    """{str(k): evaluate(model after k steps of the adversary `run`)} for each k in `steps`
    (a copy is fine-tuned; `model` is left untouched)."""
    plans = [sorted(set(steps))] if run["schedule"] == "constant" else [[k] for k in sorted(set(steps))]
    out = {}
    for checkpoints in plans:
        for k, tuned in finetune_checkpoints(model, tokenizer, texts, run["mode"], run["lr"], checkpoints,
                                             run["batch_size"], max_length, run["lora_r"], seed, run["schedule"],
                                             run["weight_decay"]):
            out[str(k)] = evaluate(tuned)
    return out


def label(run: dict) -> str:
    rank = f" r {run['lora_r']}" if run["mode"] == "lora" else ""
    schedule = ", warm-up + cosine" if run["schedule"] == "warmup_cosine" else ""
    decay = f", wd {run['weight_decay']:g}" if run["weight_decay"] else ""
    return f"{run['mode']}{rank}, {run['data']}, lr {run['lr']:g}, batch {run['batch_size']}{schedule}{decay}"


def run_tamper(cfg, t):
    """Every adversary of every group in `run_groups` on the unlearned model; per group and
    step count, the strongest adversary's rows (attack `<group>@<steps>`) against its control."""
    corpora = {"forget": interleave([c.texts for c in t.plan.forget], cfg.examples),
               "retain": t.plan.retain.texts[:cfg.examples]}
    steps = sorted(set(cfg.steps))
    out, rows = {}, []
    for group in cfg.run_groups:
        runs = tamper_adversaries(cfg, group)
        curves = []
        for run in runs:
            curve = adversary_curve(t.model, t.tok, corpora[run["data"]], run, steps, cfg.max_length, t.cfg.seed,
                                    t.evaluate)
            curves.append(curve)
            print(f"tamper {group}, {label(run)}: " + "; ".join(
                f"{k} steps " + ", ".join(f"{n} {s['acc']:.2f}" for n, s in curve[str(k)].items()) for k in steps))
        out[group] = {"adversaries": [{**run, "curve": curve} for run, curve in zip(runs, curves)], "strongest": {}}
        for k in steps:
            i = max(range(len(runs)), key=lambda j: t.forget_mean(curves[j][str(k)]))
            run = runs[i]
            key = {"run": run, "steps": steps, "examples": cfg.examples, "max_length": cfg.max_length}
            base, oracle = t.control("tamper", key, t.plan.sets, lambda m: adversary_curve(
                m, t.tok, corpora[run["data"]], run, steps, cfg.max_length, t.cfg.seed, t.evaluate))
            out[group]["strongest"][str(k)] = {"adversary": i, "label": label(run)}
            rows += t.rows(f"{group}@{k}", curves[i][str(k)], base[str(k)],
                           f"strongest of {len(runs)} after {k} steps: {label(run)}",
                           oracle_attacked=oracle and oracle[str(k)])
    return out, rows
