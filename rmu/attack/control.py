"""The control of every attack: the same attack on the base model, computed once.

An attack that fine-tunes or prompts the model also teaches it the answer format, or the
answers themselves; run on the base model, the same attack shows how far that alone
goes. `resistance = attacked unlearned accuracy − attacked base accuracy`: near or above
0, the attack brings the unlearned model back to where it brings the base model.

The same goes for the oracle (the data-filtered twin, `model@oracle`): what the attack
teaches a model that never learnt the forget data.

The base model is the same for every recipe and seed of a comparison, so its results are
kept in `control_cache` (default `$RMU_CACHE/attack-controls/`, ~/.cache/rmu), keyed by
what they depend on: the base model's config (not its weights: a changed checkpoint at the
same path needs a fresh cache), the sets' items, the attack's settings and data, the seed.
Jobs running at once may each compute the same control; the last write wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

VERSION = 2  # part of every key: raise it when an attack's computation changes


class ControlCache:
    """Results of attacks on one reference model (`model_cfg`: the base model, or the oracle)."""

    def __init__(self, cfg, model_cfg):
        default = Path(os.environ.get("RMU_CACHE", Path.home() / ".cache" / "rmu")) / "attack-controls"
        self.root = Path(cfg.control_cache) if cfg.control_cache else default
        self.common = {"version": VERSION, "model": OmegaConf.to_container(model_cfg, resolve=True), "seed": cfg.seed,
                       "data": OmegaConf.to_container(cfg.data, resolve=True)}
        self.hits = self.misses = 0

    def _path(self, attack: str, settings, sets) -> Path:
        items = [(name, role, [(i.question, i.choices, i.answer) for i in s]) for name, role, s in sets]
        key = json.dumps({**self.common, "attack": attack, "settings": settings, "sets": items}, sort_keys=True,
                         default=str)
        return self.root / f"{attack}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"

    def get(self, attack: str, settings, sets, compute):
        """The cached result of `compute()` (JSON-able) for this attack on the base model."""
        path = self._path(attack, settings, sets)
        if path.is_file():
            self.hits += 1
            return json.loads(path.read_text())
        self.misses += 1
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value))
        os.replace(tmp, path)  # atomic: jobs computing the same control at once never leave half a file
        return value
