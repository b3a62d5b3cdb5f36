"""Experiment tracking: `logger=wandb` sends the run to Weights & Biases.

The config, every step's losses, activation norms and cosines, the before/after
evaluation (as a table and as summary numbers) and the checkpoint path go to one wandb
run. `WANDB_MODE=offline` keeps it on disk (`wandb sync` uploads it later). The
JSON-lines metrics file in the output folder is written with or without a logger.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from rmu.evaluation.results import COLUMNS, RunResults


class Tracker:
    """A wandb run on the main process when `logger=wandb`; otherwise every call does nothing."""

    def __init__(self, cfg, main: bool):
        self.run = None
        if cfg.logger is None or not main:
            return
        import wandb

        lc = cfg.logger
        self.run = wandb.init(project=lc.project, entity=lc.entity, name=lc.name or Path(cfg.output_dir).name,
                              tags=list(lc.tags), config=OmegaConf.to_container(cfg, resolve=True))

    def step(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                         step=record["step"])

    def finish(self, results: RunResults) -> None:
        if self.run is None:
            return
        import wandb

        rows = [[name, r["role"], r["base"]["acc"], r["unlearned"]["acc"], r["base"]["acc_norm"],
                 r["unlearned"]["acc_norm"]] for name, r in results.eval.items()]
        if rows:
            self.run.log({"eval": wandb.Table(columns=list(COLUMNS[:2] + COLUMNS[4:]), data=rows)})
        for name, r in results.eval.items():
            self.run.summary[f"eval/{name}/base_acc"] = r["base"]["acc"]
            self.run.summary[f"eval/{name}/unlearned_acc"] = r["unlearned"]["acc"]
        self.run.summary["checkpoint"] = str(Path(results.output_dir).absolute())
        self.run.summary["steering_coeff"] = results.steering_coeff
        self.run.finish()

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
