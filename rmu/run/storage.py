"""How much disk a training run writes, estimated before any weights load
(rmu/config/plan.py checks it with `check_writable`): the output folder (weights in the
model dtype, the tokenizer, configs, metrics, report), a resume state beside it (a signal
after the last step, or a failure to write at the end, saves one), and the Hub folder
when `export.repo_id` is set. `check_writable` adds a margin (5 % and 16 MiB).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from rmu.models import loading as models

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt", "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
UNKNOWN_TOKENIZER = 32 * 2 ** 20  # a tokenizer on the Hub, not read before loading: a generous allowance
REPORT = 2 ** 20  # report.png, report.md, results.json, configs, control vectors


def _tokenizer_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in TOKENIZER_FILES if (folder / f).is_file())


@lru_cache(maxsize=8)
def _arch_tokenizer(path: str, revision: str | None, trust_remote_code: bool) -> tuple[int | None, int]:
    try:
        tok = models.load_tokenizer(OmegaConf.create({"path": path, "revision": revision,
                                                      "trust_remote_code": trust_remote_code}))
    except Exception:  # noqa: BLE001 - loading the model reports it in its own words
        return None, UNKNOWN_TOKENIZER
    folder = Path(tok.name_or_path)
    return len(tok), _tokenizer_bytes(folder) if folder.is_dir() else UNKNOWN_TOKENIZER


def _tokenizer(cfg) -> tuple[int | None, int]:
    """(the vocabulary a random `model.arch` model gets, or None; the tokenizer's bytes)."""
    if cfg.model.arch is not None:  # the model's embeddings are as large as the tokenizer's vocabulary
        return _arch_tokenizer(str(cfg.model.path), cfg.model.revision, bool(cfg.model.trust_remote_code))
    path = Path(str(cfg.model.path)).expanduser()
    if models.looks_local(str(cfg.model.path)) and path.is_dir():
        return None, _tokenizer_bytes(path)
    return None, UNKNOWN_TOKENIZER


def storage_parts(cfg, config, sizes: dict[str, int], updated: list[str], steps: int) -> dict[str, int]:
    """Bytes by part of what a training run writes: the output folder's weights (under
    unmerged LoRA: the adapter), tokenizer, report and logs, the resume state (the updated
    tensors with AdamW's two moments, and float32 masters in half precision), and the Hub
    folder (a copy of the output folder) when `export.repo_id` is set."""
    width = 4 if cfg.model.dtype == "float32" else 2
    n_updated = sum(sizes[n] for n in updated)
    vocab, tokenizer = _tokenizer(cfg)
    n_params = sum(sizes.values())
    if vocab is not None and getattr(config, "vocab_size", None):  # the tables grow to the tokenizer's vocabulary
        tables = 1 if getattr(config, "tie_word_embeddings", True) else 2
        n_params += (vocab - config.vocab_size) * config.hidden_size * tables
    weights = n_updated * width if cfg.adapter is not None and not cfg.adapter.merge else n_params * width
    parts = {"weights": weights, "tokenizer": tokenizer, "report and logs": REPORT + 512 * steps,
             "resume state": n_updated * (width + 8 + (4 if width == 2 and cfg.optim.master_weights else 0))}
    if cfg.export.repo_id:
        parts["Hub folder"] = weights + tokenizer + REPORT + 512 * steps
    return parts


def describe(parts: dict[str, int]) -> str:
    from rmu.run.checkpoint import human

    return ", ".join(f"{k} {human(v)}" for k, v in parts.items() if v)
