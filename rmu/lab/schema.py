"""The keys and types of `python -m rmu.lab`'s config (conf/lab.yaml), registered with
Hydra's ConfigStore as `lab_schema` the way rmu/schema.py registers the other commands'.
The YAML holds the values and says what each means."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class WorldConfig:
    forget_entities: int = MISSING
    retain_entities: int = MISSING
    values_per_relation: int = MISSING
    docs_per_entity: int = MISSING
    filler_per_doc: int = MISSING


@dataclass
class TokenizerConfig:
    vocab_size: int = MISSING


@dataclass
class ArchConfig:
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    num_key_value_heads: int = MISSING


@dataclass
class PretrainConfig:
    steps: int = MISSING
    batch_size: int = MISSING
    seq_len: int = MISSING
    lr: float = MISSING
    warmup: int = MISSING
    final_lr_ratio: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    grad_clip: float = MISSING
    checkpoint_every: int = MISSING


@dataclass
class LabCommand:
    """python -m rmu.lab (conf/lab.yaml)."""
    name: str = MISSING
    dir: str = MISSING
    overwrite: bool = MISSING
    seed: int = MISSING
    model_seed: Optional[int] = MISSING
    device: str = MISSING
    threads: int = MISSING
    progress: bool = MISSING
    eval_batch_size: int = MISSING
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ArchConfig = field(default_factory=ArchConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


ConfigStore.instance().store(name="lab_schema", node=LabCommand)
