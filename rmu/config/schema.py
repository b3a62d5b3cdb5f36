"""The keys and types of every command's config: one dataclass per section, registered
with Hydra's ConfigStore and named first in each command's defaults list (conf/*.yaml).

The YAML files under conf/ hold the values and say what each one means; these classes
say which keys exist and of what type. Hydra rejects a wrong type or an unknown key at
composition; `+key=value` bypasses that, so `check_schema` (rmu/config/checks.py) walks the
composed config against these classes too. `MISSING` marks a value the YAML must give.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

# From a checkout the tree is the top-level conf/; an installed wheel carries it as rmu/conf.
_PACKAGED = Path(__file__).parents[1] / "conf"
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).parents[2] / "conf")


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING
    hub_id: Optional[str] = MISSING
    revision: Optional[str] = MISSING
    dtype: str = MISSING
    device: str = MISSING
    trust_remote_code: bool = MISSING
    arch: Optional[Dict[str, Any]] = MISSING  # free-form: any field of a transformers config


@dataclass
class CorpusConfig:
    name: str = MISSING
    path: Optional[str] = None  # exactly one of path / dataset
    dataset: Optional[str] = None
    subset: Optional[str] = None
    split: Optional[str] = None
    field: Optional[str] = "text"  # null = the raw line (the reference reads the cyber corpus so)
    max_length: int = MISSING


@dataclass
class DataConfig:
    forget: List[CorpusConfig] = MISSING
    retain: List[CorpusConfig] = MISSING
    min_chars: int = MISSING
    strictly_longer: bool = MISSING
    padding_side: str = MISSING
    truncation_side: Optional[str] = MISSING
    fast_tokenizer: bool = MISSING
    pad_with_eos: bool = MISSING


@dataclass
class RmuConfig:
    layer_id: int = MISSING
    update_layers: Optional[List[int]] = MISSING
    update_params: List[str] = MISSING
    steering_coeff: Any = MISSING  # auto | number | one number per topic
    auto_beta: float = MISSING
    alpha: Any = MISSING  # number | one number per topic
    mask_padding: bool = MISSING
    numerics: str = MISSING
    layered: bool = MISSING
    experts: Optional[List[int]] = MISSING


@dataclass
class RobustConfig:
    targets: str = MISSING
    lat_eps: float = MISSING
    lat_steps: int = MISSING
    meta_steps: int = MISSING
    meta_lr: float = MISSING
    meta_attack: str = MISSING
    collapse_components: int = MISSING
    collapse_source: str = MISSING
    collapse_every: int = MISSING
    normalize: bool = MISSING
    mask: bool = MISSING
    mask_ema: float = MISSING


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    eps: float = MISSING
    betas: List[float] = MISSING
    master_weights: bool = MISSING


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING
    progress: bool = MISSING
    save_every: int = MISSING
    one_pass: bool = MISSING


@dataclass
class EvalSetConfig:
    name: str = MISSING
    path: str = MISSING
    role: str = MISSING


@dataclass
class EvalConfig:
    sets: List[EvalSetConfig] = MISSING
    batch_size: int = MISSING


@dataclass
class HarnessConfig:
    tasks: List[str] = MISSING
    num_fewshot: int = MISSING
    batch_size: Any = MISSING  # an integer or auto
    limit: Optional[int] = MISSING


@dataclass
class ExportConfig:
    repo_id: Optional[str] = MISSING
    push: bool = MISSING
    private: bool = MISSING


@dataclass
class LoggerConfig:
    project: str = MISSING
    entity: Optional[str] = MISSING
    name: Optional[str] = MISSING
    tags: List[str] = MISSING


@dataclass
class AdapterConfig:
    r: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    target_modules: List[str] = MISSING
    merge: bool = MISSING


@dataclass
class TrainCommand:
    """python -m rmu.train (conf/train.yaml)."""
    seed: int = MISSING
    output_dir: str = MISSING
    overwrite: bool = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rmu: RmuConfig = field(default_factory=RmuConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    adapter: Optional[AdapterConfig] = None  # adapter=lora
    logger: Optional[LoggerConfig] = None  # logger=wandb


@dataclass
class EvalCommand:
    """python -m rmu.eval (conf/eval.yaml)."""
    seed: int = MISSING
    output_file: Optional[str] = MISSING
    overwrite: bool = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)


@dataclass
class ExportCommand:
    """python -m rmu.export (conf/export.yaml)."""
    checkpoint: Optional[str] = MISSING
    repo_id: Optional[str] = MISSING
    output_dir: Optional[str] = MISSING
    overwrite: bool = MISSING
    push: bool = MISSING
    private: bool = MISSING


@dataclass
class DistillConfig:
    alpha: float = MISSING
    beta: float = MISSING
    lr: float = MISSING
    final_lr_ratio: float = MISSING
    warmup: int = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    master_weights: bool = MISSING
    grad_clip: Optional[float] = MISSING
    max_tokens: int = MISSING
    seq_len: int = MISSING
    forget_fraction: float = MISSING
    hidden_mse: float = MISSING
    retain_ce_gap: Optional[float] = MISSING
    eval_every: int = MISSING
    heldout: int = MISSING


@dataclass
class DistillTrainerConfig:
    batch_size: int = MISSING
    progress: bool = MISSING
    save_every: int = MISSING


@dataclass
class DistillCommand:
    """python -m rmu.distill (conf/distill.yaml)."""
    seed: int = MISSING
    output_dir: str = MISSING
    overwrite: bool = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    trainer: DistillTrainerConfig = field(default_factory=DistillTrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    logger: Optional[LoggerConfig] = None  # logger=wandb


@dataclass
class TarAdversaryConfig:
    data: List[str] = MISSING
    lrs: List[float] = MISSING
    batch_size: int = MISSING
    switch_beta: List[float] = MISSING


@dataclass
class TarConfig:
    safeguard_steps: int = MISSING
    safeguard_lr: float = MISSING
    outer_steps: int = MISSING
    inner_steps: int = MISSING
    tr_every: int = MISSING
    tr_batch_size: int = MISSING
    tr_coef: float = MISSING
    retain_coef: float = MISSING
    lr: float = MISSING
    final_lr_ratio: float = MISSING
    warmup: int = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    master_weights: bool = MISSING
    heldout_fraction: float = MISSING
    adversary: TarAdversaryConfig = field(default_factory=TarAdversaryConfig)


@dataclass
class TarCommand:
    """python -m rmu.tar (conf/tar.yaml)."""
    seed: int = MISSING
    output_dir: str = MISSING
    overwrite: bool = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tar: TarConfig = field(default_factory=TarConfig)
    trainer: DistillTrainerConfig = field(default_factory=DistillTrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    logger: Optional[LoggerConfig] = None  # logger=wandb


@dataclass
class ProbeAttack:
    pooling: List[str] = MISSING
    train_fraction: float = MISSING
    steps: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class FinetuneAttack:
    modes: List[str] = MISSING
    data: List[str] = MISSING
    unrelated: str = MISSING
    examples: int = MISSING
    lr_full: List[float] = MISSING
    lr_lora: List[float] = MISSING
    lora_r: List[int] = MISSING
    steps: List[int] = MISSING  # step counts scored within each run
    schedules: List[str] = MISSING  # constant | warmup_cosine (the durability attacks)
    weight_decay: float = MISSING
    batch_size: int = MISSING
    max_length: int = MISSING


@dataclass
class AblateAttack:
    layers: Optional[List[int]] = MISSING
    examples: int = MISSING
    max_length: int = MISSING


@dataclass
class AblateUnlearnedAttack:
    examples: int = MISSING
    max_length: int = MISSING


@dataclass
class InContextAttack:
    shots: List[int] = MISSING


@dataclass
class SplitConfig:
    """A part of a forget domain whose facts say nothing about the rest (the lab's halves A / B)."""
    name: str = MISSING  # its name in the summary
    train: str = MISSING  # corpus (.jsonl of text) the attack fine-tunes on
    trained: str = MISSING  # multiple-choice questions about the facts of `train`: what the attack teaches
    test: str = MISSING  # multiple-choice questions scored


@dataclass
class HeldoutRelearnAttack:
    mode: str = MISSING
    lr: float = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    max_length: int = MISSING
    lora_r: int = MISSING
    splits: Optional[List[SplitConfig]] = None  # null: halves of each forget set's questions; or fine-tune on documents


@dataclass
class RelearnSpeedAttack:
    splits: List[SplitConfig] = MISSING
    mode: str = MISSING
    lr: float = MISSING
    steps: List[int] = MISSING  # step counts scored within one run
    batch_size: int = MISSING
    max_length: int = MISSING
    lora_r: int = MISSING


@dataclass
class TamperAdversary:
    """One fine-tuning adversary of a tamper group (rmu/attack/tamper.py)."""
    mode: str = MISSING  # full | lora (rank lora_r on every linear layer)
    data: str = MISSING  # forget | retain
    lr: float = MISSING
    batch_size: int = MISSING
    schedule: str = "constant"  # constant | warmup_cosine (10 % warm-up, cosine to 0 over the attack's steps)
    weight_decay: float = 0.0  # AdamW's
    lora_r: int = 8


@dataclass
class TamperAttack:
    steps: List[int] = MISSING  # step counts each group is scored at
    examples: int = MISSING  # texts per corpus, taken in turn from each forget corpus
    max_length: int = MISSING
    run_groups: List[str] = MISSING  # the groups run (names in `groups`)
    groups: Dict[str, List[TamperAdversary]] = MISSING


@dataclass
class AttackConfig:
    run: List[str] = MISSING
    probe: Optional[ProbeAttack] = None  # each attack's settings, selected with attack=<name> or all
    finetune: Optional[FinetuneAttack] = None
    ablate: Optional[AblateAttack] = None
    ablate_unlearned: Optional[AblateUnlearnedAttack] = None
    in_context: Optional[InContextAttack] = None
    heldout_relearn: Optional[HeldoutRelearnAttack] = None
    relearn_speed: Optional[RelearnSpeedAttack] = None
    tamper: Optional[TamperAttack] = None


@dataclass
class AttackCommand:
    """python -m rmu.attack (conf/attack.yaml)."""
    seed: int = MISSING
    output_dir: str = MISSING
    overwrite: bool = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)  # the unlearned model
    base: ModelConfig = field(default_factory=ModelConfig)  # the original, for the controls
    oracle: Optional[ModelConfig] = None  # the data-filtered twin (model@oracle=...): what never learnt the forget data
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    control_cache: Optional[str] = MISSING  # folder of the base-model controls; null = $RMU_CACHE/attack-controls


