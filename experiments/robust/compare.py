"""`make robust`: unlearning recipes side by side under the attacks, over seeds.

    python experiments/robust/compare.py                                  # experiments/robust/recipes.yaml
    python experiments/robust/compare.py --config my_recipes.yaml --out my_dir
    python experiments/robust/compare.py --launcher slurm                 # each run a SLURM job (rmu/run/sweep.py)

For every recipe, the seeds train as one Hydra sweep of `python -m rmu.train` (recipe
overrides, `seed=<s>`, `output_dir=<work>/<recipe>/seed<s>`), then the trained models are
attacked as one sweep of `python -m rmu.attack` (`output_dir=<model>-attack`), with the
base-model controls shared by all of them (`control_cache=<work>/controls`). A run whose
results.json exists is not redone: a killed comparison resumes where it stopped (the
trainer and the attack command write their folders atomically, so a killed run leaves
nothing that looks finished). Hydra's basic launcher runs the jobs one after another
here; `--launcher slurm` (or any hydra/launcher option) sends each to the cluster.
A config with `attack_name: <name>` attacks into `<model>-<name>` instead: a second list of
attacks on the same trained models (the lab's tamper groups, experiments/lab/tamper.yaml).

Then it writes `<out>/results.md` (recipe × attack: gap_recovered median and spread over
seeds, the resistance to the same attack on the base model, clean forget and general
accuracy, training time per step relative to the first recipe) and `<out>/robust.png`
(clean forget accuracy against worst gap_recovered, one point per recipe, bars over seeds).
When the attacks ran with an oracle (the lab: `make lab-robust`, experiments/lab/), results.md
adds excess recovery over the oracle per attack, the oracle as a row of its own, and
`<out>/relearning.png` the relearning curves of the base model, the oracle and each recipe.
Both are checked before any run starts and replaced only where `make robust` wrote them and
nobody changed them since (the folder's .rmu-output.json records them; rmu/run/checkpoint.py,
write_output_file): a hand-edited results.md is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

from common import HERE, done, fmt, load_config, same_settings, sweep
from rmu.errors import RmuError  # noqa: E402  (common puts this checkout first on the path)
from rmu.evaluation.results import NUMBER, ANY, RunResults, list_of, map_of, optional, schema_problem  # noqa: E402
from rmu.run.checkpoint import check_output_file, write_output_file  # noqa: E402

COMMAND = "make robust"  # recorded in the output folder's marker; --command names another
# What collect() reads of an attack's results.json (rmu/attack/cli.py writes it).
ATTACK_RESULTS = {"attacks": map_of(ANY), "seconds": {"total": NUMBER},
                  "summary": list_of({"attack": str, "set": str, "role": str, "gap_recovered": optional(NUMBER),
                                      "resistance": optional(NUMBER)})}


def read_attack(folder: Path) -> dict:
    path = folder / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"error: {path}: not the results.json of an rmu.attack run ({type(e).__name__}: {e})")
    problem = schema_problem(data, ATTACK_RESULTS)
    if problem:
        sys.exit(f"error: {path}: not the results.json of an rmu.attack run: {problem} (damaged or edited); "
                 f"move the folder away and run again to redo that attack")
    return data


def read_config(path: Path) -> dict:
    """The recipes file. A recipe is a list of rmu.train overrides ({train: [overrides],
    seeds: [...]} to run it on some of the file's seeds), or a hardened recipe {teacher: <an
    earlier recipe>, distill: [rmu.distill overrides]} (or tar: [rmu.tar overrides]) whose
    seed s hardens that recipe's seed s (the file's `distill` or `tar` list is added to every one)."""
    cfg = load_config(path, ("seeds", "recipes", "train", "attack"),
                      optional=("work_dir", "distill", "tar", "pretrain_tokens", "attack_name"))
    if not re.fullmatch(r"[a-z][a-z_]*", str(cfg.setdefault("attack_name", "attack"))):
        sys.exit(f"error: {path}: attack_name {cfg['attack_name']!r}: lower-case letters and _ only (it names the "
                 f"<seed>-<attack_name> folders)")
    earlier, cfg["own_seeds"] = [], {}
    for name, spec in list(cfg["recipes"].items()):
        if isinstance(spec, dict) and "train" in spec:  # {train: [overrides], seeds: [...]}: fewer seeds
            if sorted(spec) != ["seeds", "train"] or not isinstance(spec["train"], list):
                sys.exit(f"error: {path}: recipe {name}: a trained recipe on some seeds is {{train: [overrides], "
                         f"seeds: [...]}}; got the keys {sorted(spec)}")
            some_seeds(path, cfg, name, spec["seeds"])
            cfg["own_seeds"][name], spec = spec["seeds"], spec["train"]
            cfg["recipes"][name] = spec
        if isinstance(spec, dict):
            kind = hardening(spec)
            if kind is None or not isinstance(spec[kind], list):
                sys.exit(f"error: {path}: recipe {name}: a hardened recipe is {{teacher: <recipe>, distill: [overrides]}}"
                         f" or {{teacher: <recipe>, tar: [overrides]}}")
            if spec["teacher"] not in earlier or isinstance(cfg["recipes"][spec["teacher"]], dict):
                sys.exit(f"error: {path}: recipe {name}: teacher {spec['teacher']!r} must be a trained recipe listed "
                         f"before it ({', '.join(r for r in earlier if isinstance(cfg['recipes'][r], list)) or 'none'})")
            some_seeds(path, cfg, name, spec.get("seeds", cfg["seeds"]))
            if kind not in cfg:
                sys.exit(f"error: {path}: recipe {name} runs rmu.{kind}: the file needs a `{kind}` list of the "
                         f"overrides every rmu.{kind} run gets (model, data, eval, {kind} group)")
        elif not isinstance(spec, list):
            sys.exit(f"error: {path}: recipe {name}: a list of rmu.train overrides, {{train: [overrides], seeds: [...]}}, "
                     f"or {{teacher:, distill:}}")
        earlier.append(name)
    return cfg


def some_seeds(path: Path, cfg: dict, name: str, seeds) -> None:
    """A recipe's own `seeds`: a non-empty list of the file's seeds."""
    if not isinstance(seeds, list) or not seeds or not set(seeds) <= set(cfg["seeds"]):
        sys.exit(f"error: {path}: recipe {name}: seeds {seeds!r} must be some of the file's seeds {cfg['seeds']}")


def hardening(spec: dict) -> str | None:
    """`distill` or `tar` for a hardened recipe's {teacher:, <kind>:[, seeds:]} mapping; None if it is not one."""
    kinds = [k for k in ("distill", "tar") if k in spec]
    return kinds[0] if len(kinds) == 1 and sorted(set(spec) - {"seeds"}) == sorted(["teacher", kinds[0]]) else None


