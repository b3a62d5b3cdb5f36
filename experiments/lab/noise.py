"""`make lab-noise`: how far two oracles differ, the floor under every excess-recovery number.

The lab's oracle (`lab_filtered`) is one pretraining run on the filtered corpus. This script
pretrains it again from other initialisations and data orders on the same world and tokenizer
(`python -m rmu.lab model_seed=<s>`), attacks each of these twins with `attack=lab` as if it
were an unlearned model, and scores it against the lab's oracle like any recipe. A twin never
saw the forget data, so its excess recovery is chance alone: a recipe whose excess is inside
the twins' spread cannot be told from the oracle with these question sets.

    python experiments/lab/noise.py                        # model seeds 1-4 -> experiments/lab/noise.md
    python experiments/lab/noise.py --model-seeds 1 2 3 4 5 6

Each twin is built under <work>/oracles/m<s>/ (both lab models, ~6 min with a core to itself)
and attacked into <work>/oracles/m<s>-attack/ (~2.5 min), with the base model's and the oracle's
attack results shared with make lab-robust (<work>/controls). Finished builds and attacks are
not redone; each build pretrains a second lab_base too, unused here (half of its time). The
ablations project out the twin's shift from lab_base at the layers RMU edits in the lab
(conf/experiment/lab_rmu.yaml), as they do for the recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "robust"))
from common import done, fmt, same_settings  # noqa: E402
from compare import forget_mean, read_attack, spread  # noqa: E402
from rmu.errors import RmuError  # noqa: E402
from rmu.lab.domains import DOMAINS  # noqa: E402
from rmu.run.checkpoint import check_output_file, write_output_file  # noqa: E402

HERE = Path(__file__).resolve().parent
COMMAND = "make lab-noise"


def run(cmd: list[str]) -> None:
    print(f"noise: {' '.join(cmd)}", flush=True)
    if subprocess.run([sys.executable, *cmd], cwd=HERE.parents[1]).returncode != 0:
        sys.exit(f"noise: `{' '.join(cmd)}` failed; what finished is kept, run again to resume")


def default_lab() -> Path:
    """The lab build conf/model/lab_filtered.yaml points at (conf/lab.yaml's default `dir`)."""
    cache = os.environ.get("RMU_CACHE") or str(Path.home() / ".cache" / "rmu")
    return Path(cache).expanduser() / "lab" / "default"


def recipe_of(build: Path) -> dict:
    """A lab build's recipe (its build.json), without model_seed."""
    try:
        spec = json.loads((build / "build.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {build / 'build.json'}: no lab build there ({type(e).__name__}); run make lab first")
    spec.pop("model_seed", None)
    return spec


def make_twin(work: Path, seed: int, attack: list[str]) -> tuple[Path, Path]:
    """Build the twin of model seed `seed` and attack it: (its build, its attack folder)."""
    build, attacked = work / "oracles" / f"m{seed}", work / "oracles" / f"m{seed}-attack"
    if not done(attacked):
        run(["-m", "rmu.lab", f"model_seed={seed}", f"dir={build}", "progress=false"])  # a no-op once built
        run(["-m", "rmu.attack", *attack, f"model.path={build / 'lab_filtered'}", f"output_dir={attacked}",
             f"control_cache={work / 'controls'}"])
    if recipe_of(build) != recipe_of(default_lab()):  # the same world, tokenizer and pretraining: only model_seed
        sys.exit(f"error: {build} was built from another lab config than {default_lab()}; move it away and run again")
    return build, attacked


def mean_acc(scores: dict, role: str) -> float | None:
    """Mean accuracy over the lab's domain sets of one role (not the forget halves A and B)."""
    accs = [scores[name]["acc"] for name, d in DOMAINS.items() if d.role == role and name in scores]
    return sum(accs) / len(accs) if accs else None


def twin_row(seed: int, scores: dict, attack: dict) -> dict:
    """A twin's clean forget and retain accuracy (its build's own scores) and its excess recovery
    per attack (the attacker's best row per set, mean over the forget sets, as compare.py)."""
    rows = attack["summary"]
    names = list(dict.fromkeys(r["attack"] for r in rows))
    excess = {a: forget_mean(rows, a, "excess_recovery") for a in names}
    worst = max((v for v in excess.values() if v is not None), default=None)
    return {"seed": seed, "forget": mean_acc(scores, "forget"), "retain": mean_acc(scores, "retain"),
            "excess": excess, "worst": worst}


def noise_md(twins: list[dict], oracle: dict) -> str:
    attacks = list(dict.fromkeys(a for t in twins for a in t["excess"]))
    lines = ["# How far two oracles differ (make lab-noise)", "",
             "Written by `make lab-noise` (experiments/lab/noise.py). The lab's data-filtered twin pretrained "
             "again from other initialisations and data orders (same world, tokenizer and recipe: "
             "`python -m rmu.lab model_seed=<s>`), attacked with `attack=lab` and scored against the lab's "
             "oracle (the default build) like a recipe: excess recovery = mean over the forget sets of "
             "(attacked − oracle attacked) / (base − oracle). These models never saw the forget data, "
             "so every number here is chance: the floor a recipe's excess cannot be told from.", "",
             "| model | clean forget acc | retain acc | " + " | ".join(attacks) + " | worst |",
             "|" + "---|" * (len(attacks) + 4)]
    for t in twins:
        lines.append(f"| twin m{t['seed']} | {fmt(t['forget'])} | {fmt(t['retain'])} | "
                     + " | ".join(fmt(t["excess"].get(a), "{:+.2f}") for a in attacks)
                     + f" | {fmt(t['worst'], '{:+.2f}')} |")
    lines.append(f"| twins: median [min, max] | | | "
                 + " | ".join(spread([t["excess"].get(a) for t in twins]) for a in attacks)
                 + f" | {spread([t['worst'] for t in twins])} |")
    lines.append(f"| oracle (model_seed 0) | {fmt(oracle['forget'])} | {fmt(oracle['retain'])} | "
                 + " | ".join("+0.00 (by definition)" for _ in attacks) + " | +0.00 |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="the twins' model_seed (0 is the oracle)")
    p.add_argument("--work", type=Path, default=HERE / "runs", help="where the twins and their attacks go")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2], help="the ablations' layers (lab_rmu's edits)")
    p.add_argument("--out", type=Path, default=HERE / "noise.md")
    args = p.parse_args(argv)
    seeds = list(dict.fromkeys(args.model_seeds))
    if 0 in seeds:
        sys.exit("error: --model-seeds: 0 is the oracle itself (conf/lab.yaml seed); give others, e.g. 1 2")
    attack = ["attack=lab", "model=lab_filtered", f"attack.ablate.layers=[{','.join(map(str, args.layers))}]"]
    started = time.perf_counter()
    try:
        check_output_file(args.out, COMMAND)  # before an hour of pretraining, not after
        work = args.work.absolute()
        same_settings(work / "oracles", {"attack": attack}, "noise")  # a finished attack of other settings is not reused
        twins = []
        for s in seeds:
            build, attacked = make_twin(work, s, attack)
            scores = json.loads((build / "lab.json").read_text())["scores"]
            twins.append(twin_row(s, scores["lab_filtered"], read_attack(attacked)))
        oracle = json.loads((default_lab() / "lab.json").read_text())["scores"]["lab_filtered"]
        text = noise_md(twins, {"forget": mean_acc(oracle, "forget"), "retain": mean_acc(oracle, "retain")})
        write_output_file(args.out, text, COMMAND)
    except RmuError as e:
        sys.exit(f"error: {e}")
    print(f"noise: wrote {args.out} ({(time.perf_counter() - started) / 60:.1f} min in this call)")


if __name__ == "__main__":
    main()
