"""Config tests: every file under conf/ composes and passes the value checks; every
experiment validates fully when pointed at the tiny model and the bundled data."""

from pathlib import Path

import pytest

from rmu.config.checks import check_train_values
from rmu.errors import ConfigError
from rmu.config.plan import plan_train
from rmu.config.schema import CONF_DIR
from tests.conftest import TINY, make_cfg

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF_DIR).iterdir() if g.is_dir()}
# conf/attack/ belongs to `python -m rmu.attack` (conf/attack.yaml), every other group to training.
OPTIONS = [(g, o) for g, opts in GROUPS.items() if g not in ("experiment", "attack") for o in opts]


def test_tree_has_the_groups_we_document():
    assert {"model", "data", "rmu", "optim", "trainer", "eval", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes_and_passes_value_checks(group, option):
    cfg = make_cfg([f"{group}={option}"])
    check_train_values(cfg)


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    check_train_values(make_cfg([f"experiment={experiment}"]))
    # Full validation (data files, model layout) with the model and data that exist offline.
    cfg = make_cfg([f"experiment={experiment}", *TINY, "data=bundled", "data.min_chars=0", "rmu.update_layers=null",
                    f"output_dir={tmp_path / 'o'}"])
    plan = plan_train(cfg)
    assert plan.topics == ["chem", "astro"]


@pytest.mark.parametrize("option", GROUPS["attack"])
def test_every_attack_option_composes_and_validates(option, tmp_path):
    from rmu.config.checks import check_attack_values as check_attack

    cfg = make_cfg([f"attack={option}", "model=tiny_random", "model@base=tiny_random",
                    f"output_dir={tmp_path / 'o'}"], config_name="attack")
    check_attack(cfg)
    every = ["probe", "finetune", "ablate", "ablate_unlearned", "in_context", "heldout_relearn"]
    assert list(cfg.attack.run) == (every if option == "all" else [option])


def test_eval_config_composes():
    cfg = make_cfg([], config_name="eval")
    assert cfg.model.path and cfg.eval.sets


def test_trust_remote_code_is_off_in_every_model_config():
    for option in GROUPS["model"]:
        assert make_cfg([f"model={option}"]).model.trust_remote_code is False


def test_defaults_are_the_documented_ones():
    cfg = make_cfg([])
    assert cfg.rmu.update_params == ["auto"] and cfg.adapter is None  # auto: rmu/models/architectures.py
    assert cfg.rmu.update_layers is None and cfg.rmu.mask_padding is True
    assert cfg.optim.weight_decay == 0.0 and cfg.optim.eps == 1e-6
    assert cfg.model.dtype == "float32" and cfg.overwrite is False


@pytest.mark.parametrize("override,message", [
    ("+rmu.foo=1", "unknown config key 'rmu.foo'"),
    ("+bar=1", "unknown config key 'bar'"),
    ("rmu.steering_coeff=[1,2,3]", "rmu.steering_coeff=[1, 2, 3]: needs one value per forget topic: 2 values"),
    ("rmu.alpha=[1]", "rmu.alpha=[1]: needs one value per forget topic"),
    ("rmu.alpha=-1", "rmu.alpha=-1: must be a finite number >= 0"),
    ("model.dtype=float64", "model.dtype='float64': allowed: float32, bfloat16, float16"),
    ("data.padding_side=middle", "data.padding_side='middle': allowed: left, right"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be an integer >= 1"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]: must be two numbers in [0, 1)"),
    ("rmu.update_params=['re:(']", "invalid regular expression"),
    ("rmu.steering_coeff=adaptive", "rmu.steering_coeff='adaptive': allowed: auto, a number > 0"),
    ("data.forget.1.name=chem", "data.forget=['chem', 'chem']: forget topics need distinct names"),
    ("+eval.shots=5", "unknown config key 'eval.shots'"),
    ("model.device=gpu", "model.device='gpu': allowed: auto, cpu, cuda, cuda:N, mps"),
    ("+data.forget.0.colour=red", "unknown config key 'data.forget[0].colour'"),
])
def test_bad_values_are_named_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as e:
        check_train_values(make_cfg([override]))
    assert message in str(e.value)