COMMANDS = {"train": TrainCommand, "eval": EvalCommand, "export": ExportCommand, "attack": AttackCommand,
            "distill": DistillCommand, "tar": TarCommand}


def config_groups(command: str) -> str:
    """The `--help` list of a command's config groups: those its defaults list names (read
    from conf/<command>.yaml), each with its options (the files of conf/<group>/)."""
    conf = Path(CONF_DIR)
    top = yaml.safe_load((conf / f"{command}.yaml").read_text())
    groups = []
    for entry in top.get("defaults", []):
        if not isinstance(entry, dict):
            continue
        key = next(iter(entry))
        if key.startswith("override "):
            continue
        group, _, package = key.partition("@")
        if (conf / group).is_dir() and group not in [g for g, _ in groups]:
            groups.append((group, f" (as {package})" if package else ""))
    if "sweep" in top.get("hydra", {}):
        groups.append(("hydra/launcher", " (-m sweeps; also Hydra's basic, submitit_local, submitit_slurm)"))
    lines = []
    for group, note in groups:
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(options)}{note}")
    return "\n".join(lines)


def lab_dir(name: str) -> str:
    """`${rmu_lab:<name>}` in a config: the folder `python -m rmu.lab` builds the lab `name`
    in ($RMU_CACHE/lab/<name>, RMU_CACHE defaulting to ~/.cache/rmu)."""
    return str(Path(os.environ.get("RMU_CACHE", Path.home() / ".cache" / "rmu")) / "lab" / name)


def _register() -> None:
    store = ConfigStore.instance()
    for name, node in COMMANDS.items():
        store.store(name=f"{name}_schema", node=node)
    if not OmegaConf.has_resolver("rmu_groups"):
        OmegaConf.register_new_resolver("rmu_groups", config_groups)
    if not OmegaConf.has_resolver("rmu_lab"):
        OmegaConf.register_new_resolver("rmu_lab", lab_dir)


_register()
