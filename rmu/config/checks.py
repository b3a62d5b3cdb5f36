"""Checks of config values alone: no file is read, no network, no model.

Every failure names the key, the bad value and what is allowed. rmu/config/plan.py runs these
first, then the checks that need files (corpora, the model's layout, the output folder).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from rmu.config.schema import CONF_DIR, TamperAdversary
from rmu.errors import ConfigError
from rmu.models.loading import DTYPES

ATTACKS = ("probe", "finetune", "ablate", "ablate_unlearned", "in_context", "heldout_relearn", "relearn_speed",
           "tamper")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def fail(key: str, value, allowed: str):
    raise ConfigError(f"{key}={value!r}: {allowed}")


def plain(node):
    """A config node as plain Python values (lists and dicts), anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def is_repo_id(value) -> bool:
    """<owner>/<name> as the Hub allows it (no local paths, no ./ or ../)."""
    return isinstance(value, str) and REPO_ID.fullmatch(value) is not None and ".." not in value


def default_update_layers(layer_id: int) -> list[int]:
    """`rmu.update_layers: null`: the hooked layer and the two below it, as in the paper."""
    return list(range(max(0, layer_id - 2), layer_id + 1))


@functools.cache
def group_defaults(group: str) -> dict:
    """conf/<group>/default.yaml as plain values: what each key of the group is when no
    experiment, debug file or override sets it."""
    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / "default.yaml"), resolve=True)


def set_on_purpose(cfg: DictConfig, key: str) -> bool:
    """Whether the composed config gives `key` ("rmu.auto_beta") another value than its
    group's default file: an experiment, a debug file or the command line chose it, so a
    run that would not use it must say so, wherever it was set."""
    group, name = key.split(".", 1)
    return plain(OmegaConf.select(cfg, key)) != group_defaults(group)[name]


def check_schema(cfg: DictConfig) -> None:
    """Keys the schema (rmu/config/schema.py) does not define, added with `+key=value`, and values
    the YAML should have given and did not."""
    _unknown_keys(cfg, "")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: no value set (every key of the chosen config files needs one)")


def _unknown_keys(node, where: str) -> None:
    if not isinstance(node, (DictConfig, ListConfig)) or node._is_none() or node._is_missing():
        return
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            _unknown_keys(node._get_node(i), f"{where}[{i}]")
        return
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return  # a free-form mapping such as model.arch
    allowed = {f.name for f in dataclasses.fields(schema)}
    for key in node.keys():
        full = f"{where}.{key}" if where else str(key)
        if key not in allowed:
            raise ConfigError(f"unknown config key {full!r}; allowed under {where or 'the top level'}: "
                              f"{', '.join(sorted(allowed))}")
        _unknown_keys(node._get_node(key), full)


