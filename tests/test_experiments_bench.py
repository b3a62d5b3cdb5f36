"""experiments/bench/bench.py (`make bench`): the trainer's step against the reference loop."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

@pytest.mark.slow
def test_bench_runs_both_variants_and_reports_agreement():
    """`make bench` on the tiny model with small shapes: the report's format and the loss
    agreement (timings are printed, never asserted)."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench" / "bench.py"), "--model", "tiny_random",
                           "--layer", "2", "--length", "32", "--steps", "2", "--warmup", "1", "--no-scaling"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"bench: speedup=(\S+) memory_ratio=(\S+) max_loss_rel_diff=(\S+)", lines[-1])
    assert m, lines[-1]
    speedup, memory_ratio, diff = map(float, m.groups())
    assert speedup > 0 and memory_ratio > 0 and diff <= 1e-4
    assert any(line.startswith("| reference |") for line in lines) and any(line.startswith("| rmu |") for line in lines)
