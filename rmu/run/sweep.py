"""Hydra sweeps (`-m`): one output folder per job, and a summary table of the whole sweep.

    python -m rmu.train -m rmu.alpha=100,1200 rmu.layer_id=5,7                        # one after another
    python -m rmu.train -m hydra/launcher=slurm rmu.alpha=100,1200 rmu.layer_id=5,7   # one SLURM job each

Hydra runs the jobs (its basic launcher, or hydra-submitit-launcher's `submitit_slurm` /
`submitit_local` through conf/hydra/launcher/); this module only adds what a sweep of
RMU runs needs on top:

- each job writes its model to `<hydra.sweep.dir>/<job number>` unless the command sets
  `output_dir` itself (the default `outputs/rmu-<time>` would put jobs started in the
  same second into one folder);
- `SweepSummary`, a Hydra callback (hydra.callbacks in conf/train.yaml), records every
  finished job, failed ones included, in `<sweep dir>/.jobs/<n>.json` and rewrites
  `<sweep dir>/summary.md` and `summary.csv` from all records so far: one row per job with
  its overrides, status, final forget and retain accuracy and time. Jobs on a cluster run
  in their own processes and finish in any order, so the callback runs inside each job
  (`on_job_end`) and the rewrite holds a file lock; the launching process prints the
  table when the sweep ends. The two files are written atomically and replace only a
  summary a sweep wrote (rmu/run/checkpoint.py, write_output_file); a sweep folder holding
  another summary.md or summary.csv is refused before the first job starts.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from rmu.errors import RmuError
from rmu.evaluation.results import RunResults
from rmu.run.checkpoint import check_output_file, write_output_file

COMMAND = "the sweep summary"
SUMMARIES = ("summary.md", "summary.csv")


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_output_dir(cfg: DictConfig) -> None:
    """In a sweep, point `output_dir` at this job's own folder unless the command set it."""
    if not in_sweep():
        return
    hc = HydraConfig.get()
    if not any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in hc.overrides.task):
        cfg.output_dir = hc.runtime.output_dir  # <hydra.sweep.dir>/<hydra.sweep.subdir>


def job_record(num: int, overrides: list[str], status: str, result, seconds: float, output_dir: str | None) -> dict:
    """What the summary shows of one job; `result` is train()'s return value or the exception."""
    record = {"job": num, "overrides": overrides, "status": status, "seconds": round(seconds, 1),
              "output_dir": output_dir, "forget_acc": None, "retain_acc": None, "error": None}
    if status == "completed" and isinstance(result, RunResults):
        record["forget_acc"] = result.mean_unlearned_acc("forget")
        record["retain_acc"] = result.mean_unlearned_acc("retain")
        record["seconds"] = round(result.seconds["total"], 1)
    elif status != "completed":
        record["error"] = f"{type(result).__name__}: {result}".splitlines()[0][:300]
    return record


def read_records(sweep_dir: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (sweep_dir / ".jobs").glob("*.json")), key=lambda r: r["job"])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_table(sweep_dir: Path, records: list[dict]) -> str:
    """Markdown: the overrides every job shares once on top, then what differs per job."""
    common = set.intersection(*(set(r["overrides"]) for r in records)) if records else set()
    shared = " ".join(o for o in (records[0]["overrides"] if records else []) if o in common) or "none"
    jobs = f"{len(records)} job" + ("s" if len(records) != 1 else "")
    lines = [f"# Sweep {sweep_dir}", "",
             f"{jobs} finished. Shared overrides: {shared}.",
             "Accuracy is the mean over the eval sets of that role, after unlearning.", "",
             "| job | overrides | status | forget acc | retain acc | minutes | output |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        own = " ".join(o for o in r["overrides"] if o not in common) or "(none)"
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}".replace("|", "/")
        lines.append(f"| {r['job']} | {own} | {status} | {_fmt(r['forget_acc'])} | {_fmt(r['retain_acc'])} | "
                     f"{r['seconds'] / 60:.1f} | {r['output_dir'] or ''} |")
    return "\n".join(lines) + "\n"


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_summary(sweep_dir: Path) -> str:
    """Rewrite summary.md and summary.csv from the job records, under a lock; returns the table."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = read_records(sweep_dir)
        table = summary_table(sweep_dir, records)
        write_output_file(sweep_dir / "summary.md", table, COMMAND)
        rows = io.StringIO()
        fields = ["job", "status", "overrides", "forget_acc", "retain_acc", "seconds", "output_dir", "error"]
        writer = csv.DictWriter(rows, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**r, "overrides": " ".join(r["overrides"])} for r in records)
        write_output_file(sweep_dir / "summary.csv", rows.getvalue(), COMMAND)
    return table


class SweepSummary(Callback):
    """Keeps `<sweep dir>/summary.md` and `summary.csv` current as jobs finish (see above)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Before the first job: the summaries can be written without replacing a file the
        sweep did not write. (Hydra turns a callback's exception into a warning and goes on:
        the refusal ends the sweep itself.)"""
        try:
            for name in SUMMARIES:
                check_output_file(Path(config.hydra.sweep.dir) / name, COMMAND)
        except RmuError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # Jobs of several processes (SLURM tasks, torchrun) report once, from rank 0.
        if config.hydra.mode != RunMode.MULTIRUN or int(os.environ.get("RANK", "0")) != 0:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        num = int(config.hydra.job.num)
        status = "completed" if job_return.status.name == "COMPLETED" else "failed"
        result = job_return._return_value  # the exception itself when the job failed
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_dir.is_dir() and not any(job_dir.iterdir()):
            job_dir.rmdir()  # Hydra made it; a failed job, or one with its own output_dir, leaves none behind
        output_dir = config.get("output_dir")
        if status == "completed" and isinstance(result, RunResults):
            output_dir = result.output_dir
        record = job_record(num, list(job_return.overrides or []), status, result,
                            time.perf_counter() - self.started, output_dir)
        (sweep_dir / ".jobs").mkdir(parents=True, exist_ok=True)
        _replace(sweep_dir / ".jobs" / f"{num}.json", json.dumps(record, indent=1) + "\n")
        write_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if (sweep_dir / ".jobs").is_dir():
            print(write_summary(sweep_dir), end="")
            print(f"rmu: sweep summary in {sweep_dir / 'summary.md'} and summary.csv")
