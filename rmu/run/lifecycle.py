"""A run inside its folder from the first evaluation to the written output, whatever stops it.

`run_to_end` is the part every training command shares (rmu.train, rmu.distill): score the
model before, train, score it after, write the output folder, and on the way keep what a
signal or a failure would otherwise lose (rmu/run/resume.py). The command gives its own
`Stages`; `run` is the command's recipe object, read for `cfg`, `ranks`, `plan.steps`,
`updated`, `updater`, `robust`, `run_id` and `tracker`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rmu.errors import OutputError, Preempted, RmuError
from rmu.run import signals
from rmu.run.checkpoint import published_by
from rmu.run.folder import RunFolder
from rmu.run.pause import pause_point
from rmu.run.resume import Interrupted, Preemption, write_failure
from rmu.run.shards import gathered
from rmu.run.signals import Stopped


@dataclass
class Stages:
    before: Callable  # before(run) -> the scores before training (kept in the resume state)
    fit: Callable  # fit(run, before, folder, preemption) -> metrics rows
    after: Callable  # after(run) -> the scores after training
    write: Callable  # write(run, rows, before, after, seconds, started=, folder=) -> results


def run_to_end(run, folder: RunFolder, t0: float, stages: Stages):
    """Evaluate, fit, evaluate, write. A signal (SIGTERM, SIGINT, SIGHUP) during training
    saves the state and stops (rmu/run/resume.py); after training it saves the trained state
    at once, and so does a failure to evaluate or write (a full disk). Returns what
    `stages.write` returns (results.json's content on rank 0)."""
    preemption = Preemption()
    try:
        t_load = time.perf_counter()
        if folder.state is not None and folder.state.get("before") is not None:
            before = tuple(folder.state["before"])  # measured before the interruption: not redone
        else:
            before = stages.before(run)
        t_eval = time.perf_counter()
        rows = stages.fit(run, before, folder, preemption)
        t_train = time.perf_counter()
        try:
            preemption.at_once()  # from here a signal saves the trained state at once
            pause_point("eval_after")
            after = stages.after(run)
            seconds = {"load": t_load - t0, "eval_before": t_eval - t_load, "train": t_train - t_eval,
                       "eval_after": time.perf_counter() - t_train}
            results = stages.write(run, rows, before, after, seconds, started=t0, folder=folder)
            preemption.raise_at_once = False  # written: a later signal has nothing left to save
            return results
        except Interrupted as e:
            interrupted_after_training(run, folder, rows, before, e.signum)
        except Exception as e:  # noqa: BLE001 - the evaluation or the write failed: keep what training made
            failed_after_training(run, folder, rows, before, e)
            raise
    except Stopped as e:  # a second Ctrl-C: at once, with what the disk holds
        e.note = (folder.resume.kept_note().removeprefix("; ") if folder.resume.saved_step is not None else
                  "no training state was saved (rerunning the same command starts over)")
        run.tracker.abort()
        raise
    except BaseException:
        run.tracker.abort()  # the wandb run ends as failed
        raise
    finally:
        preemption.raise_at_once = False
        preemption.restore()


def interrupted_after_training(run, folder: RunFolder, rows: list[dict], before: tuple, signum: int):
    """A signal during the final evaluation or the save: keep the trained tensors so that a
    rerun only evaluates and writes. Rank 0 saves without waiting for the others (they
    may be inside a collective that will not complete) — which FSDP shards cannot be: every
    rank must join gathering them, so there the last state saved during training is what a
    rerun resumes from (said so)."""
    out, by = run.cfg.output_dir, signals.name(signum)
    if published_by(Path(out).expanduser().absolute(), run.run_id):  # the signal came after the folder was published
        folder.resume.clear()
        raise Preempted(f"stopped by {by} after {out} was written; the run is complete", signum)
    if run.updater.sharded:
        raise Preempted(f"stopped by {by} after training, before {out} was written; the trained FSDP shards could not "
                        f"be gathered once the signal came{folder.resume.kept_note()}", signum)
    if run.ranks.main:
        folder.resume.save(run.plan.steps, run.updated, run.updater, rows, run.robust, before)
    raise Preempted(folder.stopped_message("after training, before the output was written", by), signum)


def failed_after_training(run, folder: RunFolder, rows: list[dict], before: tuple, e: Exception):
    """The final evaluation or the write failed (a full disk, a quota, a failing lm-eval
    task): save the trained state (beside the output folder, or where there is room,
    rmu/run/resume.py) and say where, so that rerunning the same command only evaluates and
    writes. Raises the error to report: an OutputError in one sentence for a failed write,
    the same error with the note appended otherwise (a bug keeps its traceback)."""
    out = Path(run.cfg.output_dir).expanduser().absolute()
    kept = bool(getattr(e, "kept", None) or published_by(out, run.run_id))
    whole = None
    if run.updater.sharded:  # FSDP shards (every rank got here: on_main hands rank 0's error to all)
        if run.ranks.same(kept):  # rank 0's view of the output on every rank, before any rank gathers
            return
        whole = gathered(run.updated, run.updater.optimizer, run.updater.masters)
    if kept or not run.ranks.main:
        return  # the finished output is kept (published, or under another name): nothing to save
    cause = write_failure(out.parent, e)
    try:
        folder.resume.save(run.plan.steps, run.updated, run.updater, rows, run.robust, before, whole)
    except OutputError as lost:
        raise OutputError(f"could not write {out} ({cause}), and {lost}") from None
    disk = isinstance(e, OSError) or type(e).__name__ == "SafetensorError" or cause == "the disk is full"
    note = (f"the trained state is kept in {folder.resume.folder}: once {'there is room' if disk else 'that is fixed'}"
            f", run the same command again to evaluate and write it, or exactly: {folder.resume_command()}")
    if disk:  # the machine's, not rmu's
        raise OutputError(f"could not write {out} ({cause}); {note}") from None
    if isinstance(e, RmuError):
        e.args = (f"{e}; {note}",)
    else:
        print(f"rmu: {note}", file=sys.stderr, flush=True)  # before the traceback of what is a bug
