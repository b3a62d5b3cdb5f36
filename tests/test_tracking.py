"""logger=wandb, offline: the run files hold the config, every step's metrics, the
evaluation and the checkpoint path."""

import json
import struct
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, records, partial = path.read_bytes(), 7, [], b""  # 7 = the ":W&B" file header
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(partial + chunk if kind == 4 else chunk)
            records.append(record)
            partial = b""
        else:
            partial += chunk
    return records


@pytest.mark.slow
def test_wandb_offline_run_holds_config_losses_eval_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, "logger=wandb", "eval=bundled", "eval.batch_size=32", f"output_dir={out}",
                   env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds

    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["rmu"]["layer_id"] == 2 and config["trainer"]["max_steps"] == 4
    assert run.display_name == "run"  # the output folder's name

    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    steps = [h for h in history if "forget_loss" in h]
    assert [h["_step"] for h in steps] == [0, 1, 2, 3]
    expected = [json.loads(line) for line in open(out / "metrics.jsonl")]
    for h, row in zip(steps, expected, strict=True):
        for key in ("forget_loss", "retain_loss", "forget_norm", "retain_cos_frozen"):
            assert abs(h[key] - row[key]) <= 1e-9 * max(1.0, abs(row[key])), key

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                summary[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
    results = json.loads((out / "results.json").read_text())
    assert summary["checkpoint"] == str(out)
    assert summary["eval/chem/unlearned_acc"] == results["eval"]["chem"]["unlearned"]["acc"]
    assert any(h.get("eval._type", h.get("eval", {}).get("_type") if isinstance(h.get("eval"), dict) else None)
               == "table-file" for h in history), [k for h in history for k in h if k.startswith("eval")]
