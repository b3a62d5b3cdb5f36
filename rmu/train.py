"""`python -m rmu.train` — unlearn with RMU and write the edited model.

    python -m rmu.train                                   # bundled model and data, CPU, ~2 min
    python -m rmu.train debug=tiny                        # a 4-layer random model, seconds
    python -m rmu.train rmu.layer_id=5 trainer.max_steps=40 output_dir=outputs/l5
    python -m rmu.train experiment=zephyr_rmu             # the paper's Zephyr-7B recipe (GPU, WMDP corpora)

Every key is a Hydra override; `conf/` documents them. The method is in rmu/unlearn/
(the step in step.py, the recipe in recipe.py); this command runs the recipe inside the
run's own folder (rmu/run/folder.py): checked, locked and resumable, with an evaluation
before and after. `train(cfg)` is what the tests call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from rmu.config.overrides import check_command_line
from rmu.config.schema import CONF_DIR
from rmu.errors import OutputError, Preempted, RmuError
from rmu.evaluation.results import RunResults
from rmu.export import prepare, push
from rmu.run.checkpoint import published_by
from rmu.run.cli import run_command
from rmu.run.folder import RunFolder
from rmu.run import signals
from rmu.run.pause import pause_point
from rmu.run.resume import Interrupted, Preemption, write_failure
from rmu.run.signals import Stopped
from rmu.unlearn.recipe import Run, build, check, evaluate_run, fit, write_run


def train(cfg: DictConfig) -> RunResults | None:
    """The whole run: check, take the folder, evaluate, unlearn, evaluate, write (and export
    when asked). Returns results.json's content on rank 0 (None on the other ranks)."""
    t0 = time.perf_counter()
    # The default timestamped output_dir: the same command continues an interrupted run.
    auto_resume = OmegaConf.is_interpolation(cfg, "output_dir")
    cfg.output_dir = str(cfg.output_dir)  # its timestamp fixed once: the folder checked is the folder written
    plan, ranks = check(cfg)
    with RunFolder(cfg, ranks, auto_resume) as folder:
        run = build(cfg, plan, ranks)
        results = unlearn(run, folder, t0)
    if results is None:
        return None
    if results.eval or results.harness:
        print(results.table())
    s = results.seconds
    print(f"rmu: wrote {cfg.output_dir} in {s['total']:.1f}s (load {s['load']:.1f}s, eval {s['eval_before']:.1f}s + "
          f"{s['eval_after']:.1f}s, train {s['train']:.1f}s for {plan.steps} steps, save {s['save']:.1f}s)")
    if cfg.export.repo_id:  # a Hub folder next to the run folder, and the upload if asked
        try:
            hub = prepare(cfg.output_dir, cfg.export.repo_id, overwrite=cfg.overwrite)
        except Stopped as e:
            e.note = (f"{cfg.output_dir} is written, its Hub folder is not: python -m rmu.export "
                      f"checkpoint={cfg.output_dir} repo_id={cfg.export.repo_id} writes it")
            raise
        print(f"rmu: prepared the Hub folder {hub}")
        if cfg.export.push:
            print(f"rmu: pushed to {push(hub, cfg.export.repo_id, cfg.export.private)}")
    return results


def unlearn(run: Run, folder: RunFolder, t0: float) -> RunResults | None:
    """Evaluate, fit, evaluate, write. A signal (SIGTERM, SIGINT, SIGHUP) during training
    saves the state and stops (rmu/run/resume.py); after training it saves the trained state
    at once, and so does a failure to evaluate or write (a full disk)."""
    cfg = run.cfg
    preemption = Preemption()
    try:
        t_load = time.perf_counter()
        if folder.state is not None and folder.state.get("before") is not None:
            before = tuple(folder.state["before"])  # measured before the interruption: not redone
        else:
            before = evaluate_run(run, cfg.model.path, cfg.model.revision)
        t_eval = time.perf_counter()
        rows = fit(run, before, folder, preemption)
        t_train = time.perf_counter()
        try:
            preemption.at_once()  # from here a signal saves the trained state at once
            pause_point("eval_after")
            after = evaluate_run(run, str(cfg.output_dir), None)
            seconds = {"load": t_load - t0, "eval_before": t_eval - t_load, "train": t_train - t_eval,
                       "eval_after": time.perf_counter() - t_train}
            results = write_run(run, rows, before, after, seconds, started=t0, folder=folder)
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


def interrupted_after_training(run: Run, folder: RunFolder, rows: list[dict], before: tuple, signum: int):
    """A signal during the final evaluation or the save: keep the trained tensors so that a
    rerun only evaluates and writes. Rank 0 saves without waiting for the others (they
    may be inside a collective that will not complete)."""
    out, by = run.cfg.output_dir, signals.name(signum)
    if published_by(Path(out).expanduser().absolute(), run.run_id):  # the signal came after the folder was published
        folder.resume.clear()
        raise Preempted(f"stopped by {by} after {out} was written; the run is complete", signum)
    if run.ranks.main:
        folder.resume.save(run.plan.steps, run.updated, run.updater, rows, run.robust, before)
    raise Preempted(folder.stopped_message("after training, before the output was written", by), signum)


def failed_after_training(run: Run, folder: RunFolder, rows: list[dict], before: tuple, e: Exception):
    """The final evaluation or the write failed (a full disk, a quota, a failing lm-eval
    task): save the trained state (beside the output folder, or where there is room,
    rmu/run/resume.py) and say where, so that rerunning the same command only evaluates and
    writes. Raises the error to report: an OutputError in one sentence for a failed write,
    the same error with the note appended otherwise (a bug keeps its traceback)."""
    out = Path(run.cfg.output_dir).expanduser().absolute()
    if getattr(e, "kept", None) or published_by(out, run.run_id) or not run.ranks.main:
        return  # the finished output is kept (published, or under another name): nothing to save
    cause = write_failure(out.parent, e)
    try:
        folder.resume.save(run.plan.steps, run.updated, run.updater, rows, run.robust, before)
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


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> RunResults | None:
    return run_command(train, cfg)


if __name__ == "__main__":
    check_command_line("train", sys.argv[1:])  # one sentence for the mistakes Hydra answers with a traceback
    main()
