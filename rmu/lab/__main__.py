"""`python -m rmu.lab`: build the lab (rmu/lab/build.py) from conf/lab.yaml.

    python -m rmu.lab                      # world, tokenizer, lab_base, lab_filtered under $RMU_CACHE/lab/default
    python -m rmu.lab lab/size=micro       # the seconds-long world and models the tests use
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import rmu.lab.schema  # noqa: F401  (registers lab_schema)
from rmu.config.checks import check_schema
from rmu.run.cli import run_command
from rmu.lab.build import build
from rmu.lab.checks import check_lab
from rmu.config.schema import CONF_DIR


def run(cfg: DictConfig) -> dict:
    check_schema(cfg)
    check_lab(cfg)
    return build(cfg)


@hydra.main(config_path=CONF_DIR, config_name="lab", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_command(run, cfg)


if __name__ == "__main__":
    main()
