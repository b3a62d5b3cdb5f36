"""Config tests: every file under conf/ composes and passes the value checks; every
experiment validates fully when pointed at the tiny model and the bundled data."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rmu.config.checks import check_train_values
from rmu.errors import ConfigError
from rmu.config.plan import plan_train
from rmu.config.schema import CONF_DIR
from tests.conftest import TINY, make_cfg

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF_DIR).iterdir() if g.is_dir()}
# conf/attack/ belongs to `python -m rmu.attack` (conf/attack.yaml), conf/distill/ and conf/tar/ to
# `python -m rmu.distill` and `python -m rmu.tar`, every other group to training.
OPTIONS = [(g, o) for g, opts in GROUPS.items() if g not in ("experiment", "attack", "distill", "tar") for o in opts]


def test_tree_has_the_groups_we_document():
    assert {"model", "data", "rmu", "optim", "trainer", "eval", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes_and_passes_value_checks(group, option):
    cfg = make_cfg([f"{group}={option}"])
    check_train_values(cfg)


@pytest.mark.parametrize("option", GROUPS["distill"])
def test_every_distill_option_composes_and_passes_value_checks(option):
    from rmu.harden.plan import check_values

    check_values(make_cfg([f"distill={option}"], "distill"))


@pytest.mark.parametrize("option", GROUPS["tar"])
def test_every_tar_option_composes_and_passes_value_checks(option):
    from rmu.harden.plan import check_tar_values

    check_tar_values(make_cfg([f"tar={option}"], "tar"))


def leaves(node, prefix=""):
    """{dotted key: value} of every value a YAML file sets (its defaults list aside)."""
    out = {}
    for key, value in node.items():
        if key == "defaults":
            continue
        full = f"{prefix}{key}"
        out.update(leaves(value, full + ".") if isinstance(value, dict) else {full: value})
    return out


DEBUG_KEYS = leaves(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "debug" / "tiny.yaml")))


def test_debug_tiny_only_shrinks_the_run():
    """The pair experiment × debug is decided once: debug sets the model, the evaluation,
    the hooked layer and the run's length, never a key of the method."""
    assert set(DEBUG_KEYS) == {"rmu.layer_id", "rmu.update_layers", "trainer.max_steps", "trainer.batch_size"}


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_every_experiment_with_debug_tiny_keeps_its_keys_and_validates(experiment, tmp_path):
    check_train_values(make_cfg([f"experiment={experiment}"]))
    own = leaves(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / f"{experiment}.yaml")))
    cfg = make_cfg([f"experiment={experiment}", "debug=tiny"])
    for key, value in own.items():  # debug wins on its few keys; every other key is the experiment's
        assert OmegaConf.select(cfg, key) == (DEBUG_KEYS[key] if key in DEBUG_KEYS else value), key
    # Full validation (data files, model layout) with the data that exist offline: the pair
    # runs, or is refused by name before any weights load; it never ignores a key.
    cfg = make_cfg([f"experiment={experiment}", "debug=tiny", "data=bundled", "data.min_chars=0",
                    f"output_dir={tmp_path / 'o'}"])
    try:
        assert plan_train(cfg).topics == ["chem", "astro"]
    except ConfigError as e:
        assert "rmu." in str(e) or "model." in str(e), e  # names the key that does not fit the tiny model
        assert experiment in REFUSED_WITH_TINY, f"{experiment} x debug=tiny refused: {e}"


# Pairs whose values cannot fit a 4-layer random model (refused by name, not ignored).
REFUSED_WITH_TINY = {"mixtral_rmu": "rmu.experts on a dense model"}


def test_an_experiments_key_that_the_run_would_not_use_is_refused_wherever_it_was_set(tmp_path):
    # robust_bundled sets rmu.auto_beta; a fixed coefficient makes it unused.
    with pytest.raises(ConfigError, match=r"rmu.auto_beta=32.0: is only used with rmu.steering_coeff=auto"):
        plan_train(make_cfg(["experiment=robust_bundled", "debug=tiny", "rmu.steering_coeff=10",
                             f"output_dir={tmp_path / 'o'}"]))
    # wmdp_reference names its updated tensors; LoRA would put adapters elsewhere.
    with pytest.raises(ConfigError, match=r"rmu.update_params=\['mlp.down_proj.weight'\]: is not used with adapter"):
        check_train_values(make_cfg(["experiment=wmdp_reference", "adapter=lora"]))
    # A robust stage's setting from the command line, its stage off.
    with pytest.raises(ConfigError, match="robust.mask_ema=0.5: is not used while robust.mask is off"):
        check_train_values(make_cfg(["robust.mask_ema=0.5"]))
    # The default values themselves are not "set": the defaults always compose.
    check_train_values(make_cfg(["rmu.steering_coeff=10"]))


