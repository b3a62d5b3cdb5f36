"""logger=wandb, offline: the run holds the config, every step's metrics, the
evaluation and the checkpoint path.

An offline run of wandb 0.31 (wandb-core) keeps its config, history and summary only in
its binary log, run-<id>.wandb: there is no files/config.yaml or files/wandb-summary.json.
The plain files it writes are files/output.log, files/requirements.txt and the eval table,
files/media/table/eval_*.table.json. So the table is read as a file, and the rest through
wandb's own public reader of the log, `wandb leet inspect --json` (one JSON object per
record; with --summary, the run's state, config and summary as one object).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def inspect(run_dir: Path, *flags: str) -> str:
    """`wandb leet inspect <flags> <run_dir>`'s output; skips where this wandb has no such command."""
    proc = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", *flags, str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and ("No such command" in proc.stderr or "No such option" in proc.stderr):
        pytest.skip(f"this wandb has no `wandb leet inspect {' '.join(flags)}`: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_wandb_offline_run_holds_config_losses_eval_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, "logger=wandb", "eval=bundled", "eval.batch_size=32", f"output_dir={out}",
                   env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    results = json.loads((out / "results.json").read_text())
    expected = [json.loads(line) for line in open(out / "metrics.jsonl")]

    # The eval table, a plain JSON file: one row per set, before and after.
    [table_file] = (run_dir / "files" / "media" / "table").glob("eval_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["set", "role", "base acc", "unlearned acc", "base acc_norm", "unlearned acc_norm"]
    assert table["data"] == [[name, r["role"], r["base"]["acc"], r["unlearned"]["acc"], r["base"]["acc_norm"],
                              r["unlearned"]["acc_norm"]] for name, r in results["eval"].items()]

    run = json.loads(inspect(run_dir, "--summary", "--json"))
    assert run["state"] == "finished" and run["exit_code"] == 0
    assert run["name"] == "run"  # the output folder's name
    assert run["config"]["rmu"]["layer_id"] == 2 and run["config"]["trainer"]["max_steps"] == 4

    summary = run["summary"]
    assert summary["_step"] == 3
    for key in ("forget_loss", "retain_loss"):  # the last step's values
        assert summary[key] == pytest.approx(expected[-1][key], rel=1e-9), key
    for name, r in results["eval"].items():
        assert summary[f"eval/{name}/base_acc"] == r["base"]["acc"]
        assert summary[f"eval/{name}/unlearned_acc"] == r["unlearned"]["acc"]
    assert summary["checkpoint"] == str(out)
    assert summary["eval"]["_type"] == "table-file"
    assert summary["eval"]["path"] == str(table_file.relative_to(run_dir / "files"))

    # Every step's metrics, from the history records of the log.
    records = [json.loads(line) for line in inspect(run_dir, "--json").splitlines() if line.strip()]
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    steps = [h for h in history if "forget_loss" in h]
    assert [h["_step"] for h in steps] == [0, 1, 2, 3]
    for h, row in zip(steps, expected, strict=True):
        for key in ("forget_loss", "retain_loss", "forget_norm", "retain_cos_frozen"):
            assert abs(h[key] - row[key]) <= 1e-9 * max(1.0, abs(row[key])), key
