"""What every `python -m rmu.<command>` does around its function: one wrapper, so that
all commands treat sweeps, multi-task SLURM jobs and errors the same way.

    @hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
    def main(cfg):
        return run_command(train, cfg)

Before the work it installs the handler of SIGINT, SIGHUP and SIGTERM (rmu/run/signals.py)
and settles what killed commands left anywhere (rmu/run/leftovers.py). A signal ends the
command with one sentence saying what was kept and 128 + the signal (130, 129, 143).
An `RmuError` (rmu/errors.py) ends the command with `error: <message>` on stderr and its
exit code (143 after a SIGTERM that saved the training state), and an OSError (a full
disk, a read-only folder) one line naming the path and the cause; anything else is a bug
and keeps its traceback. Inside a Hydra sweep the error is raised instead, so Hydra records
the failed job (the sweep summary shows why) and runs the others; a preempted job exits
with 143 there too, so that SLURM requeues it.
"""

from __future__ import annotations

import os
import signal
import sys

from rmu.run import leftovers, signals
from rmu.run.checkpoint import os_error_message
from rmu.run.distributed import ranks_from_slurm
from rmu.errors import Preempted, RmuError
from rmu.run.sweep import in_sweep, job_output_dir


_done = False  # whether run_command has finished (a signal after it has nothing to stop)


def _before_or_after(signum, frame) -> None:
    """A signal while Hydra composes the config, or after the command: nothing is held yet
    (or any more), so exit at once with one line instead of a KeyboardInterrupt traceback."""
    when = "after the command finished" if _done else "before the work began; nothing was written"
    signals.note(f"rmu: stopped by {signals.name(signum)} {when}")
    os._exit(128 + signum)


if getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", "").startswith("rmu."):
    for _s in signals.SIGNALS:  # `python -m rmu.<command>` only: never inside another program (a test)
        signal.signal(_s, _before_or_after)


def quiet_progress_bars() -> None:
    """In a log file (SLURM, nohup), no carriage-return progress frames from the libraries
    (loading and writing shards, downloads); a terminal keeps them."""
    if sys.stderr.isatty():
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def say(line: str, file=None) -> None:
    """Print, unless the terminal is gone (a hangup): the exit code still tells."""
    try:
        print(line, file=file or sys.stdout, flush=True)
    except OSError:
        pass


def run_command(fn, cfg):
    global _done
    previous = signals.install()  # SIGINT, SIGHUP, SIGTERM: what there is to keep is kept (rmu/run/signals.py)
    try:
        return _run(fn, cfg)
    finally:
        _done = True
        signals.restore(previous)


def _run(fn, cfg):
    if getattr(cfg, "output_dir", None) is not None:  # export's null output_dir means <checkpoint>-hub: kept
        job_output_dir(cfg)  # in a -m sweep: <hydra.sweep.dir>/<job number> (rmu/run/sweep.py)
    ranks_from_slurm()  # a SLURM job of several tasks: one rank per task
    quiet_progress_bars()
    try:
        for line in leftovers.sweep(getattr(cfg, "output_dir", None)):  # what killed commands left anywhere
            say(line)
        return fn(cfg)
    except signals.Stopped as e:  # nothing more to keep than the note says; also ends a sweep
        say(f"rmu: {e.sentence()}")
        sys.exit(e.exit_code)
    except Preempted as e:  # also in a sweep: the scheduler requeues the job, which resumes
        say(f"rmu: {e}")
        sys.exit(e.exit_code)
    except RmuError as e:
        if in_sweep():
            raise
        say(f"error: {e}", sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # the machine's, not rmu's: a full disk, a permission, a vanished file
        if in_sweep():
            raise
        say(f"error: {os_error_message(e, 'could not use')}", sys.stderr)
        sys.exit(1)