def seeds_of(cfg: dict, recipe: str) -> list:
    """The seeds a recipe is attacked and reported on: the file's, or a recipe's own `seeds`
    (some of them: an expensive point of a curve, or a reference measured on fewer seeds, and
    said so in results.md)."""
    spec = cfg["recipes"][recipe]
    if isinstance(spec, dict):
        return spec.get("seeds", cfg["seeds"])
    return cfg.get("own_seeds", {}).get(recipe, cfg["seeds"])


def trained_seeds(cfg: dict, recipe: str) -> list:
    """The seeds a recipe's models are made for: its own, and those its hardened recipes start from."""
    needed = set(seeds_of(cfg, recipe))
    for spec in cfg["recipes"].values():
        if isinstance(spec, dict) and spec["teacher"] == recipe:
            needed |= set(spec.get("seeds", cfg["seeds"]))
    return sorted(needed)


def run_all(cfg: dict, work: Path, launcher: str | None) -> None:
    """Train and attack every recipe × seed that has no results yet."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = cfg["attack_name"]  # the attack folders are <seed>-<suffix>: several attack lists share the models
    attack_key = "attack" if suffix == "attack" else f"attack_{suffix}"
    for recipe, spec in cfg["recipes"].items():
        folder = work / recipe
        if isinstance(spec, dict):  # harden the teacher recipe's seed s into this recipe's seed s
            kind, teacher = hardening(spec), work / spec["teacher"]
            overrides = [*cfg[kind], *spec[kind]]
            same_settings(folder, {"teacher": [*cfg["train"], *cfg["recipes"][spec["teacher"]]], kind: overrides,
                                   attack_key: cfg["attack"]}, "robust", others="attack")
            module, source = f"rmu.{kind}", [f"model.path={teacher}/seed${{seed}}"]
        else:
            overrides = [*cfg["train"], *spec]
            same_settings(folder, {"train": overrides, attack_key: cfg["attack"]}, "robust", others="attack")
            module, source = "rmu.train", []
        todo = [s for s in trained_seeds(cfg, recipe) if not done(folder / f"seed{s}")]
        if todo:
            sweep(module, [*overrides, *source, f"seed={','.join(map(str, todo))}", f"output_dir={folder}/seed${{seed}}"],
                  launcher, work / "sweeps" / f"{stamp}-{recipe}-{module.split('.')[1]}")
        models = [folder / f"seed{s}" for s in seeds_of(cfg, recipe)]
        todo = [m for m in models if not done(m.with_name(f"{m.name}-{suffix}"))]
        if todo:
            sweep("rmu.attack", [*cfg["attack"], f"model.path={','.join(map(str, todo))}",
                                 f"output_dir=${{model.path}}-{suffix}", f"control_cache={work / 'controls'}"],
                  launcher, work / "sweeps" / f"{stamp}-{recipe}-{suffix}")


def forget_mean(rows: list[dict], attack: str, key: str) -> float | None:
    """Mean over the forget sets of one attack's `key` (gap_recovered or resistance); per set
    the attacker's best row (the probe has one row per pooling). None where no set has one."""
    best = {}
    for r in rows:
        if r["attack"] == attack and r["role"] == "forget" and r.get(key) is not None:
            best[r["set"]] = max(best.get(r["set"], r[key]), r[key])
    return sum(best.values()) / len(best) if best else None


