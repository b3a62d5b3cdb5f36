"""`python -m rmu.tar` — tamper-resistant training (TAR) of an unlearned model.

    python -m rmu.tar model.path=outputs/rmu-20261201-101500                  # a run on the bundled model
    python -m rmu.tar model=lab_base data=lab eval=lab tar=lab model.path=<a lab RMU run>
    accelerate launch --config_file experiments/accelerate/fsdp.yaml -m rmu.tar model.path=<run>   # FSDP

The start is a run folder written by rmu.train; the output is a run folder like it. The
method is in rmu/harden/tar.py; this command runs it inside the run's own folder
(rmu/run/folder.py), checked, locked and resumable, as rmu.train runs RMU. `tar(cfg)` is
what the tests call.
"""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from rmu.config.overrides import check_command_line
from rmu.config.schema import CONF_DIR
from rmu.evaluation.results import RunResults
from rmu.export import export_run
from rmu.harden.tar import build, check, evaluate_start, evaluate_trained, fit, write
from rmu.run.cli import run_command
from rmu.run.folder import RunFolder
from rmu.run.lifecycle import Stages, run_to_end

STAGES = Stages(before=evaluate_start, fit=fit, after=evaluate_trained, write=write)


def tar(cfg: DictConfig) -> RunResults | None:
    """Check, take the folder, score the start, train, score, write (and export when asked).
    Returns results.json's content on rank 0 (None elsewhere)."""
    t0 = time.perf_counter()
    auto_resume = OmegaConf.is_interpolation(cfg, "output_dir")
    cfg.output_dir = str(cfg.output_dir)
    plan, ranks = check(cfg)
    with RunFolder(cfg, ranks, auto_resume) as folder:
        run = build(cfg, plan, ranks)
        results = run_to_end(run, folder, t0, STAGES)
    if results is None:  # a rank other than 0: rank 0 wrote the folder
        return None
    print(results.table())
    s, info = results.seconds, results.tar
    print(f"rmu: wrote {cfg.output_dir} in {s['total']:.1f}s (train {s['train']:.1f}s: {info['outer_steps']} outer "
          f"steps of {info['passes_per_outer_step']} passes, {info['seconds_per_outer_step']} s each)")
    export_run(cfg)  # a Hub folder next to the run folder when export.repo_id is set, the upload if asked
    return results


@hydra.main(config_path=CONF_DIR, config_name="tar", version_base="1.3")
def main(cfg: DictConfig) -> RunResults | None:
    return run_command(tar, cfg)


if __name__ == "__main__":
    check_command_line("tar", sys.argv[1:])
    main()
