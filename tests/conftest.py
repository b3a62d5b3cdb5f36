"""Shared fixtures: composed configs (as Hydra composes them for the CLI), the tiny model,
and a way to run the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rmu.config.schema import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]

# Nothing in the suite may reach the Hugging Face Hub: models and data are local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Tiny, fast settings for runs on the 4-layer random model (conf/debug/tiny.yaml), shorter texts,
# and a fixed steering coefficient (the random model's activation norms mean nothing).
TINY = ["debug=tiny", "rmu.steering_coeff=10", "trainer.progress=false", "data.forget.0.max_length=32", "data.forget.1.max_length=32",
        "data.retain.0.max_length=32"]


def make_cfg(overrides: list[str], config_name: str = "train"):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name, overrides=overrides)


@pytest.fixture
def tiny_cfg(tmp_path):
    """Compose the train config on the tiny model, writing under tmp_path."""
    def build(*extra: str, output: str = "out"):
        return make_cfg(TINY + [f"output_dir={tmp_path / output}", *extra])
    return build


def run_cli(module: str, *overrides: str, cwd: Path | None = None, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m <module> <overrides>` in a subprocess, as a user types it (`env`: extra variables)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