def collect(cfg: dict, work: Path) -> dict:
    """Per recipe: per seed, clean accuracy, time per step, and per attack gap and resistance."""
    out = {}
    for recipe, spec in cfg["recipes"].items():
        seeds = []
        for s in seeds_of(cfg, recipe):
            run = RunResults.read(work / recipe / f"seed{s}")
            # A hardened recipe's training is its teacher's RMU run and the hardening.
            teacher = RunResults.read(work / spec["teacher"] / f"seed{s}") if isinstance(spec, dict) else None
            train_s = run.seconds["train"] + (teacher.seconds["train"] if teacher else 0.0)
            if run.resumed_at or (teacher and teacher.resumed_at):  # seconds for the resuming process's steps only
                train_s = None
            attack = read_attack(work / recipe / f"seed{s}-{cfg['attack_name']}")
            names = list(dict.fromkeys(r["attack"] for r in attack["summary"]))  # tamper: a column per group@steps
            retain = [e["base"]["acc"] for e in run.eval.values() if e["role"] == "retain"]
            seeds.append({"seed": s, "forget": run.mean_unlearned_acc("forget"), "general": run.mean_unlearned_acc("retain"),
                          "base_general": sum(retain) / len(retain) if retain else None,
                          "train_s": train_s,
                          "distill": run.distill and {"alpha": run.distill["alpha"], "tokens": run.distill["tokens"]},
                          "gap": {a: forget_mean(attack["summary"], a, "gap_recovered") for a in names},
                          "resistance": {a: forget_mean(attack["summary"], a, "resistance") for a in names},
                          "excess": {a: forget_mean(attack["summary"], a, "excess_recovery") for a in names},
                          "oracle_forget": oracle_forget(attack),
                          "curves": curves(attack),
                          "seconds": run.seconds["total"] + attack["seconds"]["total"]})
        out[recipe] = seeds
    return out


