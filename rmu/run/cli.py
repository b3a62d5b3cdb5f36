"""What every `python -m rmu.<command>` does around its function: one wrapper, so that
all commands treat sweeps, multi-task SLURM jobs and errors the same way.

    @hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
    def main(cfg):
        return run_command(train, cfg)

An `RmuError` (rmu/errors.py) ends the command with `error: <message>` on stderr and its
exit code (143 after a SIGTERM that saved the training state), and an OSError (a full
disk, a read-only folder) one line naming the path and the cause; anything else is a bug
and keeps its traceback. Inside a Hydra sweep the error is raised instead, so Hydra records
the failed job (the sweep summary shows why) and runs the others; a preempted job exits
with 143 there too, so that SLURM requeues it.
"""

from __future__ import annotations

import sys

from rmu.run.checkpoint import os_error_message
from rmu.run.distributed import ranks_from_slurm
from rmu.errors import Preempted, RmuError
from rmu.run.sweep import in_sweep, job_output_dir


def quiet_progress_bars() -> None:
    """In a log file (SLURM, nohup), no carriage-return progress frames from the libraries
    (loading and writing shards, downloads); a terminal keeps them."""
    if sys.stderr.isatty():
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def run_command(fn, cfg):
    if getattr(cfg, "output_dir", None) is not None:  # export's null output_dir means <checkpoint>-hub: kept
        job_output_dir(cfg)  # in a -m sweep: <hydra.sweep.dir>/<job number> (rmu/run/sweep.py)
    ranks_from_slurm()  # a SLURM job of several tasks: one rank per task
    quiet_progress_bars()
    try:
        return fn(cfg)
    except Preempted as e:  # also in a sweep: the scheduler requeues the job, which resumes
        print(f"rmu: {e}")
        sys.exit(e.exit_code)
    except RmuError as e:
        if in_sweep():
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # the machine's, not rmu's: a full disk, a permission, a vanished file
        if in_sweep():
            raise
        print(f"error: {os_error_message(e, 'could not use')}", file=sys.stderr)
        sys.exit(1)
