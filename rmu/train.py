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

import hydra
from omegaconf import DictConfig, OmegaConf

from rmu.config.overrides import check_command_line
from rmu.config.schema import CONF_DIR
from rmu.evaluation.results import RunResults
from rmu.export import export_run
from rmu.run.cli import run_command
from rmu.run.folder import RunFolder
from rmu.run.lifecycle import Stages, run_to_end
from rmu.unlearn.recipe import build, check, evaluate_run, fit, write_run

# What run_to_end (rmu/run/lifecycle.py) calls: the base model scored, RMU, the unlearned model scored, written.
STAGES = Stages(before=lambda run: evaluate_run(run, run.cfg.model.path, run.cfg.model.revision), fit=fit,
                after=lambda run: evaluate_run(run, str(run.cfg.output_dir), None), write=write_run)


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
        results = run_to_end(run, folder, t0, STAGES)
    if results is None:
        return None
    if results.eval or results.harness:
        print(results.table())
    s = results.seconds
    print(f"rmu: wrote {cfg.output_dir} in {s['total']:.1f}s (load {s['load']:.1f}s, eval {s['eval_before']:.1f}s + "
          f"{s['eval_after']:.1f}s, train {s['train']:.1f}s for {plan.steps} steps, save {s['save']:.1f}s)")
    export_run(cfg)  # a Hub folder next to the run folder when export.repo_id is set, the upload if asked
    return results


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> RunResults | None:
    return run_command(train, cfg)


if __name__ == "__main__":
    check_command_line("train", sys.argv[1:])  # one sentence for the mistakes Hydra answers with a traceback
    main()