def oracle_forget(attack: dict) -> float | None:
    """The oracle's clean accuracy on the forget sets (None without an oracle)."""
    rows = {r["set"]: r["oracle"] for r in attack["summary"] if r["role"] == "forget" and r.get("oracle") is not None}
    return sum(rows.values()) / len(rows) if rows else None


def curves(attack: dict) -> dict:
    """relearn_speed's curves, mean over its splits: {model: {steps: accuracy}} for the
    unlearned model, the base model and the oracle."""
    speed = attack["attacks"].get("relearn_speed") or {}
    out = {}
    for who in ("unlearned", "base", "oracle"):
        points = {}
        for split, result in speed.items():
            if result.get(who) is None:
                continue
            for k, scores in result[who]["curve"].items():
                points.setdefault(int(k), []).append(scores[split]["acc"])
        if points:
            out[who] = {k: sum(v) / len(v) for k, v in sorted(points.items())}
    return out


def spread(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{statistics.median(vals):+.2f} [{min(vals):+.2f}, {max(vals):+.2f}]"


def worst(seed: dict) -> float | None:
    """The largest gap_recovered over the attacks; None where unlearning left no gap to recover."""
    return max((g for g in seed["gap"].values() if g is not None), default=None)


def median(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def results_md(cfg: dict, data: dict, command: str = COMMAND) -> str:
    recipes = list(data)
    attacks = list(data[recipes[0]][0]["gap"])
    ref_train = median(s["train_s"] for s in data[recipes[0]])
    resumed = []
    minutes = sum(s["seconds"] for seeds in data.values() for s in seeds) / 60
    n = len(cfg["seeds"])
    fewer = any(len(seeds) < n for seeds in data.values())
    lines = [f"# Recipes under attack ({n} seed{'s' if n != 1 else ''} each{', fewer where a recipe names its own' if fewer else ''})", "",
             f"Written by `{command}` (experiments/robust/compare.py) from "
             f"its config; training and attacking took {minutes:.0f} min in all (the sum of the runs' own "
             "times, base-model controls computed once and shared).", "",
             "gap_recovered: mean over the forget sets of (attacked − unlearned) / (base − unlearned); "
             "median over seeds [min, max]. 0 = nothing came back, 1 = all of it.", "",
             "| recipe | clean forget acc | general acc (% of base) | training time (× " + recipes[0] + ") | "
             + " | ".join(attacks) + " | worst |", "|---" * (5 + len(attacks)) + "|"]
    for recipe in recipes:
        seeds = data[recipe]
        general, base_general = median(s["general"] for s in seeds), seeds[0]["base_general"]
        share = f" ({100 * general / base_general:.0f}%)" if general is not None and base_general else ""
        times = [s["train_s"] for s in seeds if s["train_s"] is not None]
        cost = statistics.median(times) / ref_train if times and ref_train else None
        if len(times) < len(seeds):
            resumed.append(recipe)
        cells = [spread([s["gap"][a] for s in seeds]) for a in attacks]
        lines.append(f"| {named(recipe, seeds, n)} | {fmt(median(s['forget'] for s in seeds))} | {fmt(general)}{share} | {fmt(cost, '{:.2f}')} | "
                     + " | ".join(cells) + f" | {spread([worst(s) for s in seeds])} |")
    if resumed:
        lines += ["", f"Training time of {', '.join(f'`{r}`' for r in resumed)}: the median over the seeds that ran in "
                      "one process, n/a where none did (a resumed run's seconds cover only the steps it ran itself)."]
    lines += ["", "Resistance: attacked accuracy of the unlearned model minus that of the base model under the "
                  "same attack (forget sets, median over seeds [min, max]); below 0, the attack does not bring "
                  "the unlearned model as far as it brings the base model.", "",
              "| recipe | " + " | ".join(attacks) + " |", "|---" * (1 + len(attacks)) + "|"]
    for recipe in recipes:
        lines.append(f"| {named(recipe, data[recipe], n)} | " + " | ".join(spread([s["resistance"][a] for s in data[recipe]])
                                                   for a in attacks) + " |")
    if any(v is not None for seeds in data.values() for s in seeds for v in s["excess"].values()):
        lines += excess_md(data, attacks, n)
    lines += ["", "Recipes (overrides of `python -m rmu.train`; a hardened recipe: `python -m rmu.distill` or "
                  "`python -m rmu.tar` of its teacher recipe's model, seed by seed):", ""]
    lines += [f"- `{r}`: `{' '.join(o) or '(defaults)'}`" if isinstance(o, list) else
              f"- `{r}`: `{o['teacher']}`, then `python -m rmu.{hardening(o)} {' '.join(cfg[hardening(o)] + o[hardening(o)])}`"
              for r, o in cfg["recipes"].items()]
    lines += ["", f"Attacks: `python -m rmu.attack {' '.join(cfg['attack'])}`", "", "![recipes](robust.png)", ""]
    if "pretrain_tokens" in cfg and any(isinstance(r, dict) and "distill" in r for r in cfg["recipes"].values()):
        lines += ["![distillation: robustness against compute](distill.png)", ""]
    if any(s["curves"] for seeds in data.values() for s in seeds):
        lines += ["![relearning curves](relearning.png)", ""]
    return "\n".join(lines)


def named(recipe: str, seeds: list[dict], n: int) -> str:
    """A recipe's table cell: its name, and its seeds where it ran fewer than the file's."""
    return recipe if len(seeds) >= n else f"{recipe} ({', '.join('seed ' + str(s['seed']) for s in seeds)} only)"


def excess_md(data: dict, attacks: list[str], n: int) -> list[str]:
    """The table against the oracle: excess recovery per attack (forget sets; per set the
    attacker's best row, e.g. the worst step count of relearn_speed), and the oracle's row.
    `n`: the file's seeds (a recipe run on fewer is named with its own, as in the other tables)."""
    oracle = median(s["oracle_forget"] for seeds in data.values() for s in seeds)
    lines = ["", "Excess recovery over the oracle (the data-filtered twin): mean over the forget sets of "
                 "(attacked − oracle attacked) / (base − oracle), the same attack on both; median over seeds "
                 "[min, max]. 0 = no more than a model that never saw the forget data, 1 = all of what the base "
                 "knew beyond it.", "",
             "| recipe | " + " | ".join(attacks) + " | worst |", "|---" * (2 + len(attacks)) + "|"]
    for recipe, seeds in data.items():
        lines.append(f"| {named(recipe, seeds, n)} | " + " | ".join(spread([s["excess"][a] for s in seeds]) for a in attacks)
                     + f" | {spread([worst_excess(s) for s in seeds])} |")
    lines.append(f"| oracle (clean forget acc {fmt(oracle)}) | " + " | ".join("+0.00 (by definition)" for _ in attacks)
                 + " | +0.00 |")
    return lines


def plot_curves(data: dict, path: Path) -> None:
    """relearning.png: relearn_speed's forget accuracy against fine-tuning steps, median over
    seeds, for each recipe, the base model and the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    first = next(s["curves"] for seeds in data.values() for s in seeds if s["curves"])
    for who, style, name in (("base", "k--", "base model"), ("oracle", "k:", "oracle (data-filtered)")):
        if who in first:
            ax.plot(list(first[who]), list(first[who].values()), style, label=name)
    for recipe, seeds in data.items():
        runs = [s["curves"]["unlearned"] for s in seeds if s["curves"].get("unlearned")]
        if runs:
            steps = sorted(runs[0])
            ax.plot(steps, [statistics.median(r[k] for r in runs) for k in steps], "o-", ms=3, label=recipe)
    ax.set(xscale="log", xlabel="fine-tuning steps on the forget split's documents",
           ylabel="accuracy on the split's questions", title="Relearning speed (median over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def worst_excess(seed: dict) -> float | None:
    return max((v for v in seed["excess"].values() if v is not None), default=None)


def worst_against(seed: dict, oracle: bool) -> float | None:
    """The worst excess recovery over the oracle, or without one the worst gap_recovered."""
    return worst_excess(seed) if oracle else worst(seed)


def plot_distill(cfg: dict, data: dict, path: Path) -> None:
    """distill.png: worst excess recovery over the oracle (median over seeds) against the
    distillation tokens as a fraction of the base model's pretraining tokens, one line per
    teacher and alpha; each teacher recipe as a dashed level, the oracle at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    oracle = any(v is not None for seeds in data.values() for s in seeds for v in s["excess"].values())
    lines, teachers = {}, set()
    for recipe, spec in cfg["recipes"].items():
        if isinstance(spec, dict) and hardening(spec) == "distill":
            seeds = data[recipe]
            teachers.add(spec["teacher"])
            x = median(s["distill"]["tokens"] for s in seeds) / cfg["pretrain_tokens"]
            y = median(worst_against(s, oracle) for s in seeds)
            if y is not None:
                lines.setdefault((spec["teacher"], seeds[0]["distill"]["alpha"]), []).append((x, y))
    for (teacher, alpha), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{teacher} distilled, α = {alpha}")
    for teacher in sorted(teachers):
        level = median(worst_against(s, oracle) for s in data[teacher])
        if level is not None:
            ax.axhline(level, ls="--", color="grey", label=f"{teacher} (the teacher)")
    if oracle:
        ax.axhline(0, color="black", lw=1, label="oracle (data-filtered)")
    ax.set(xlabel="distillation tokens / base model's pretraining tokens",
           ylabel="worst excess recovery over the oracle" if oracle else "worst gap_recovered (no oracle)",
           title="Distillation: robustness against compute (median over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for recipe, seeds in data.items():
        points = [(s["forget"], worst(s)) for s in seeds if s["forget"] is not None and worst(s) is not None]
        if not points:  # no forget set, or nothing to recover: nothing to place
            continue
        x, y = [p[0] for p in points], [p[1] for p in points]
        mx, my = statistics.median(x), statistics.median(y)
        ax.errorbar(mx, my, xerr=[[mx - min(x)], [max(x) - mx]], yerr=[[my - min(y)], [max(y) - my]], fmt="o",
                    capsize=4, label=recipe)
    ax.set(xlabel="clean forget accuracy (mean of the forget sets)", ylabel="worst gap_recovered over the attacks",
           title="Recipes: median and range over seeds")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=HERE / "recipes.yaml")
    p.add_argument("--out", type=Path, default=HERE, help="where results.md and robust.png go")
    p.add_argument("--launcher", default=None, help="a hydra/launcher option, e.g. slurm (default: one after another)")
    p.add_argument("--command", default=COMMAND, help="the command named in the output folder's marker")
    args = p.parse_args(argv)
    cfg = read_config(args.config)
    work = Path(cfg.get("work_dir") or args.out / "runs").absolute()
    started = time.perf_counter()
    try:
        for name in ("results.md", "robust.png", "relearning.png", "distill.png"):  # before hours of training, not after
            check_output_file(args.out / name, args.command)
        run_all(cfg, work, args.launcher)
        data = collect(cfg, work)
        write_output_file(args.out / "results.md", results_md(cfg, data, args.command), args.command)
        write_output_file(args.out / "robust.png", lambda tmp: plot(data, tmp), args.command)
        if any(s["curves"] for seeds in data.values() for s in seeds):
            write_output_file(args.out / "relearning.png", lambda tmp: plot_curves(data, tmp), args.command)
        if "pretrain_tokens" in cfg and any(isinstance(r, dict) and "distill" in r for r in cfg["recipes"].values()):
            write_output_file(args.out / "distill.png", lambda tmp: plot_distill(cfg, data, tmp), args.command)
    except RmuError as e:
        sys.exit(f"error: {e}")
    print(f"robust: wrote {args.out / 'results.md'} and {args.out / 'robust.png'} "
          f"({(time.perf_counter() - started) / 60:.1f} min in this call)")


if __name__ == "__main__":
    main()
