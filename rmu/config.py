"""Where the Hydra config tree lives, and the checks a run passes before any model loads.

Every check names the key, the bad value and what is allowed. `check_train` returns a
`Plan`: the config resolved into per-topic lists and full parameter names, with the
corpora already read, so the training loop does no interpretation of its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from rmu import data as data_mod
from rmu import models
from rmu.adapters import module_names_per_layer

# From a checkout the tree is the top-level conf/; an installed wheel carries it as rmu/conf.
_PACKAGED = Path(__file__).parent / "conf"
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).parent.parent / "conf")

KEYS = {
    "train": {"seed", "output_dir", "overwrite", "model", "data", "rmu", "optim", "trainer", "eval", "harness", "adapter",
              "export", "logger"},
    "eval_cli": {"seed", "output_file", "model", "eval", "harness"},
    "model": {"name", "path", "hub_id", "revision", "dtype", "device", "trust_remote_code", "arch"},
    "data": {"forget", "retain", "min_chars", "padding_side"},
    "rmu": {"layer_id", "update_layers", "update_params", "steering_coeff", "auto_beta", "alpha", "mask_padding"},
    "optim": {"lr", "weight_decay", "eps", "betas", "master_weights"},
    "trainer": {"max_steps", "batch_size", "progress", "save_every"},
    "eval": {"sets", "batch_size"},
    "eval_set": {"name", "path", "role"},
    "harness": {"tasks", "num_fewshot", "batch_size", "limit"},
    "export": {"repo_id", "push", "private"},
    "export_cli": {"checkpoint", "repo_id", "output_dir", "push", "private", "overwrite"},
    "attack_cli": {"seed", "output_dir", "overwrite", "model", "base", "data", "eval", "attack"},
    "attack": {"run", "probe", "finetune", "ablate", "heldout_relearn"},
    "logger": {"project", "entity", "name", "tags"},
    "adapter": {"r", "alpha", "dropout", "target_modules", "merge"},
}


class ConfigError(ValueError):
    """A config value that cannot work; raised before any model is loaded."""


@dataclass
class Plan:
    topics: list[str]
    forget: list[data_mod.Corpus]
    retain: list[data_mod.Corpus]  # one per topic (a single retain corpus is shared)
    layer_id: int
    update_layers: list[int]
    update_names: list[str]  # full parameter names, e.g. model.layers.5.mlp.down_proj.weight
    steering_coeff: list[float] | None  # None: auto, measured on the first forget batch
    alpha: list[float]
    eval_sets: list[tuple[str, str, list[data_mod.MCQItem]]]  # (name, role, items)
    hidden_size: int


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(value) -> bool:
    """<owner>/<name> as the Hub allows it (no local paths, no ./ or ../)."""
    return isinstance(value, str) and REPO_ID.fullmatch(value) is not None and ".." not in value


def fail(key: str, value, allowed: str):
    raise ConfigError(f"{key}={value!r}: {allowed}")


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def check_keys(node, section: str, where: str):
    unknown = sorted(set(node.keys()) - KEYS[section])
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; allowed under {where or 'the top level'}: "
                          f"{', '.join(sorted(KEYS[section]))}")


def _int(key, v, lo=None, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        fail(key, v, f"must be an integer {rng}")
    return v


def _num(key, v, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        fail(key, v, f"must be a finite number {'> 0' if positive else '>= 0'}")
    return float(v)


def _bool(key, v):
    if not isinstance(v, bool):
        fail(key, v, "must be true or false")
    return v


def _per_topic(key, v, n, positive) -> list[float]:
    """A number broadcast to all topics, or a list with one number per topic."""
    v = _plain(v)
    if isinstance(v, list):
        if len(v) != n:
            fail(key, v, f"needs one value per forget topic: {n} values (or a single number), got {len(v)}")
        return [_num(f"{key}[{i}]", x, positive) for i, x in enumerate(v)]
    return [_num(key, v, positive)] * n


def check_model(m):
    check_keys(m, "model", "model")
    if not isinstance(m.path, str) or not m.path:
        fail("model.path", m.path, "must be a Hugging Face id, a local folder, a .gguf file or gguf://<package>/<file>")
    if m.dtype not in models.DTYPES:
        fail("model.dtype", m.dtype, f"allowed: {', '.join(models.DTYPES)}")
    if not isinstance(m.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", m.device):
        fail("model.device", m.device, "allowed: auto, cpu, cuda, cuda:N, mps")
    if m.device.startswith("cuda") and not torch.cuda.is_available():
        fail("model.device", m.device, "CUDA is not available here; use auto or cpu")
    _bool("model.trust_remote_code", m.trust_remote_code)
    if m.hub_id is not None and not is_repo_id(m.hub_id):
        fail("model.hub_id", m.hub_id, "must be null or a Hub id <owner>/<name>")
    if m.arch is not None and (not isinstance(m.arch, DictConfig) or "model_type" not in m.arch):
        fail("model.arch", _plain(m.arch), "must be null or a dict of config fields including model_type")


def check_eval(e):
    """The eval section's keys and values (no file is read)."""
    check_keys(e, "eval", "eval")
    _int("eval.batch_size", e.batch_size, 1)
    for i, s in enumerate(e.sets):
        check_keys(s, "eval_set", f"eval.sets[{i}]")
        if s.get("role") not in ("forget", "retain"):
            fail(f"eval.sets[{i}].role", s.get("role"), "allowed: forget, retain")


