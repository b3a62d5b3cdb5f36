"""From a checked config to what a run needs, reading every file it can before any
weights load: the corpora, the multiple-choice sets, the model's layout (its config on the
meta device), lm-eval's task list, the output folder.

`plan_train` returns a `Plan`: per-topic lists and full parameter names, the corpora
already read, so the training loop does no interpretation of its own. `plan_attack` does
the same for `python -m rmu.attack`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from rmu import data as data_mod
from rmu.models import loading as models
from rmu.models import architectures
from rmu.models.weights import check_weights
from rmu.run.checkpoint import check_output_dir, check_writable
from rmu.run.memory import check_memory, longest
from rmu.run.storage import describe, storage_parts
from rmu.config.checks import check_attack_values, check_train_values, fail, plain
from rmu.evaluation.results import RunResults


@dataclass
class Plan:
    topics: list[str]
    forget: list[data_mod.Corpus]
    retain: list[data_mod.Corpus]  # one per topic (a single retain corpus is shared)
    layer_id: int
    update_layers: list[int]
    update_names: list[str]  # full parameter names, e.g. model.layers.5.mlp.down_proj.weight
    lora_targets: list[str] | None  # adapter=lora: peft target_modules, `auto` resolved (rmu/models/architectures.py)
    lora_parameters: list[str] | None  # adapter=lora: fused expert tensors (relative to a layer), peft target_parameters
    layers_prefix: str  # where the decoder layers are, e.g. model.layers (GPT-2: transformer.h)
    steering_coeff: list[float] | None  # None: auto, measured on the first forget batch
    alpha: list[float]
    eval_sets: list[tuple[str, str, list[data_mod.MCQItem]]]  # (name, role, items)
    hidden_size: int
    steps: int  # trainer.max_steps, or with trainer.one_pass the batches of the shortest corpus if fewer


@dataclass
class AttackPlan:
    sets: list[tuple[str, str, list[data_mod.MCQItem]]]
    forget: list[data_mod.Corpus]  # empty, and retain None, when no attack of the run reads corpora
    retain: data_mod.Corpus | None  # every retain corpus of `data`, as one
    unrelated: data_mod.Corpus | None  # attack.finetune.unrelated, when the fine-tune grid runs
    ablate_layers: list[int] | None  # the edited layers, when the ablation runs
    # name -> (texts fine-tuned on, questions about them, questions scored), for heldout_relearn
    # with splits and relearn_speed
    splits: dict[str, tuple[list[str], list, list]] = field(default_factory=dict)


def read_model_config(mcfg, key: str):
    """The model's config (no weights), or a ConfigError naming `<key>.path`: also when the
    model is not what it claims to be (models are what they claim, README "Nothing lost"):
    a folder of weights that `<key>.arch` would ignore, not a decoder-only causal LM,
    damaged or truncated weights (rmu/models/weights.py)."""
    local = Path(mcfg.path).expanduser() if models.looks_local(mcfg.path) else None
    if mcfg.arch is not None and local is not None and local.is_dir() and models.weight_files(local):
        fail(f"{key}.path", mcfg.path, f"holds a model's weights ({models.weight_files(local)[0]}), but {key}.arch is "
                                       f"set, which builds a randomly initialised {mcfg.arch.get('model_type')} model "
                                       f"and reads only the tokenizer from this folder; add {key}.arch=null to use "
                                       f"these weights (or, for a random model, point {key}.path at a folder holding "
                                       f"only the tokenizer)")
    try:
        config = models.read_config(mcfg)
    except (OSError, ValueError) as e:  # no such folder / Hub id, no network, unknown architecture
        if "custom code" in str(e) and not mcfg.trust_remote_code:
            fail(f"{key}.path", mcfg.path, f"holds custom model code, which rmu runs only with "
                                           f"{key}.trust_remote_code=true (set it only for code you trust)")
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"{key}.path", mcfg.path, f"cannot read the model's config ({first_line})")
    problem = models.not_a_causal_lm(config, mcfg.trust_remote_code)
    if problem:
        fail(f"{key}.path" if mcfg.arch is None else f"{key}.arch", mcfg.path if mcfg.arch is None else plain(mcfg.arch),
             f"{problem}; rmu needs a decoder-only causal language model (…ForCausalLM: Llama, Mistral, Qwen, GPT-2, …)")
    if mcfg.arch is None and local is not None:
        check_weights(local, f"{key}.path")
    return config


def load_eval_sets(e) -> list[tuple[str, str, list[data_mod.MCQItem]]]:
    return [(s.name, s.role, data_mod.load_mcq(s.path)) for s in e.sets]


def look_up_harness_tasks(h) -> None:
    """That lm-eval is installed and knows every task (reads task YAMLs only: no data, no model)."""
    tasks = list(h.tasks)
    if not tasks:
        return
    try:
        from rmu.evaluation.harness import unknown_tasks
        unknown = unknown_tasks(tasks)
    except ImportError:
        fail("harness.tasks", tasks, "needs lm-evaluation-harness: pip install 'rmu[eval]'")
    if unknown:
        fail("harness.tasks", tasks, f"lm-eval knows no task or group {unknown[0]!r} (bundled sets: rmu_chem, "
                                     "rmu_astro, rmu_general, group rmu_bundled; lm-eval's task list has the rest)")


def load_corpora(d) -> tuple[list[data_mod.Corpus], list[data_mod.Corpus]]:
    """(forget corpora, retain corpora), one retain corpus per forget topic."""
    forget = [data_mod.load_corpus(plain(e), d.min_chars, d.strictly_longer) for e in d.forget]
    retain = [data_mod.load_corpus(plain(e), d.min_chars, d.strictly_longer) for e in d.retain]
    return forget, retain * len(forget) if len(retain) == 1 else retain


def layer_modules(names, prefix: str, layer: int) -> list[str]:
    """Paths of the modules holding a weight in decoder layer `layer`, relative to it
    (self_attn.q_proj, mlp.c_proj, …): what peft's target_modules are matched against."""
    start = f"{prefix}.{layer}."
    return sorted({n[len(start):].rsplit(".", 1)[0] for n in names if n.startswith(start) and n.endswith(".weight")})


