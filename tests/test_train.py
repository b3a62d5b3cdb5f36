"""`python -m rmu.train` (rmu/train.py) in subprocesses on the tiny random model: the folder
it writes, an existing folder never replaced unless asked, a non-finite loss that stops
the run and writes nothing."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TINY, run_cli

def test_train_writes_a_complete_hugging_face_folder(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    for name in ("model.safetensors", "config.json", "tokenizer.json", "rmu_config.yaml",
                 "control_vectors.safetensors", "metrics.jsonl", "results.json", "eval_table.txt", "report.png",
                 "report.md"):
        assert (out / name).is_file(), name
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left behind
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and tok("hi").input_ids
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and [r["topic"] for r in rows] == ["chem", "astro"] * 2
    for key in ("forget_loss", "retain_loss", "forget_norm", "retain_norm", "retain_cos_frozen"):
        assert all(isinstance(r[key], float) for r in rows), key
    with safe_open(out / "control_vectors.safetensors", "pt") as f:
        controls = f.get_tensor("control_vectors")
        assert json.loads(f.metadata()["topics"]) == ["chem", "astro"]
    assert torch.allclose(controls.norm(dim=-1), torch.tensor([10.0, 10.0]))
    assert "layer_id: 2" in (out / "rmu_config.yaml").read_text()


@pytest.mark.slow
def test_existing_output_is_never_overwritten_unless_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert proc.returncode != 0
    assert "already exists and is not empty" in proc.stderr and "overwrite=true" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}", "overwrite=true")
    assert proc.returncode != 0 and "was not written by rmu" in proc.stderr  # rmu deletes only its own folders
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    assert run_cli("rmu.train", *TINY, f"output_dir={out}").returncode == 0
    first = (out / "model.safetensors").read_bytes()
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}", "overwrite=true", "seed=1")
    assert proc.returncode == 0, proc.stderr  # a folder rmu wrote, holding nothing else: replaced
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_non_finite_loss_stops_names_the_step_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}", "optim.lr=1e30", "trainer.max_steps=6")
    assert proc.returncode != 0
    assert "non-finite loss at step 1" in proc.stderr, proc.stderr
    assert "nothing was written" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary sibling
