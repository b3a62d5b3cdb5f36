"""`python -m rmu.distill` — harden an unlearned model: distill it into a damaged copy of itself.

    python -m rmu.distill model.path=outputs/rmu-20261201-101500              # the bundled model's RMU run
    python -m rmu.distill model=lab_base data=lab eval=lab distill=lab model.path=<a lab RMU run>
    python -m rmu.distill -m model.path=<run> distill.alpha=0.2,0.6,1.0        # a sweep (SLURM: hydra/launcher=slurm)

The teacher is a run folder written by rmu.train; the output is a run folder like it, which
rmu.eval, rmu.attack and rmu.export read as they read any run. The method is in rmu/harden/
(distill.py); this command runs it inside the run's own folder (rmu/run/folder.py), checked,
locked and resumable, as rmu.train runs RMU. `distill(cfg)` is what the tests call.
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
from rmu.harden.distill import build, check, evaluate_student, evaluate_teacher, fit, write
from rmu.run.cli import run_command
from rmu.run.folder import RunFolder
from rmu.run.lifecycle import Stages, run_to_end

STAGES = Stages(before=evaluate_teacher, fit=fit, after=evaluate_student, write=write)


def distill(cfg: DictConfig) -> RunResults | None:
    """Check, take the folder, score the teacher, distill, score the student, write (and
    export when asked). Returns results.json's content on rank 0 (None elsewhere)."""
    t0 = time.perf_counter()
    auto_resume = OmegaConf.is_interpolation(cfg, "output_dir")  # the same command continues an interrupted run
    cfg.output_dir = str(cfg.output_dir)
    plan, ranks = check(cfg)
    with RunFolder(cfg, ranks, auto_resume) as folder:
        run = build(cfg, plan, ranks)
        results = run_to_end(run, folder, t0, STAGES)
    if results is None:
        return None
    print(results.table())
    s, info = results.seconds, results.distill
    print(f"rmu: wrote {cfg.output_dir} in {s['total']:.1f}s (train {s['train']:.1f}s: {info['steps']} steps, "
          f"{info['tokens']} tokens, {info['tokens_per_s']} tokens/s; stopped by {info['stopped']}; retain CE "
          f"{info['student_retain_ce']:.4f}, teacher {info['teacher_retain_ce']:.4f})")
    export_run(cfg)  # a Hub folder next to the run folder when export.repo_id is set, the upload if asked
    return results


@hydra.main(config_path=CONF_DIR, config_name="distill", version_base="1.3")
def main(cfg: DictConfig) -> RunResults | None:
    return run_command(distill, cfg)


if __name__ == "__main__":
    check_command_line("distill", sys.argv[1:])
    main()
