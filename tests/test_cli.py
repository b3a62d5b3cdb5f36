"""The real command line: `python -m rmu.train` / `python -m rmu.eval` in subprocesses,
on the tiny random model, and every bad input the trainer must refuse early."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import rmu.train
import rmu.unlearn.recipe
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


def corrupt_file(tmp_path, kind):
    path = tmp_path / "corpus.jsonl"
    if kind == "empty":
        path.write_text("")
    elif kind == "malformed":
        path.write_text('{"text": "a perfectly fine first document about nothing in particular at all"}\n'
                        '{"text": "the second line is broken\n')
    return path


BAD_INPUTS = [
    (["+rmu.foo=1"], "unknown config key 'rmu.foo'"),
    (["rmu.layer_id=4"], "rmu.layer_id=4: must be in 0..3 (the model has 4 decoder layers)"),
    (["rmu.update_params=[mlp.nope.weight]"], "matches no parameter of layer 0; its parameters are: "
                                              "input_layernorm.weight, mlp.down_proj.weight"),
    (["rmu.steering_coeff=[1,2,3]"], "needs one value per forget topic: 2 values"),
    (["rmu.alpha=[1,2,3]"], "rmu.alpha=[1, 2, 3]: needs one value per forget topic"),
    (["model.path=/nonexistent/model", "model.arch=null"], "model.path='/nonexistent/model': cannot read the model's config"),
    (["data.forget.0.path=/nonexistent/chem.jsonl"], "/nonexistent/chem.jsonl: file not found"),
    (["data.forget.0.path={tmp}/corpus.jsonl"], "corpus.jsonl: no text with at least 50 characters (0 texts read)"),
    (["data.forget.1.path={tmp}/corpus.jsonl"], "corpus.jsonl, line 2: not valid JSON"),
]


def test_bad_input_through_the_real_command_line_is_one_sentence(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}", "rmu.layer_id=4")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: rmu.layer_id=4: must be in 0..3 (the model has 4 decoder layers)"
    assert not out.exists()


@pytest.mark.parametrize("overrides,message", BAD_INPUTS)
def test_bad_input_fails_early_with_a_clear_message(tmp_path, overrides, message, monkeypatch, capsys):
    """What the command prints (rmu/run/cli.py's wrapper around train, in-process: the test
    above runs the real command line once), before any model is loaded."""
    from rmu.run.cli import run_command
    from tests.conftest import make_cfg

    def no_loading(*a, **k):
        raise AssertionError("load_model was called before the config was checked")

    monkeypatch.setattr(rmu.unlearn.recipe, "load_model", no_loading)
    corrupt_file(tmp_path, "malformed" if "line 2" in message else "empty")
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_command(rmu.train.train, make_cfg(TINY + [f"output_dir={out}", *overrides]))
    assert stopped.value.code == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_key_without_plus_is_rejected_by_hydra(tmp_path):
    proc = run_cli("rmu.train", *TINY, f"output_dir={tmp_path / 'run'}", "rmu.foo=1")
    assert proc.returncode != 0 and "foo" in proc.stderr


def test_non_finite_loss_stops_names_the_step_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}", "optim.lr=1e30", "trainer.max_steps=6")
    assert proc.returncode != 0
    assert "non-finite loss at step 1" in proc.stderr, proc.stderr
    assert "nothing was written" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary sibling


def test_eval_cli_refuses_bad_input_clearly(tmp_path):
    proc = run_cli("rmu.eval", "+eval.shots=5")
    assert proc.returncode != 0 and "unknown config key 'eval.shots'" in proc.stderr
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "q?", "choices": ["a"], "answer": 0}\n')
    proc = run_cli("rmu.eval", f"eval.sets=[{{name: x, path: {bad}, role: forget}}]")
    assert proc.returncode != 0 and "q.jsonl, line 1: need 'question'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("overrides,message", [
    (["adapter=lora", "rmu.update_params=[mlp.up_proj.weight]"],
     "rmu.update_params=['mlp.up_proj.weight']: is not used with adapter=lora"),
    (["rmu.steering_coeff=20", "rmu.auto_beta=5"], "rmu.auto_beta=5.0: is only used with rmu.steering_coeff=auto"),
    (["rmu.update_layers=[2,2]"], "rmu.update_layers=[2, 2]: lists a layer twice"),
    (["trainer.max_steps=many"], "Value 'many' of type 'str' could not be converted to Integer"),
])
def test_keys_this_run_would_not_use_are_refused(tmp_path, overrides, message):
    proc = run_cli("rmu.train", *TINY, f"output_dir={tmp_path / 'run'}", *overrides)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_attack_data_is_checked_before_any_model_loads(tmp_path):
    proc = run_cli("rmu.attack", "attack=ablate", "model=tiny_random", "model@base=tiny_random",
                   "data.min_chars=-1", f"output_dir={tmp_path / 'a'}")
    assert proc.returncode != 0 and "data.min_chars=-1: must be an integer >= 0" in proc.stderr
    proc = run_cli("rmu.attack", "attack=ablate", "model=tiny_random", "model@base=tiny_random",
                   "data.forget.0.path=/nonexistent.jsonl", f"output_dir={tmp_path / 'a'}")
    assert proc.returncode != 0 and "/nonexistent.jsonl: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command,listed,absent", [
    ("rmu.train", ["rmu: default", "adapter: lora, none", "debug: tiny", "hydra/launcher: slurm"], ["attack:"]),
    ("rmu.attack", ["attack: ablate, ablate_unlearned, all, finetune, heldout_relearn, in_context, probe", "model: "],
     ["rmu: ", "adapter:"]),
    ("rmu.eval", ["model: ", "harness: default", "eval: bundled, none, wmdp"], ["attack:", "rmu: ", "hydra/launcher"]),
])
def test_help_lists_only_the_groups_the_command_accepts(command, listed, absent):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Config groups ==")[1].split("== Config ==")[0]
    assert all(x in groups for x in listed), groups
    assert not any(x in groups for x in absent), groups
