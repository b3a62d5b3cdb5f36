"""`python -m rmu.report` and the report every training run writes."""

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


def test_results_of_an_older_run_and_a_broken_file(tmp_path):
    import json

    import pytest

    from rmu.errors import ConfigError
    from rmu.evaluation.results import RunResults

    older = {"model": "m", "output_dir": str(tmp_path), "steps": 2, "topics": ["chem"], "steering_coeff": [5.0],
             "alpha": [100.0], "layer_id": 2, "update_layers": [0, 1, 2], "updated_parameters": ["w"],
             "eval": {"chem": {"role": "forget", "base": {"acc": 0.8, "acc_norm": 0.7, "chance": 0.25, "n": 4},
                               "unlearned": {"acc": 0.25, "acc_norm": 0.5, "chance": 0.25, "n": 4}}},
             "seconds": {"train": 1.0}}  # written before multi-process runs: no processes / fsdp
    (tmp_path / "results.json").write_text(json.dumps(older))
    r = RunResults.read(tmp_path)
    assert (r.processes, r.fsdp, r.update_layers) == (1, False, [0, 1, 2])
    assert r.mean_unlearned_acc("forget") == 0.25 and r.mean_unlearned_acc("retain") is None
    assert r.table().splitlines()[1].split() == ["chem", "forget", "4", "0.250", "0.800", "0.250", "0.700", "0.500"]
    (tmp_path / "results.json").write_text('{"steps": 2}')
    with pytest.raises(ConfigError, match="not the results.json of an rmu.train run"):
        RunResults.read(tmp_path)