def update_names(cfg: DictConfig, config, layer_id: int, update_layers: list[int]) \
        -> tuple[list[str], dict, list[str] | None, list[str] | None, str]:
    """(full names of the tensors a step updates (LoRA: the weights merging changes), checked
    against the model's layout; {every parameter's name: its number of elements}; LoRA's
    target modules; the decoder layers' prefix). `auto` entries are resolved by
    architecture (rmu/models/architectures.py)."""
    n_layers = config.num_hidden_layers
    if layer_id >= n_layers:
        fail("rmu.layer_id", layer_id, f"must be in 0..{n_layers - 1} (the model has {n_layers} decoder layers)")
    for i, layer in enumerate(update_layers):
        if not 0 <= layer <= layer_id:
            fail(f"rmu.update_layers[{i}]", layer, f"must be a layer index in 0..{layer_id} (at or below rmu.layer_id: "
                                                  "later layers do not affect the hooked activations)")
    names, prefix = models.parameter_layout(config, cfg.model.trust_remote_code)
    in_layer = [n[len(f"{prefix}.0."):] for n in names if n.startswith(f"{prefix}.0.")]
    patterns = list(cfg.rmu.update_params)
    if cfg.adapter is None:  # under LoRA the targets decide
        try:
            patterns = architectures.resolve(patterns, config.model_type, in_layer, lora=False)
        except ValueError as e:
            fail("rmu.update_params", plain(cfg.rmu.update_params), str(e))
    targets = fused = None
    if cfg.adapter is not None:
        asked = list(cfg.adapter.target_modules)
        try:
            fused = architectures.lora_parameters(asked, config.model_type, in_layer)
            targets = [t for t in architectures.resolve(asked, config.model_type, in_layer, lora=True)
                       if t not in fused]
        except ValueError as e:
            fail("adapter.target_modules", plain(cfg.adapter.target_modules), str(e))
        for layer in update_layers:
            available = layer_modules(names, prefix, layer)
            missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in available)]
            if missing:
                fail("adapter.target_modules", targets, f"layer {layer} has no module {missing[0]!r}; its modules "
                                                        f"with weights are: {', '.join(available)}")
        patterns = [rf"re:(.*\.)?{re.escape(t)}\.weight" for t in targets] + fused
    chosen = models.select_parameter_names(names, prefix, update_layers, patterns)
    for layer in update_layers:
        if not any(x.startswith(f"{prefix}.{layer}.") for x in chosen):
            available = sorted({x[len(f"{prefix}.{layer}."):] for x in names if x.startswith(f"{prefix}.{layer}.")})
            fail("rmu.update_params", patterns, f"matches no parameter of layer {layer}; its parameters are: "
                                                f"{', '.join(available)}")
    return chosen, names, targets, fused, prefix


def check_experts(cfg: DictConfig, config, names: list[str]) -> None:
    """rmu.experts: the updated tensors include fused routed experts, and the indices exist."""
    experts = plain(cfg.rmu.experts)
    if experts is None:
        return
    if cfg.adapter is not None:
        fail("rmu.experts", experts, "chooses experts of full updates; LoRA adapts every expert of a fused tensor")
    if not any(architectures.fused_experts(n) for n in names):
        fail("rmu.experts", experts, f"the updated tensors hold no routed experts ({names[0]}, …)")
    n = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if n is None:
        fail("rmu.experts", experts, f"{config.model_type}'s config names no number of experts")
    if max(experts) >= n:
        fail("rmu.experts", experts, f"must be expert indices in 0..{n - 1} (the model has {n} routed experts)")


