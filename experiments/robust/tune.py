"""Tune recipes to matched retain: the strongest setting whose general accuracy keeps a floor.

    python experiments/robust/tune.py                       # experiments/robust/tune.yaml
    python experiments/robust/tune.py --config my.yaml --out my_dir

Every recipe in the config lists its settings (overrides of `python -m rmu.train`) from weakest
to strongest. Each setting is trained once at the config's seed, into
`<out>/runs/tune/<recipe>/<n>` (a setting whose results.json exists is not redone). The pick is
among the settings before the first whose general (retain-role) accuracy falls below `floor` ×
the base model's, the last that leaves every forget set at or below `forget_ceiling` (it
unlearns); `<out>/tuning.md` shows every setting's clean accuracy and the pick, which is what
recipes.yaml (make robust) then runs over three seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import HERE, done, fmt, load_config, same_settings, sweep
from rmu.evaluation.results import RunResults  # noqa: E402  (common puts this checkout first on the path)


def read_config(path: Path) -> dict:
    cfg = load_config(path, ("seed", "floor", "forget_ceiling", "train", "recipes"))
    if not 0 < cfg["floor"] <= 1:
        sys.exit(f"error: {path}: floor={cfg['floor']}: a share of the base model's general accuracy, in (0, 1]")
    for recipe, settings in cfg["recipes"].items():
        if not settings or not all(isinstance(s, list) for s in settings):
            sys.exit(f"error: {path}: recipes.{recipe} must be a list of settings, each a list of overrides")
    return cfg


def train_all(cfg: dict, work: Path, launcher: str | None) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for recipe, settings in cfg["recipes"].items():
        for n, overrides in enumerate(settings):
            folder = work / recipe / str(n)
            # A recipe may gain stronger settings at the end of its list: the runs made stay valid.
            same_settings(folder.parent, {"seed": cfg["seed"], "train": cfg["train"], "settings": settings}, "tune",
                          growing="settings")
            if not done(folder):
                sweep("rmu.train", [*cfg["train"], *overrides, f"seed={cfg['seed']}", f"output_dir={folder}"],
                      launcher, work / "sweeps" / f"{stamp}-{recipe}-{n}")


def pick(cfg: dict, work: Path) -> tuple[str, dict]:
    """tuning.md and, per recipe, the overrides of the strongest setting that keeps the floor."""
    lines = [f"# Tuning to matched retain (seed {cfg['seed']})", "",
             "Written by experiments/robust/tune.py from tune.yaml. Each recipe's settings go from weakest to "
             f"strongest; the pick (**bold**) is, among the settings before the first whose general accuracy "
             f"falls below {cfg['floor']:.0%} of the base model's, the last that leaves every forget set at or "
             f"below {cfg['forget_ceiling']} (it unlearns).", ""]
    picks = {}
    for recipe, settings in cfg["recipes"].items():
        runs = [RunResults.read(work / recipe / str(n)) for n in range(len(settings))]
        forget_sets = [k for k, e in runs[0].eval.items() if e["role"] == "forget"]
        retain = [e["base"]["acc"] for e in runs[0].eval.values() if e["role"] == "retain"]
        base = sum(retain) / len(retain)
        # Settings get stronger down the list: stop at the first that falls below the floor
        # (a stronger one that happens to land above it again is noise, not a better trade).
        chosen = None
        for n, r in enumerate(runs):
            if r.mean_unlearned_acc("retain") < cfg["floor"] * base:
                break
            if max(r.eval[k]["unlearned"]["acc"] for k in forget_sets) <= cfg["forget_ceiling"]:
                chosen = n
        picks[recipe] = settings[chosen] if chosen is not None else None
        lines += [f"## {recipe}", "", "| setting | " + " | ".join(forget_sets) + " | mean forget | general (% of base) |",
                  "|---" * (3 + len(forget_sets)) + "|"]
        for n, (overrides, run) in enumerate(zip(settings, runs)):
            general = run.mean_unlearned_acc("retain")
            name = f"`{' '.join(overrides)}`"
            lines.append(f"| {f'**{name}**' if n == chosen else name} | "
                         + " | ".join(fmt(run.eval[s]["unlearned"]["acc"]) for s in forget_sets)
                         + f" | {fmt(run.mean_unlearned_acc('forget'))} | {fmt(general)} ({100 * general / base:.0f}%) |")
        lines += ["", f"Base model: general {base:.3f}; floor {cfg['floor'] * base:.3f}. "
                      + (f"Pick: `{' '.join(settings[chosen])}`." if chosen is not None else
                         "No setting unlearns (every forget set ≤ the ceiling) at matched retain."), ""]
    return "\n".join(lines), picks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=HERE / "tune.yaml")
    p.add_argument("--out", type=Path, default=HERE, help="where tuning.md and runs/tune go")
    p.add_argument("--launcher", default=None, help="a hydra/launcher option, e.g. slurm (default: one after another)")
    args = p.parse_args(argv)
    cfg = read_config(args.config)
    work = (args.out / "runs" / "tune").absolute()
    train_all(cfg, work, args.launcher)
    text, picks = pick(cfg, work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuning.md").write_text(text)
    for recipe, overrides in picks.items():
        print(f"tune: {recipe}: {' '.join(overrides) if overrides else 'no setting unlearns at matched retain'}")
    print(f"tune: wrote {args.out / 'tuning.md'}")


if __name__ == "__main__":
    main()
