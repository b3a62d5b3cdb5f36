"""What every `python -m rmu.<command>` does around its function (rmu/run/cli.py): every bad
input refused early in one sentence, through the real command line and in-process, keys a
run would not use, and `--help` listing only the groups a command accepts. (Each command's
own runs: test_train.py, test_eval.py, test_attack.py, test_export.py, test_report.py.)"""

import pytest

import rmu.train
import rmu.unlearn.recipe
from tests.conftest import TINY, run_cli


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
    ("rmu.attack", ["attack: ablate, ablate_unlearned, all, finetune, heldout_relearn, in_context, lab, lab_cross, lab_tamper, "
                    "probe, relearn_speed, tamper", "model: "],
     ["rmu: ", "adapter:"]),
    ("rmu.eval", ["model: ", "harness: default", "eval: bundled, lab, none, wmdp"], ["attack:", "rmu: ", "hydra/launcher"]),
])
def test_help_lists_only_the_groups_the_command_accepts(command, listed, absent):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Config groups ==")[1].split("== Config ==")[0]
    assert all(x in groups for x in listed), groups
    assert not any(x in groups for x in absent), groups