def check_int(key, v, lo=None, hi=None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        fail(key, v, f"must be an integer {rng}")
    return v


def check_num(key, v, positive=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        fail(key, v, f"must be a finite number {'> 0' if positive else '>= 0'}")
    return float(v)


def check_list(key, v, allowed=None, kind=None) -> list:
    """A non-empty list; items from `allowed`, or integers >= 1 (`int`) or numbers > 0 (`num`)."""
    v = plain(v)
    if not isinstance(v, list) or not v:
        fail(key, v, "must be a non-empty list")
    for i, x in enumerate(v):
        if allowed is not None and x not in allowed:
            fail(f"{key}[{i}]", x, f"allowed: {', '.join(allowed)}")
        if kind == "int":
            check_int(f"{key}[{i}]", x, 1)
        if kind == "num":
            check_num(f"{key}[{i}]", x, positive=True)
    return v


def per_topic(key, v, n, positive) -> list[float]:
    """A number broadcast to all topics, or a list with one number per topic."""
    v = plain(v)
    if isinstance(v, list):
        if len(v) != n:
            fail(key, v, f"needs one value per forget topic: {n} values (or a single number), got {len(v)}")
        return [check_num(f"{key}[{i}]", x, positive) for i, x in enumerate(v)]
    return [check_num(key, v, positive)] * n


def check_model(m, key: str = "model") -> None:
    if not m.path:
        fail(f"{key}.path", m.path, "must be a Hugging Face id, a local folder, a .gguf file or gguf://<package>/<file>")
    if m.dtype not in DTYPES:
        fail(f"{key}.dtype", m.dtype, f"allowed: {', '.join(DTYPES)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", m.device):
        fail(f"{key}.device", m.device, "allowed: auto, cpu, cuda, cuda:N, mps")
    if m.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"{key}.device", m.device, "CUDA is not available here; use auto or cpu")
    if m.hub_id is not None and not is_repo_id(m.hub_id):
        fail(f"{key}.hub_id", m.hub_id, "must be null or a Hub id <owner>/<name>")
    if m.arch is not None and "model_type" not in m.arch:
        fail(f"{key}.arch", plain(m.arch), "must be null or a dict of config fields including model_type")


def check_eval(e) -> None:
    check_int("eval.batch_size", e.batch_size, 1)
    for i, s in enumerate(e.sets):
        if s.role not in ("forget", "retain"):
            fail(f"eval.sets[{i}].role", s.role, "allowed: forget, retain")


def check_harness(h) -> None:
    """The harness section's values (rmu/config/plan.py looks the tasks up in lm-eval)."""
    if not all(t for t in h.tasks):
        fail("harness.tasks", plain(h.tasks), "must be a list of lm-eval task or group names, e.g. [wmdp_bio,mmlu]")
    check_int("harness.num_fewshot", h.num_fewshot, 0)
    if h.batch_size != "auto":
        check_int("harness.batch_size", h.batch_size, 1)
    if h.limit is not None:
        check_int("harness.limit", h.limit, 1)


def check_corpus(entry, key: str) -> None:
    if not entry.name:
        fail(f"{key}.name", entry.name, "every corpus needs a name")
    if bool(entry.path) == bool(entry.dataset):
        fail(key, plain(entry), "set exactly one of `path` (local file) or `dataset` (datasets id or folder)")
    check_int(f"{key}.max_length", entry.max_length, 1)
    if entry.field is None and not entry.path:
        fail(f"{key}.field", None, "null (the raw line) needs a `path` file; a dataset needs a column name")


def check_data(d) -> int:
    """The data section; returns the number of forget topics."""
    if len(d.forget) == 0:
        fail("data.forget", plain(d.forget), "must be a non-empty list of corpora, one per forget topic")
    for i, entry in enumerate(d.forget):
        check_corpus(entry, f"data.forget[{i}]")
    n = len(d.forget)
    names = [e.name for e in d.forget]
    if len(set(names)) != n:
        fail("data.forget", names, "forget topics need distinct names")
    if len(d.retain) not in (1, n):
        fail("data.retain", plain(d.retain), f"must be a list of 1 corpus (shared) or {n} (one per forget topic)")
    for i, entry in enumerate(d.retain):
        check_corpus(entry, f"data.retain[{i}]")
    check_int("data.min_chars", d.min_chars, 0)
    if d.padding_side not in ("left", "right"):
        fail("data.padding_side", d.padding_side, "allowed: left, right")
    if d.truncation_side not in (None, "left", "right"):
        fail("data.truncation_side", d.truncation_side, "allowed: left, right, null (the tokenizer's own)")
    return n


def check_adapter(a) -> None:
    check_int("adapter.r", a.r, 1)
    check_num("adapter.alpha", a.alpha, positive=True)
    if not check_num("adapter.dropout", a.dropout) < 1:
        fail("adapter.dropout", a.dropout, "must be in [0, 1)")
    if not a.target_modules or not all(a.target_modules):
        fail("adapter.target_modules", plain(a.target_modules), "must be a non-empty list of module names, e.g. [down_proj]")


def check_export_target(e, where: str) -> None:
    """repo_id, push and private of an export (train's `export.*` or rmu.export's top level)."""
    if where and e.repo_id is None:
        if e.push:
            fail(f"{where}push", True, f"needs {where}repo_id")
        return
    if not is_repo_id(e.repo_id):
        fail(f"{where}repo_id", e.repo_id, "must be a Hub repo id <user or org>/<name>")
    if e.push:
        from huggingface_hub import get_token

        if not get_token():  # from HF_TOKEN or a saved login; its value is never printed
            fail(f"{where}push", True, "no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                                       "(or push=false to only prepare the folder)")


def check_rmu(cfg: DictConfig, n_topics: int) -> dict:
    """The method's keys; returns the per-topic values (steering None = auto)."""
    r, adapter = cfg.rmu, cfg.adapter is not None
    layer_id = check_int("rmu.layer_id", r.layer_id, 0)
    update_layers = plain(r.update_layers)
    if update_layers is None:
        update_layers = default_update_layers(layer_id)
    elif not update_layers:
        fail("rmu.update_layers", update_layers, "must be null or a non-empty list of layer indices")
    if len(set(update_layers)) != len(update_layers):
        fail("rmu.update_layers", update_layers, "lists a layer twice")
    if adapter and set_on_purpose(cfg, "rmu.update_params"):
        fail("rmu.update_params", plain(r.update_params), "is not used with adapter=lora: the adapters go on "
                                                          "adapter.target_modules of rmu.update_layers")
    if not r.update_params or not all(r.update_params):
        fail("rmu.update_params", plain(r.update_params), "must be a non-empty list of name patterns (glob, or re:<regex>)")
    for p in r.update_params:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                fail("rmu.update_params", p, f"invalid regular expression ({e})")
    if isinstance(r.steering_coeff, str) and r.steering_coeff != "auto":
        fail("rmu.steering_coeff", r.steering_coeff, "allowed: auto, a number > 0, or a list of one per forget topic")
    auto = r.steering_coeff == "auto"
    steering = None if auto else per_topic("rmu.steering_coeff", r.steering_coeff, n_topics, positive=True)
    check_num("rmu.auto_beta", r.auto_beta, positive=True)
    if not auto and set_on_purpose(cfg, "rmu.auto_beta"):
        fail("rmu.auto_beta", r.auto_beta, f"is only used with rmu.steering_coeff=auto (it is "
                                           f"{plain(r.steering_coeff)!r} here)")
    alpha = per_topic("rmu.alpha", r.alpha, n_topics, positive=False)
    if r.layered and n_topics < 2:
        fail("rmu.layered", True, "needs at least two forget topics (data.forget): stage i unlearns topics 1..i "
                                  "while retaining the later ones")
    if r.layered and cfg.trainer.one_pass:
        fail("rmu.layered", True, "splits trainer.max_steps into stages; trainer.one_pass=true stops on the data instead")
    if r.layered and cfg.trainer.batch_size < 2:
        fail("rmu.layered", True, "needs trainer.batch_size >= 2: half of each retain batch is the later topics' text")
    if r.layered and cfg.trainer.max_steps < n_topics:
        fail("rmu.layered", True, f"needs trainer.max_steps >= {n_topics} (one stage per forget topic)")
    return dict(layer_id=layer_id, update_layers=update_layers, steering=steering, alpha=alpha)


def robust_on(r) -> bool:
    """Whether any robust stage (rmu/unlearn/robust.py) is switched on."""
    return bool(r.targets != "topic" or r.lat_eps or r.meta_steps or r.collapse_components or r.normalize or r.mask)


def check_robust(r, cfg: DictConfig) -> None:
    """The `robust` section: each stage's values, and a stage's settings refused when they
    are set (away from conf/robust/default.yaml) while the stage is off."""
    from rmu.unlearn.robust import META_ATTACKS, SOURCES, TARGETS

    if r.targets not in TARGETS:
        fail("robust.targets", r.targets, f"allowed: {', '.join(TARGETS)}")
    check_num("robust.lat_eps", r.lat_eps)
    check_int("robust.lat_steps", r.lat_steps, 1)
    check_int("robust.meta_steps", r.meta_steps, 0)
    check_num("robust.meta_lr", r.meta_lr, positive=True)
    if r.meta_attack not in META_ATTACKS:
        fail("robust.meta_attack", r.meta_attack, f"allowed: {', '.join(META_ATTACKS)}")
    check_int("robust.collapse_components", r.collapse_components, 0)
    if r.collapse_source not in SOURCES:
        fail("robust.collapse_source", r.collapse_source, f"allowed: {', '.join(SOURCES)}")
    check_int("robust.collapse_every", r.collapse_every, 1)
    if not 0 <= check_num("robust.mask_ema", r.mask_ema) < 1:
        fail("robust.mask_ema", r.mask_ema, "must be in [0, 1)")
    for key, switch, on in (("lat_steps", "lat_eps", r.lat_eps), ("meta_lr", "meta_steps", r.meta_steps),
                            ("meta_attack", "meta_steps", r.meta_steps),
                            ("collapse_source", "collapse_components", r.collapse_components),
                            ("collapse_every", "collapse_components", r.collapse_components),
                            ("mask_ema", "mask", r.mask)):
        if not on and set_on_purpose(cfg, f"robust.{key}"):
            fail(f"robust.{key}", r[key], f"is not used while robust.{switch} is off ({r[switch]!r})")
    if r.collapse_components and cfg.adapter is not None:
        fail("robust.collapse_components", r.collapse_components, "projects full weight gradients; it does not apply "
                                                                  "to LoRA adapters (use adapter=none)")
    if robust_on(r) and cfg.model.dtype == "float16":
        fail("model.dtype", "float16", "the robust step takes the forget and retain gradients apart, which float16's "
                                       "loss scaling does not allow; use bfloat16")


def check_robust_processes(r, processes: int, fsdp: bool) -> None:
    """The robust stages that one process runs and several do not (known before loading)."""
    if r.collapse_components and processes > 1:
        fail("robust.collapse_components", r.collapse_components, f"runs on one process only ({processes} here): the "
             "principal components would need every rank's tokens gathered")
    if r.meta_steps and fsdp:
        fail("robust.meta_steps", r.meta_steps, "is not supported under FSDP (the attacker's steps run the whole "
                                                "sharded model); use data parallel (experiments/accelerate/multi_gpu.yaml)")


def check_train_values(cfg: DictConfig) -> dict:
    """Every value of a train config, and every key it sets that this run would not use.
    Returns the values resolved per topic."""
    check_schema(cfg)
    check_int("seed", cfg.seed, 0)
    if not cfg.output_dir:
        fail("output_dir", cfg.output_dir, "must be a folder path")
    check_model(cfg.model)
    n = check_data(cfg.data)
    values = check_rmu(cfg, n)
    check_robust(cfg.robust, cfg)
    o, t = cfg.optim, cfg.trainer
    check_num("optim.lr", o.lr, positive=True)
    check_num("optim.weight_decay", o.weight_decay)
    check_num("optim.eps", o.eps, positive=True)
    if o.name not in ("adamw", "adamw_reference"):
        fail("optim.name", o.name, "allowed: adamw, adamw_reference")
    if cfg.rmu.numerics not in ("float32", "reference"):
        fail("rmu.numerics", cfg.rmu.numerics, "allowed: float32, reference")
    experts = plain(cfg.rmu.experts)
    if experts is not None:
        if not experts or not all(isinstance(e, int) and e >= 0 for e in experts) or len(set(experts)) != len(experts):
            fail("rmu.experts", experts, "must be null (all experts) or a list of distinct expert indices")
        if o.weight_decay:
            fail("rmu.experts", experts, "needs optim.weight_decay=0: decay would move the experts left out")
    if cfg.rmu.numerics == "reference" and cfg.rmu.mask_padding:
        fail("rmu.numerics", "reference", "computes the reference's unmasked means; it needs rmu.mask_padding=false")
    if not (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)):
        fail("optim.betas", plain(o.betas), "must be two numbers in [0, 1)")
    if not o.master_weights and cfg.model.dtype == "float16":
        fail("optim.master_weights", False, "float16 needs true: AdamW's second moment underflows in float16 "
                                            "(use model.dtype=bfloat16 to update half-precision tensors in place)")
    if cfg.adapter is not None:
        check_adapter(cfg.adapter)
    check_int("trainer.max_steps", t.max_steps, 1)
    check_int("trainer.batch_size", t.batch_size, 1)
    check_int("trainer.save_every", t.save_every, 0)
    check_eval(cfg.eval)
    check_harness(cfg.harness)
    if cfg.logger is not None:
        if not cfg.logger.project:
            fail("logger.project", cfg.logger.project, "must be a wandb project name")
        try:
            import wandb  # noqa: F401
        except ImportError:
            fail("logger", "wandb", "needs the wandb package: pip install wandb")
    check_export_target(cfg.export, "export.")
    return values


def check_fsdp(cfg: DictConfig) -> None:
    """What FSDP (rmu/run/fsdp.py) does not cover; checked before the model loads."""
    if cfg.adapter is not None:
        fail("adapter", "lora", "LoRA is not supported under FSDP; use adapter=none")
    if cfg.harness.tasks:
        fail("harness.tasks", plain(cfg.harness.tasks), "lm-eval does not run on a sharded model: use harness.tasks=[] "
                                                        "and run `python -m rmu.eval` on the written model")


def check_attack_values(cfg: DictConfig) -> None:
    """Every key and value of an attack config: the models, data and sets, then the
    settings of each attack `attack.run` names (ATTACK_CHECKS)."""
    check_schema(cfg)
    check_int("seed", cfg.seed, 0)
    if not cfg.output_dir:
        fail("output_dir", cfg.output_dir, "must be a folder path")
    check_model(cfg.model)
    check_model(cfg.base, "base")
    if cfg.oracle is not None:
        check_model(cfg.oracle, "oracle")
    check_data(cfg.data)
    check_eval(cfg.eval)
    a = cfg.attack
    for name in check_list("attack.run", a.run, ATTACKS):
        if a[name] is None:
            fail(f"attack.{name}", None, f"settings missing; select them with attack={name} or attack=all")
        ATTACK_CHECKS[name](a[name], f"attack.{name}")


def check_probe(p, key: str) -> None:
    check_list(f"{key}.pooling", p.pooling, ("last_token", "option_mean"))
    if not 0 < check_num(f"{key}.train_fraction", p.train_fraction) < 1:
        fail(f"{key}.train_fraction", p.train_fraction, "must be in (0, 1)")
    check_int(f"{key}.steps", p.steps, 1)
    check_num(f"{key}.lr", p.lr, positive=True)
    check_num(f"{key}.weight_decay", p.weight_decay)


def check_finetune(f, key: str) -> None:
    check_list(f"{key}.modes", f.modes, ("full", "lora"))
    check_list(f"{key}.data", f.data, ("forget", "retain", "unrelated"))
    for name in ("lr_full", "lr_lora"):
        check_list(f"{key}.{name}", f[name], kind="num")
    check_list(f"{key}.lora_r", f.lora_r, kind="int")
    check_list(f"{key}.steps", f.steps, kind="int")
    check_list(f"{key}.schedules", f.schedules, ("constant", "warmup_cosine"))
    check_num(f"{key}.weight_decay", f.weight_decay)
    for name in ("examples", "batch_size", "max_length"):
        check_int(f"{key}.{name}", f[name], 1)


def check_ablate(a, key: str) -> None:
    if a.get("layers") is not None:
        check_list(f"{key}.layers", a.layers)
    check_int(f"{key}.examples", a.examples, 1)
    check_int(f"{key}.max_length", a.max_length, 1)


def check_in_context(c, key: str) -> None:
    for i, k in enumerate(check_list(f"{key}.shots", c.shots)):
        check_int(f"{key}.shots[{i}]", k, 0)


def check_relearn(r, key: str) -> None:
    """heldout_relearn and relearn_speed: a fine-tune's settings, and their splits."""
    if r.mode not in ("full", "lora"):
        fail(f"{key}.mode", r.mode, "allowed: full, lora")
    check_num(f"{key}.lr", r.lr, positive=True)
    steps = check_list(f"{key}.steps", r.steps, kind="int") if isinstance(plain(r.steps), list) else [r.steps]
    for i, k in enumerate(steps):
        check_int(f"{key}.steps" + (f"[{i}]" if len(steps) > 1 else ""), k, 1)
    for name in ("batch_size", "max_length", "lora_r"):
        check_int(f"{key}.{name}", r[name], 1)
    if r.splits is not None or key.endswith("relearn_speed"):
        check_splits(f"{key}.splits", r.splits)


def tamper_adversaries(t, group: str) -> list[dict]:
    """The adversaries of one tamper group as plain dicts, every key of the schema's
    TamperAdversary filled (an entry written in YAML gets its defaults here)."""
    allowed = {f.name for f in dataclasses.fields(TamperAdversary)}
    out = []
    for i, entry in enumerate(plain(t.groups[group])):
        if not isinstance(entry, dict) or set(entry) - allowed:
            fail(f"attack.tamper.groups.{group}[{i}]", entry, f"a mapping with the keys {', '.join(sorted(allowed))}")
        out.append({**OmegaConf.to_container(OmegaConf.structured(TamperAdversary)), **entry})
    missing = [(i, k) for i, e in enumerate(out) for k, v in e.items() if v == "???"]
    if missing:
        i, k = missing[0]
        fail(f"attack.tamper.groups.{group}[{i}].{k}", None, "no value set")
    return out


def check_tamper(t, key: str) -> None:
    """The tamper groups: step counts, and every adversary of every group that runs."""
    check_list(f"{key}.steps", t.steps, kind="int")
    for name in ("examples", "max_length"):
        check_int(f"{key}.{name}", t[name], 1)
    groups = plain(t.groups)
    if not isinstance(groups, dict) or not groups:
        fail(f"{key}.groups", groups, "must map each group name to a list of adversaries")
    for group in check_list(f"{key}.run_groups", t.run_groups, tuple(groups)):
        check_list(f"{key}.groups.{group}", t.groups[group])
        for i, r in enumerate(tamper_adversaries(t, group)):
            at = f"{key}.groups.{group}[{i}]"
            if r["mode"] not in ("full", "lora"):
                fail(f"{at}.mode", r["mode"], "allowed: full, lora")
            if r["data"] not in ("forget", "retain"):
                fail(f"{at}.data", r["data"], "allowed: forget, retain")
            if r["schedule"] not in ("constant", "warmup_cosine"):
                fail(f"{at}.schedule", r["schedule"], "allowed: constant, warmup_cosine")
            check_num(f"{at}.lr", r["lr"], positive=True)
            check_num(f"{at}.weight_decay", r["weight_decay"])
            check_int(f"{at}.batch_size", r["batch_size"], 1)
            check_int(f"{at}.lora_r", r["lora_r"], 1)


ATTACK_CHECKS = {"probe": check_probe, "finetune": check_finetune, "ablate": check_ablate,
                 "ablate_unlearned": check_ablate, "in_context": check_in_context, "heldout_relearn": check_relearn,
                 "relearn_speed": check_relearn, "tamper": check_tamper}


def check_splits(key: str, splits) -> None:
    """A non-empty list of splits with distinct names (their files are read by the plan)."""
    names = [s["name"] for s in check_list(key, splits)]
    if len(set(names)) != len(names):
        fail(key, names, "needs distinct split names")