def check_harness(h, look_up_tasks: bool = True):
    """The harness section; with `look_up_tasks`, that lm-eval is installed and knows every
    task (reads task YAMLs only: no data, no model)."""
    check_keys(h, "harness", "harness")
    tasks = _plain(h.tasks)
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        fail("harness.tasks", tasks, "must be a list of lm-eval task or group names, e.g. [wmdp_bio,mmlu]")
    _int("harness.num_fewshot", h.num_fewshot, 0)
    if h.batch_size != "auto":
        _int("harness.batch_size", h.batch_size, 1)
    if h.limit is not None:
        _int("harness.limit", h.limit, 1)
    if not tasks or not look_up_tasks:
        return
    try:
        from rmu.harness import unknown_tasks
        unknown = unknown_tasks(tasks)
    except ImportError:
        fail("harness.tasks", tasks, "needs lm-evaluation-harness: pip install 'rmu[eval]'")
    if unknown:
        fail("harness.tasks", tasks, f"lm-eval knows no task or group {unknown[0]!r} (bundled sets: rmu_chem, "
                                     "rmu_astro, rmu_general, group rmu_bundled; lm-eval's task list has the rest)")


def load_eval_sets(e) -> list[tuple[str, str, list[data_mod.MCQItem]]]:
    return [(s.name, s.role, data_mod.load_mcq(s.path)) for s in e.sets]


