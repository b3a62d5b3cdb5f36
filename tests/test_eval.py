"""`python -m rmu.eval` (rmu/eval.py): it scores a trained checkpoint and refuses bad input
with one clear sentence. (The scorer itself is tested in test_mcq.py.)"""

import json

import pytest

from tests.conftest import TINY, run_cli

@pytest.mark.slow
def test_eval_cli_scores_a_trained_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run_cli("rmu.train", *TINY, f"output_dir={out}").returncode == 0
    proc = run_cli("rmu.eval", f"model.path={out}", "model.arch=null", "model.device=cpu",
                   f"output_file={tmp_path / 'eval.json'}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert set(results) == {"chem", "astro", "general"}
    assert results["chem"]["n"] == 90 and 0 <= results["chem"]["acc"] <= 1
    assert "acc_norm" in proc.stdout


def test_eval_cli_refuses_bad_input_clearly(tmp_path):
    proc = run_cli("rmu.eval", "+eval.shots=5")
    assert proc.returncode != 0 and "unknown config key 'eval.shots'" in proc.stderr
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "q?", "choices": ["a"], "answer": 0}\n')
    proc = run_cli("rmu.eval", f"eval.sets=[{{name: x, path: {bad}, role: forget}}]")
    assert proc.returncode != 0 and "q.jsonl, line 1: need 'question'" in proc.stderr, proc.stderr
