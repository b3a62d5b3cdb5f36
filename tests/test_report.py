"""`python -m rmu.report` (rmu/report.py) and the report every training run writes."""

import struct
from pathlib import Path

import pytest

from rmu.train import train
from tests.conftest import run_cli


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_every_run_writes_a_report_and_the_cli_rewrites_it(tiny_cfg):
    cfg = tiny_cfg("eval=bundled", "eval.batch_size=32", "trainer.max_steps=6")
    results = train(cfg)
    out = Path(cfg.output_dir)
    width, height = png_size(out / "report.png")
    assert width > 1000 and height > 300
    md = (out / "report.md").read_text()
    assert "hooked layer 2" in md and "![losses and accuracy](report.png)" in md
    chem = results.eval["chem"]
    assert f"| chem | forget | 90 | 0.250 | {chem['base']['acc']:.3f} | {chem['unlearned']['acc']:.3f} |" in md
    (out / "report.png").unlink()
    proc = run_cli("rmu.report", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png_size(out / "report.png") == (width, height)


def test_report_of_a_run_without_evaluation_and_of_a_non_run_folder(tiny_cfg, tmp_path):
    cfg = tiny_cfg()  # eval=none: loss curves only
    train(cfg)
    width, _ = png_size(Path(cfg.output_dir) / "report.png")
    assert width > 800
    proc = run_cli("rmu.report", str(tmp_path))
    assert proc.returncode != 0 and "is not a run folder written by rmu.train (no metrics.jsonl)" in proc.stderr


def test_a_run_shorter_than_its_topics_gets_a_report(tiny_cfg):
    """One step trains only the first topic: the other has no metrics row, and that is no damage."""
    cfg = tiny_cfg("trainer.max_steps=1")
    train(cfg)
    report = (Path(cfg.output_dir) / "report.md").read_text()
    assert "- chem: forget loss" in report and "- astro: forget loss" not in report