def _check_corpus(entry, key) -> dict:
    entry = _plain(entry)
    if not isinstance(entry, dict):
        fail(key, entry, "must be a mapping with name, path or dataset, max_length")
    unknown = sorted(set(entry) - data_mod.CORPUS_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key '{key}.{unknown[0]}'; allowed: {', '.join(sorted(data_mod.CORPUS_KEYS))}")
    if not entry.get("name"):
        fail(f"{key}.name", entry.get("name"), "every corpus needs a name")
    if bool(entry.get("path")) == bool(entry.get("dataset")):
        fail(key, entry, "set exactly one of `path` (local file) or `dataset` (datasets id or folder)")
    _int(f"{key}.max_length", entry.get("max_length"), 1)
    return entry


def check_adapter(a):
    check_keys(a, "adapter", "adapter")
    _int("adapter.r", a.r, 1)
    _num("adapter.alpha", a.alpha, positive=True)
    if not _num("adapter.dropout", a.dropout) < 1:
        fail("adapter.dropout", a.dropout, "must be in [0, 1)")
    targets = _plain(a.target_modules)
    if not isinstance(targets, list) or not targets or not all(isinstance(x, str) and x for x in targets):
        fail("adapter.target_modules", targets, "must be a non-empty list of module names, e.g. [down_proj]")
    _bool("adapter.merge", a.merge)


def check_export_target(e, where: str):
    """repo_id, push and private of an export (train's `export.*` or rmu.export's top level)."""
    if where and e.repo_id is None:
        if e.push:
            fail(f"{where}push", True, f"needs {where}repo_id")
        return
    if not is_repo_id(e.repo_id):
        fail(f"{where}repo_id", e.repo_id, "must be a Hub repo id <user or org>/<name>")
    _bool(f"{where}push", e.push)
    _bool(f"{where}private", e.private)
    if e.push:
        from huggingface_hub import get_token

        if not get_token():  # from HF_TOKEN or a saved login; its value is never printed
            fail(f"{where}push", True, "no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                                       "(or push=false to only prepare the folder)")


def read_model_config(mcfg, key: str):
    """The model's config (no weights), or a ConfigError naming `<key>.path`."""
    try:
        return models.read_config(mcfg)
    except (OSError, ValueError) as e:  # no such folder / Hub id, no network, unknown architecture
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"{key}.path", mcfg.path, f"cannot read the model's config ({first_line})")


def check_output_dir(path: str, overwrite: bool):
    p = Path(path)
    if p.exists() and not p.is_dir():
        fail("output_dir", path, "exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        fail("output_dir", path, "already exists and is not empty; choose another output_dir or set overwrite=true")


def check_values(cfg: DictConfig) -> dict:
    """Keys and values alone: no file, no network. Returns the values resolved per topic."""
    check_keys(cfg, "train", "")
    for section in ("data", "rmu", "optim", "trainer"):
        check_keys(cfg[section], section, section)
    _int("seed", cfg.seed, 0)
    _bool("overwrite", cfg.overwrite)
    if not isinstance(cfg.output_dir, str) or not cfg.output_dir:
        fail("output_dir", cfg.output_dir, "must be a folder path")
    check_model(cfg.model)

    d, r, o, t = cfg.data, cfg.rmu, cfg.optim, cfg.trainer
    if not isinstance(d.forget, ListConfig) or len(d.forget) == 0:
        fail("data.forget", _plain(d.forget), "must be a non-empty list of corpora, one per forget topic")
    forget_entries = [_check_corpus(e, f"data.forget[{i}]") for i, e in enumerate(d.forget)]
    n = len(forget_entries)
    names = [e["name"] for e in forget_entries]
    if len(set(names)) != n:
        fail("data.forget", names, "forget topics need distinct names")
    if not isinstance(d.retain, ListConfig) or len(d.retain) not in (1, n):
        fail("data.retain", _plain(d.retain), f"must be a list of 1 corpus (shared) or {n} (one per forget topic)")
    retain_entries = [_check_corpus(e, f"data.retain[{i}]") for i, e in enumerate(d.retain)]
    _int("data.min_chars", d.min_chars, 0)
    if d.padding_side not in ("left", "right"):
        fail("data.padding_side", d.padding_side, "allowed: left, right")

    layer_id = _int("rmu.layer_id", r.layer_id, 0)
    update_layers = _plain(r.update_layers)
    if update_layers is None:
        update_layers = list(range(max(0, layer_id - 2), layer_id + 1))
    elif not isinstance(update_layers, list) or not update_layers:
        fail("rmu.update_layers", update_layers, "must be null or a non-empty list of layer indices")
    patterns = _plain(r.update_params)
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        fail("rmu.update_params", patterns, "must be a non-empty list of name patterns (glob, or re:<regex>)")
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                fail("rmu.update_params", p, f"invalid regular expression ({e})")
    if isinstance(r.steering_coeff, str) and r.steering_coeff != "auto":
        fail("rmu.steering_coeff", r.steering_coeff, "allowed: auto, a number > 0, or a list of one per forget topic")
    auto = r.steering_coeff == "auto"
    steering = None if auto else _per_topic("rmu.steering_coeff", r.steering_coeff, n, positive=True)
    _num("rmu.auto_beta", r.auto_beta, positive=True)
    alpha = _per_topic("rmu.alpha", r.alpha, n, positive=False)
    _bool("rmu.mask_padding", r.mask_padding)

    _num("optim.lr", o.lr, positive=True)
    _num("optim.weight_decay", o.weight_decay)
    _num("optim.eps", o.eps, positive=True)
    betas = _plain(o.betas)
    if not (isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        fail("optim.betas", betas, "must be two numbers in [0, 1)")
    if not _bool("optim.master_weights", o.master_weights) and cfg.model.dtype == "float16":
        fail("optim.master_weights", False, "float16 needs true: AdamW's second moment underflows in float16 "
                                            "(use model.dtype=bfloat16 to update half-precision tensors in place)")
    if cfg.adapter is not None:
        check_adapter(cfg.adapter)
    _int("trainer.max_steps", t.max_steps, 1)
    _int("trainer.batch_size", t.batch_size, 1)
    _bool("trainer.progress", t.progress)
    _int("trainer.save_every", t.save_every, 0)
    check_eval(cfg.eval)
    check_harness(cfg.harness, look_up_tasks=False)
    check_keys(cfg.export, "export", "export")
    if cfg.logger is not None:
        check_keys(cfg.logger, "logger", "logger")
        if not isinstance(cfg.logger.project, str) or not cfg.logger.project:
            fail("logger.project", cfg.logger.project, "must be a wandb project name")
        try:
            import wandb  # noqa: F401
        except ImportError:
            fail("logger", "wandb", "needs the wandb package: pip install wandb")
    check_export_target(cfg.export, "export.")
    return dict(forget=forget_entries, retain=retain_entries, layer_id=layer_id, update_layers=update_layers,
                patterns=patterns, steering=steering, alpha=alpha)


def check_fsdp(cfg: DictConfig) -> None:
    """What FSDP (rmu/distributed.py) does not cover; checked before the model loads."""
    if cfg.adapter is not None:
        fail("adapter", "lora", "LoRA is not supported under FSDP; use adapter=none")
    if cfg.harness.tasks:
        fail("harness.tasks", _plain(cfg.harness.tasks), "lm-eval does not run on a sharded model: use harness.tasks=[] "
                                                         "and run `python -m rmu.eval` on the written model")


def check_train(cfg: DictConfig) -> Plan:
    """Everything that can be checked without loading weights, in the order a user would
    want to hear about it: keys and values, the output folder, the data, the model layout."""
    v = check_values(cfg)
    forget_entries, retain_entries, layer_id = v["forget"], v["retain"], v["layer_id"]
    update_layers, patterns, n = v["update_layers"], v["patterns"], len(v["forget"])
    eval_sets = load_eval_sets(cfg.eval)
    check_harness(cfg.harness)
    check_output_dir(cfg.output_dir, cfg.overwrite)
    if cfg.export.repo_id:
        check_output_dir(cfg.output_dir.rstrip("/") + "-hub", cfg.overwrite)

    forget = [data_mod.load_corpus(e, cfg.data.min_chars) for e in forget_entries]
    retain = [data_mod.load_corpus(e, cfg.data.min_chars) for e in retain_entries]
    if len(retain) == 1:
        retain = retain * n

    config = read_model_config(cfg.model, "model")
    n_layers = config.num_hidden_layers
    if layer_id >= n_layers:
        fail("rmu.layer_id", layer_id, f"must be in 0..{n_layers - 1} (the model has {n_layers} decoder layers)")
    for i, layer in enumerate(update_layers):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= layer_id:
            fail(f"rmu.update_layers[{i}]", layer, f"must be a layer index in 0..{layer_id} (at or below rmu.layer_id: "
                                                  "later layers do not affect the hooked activations)")
    names, prefix = models.parameter_layout(config)
    if cfg.adapter is not None:  # LoRA: the weights of the target modules are what merging changes
        targets = list(cfg.adapter.target_modules)
        for layer in update_layers:
            available = module_names_per_layer(names, prefix, layer)
            missing = [t for t in targets if t not in available]
            if missing:
                fail("adapter.target_modules", targets, f"layer {layer} has no module {missing[0]!r}; its modules "
                                                        f"with weights are: {', '.join(available)}")
        patterns = [rf"re:(.*\.)?{re.escape(t)}\.weight" for t in targets]
    update_names = models.select_parameter_names(names, prefix, update_layers, patterns)
    for layer in update_layers:
        in_layer = [x for x in update_names if x.startswith(f"{prefix}.{layer}.")]
        if not in_layer:
            available = sorted({x[len(f"{prefix}.{layer}."):] for x in names if x.startswith(f"{prefix}.{layer}.")})
            fail("rmu.update_params", patterns, f"matches no parameter of layer {layer}; its parameters are: "
                                                f"{', '.join(available)}")

    return Plan(topics=[c.name for c in forget], forget=forget, retain=retain, layer_id=layer_id,
                update_layers=update_layers, update_names=update_names, steering_coeff=v["steering"], alpha=v["alpha"],
                eval_sets=eval_sets, hidden_size=config.hidden_size)
