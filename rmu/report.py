"""`python -m rmu.report <run dir>` — a picture and a short summary of one training run.

Writes `report.png` (forget and retain loss per step; for a distilled or TAR run the
hardening's own curve; accuracy before and after on every evaluation set against chance) and `report.md` into the run folder. `rmu.train` writes
both at the end of every run. The inputs are checked against their shapes first
(rmu/evaluation/results.py), and a report is replaced only where rmu.report drew it and
nobody changed it since (rmu/run/checkpoint.py, write_output_file): a hand-written
report.md stays.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmu.run.checkpoint import check_output_file, write_output_file
from rmu.run.cli import run_command
from rmu.errors import ConfigError
from rmu.evaluation.results import RunResults, read_metrics

COMMAND = "rmu.report"


def hardening_rows(folder: Path, results: RunResults) -> list[dict]:
    """The per-step rows of the distillation or TAR that made a hardened run (empty for a plain
    RMU run): distill_metrics.jsonl or tar_metrics.jsonl, as that command wrote them."""
    name = "distill_metrics.jsonl" if results.distill else "tar_metrics.jsonl" if results.tar else None
    if name is None:
        return []
    path = folder / name
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it ({type(e).__name__}: {e}); results.json says the run was "
                          f"{'distilled' if results.distill else 'made by TAR'}") from None


def plot_hardening(ax, rows: list[dict], results: RunResults) -> None:
    """The hardening's own curve: distillation's KL (and the held-out retain CE where measured),
    or TAR's retain loss and last tamper-resistance loss per outer step."""
    if results.distill:
        ax.plot([r["step"] for r in rows], [r["kl"] for r in rows], label="KL(teacher ‖ student)")
        ce = [r for r in rows if "retain_ce" in r]
        ax.plot([r["step"] for r in ce], [r["retain_ce"] for r in ce], "o-", ms=3, label="held-out retain CE")
        ax.axhline(results.distill["teacher_retain_ce"], color="grey", ls="--", label="teacher's retain CE")
        ax.set(title="distillation", xlabel="step", yscale="log")
    else:
        tar = [r for r in rows if r.get("phase") == "tar"]
        ax.plot([r["step"] for r in tar], [r["retain_loss"] for r in tar], label="retain loss")
        ax.plot([r["step"] for r in tar], [r["tr_loss_last"] for r in tar], label="last tamper-resistance loss")
        ax.set(title="TAR", xlabel="outer step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot(out: Path, rows: list[dict], results: RunResults, hardening: list[dict] = ()) -> None:
    """Draw the report's figure into the PNG file `out`: RMU's losses, the hardening's curve
    when there was one, the accuracies."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    evals = results.eval
    panels = 2 + bool(hardening) + bool(evals)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    topics = results.topics
    for topic in topics:
        mine = [r for r in rows if r["topic"] == topic]
        axes[0].plot([r["step"] for r in mine], [r["forget_loss"] for r in mine], label=f"forget: {topic}")
        axes[1].plot([r["step"] for r in mine], [r["retain_loss"] for r in mine], label=f"retain (on {topic} steps)")
    axes[0].set(title="forget loss  mean((h − c·u)²)", xlabel="step", yscale="log")
    axes[1].set(title="retain loss  mean((h − h_frozen)²), before the α weight", xlabel="step")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if hardening:
        plot_hardening(axes[2], hardening, results)
    if evals:
        ax = axes[-1]
        names = list(evals)
        x = range(len(names))
        base = [evals[n]["base"]["acc"] for n in names]
        after = [evals[n]["unlearned"]["acc"] for n in names]
        ax.bar([i - 0.2 for i in x], base, width=0.4, label="base")
        ax.bar([i + 0.2 for i in x], after, width=0.4, label="unlearned")
        for i, n in enumerate(names):
            ax.hlines(evals[n]["base"]["chance"], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label="chance" if i == 0 else None)
        ax.set_xticks(list(x), [f"{n}\n({evals[n]['role']})" for n in names])
        ax.set(title="accuracy (acc)", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.suptitle(f"RMU on {results.model}: hooked layer {results.layer_id}, {results.steps} steps" +
                 (f"; then distilled into a student damaged with α {results.distill['alpha']} (accuracy: the student)"
                  if results.distill else "") +
                 (f"; then TAR, {results.tar['outer_steps']} outer steps (accuracy: after TAR)" if results.tar else ""))
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)


def summary(rows: list[dict], results: RunResults) -> str:
    d, t = results.distill, results.tar
    title = "RMU run" if not (d or t) else "RMU, then distillation" if d else "RMU, then TAR"
    lines = [f"# {title}: {results.model}", "",
             f"- hooked layer {results.layer_id}, updated {', '.join(results.updated_parameters)}",
             f"- topics {', '.join(results.topics)}, steering coefficients "
             f"{', '.join(f'{c:.4g}' for c in results.steering_coeff)}, α {', '.join(f'{a:g}' for a in results.alpha)}",
             f"- {results.steps} steps in {results.seconds['train']:.1f} s" if not (d or t) else
             f"- {results.steps} RMU steps made the starting model {(d or {}).get('teacher') or t['start']}; "
             f"the accuracies below are after {'distillation' if d else 'TAR'}",
             *([] if d is None else [
                 f"- distilled into a copy of the teacher damaged with alpha {d['alpha']}, beta {d['beta']}: "
                 f"{d['steps']} steps, {d['tokens']} tokens in {results.seconds['train']:.1f} s, stopped by "
                 f"{d['stopped']}; held-out retain CE {d['student_retain_ce']:.4f} (teacher {d['teacher_retain_ce']:.4f}); "
                 f"distill_config.yaml and distill_metrics.jsonl have the rest"]),
             *([] if t is None else [
                 f"- TAR: {t['safeguard_steps']} safeguard steps, {t['outer_steps']} outer steps of K = {t['inner_steps']} "
                 f"adversary steps in {results.seconds['train']:.1f} s ({t['seconds_per_outer_step']} s and "
                 f"{t['passes_per_outer_step']} passes per outer step); tar_config.yaml and tar_metrics.jsonl have the rest"])]
    for topic in results.topics:
        mine = [r for r in rows if r["topic"] == topic]
        if not mine:  # never trained: the run had fewer steps than topics
            continue
        lines.append(f"- {topic}: forget loss {mine[0]['forget_loss']:.4g} → {mine[-1]['forget_loss']:.4g}, "
                     f"retain loss at the end {mine[-1]['retain_loss']:.3g}, cosine of retain activations to the "
                     f"frozen model's {mine[-1]['retain_cos_frozen']:.4f}")
    table = results.table(markdown=True)
    if table:
        lines += ["", table]
    lines += ["", "![losses and accuracy](report.png)", ""]
    return "\n".join(lines)


def write_report(folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    for name in ("metrics.jsonl", "results.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder} is not a run folder written by rmu.train (no {name})")
    rows, results = read_metrics(folder), RunResults.read(folder)
    # Step i trains topic i % K: a run of fewer steps than topics has no row for the last ones.
    missing = [t for t in results.topics[:results.steps] if not any(r["topic"] == t for r in rows)]
    if missing:
        raise ConfigError(f"{folder / 'metrics.jsonl'}: no row of topic {missing[0]!r}, which results.json names; "
                          "the two files are not of the same run")
    png, md = folder / "report.png", folder / "report.md"
    for path in (png, md):  # both, before drawing either
        check_output_file(path, COMMAND)
    hardening = hardening_rows(folder, results)
    write_output_file(png, lambda tmp: plot(tmp, rows, results, hardening), COMMAND)
    write_output_file(md, summary(rows, results), COMMAND)
    return png, md


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rmu.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a folder written by python -m rmu.train")
    run_command(run, p.parse_args(argv))


def run(args) -> None:
    png, md = write_report(args.run_dir)
    print(f"report: wrote {png} and {md}")


if __name__ == "__main__":
    main()