def plan_train(cfg: DictConfig) -> Plan:
    """Everything that can be checked without loading weights, in the order a user would
    want to hear about it: keys and values, the output folder, the data, the model layout."""
    v = check_train_values(cfg)
    eval_sets = load_eval_sets(cfg.eval)
    look_up_harness_tasks(cfg.harness)
    check_output_dir(cfg.output_dir, cfg.overwrite, protected=(cfg.model.path,))
    if cfg.export.repo_id:
        check_output_dir(cfg.output_dir.rstrip("/") + "-hub", cfg.overwrite, protected=(cfg.model.path,),
                         key="output_dir (its -hub folder)")
    forget, retain = load_corpora(cfg.data)
    steps = cfg.trainer.max_steps
    if cfg.trainer.one_pass:  # the reference: one pass over the shortest corpus at most
        steps = min(steps, *(data_mod.n_batches(c, cfg.trainer.batch_size) for c in forget + retain))
    config = read_model_config(cfg.model, "model")
    names, sizes, targets, fused, prefix = update_names(cfg, config, v["layer_id"], v["update_layers"])
    # Everything the run writes (rmu/run/storage.py): the output folder, its Hub copy, and
    # a resume state beside it (a signal after the last step, or a full disk at the end, saves one).
    parts = storage_parts(cfg, config, sizes, names, steps)
    check_writable(cfg.output_dir, sum(parts.values()),
                   what=f"the run ({describe(parts)}; weights in {cfg.model.dtype})")
    # The memory of the device it runs on (rmu/run/memory.py), before any weights load.
    check_memory(cfg, config, sum(sizes.values()), sum(sizes[n] for n in names),
                 v["layer_id"] - min(v["update_layers"]) + 1, longest(forget), longest(retain))
    check_experts(cfg, config, names)
    not_linear = [n for n in names if not n.endswith(".weight") or "norm" in n.rsplit(".", 2)[-2]]
    if cfg.robust.collapse_components and not_linear:
        fail("rmu.update_params", plain(cfg.rmu.update_params), f"robust.collapse_components projects weight matrices "
                                                                f"of linear layers; {not_linear[0]} is not one")
    return Plan(topics=[c.name for c in forget], forget=forget, retain=retain, layer_id=v["layer_id"],
                update_layers=v["update_layers"], update_names=names, lora_targets=targets, lora_parameters=fused,
                layers_prefix=prefix,
                steering_coeff=v["steering"], alpha=v["alpha"],
                eval_sets=eval_sets, hidden_size=config.hidden_size, steps=steps)


def plan_attack(cfg: DictConfig) -> AttackPlan:
    """The attack command's checks and files, before any model loads."""
    check_attack_values(cfg)
    oracle = cfg.oracle.path if cfg.oracle is not None else None
    check_output_dir(cfg.output_dir, cfg.overwrite, protected=(cfg.model.path, cfg.base.path, oracle))
    check_writable(cfg.output_dir)
    sets = load_eval_sets(cfg.eval)
    if not sets:
        fail("eval.sets", [], "the attacks need multiple-choice sets with forget / retain roles")
    a = cfg.attack
    # The fine-tune grid, the tamper groups and the ablations read the corpora; the probe, the in-context attack
    # and held-out relearning do not.
    forget, retain = (load_corpora(cfg.data) if {"finetune", "ablate", "ablate_unlearned", "tamper"} & set(a.run)
                      else ([], []))
    unrelated = None
    if "finetune" in a.run:
        entry = {"name": "unrelated", "path": a.finetune.unrelated, "max_length": a.finetune.max_length}
        if not data_mod.resolve_path(a.finetune.unrelated).is_file():
            fail("attack.finetune.unrelated", a.finetune.unrelated, "no such file (a .jsonl with a text field, "
                                                                    "or bundled:<file>)")
        unrelated = data_mod.load_corpus(entry, cfg.data.min_chars, cfg.data.strictly_longer)
    read_model_config(cfg.model, "model")
    read_model_config(cfg.base, "base")
    if cfg.oracle is not None:
        read_model_config(cfg.oracle, "oracle")
    layers = None
    if "ablate" in a.run:
        layers = plain(a.ablate.layers)
        if layers is None:  # the layers the run edited, from its results.json
            run = Path(cfg.model.path)
            if not (run / "results.json").is_file():
                fail("attack.ablate.layers", None, f"no {run / 'results.json'} to read the edited layers from; "
                                                   "set the layers")
            layers = RunResults.read(run).update_layers
    retain = list({id(c): c for c in retain}.values())  # one per forget topic, often the same corpus repeated
    merged = data_mod.Corpus(name="+".join(c.name for c in retain), texts=[x for c in retain for x in c.texts],
                             max_length=max(c.max_length for c in retain)) if retain else None
    splits = {}
    for name in ("heldout_relearn", "relearn_speed"):
        if name in a.run and a[name].splits is not None:
            for s in a[name].splits:
                entry = {"name": s.name, "path": s.train, "max_length": a[name].max_length}
                texts = data_mod.load_corpus(entry, cfg.data.min_chars, cfg.data.strictly_longer).texts
                splits[s.name] = (texts, data_mod.load_mcq(s.trained), data_mod.load_mcq(s.test))
    return AttackPlan(sets=sets, forget=forget, retain=merged, unrelated=unrelated, ablate_layers=layers,
                      splits=splits)