@pytest.mark.parametrize("command,overrides,message", [
    ("attack", ["attack=probe", "attack.in_context.shots=[1]"],
     "attack.in_context.shots=[1]: this run does not use attack.in_context (it is off); select it with "
     "attack=in_context or attack=all, or drop the key"),
    ("train", ["+logger.project=x"], "logger.project=x: this run does not use logger (it is off); select it with "
                                     "logger=wandb, or drop the key"),
    ("train", ["adapter.r=4"], "adapter.r=4: this run does not use adapter (it is off); select it with adapter=lora"),
    ("attack", ["base=tiny_random"], "base=tiny_random: `base` is a section of keys, not a choice; choose its config "
                                     "with model@base=<name> ("),
])
def test_hydra_level_mistakes_are_one_sentence(command, overrides, message):
    from rmu.config.overrides import explain

    assert explain(command, overrides).startswith(message)
    assert explain(command, ["attack=in_context", "attack.in_context.shots=[1]"] if command == "attack" else
                   ["adapter=lora", "adapter.r=4"]) is None  # selected: nothing to say


def test_a_hydra_level_mistake_on_the_real_command_line(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("rmu.train", "debug=tiny", "+logger.project=x", f"output_dir={tmp_path / 'o'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: logger.project=x: this run does not use logger (it is off); "
                                                "select it with logger=wandb, or drop the key"]


@pytest.mark.parametrize("option", GROUPS["attack"])
def test_every_attack_option_composes_and_validates(option, tmp_path):
    from rmu.config.checks import check_attack_values as check_attack

    # relearn_speed needs a world with splits (attack=lab has the lab's); alone it is given one here.
    split = "attack.relearn_speed.splits=[{name: s, train: x.jsonl, trained: q.jsonl, test: q.jsonl}]"
    cfg = make_cfg([f"attack={option}", "model=tiny_random", "model@base=tiny_random",
                    f"output_dir={tmp_path / 'o'}", *([split] if option == "relearn_speed" else [])],
                   config_name="attack")
    check_attack(cfg)
    every = ["probe", "finetune", "ablate", "ablate_unlearned", "in_context", "heldout_relearn"]
    expected = {"all": every, "lab": every + ["relearn_speed"], "lab_tamper": ["tamper"],
                "lab_cross": ["heldout_relearn"]}.get(option, [option])
    assert list(cfg.attack.run) == expected
    if option.startswith("lab"):  # scored against the data-filtered twin, on the lab's world
        assert cfg.oracle.name == "lab-filtered" and cfg.data.forget[0].name == "alchemy"
    if option == "lab_tamper":  # the lab's adversaries replace the default's, group by group
        assert [a.lr for a in cfg.attack.tamper.groups.in_dist] == [1e-4, 1e-3, 2e-3, 1e-3]
        assert list(cfg.attack.tamper.groups) == ["in_dist", "out_dist", "qi"]
    if option == "lab_cross":  # each split trains on one forget domain and scores the other's half B
        domains = [(Path(s.train).stem.split("_")[1], Path(s.test).stem.split("_")[1]) for s in cfg.attack.heldout_relearn.splits]
        assert domains == [("stars", "alchemy"), ("alchemy", "stars")]
        assert all(Path(s.train).stem.endswith("_A") and Path(s.test).stem.endswith("_B")
                   for s in cfg.attack.heldout_relearn.splits)


def test_relearn_speed_without_splits_is_refused(tmp_path):
    from rmu.config.checks import check_attack_values as check_attack

    with pytest.raises(ConfigError, match=r"attack.relearn_speed.splits=\[\]: must be a non-empty list"):
        check_attack(make_cfg(["attack=relearn_speed", "model=tiny_random", "model@base=tiny_random",
                               f"output_dir={tmp_path / 'o'}"], config_name="attack"))


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


@pytest.mark.parametrize("attack,tar", [("tamper", "default"), ("lab_tamper", "lab")])
def test_the_in_distribution_tamper_group_is_the_tar_configs_adversaries(attack, tar):
    """`in_dist` must be what TAR trains against (conf/tar/<tar>.yaml's adversary: full
    parameters, a fresh constant-rate AdamW at each of its lrs, its batch size); every
    out_dist adversary must differ from all of them in at least one setting."""
    from omegaconf import OmegaConf

    from rmu.config.checks import tamper_adversaries

    adversary = make_cfg([f"tar={tar}"], config_name="tar").tar.adversary
    groups = make_cfg([f"attack={attack}"], config_name="attack").attack.tamper
    inside = tamper_adversaries(groups, "in_dist")
    trained = {(data, lr) for data in ("forget", "retain") for lr in adversary.lrs}
    assert {(a["data"], a["lr"]) for a in inside} <= trained
    assert {a["lr"] for a in inside if a["data"] == "forget"} == set(OmegaConf.to_container(adversary.lrs))
    assert all(a["mode"] == "full" and a["schedule"] == "constant" and a["weight_decay"] == 0.0
               and a["batch_size"] == adversary.batch_size for a in inside)
    for a in tamper_adversaries(groups, "out_dist") + tamper_adversaries(groups, "qi"):
        assert a not in inside and (a["mode"], a["schedule"], a["batch_size"], a["lr"] in adversary.lrs) != \
            ("full", "constant", adversary.batch_size, True), a
