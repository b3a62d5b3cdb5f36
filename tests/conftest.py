"""Shared fixtures and harnesses: composed configs (as Hydra composes them for the CLI), the
tiny model, a way to run the real command line, weights compared between two run folders,
and the preemption harness (SIGTERM a run once it has saved a resume state, rerun it, and
compare with an uninterrupted run)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rmu.config.schema import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]

# `make test` runs the suite on two workers (pytest-xdist): one torch thread each, and in every
# command a test starts, so that two workers on two cores do not fight over them (two threads per
# process on a shared 2-core machine ran 3x slower than one, docs/lab.md).
# Each worker also gets its own $RMU_CACHE: every command cleans what killed commands left anywhere
# it can see (their notes in $RMU_CACHE/staging), and under another worker that would be a test's
# killed run in progress. The converted GGUF model stays shared.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    _shared = Path(os.environ.get("RMU_CACHE") or Path.home() / ".cache" / "rmu") / "gguf"
    _shared.mkdir(parents=True, exist_ok=True)
    _own = Path(tempfile.mkdtemp(prefix=f"rmu-cache-{os.environ['PYTEST_XDIST_WORKER']}-"))
    (_own / "gguf").symlink_to(_shared)
    os.environ["RMU_CACHE"] = str(_own)

# Nothing in the suite may reach the Hugging Face Hub: models and data are local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Tiny, fast settings for runs on the 4-layer random model (conf/debug/tiny.yaml), shorter texts,
# and a fixed steering coefficient (the random model's activation norms mean nothing).
TINY = ["debug=tiny", "rmu.steering_coeff=10", "trainer.progress=false", "data.forget.0.max_length=32", "data.forget.1.max_length=32",
        "data.retain.0.max_length=32"]


# A short command-line run on the tiny random model (no evaluation, the steering coefficient
# measured as a real run measures it): the runs the multi-process and resume tests compare.
RUN = ["model=tiny_random", "eval=none", "trainer.max_steps=6", "trainer.progress=false", "rmu.layer_id=2",
       "rmu.steering_coeff=auto", "data.forget.0.max_length=32", "data.forget.1.max_length=32",
       "data.retain.0.max_length=32", "optim.lr=1e-2"]
# What every command a test starts gets on top of the environment: nothing reaches the Hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV = {**os.environ, **OFFLINE}  # as the suite started (run_cli reads the environment of the moment)


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
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or ROOT,
                          env={**os.environ, **OFFLINE, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def assert_same_weights(a: Path, b: Path, rel: float, flipped: float = 0.0):
    """The two run folders' model.safetensors agree tensor by tensor within `rel` of the
    largest entry (0.0: bit-identical), except at most a `flipped` share of each tensor's
    entries (the sign mask's: see its caller)."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for k in wa:
        diff = (wa[k].float() - wb[k].float()).abs() / wa[k].float().abs().max()
        off = int((diff > rel).sum())
        assert off <= flipped * diff.numel(), (k, off, diff.max().item())


def free_port_pair() -> int:
    """A port p with p and p+1 free (slurmctld and slurmd; a process group's rendezvous)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no two consecutive free ports")


@dataclass
class Resumed:
    """What `sigterm_then_resume` ran: the two run folders, the step the interrupted run
    stopped at, and the rerun's output (for a test's own further checks)."""
    straight: Path
    resumed: Path
    stopped_at: int
    again: subprocess.CompletedProcess


def sigterm_once_saved(command: list[str], state: Path, env: dict) -> tuple[subprocess.Popen, str, str]:
    """Start `command`, send it SIGTERM as soon as it has written the resume `state` file, and
    return (the process, its stdout, its stderr) once it has stopped."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    return proc, stdout, stderr


def sigterm_then_resume(tmp_path: Path, overrides: list[str], module: str = "rmu.train", steps: int | None = None,
                        metrics: str = "metrics.jsonl") -> Resumed:
    """The preemption check: `python -m <module> <overrides>` runs straight through into
    <tmp_path>/straight; the same command into <tmp_path>/resumed gets SIGTERM as soon as it
    has saved its first resume state, stops with 143 and writes no output, and the same
    command again resumes at the saved step and ends with bit-identical weights (CPU), every
    step's row in `metrics`, and its resume state removed. `overrides` must set a
    trainer.save_every well below the run's `steps` (rmu.train: read from trainer.max_steps)."""
    steps = steps or int(next(o.split("=", 1)[1] for o in overrides if o.startswith("trainer.max_steps=")))
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    state = tmp_path / ".resumed.resume" / "state.json"
    done = run_cli(module, *overrides, f"output_dir={straight}")
    assert done.returncode == 0, done.stderr[-3000:]

    proc, stdout, stderr = sigterm_once_saved([sys.executable, "-m", module, *overrides, f"output_dir={out}"],
                                              state, {**os.environ, **OFFLINE})
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM after step" in stdout and not out.exists()
    stopped_at = json.loads(state.read_text())["step"]
    assert 0 < stopped_at < steps

    again = run_cli(module, *overrides, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at step {stopped_at}" in again.stdout
    assert_same_weights(straight, out, 0.0)  # bit-identical on CPU
    rows = [json.loads(line) for line in open(out / metrics)]
    assert [r["step"] for r in rows] == list(range(steps))
    assert not state.parent.exists()  # the resume state is removed once the run is written
    # results.json says where the last process took over: its seconds["train"] covers the steps from there
    assert [json.loads((f / "results.json").read_text())["resumed_at"] for f in (straight, out)] == [0, stopped_at]
    return Resumed(straight, out, stopped_at, again)
