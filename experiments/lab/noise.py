"""`make lab-noise`: how far two oracles differ, the floor under every excess-recovery number.

The lab's oracle (`lab_filtered`) is one pretraining run on the filtered corpus. This script
pretrains it again from other initialisations and data orders on the same world and tokenizer
(`python -m rmu.lab model_seed=<s>`), attacks each of these twins with `attack=lab` as if it
were an unlearned model, and scores it against the lab's oracle like any recipe. A twin never
saw the forget data, so its excess recovery is chance alone: a recipe whose excess is inside
the twins' spread cannot be told from the oracle with these question sets.

    python experiments/lab/noise.py                        # model seeds 1, 2 -> experiments/lab/noise.md
    python experiments/lab/noise.py --model-seeds 1 2 3

Each twin is built under <work>/oracles/m<s>/ (both lab models, ~10 min on one core) and
attacked into <work>/oracles/m<s>-attack/ (~7 min), with the base model's and the oracle's
attack results shared with make lab-robust (<work>/controls). Finished builds and attacks are
not redone. The ablations project out the twin's shift from lab_base at the layers RMU edits
in the lab (conf/experiment/lab_rmu.yaml), as they do for the recipes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "robust"))
from common import done, fmt  # noqa: E402
from compare import forget_mean, read_attack  # noqa: E402
from rmu.errors import RmuError  # noqa: E402
from rmu.run.checkpoint import check_output_file, write_output_file  # noqa: E402

HERE = Path(__file__).resolve().parent
COMMAND = "make lab-noise"
ATTACKS = ["probe", "finetune", "ablate", "ablate_unlearned", "in_context", "heldout_relearn", "relearn_speed"]


def run(cmd: list[str]) -> None:
    print(f"noise: {' '.join(cmd)}", flush=True)
    if subprocess.run([sys.executable, *cmd], cwd=HERE.parents[1]).returncode != 0:
        sys.exit(f"noise: `{' '.join(cmd)}` failed; what finished is kept, run again to resume")


def make_twin(work: Path, seed: int, layers: list[int]) -> Path:
    """Build the twin of model seed `seed` and attack it; returns its attack folder."""
    build, attacked = work / "oracles" / f"m{seed}", work / "oracles" / f"m{seed}-attack"
    if not done(attacked):
        run(["-m", "rmu.lab", f"model_seed={seed}", f"dir={build}", "progress=false"])  # a no-op once built
        run(["-m", "rmu.attack", "attack=lab", "model=lab_base", f"model.path={build / 'lab_filtered'}",
             f"attack.ablate.layers=[{','.join(map(str, layers))}]", f"output_dir={attacked}",
             f"control_cache={work / 'controls'}"])
    return attacked


def twin_row(seed: int, attack: dict) -> dict:
    """A twin's clean forget and retain accuracy and its excess recovery per attack."""
    rows = attack["summary"]
    clean = {r["set"]: (r["role"], r["unlearned"]) for r in rows}
    mean = lambda role: sum(a for ro, a in clean.values() if ro == role) / max(1, sum(ro == role for ro, _ in clean.values()))  # noqa: E731
    excess = {a: forget_mean(rows, a, "excess_recovery") for a in ATTACKS}
    return {"seed": seed, "forget": mean("forget"), "retain": mean("retain"), "excess": excess}


def noise_md(twins: list[dict]) -> str:
    head = "| twin (model_seed) | clean forget acc | retain acc | " + " | ".join(ATTACKS) + " | worst |"
    lines = ["# How far two oracles differ (make lab-noise)", "",
             "Written by `make lab-noise` (experiments/lab/noise.py). The lab's data-filtered twin pretrained "
             "again from other initialisations and data orders (same world, tokenizer and recipe: "
             "`python -m rmu.lab model_seed=<s>`), attacked with `attack=lab` and scored against the lab's "
             "oracle (model_seed 0) like a recipe: excess recovery = mean over the forget sets of "
             "(attacked − oracle attacked) / (base − oracle). These models never saw the forget data, "
             "so every number here is chance: the floor a recipe's excess cannot be told from.", "",
             head, "|" + "---|" * (len(ATTACKS) + 4)]
    for t in twins:
        vals = [t["excess"][a] for a in ATTACKS]
        worst = max((v for v in vals if v is not None), default=None)
        lines.append(f"| m{t['seed']} | {fmt(t['forget'])} | {fmt(t['retain'])} | "
                     + " | ".join(fmt(v, "{:+.2f}") for v in vals) + f" | {fmt(worst, '{:+.2f}')} |")
    spread = []
    for a in ATTACKS + ["worst"]:
        vals = [max((v for v in t["excess"].values() if v is not None), default=None) if a == "worst"
                else t["excess"][a] for t in twins]
        vals = [v for v in vals if v is not None]
        spread.append(f"{a} {max(abs(v) for v in vals):.2f}" if vals else f"{a} n/a")
    lines += ["", "Largest |excess| over the twins, per attack: " + ", ".join(spread) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-seeds", type=int, nargs="+", default=[1, 2], help="the twins' model_seed (0 is the oracle)")
    p.add_argument("--work", type=Path, default=HERE / "runs", help="where the twins and their attacks go")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2], help="the ablations' layers (lab_rmu's edits)")
    p.add_argument("--out", type=Path, default=HERE / "noise.md")
    args = p.parse_args(argv)
    if 0 in args.model_seeds:
        sys.exit("error: --model-seeds: 0 is the oracle itself (conf/lab.yaml seed); give others, e.g. 1 2")
    started = time.perf_counter()
    try:
        check_output_file(args.out, COMMAND)  # before an hour of pretraining, not after
        work = args.work.absolute()
        twins = [twin_row(s, read_attack(make_twin(work, s, args.layers))) for s in args.model_seeds]
        write_output_file(args.out, noise_md(twins), COMMAND)
    except RmuError as e:
        sys.exit(f"error: {e}")
    print(f"noise: wrote {args.out} ({(time.perf_counter() - started) / 60:.1f} min in this call)")


if __name__ == "__main__":
    main()
