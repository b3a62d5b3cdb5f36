"""Building the lab: world → tokenizer → `lab_base` and `lab_filtered` → scores, cached.

Everything lands in one folder (`dir`, by default `$RMU_CACHE/lab/<name>`):

| path | written by |
|---|---|
| `world/` | rmu/lab/world.py: corpora, multiple-choice sets, `world.json` |
| `tokenizer/` | rmu/lab/tokenizer.py |
| `lab_base/`, `lab_filtered/` | rmu/lab/pretrain.py: Hugging Face model folders |
| `build.json` | the config and its fingerprint, written first: which config this folder belongs to |
| `lab.json` | written last: fingerprint, timings, pretraining statistics, both models' scores |

Each stage is written under a hidden name and renamed, so a stage that exists is complete
and an interrupted build continues with the first missing one (a model mid-training from
its checkpoint). `lab.json` with the same fingerprint means the build is done: running it
again is a no-op. A folder built from another config is refused, naming the keys that
differ, unless `overwrite=true`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rmu.data import load_mcq
from rmu.errors import OutputError
from rmu.evaluation.mcq import score_set
from rmu.lab.domains import DOMAINS
from rmu.lab.pretrain import pretrain
from rmu.lab.tokenizer import train_tokenizer
from rmu.lab.world import read_texts, write_world
from rmu.run.lock import OutputLock
from rmu.models.loading import resolve_device

# Keys that say where and how to build, not what: they do not change the result.
_NOT_BUILT_FROM = ("name", "dir", "overwrite", "threads", "progress", "eval_batch_size")
MODELS = {"lab_base": "pretrain_all.jsonl", "lab_filtered": "pretrain_filtered.jsonl"}


def recipe(cfg: DictConfig) -> dict:
    """The part of the config that determines what is built."""
    spec = OmegaConf.to_container(cfg, resolve=True)
    if spec.get("model_seed") in (None, spec["seed"]):  # the default models: the fingerprint from before the key
        spec.pop("model_seed", None)
    return {k: v for k, v in spec.items() if k not in _NOT_BUILT_FROM}


def fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _differences(old: dict, new: dict) -> str:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)} → {b.get(k)}" for k in keys[:5]) + (" …" if len(keys) > 5 else "")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _claim(root: Path, spec: dict, fp: str, overwrite: bool) -> None:
    """Make `root` this config's folder: new, or already this config's (a build to continue),
    or another config's replaced under `overwrite`. Anything else is refused."""
    marker = root / "build.json"
    if root.is_dir() and any(root.iterdir()):
        if not marker.is_file():
            raise OutputError(f"{root} holds files that are not a lab build; choose another lab `dir` or `name`")
        built = json.loads(marker.read_text())
        if built["fingerprint"] != fp:
            if not overwrite:
                raise OutputError(f"{root} was built from another lab config ({_differences(built['recipe'], spec)}); "
                                  f"set name=<other> to build beside it, or overwrite=true to replace it")
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(marker, {"fingerprint": fp, "recipe": spec})


def _stage(root: Path, name: str, make) -> Path:
    """`root/name`, made by `make(tmp_folder)` under a hidden name and renamed, unless it exists."""
    final = root / name
    if not final.is_dir():
        tmp = root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        make(tmp)
        os.replace(tmp, final)
    return final


def _rows(world: Path) -> dict:
    return {p.name: sum(1 for _ in open(p, encoding="utf-8")) for p in sorted(world.glob("*.jsonl"))}


def eval_sets(world: Path) -> list[tuple[str, str, list]]:
    """(name, role, questions) of every domain's set and each forget domain's halves."""
    sets = []
    for name, domain in DOMAINS.items():
        sets.append((name, domain.role, load_mcq(str(world / f"mcq_{name}.jsonl"))))
        if domain.role == "forget":
            sets += [(f"{name}_{h}", "forget", load_mcq(str(world / f"mcq_{name}_{h}.jsonl"))) for h in "AB"]
    return sets


def score_models(root: Path, sets, batch_size: int, device: torch.device) -> dict:
    """{model: {set: scores}} of both lab models, by rmu's own multiple-choice scoring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    scores = {}
    for name in MODELS:
        model = AutoModelForCausalLM.from_pretrained(root / name).to(device)
        scores[name] = {s: score_set(model, tokenizer, items, batch_size) for s, _, items in sets}
    return scores


def table(scores: dict, sets) -> str:
    lines = [f"{'set':<12} {'role':<7} {'n':>4} {'chance':>7} {'lab_base':>9} {'lab_filtered':>13}"]
    for name, role, items in sets:
        base, filt = scores["lab_base"][name], scores["lab_filtered"][name]
        lines.append(f"{name:<12} {role:<7} {len(items):>4} {base['chance']:>7.3f} {base['acc']:>9.3f} "
                     f"{filt['acc']:>13.3f}")
    return "\n".join(lines)


def build(cfg: DictConfig, on_step=None) -> dict:
    """Build (or find cached) the lab of `cfg`; returns the contents of its lab.json, with
    `cached: true` when nothing had to be done. `on_step(model, step)`: see pretrain."""
    root = Path(cfg.dir).expanduser().absolute()
    spec = recipe(cfg)
    fp = fingerprint(spec)
    done = root / "lab.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record["fingerprint"] == fp:
            print(f"lab: {root} is built from this config (fingerprint {fp}): cached, nothing to do")
            return {**record, "cached": True}
    with OutputLock(root):
        _claim(root, spec, fp, cfg.overwrite)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)  # the one place the lab picks its device
        seconds, began = {}, time.perf_counter()

        def timed(key, fn):
            start = time.perf_counter()
            out = fn()
            seconds[key] = round(time.perf_counter() - start, 1)
            return out

        w = cfg.world
        world = timed("world", lambda: _stage(root, "world", lambda tmp: write_world(
            tmp, cfg.seed, w.forget_entities, w.retain_entities, w.values_per_relation, w.docs_per_entity,
            w.filler_per_doc)))
        tok_dir = timed("tokenizer", lambda: _stage(root, "tokenizer", lambda tmp: train_tokenizer(
            read_texts(world / "pretrain_all.jsonl"), cfg.tokenizer.vocab_size, tmp)))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        for name, corpus in MODELS.items():
            if (root / name).is_dir():
                continue
            print(f"lab: pretraining {name} on {corpus}", flush=True)
            timed(name, lambda: pretrain(
                name, read_texts(world / corpus), tokenizer, root / name, root / f".{name}.state.pt", cfg.model,
                cfg.pretrain, cfg.seed if cfg.model_seed is None else cfg.model_seed, device, fp, cfg.progress,
                on_step=(lambda step: on_step(name, step)) if on_step else None))
        stats = {name: json.loads((root / name / "pretrain.json").read_text()) for name in MODELS}
        sets = eval_sets(world)
        scores = timed("eval", lambda: score_models(root, sets, cfg.eval_batch_size, device))
        seconds["total"] = round(time.perf_counter() - began, 1)
        record = {"fingerprint": fp, "dir": str(root), "seconds": seconds, "pretrain": stats,
                  "world_rows": _rows(world), "scores": scores, "recipe": spec}
        _write_json(done, record)
    print(table(scores, sets))
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
    print(f"lab: built {root} in {seconds['total']:.0f} s ({stages})")
    return {**record, "cached": False}
