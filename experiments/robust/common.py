"""What `make robust` (compare.py) and the tuning (tune.py) share: reading their YAML config,
the resume check (a recipe's folder records the settings its runs were made with and is
resumed only under the same ones), a run counted as done once its results.json exists, and
the Hydra sweep that runs the jobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))  # rmu from this checkout, also when it is not installed


def load_config(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """The config file as a dict: every `required` key present, no key outside `required` and
    `optional`, and `recipes` a non-empty mapping whose names can name folders. Each script
    then checks its own values. A problem ends the script with one sentence naming the file."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        sys.exit(f"error: {path}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if not isinstance(cfg, dict):
        sys.exit(f"error: {path}: must be a mapping with the keys {', '.join(required)}")
    missing = [k for k in required if k not in cfg]
    if missing:
        sys.exit(f"error: {path}: missing key {missing[0]!r} ({', '.join(required)})")
    unknown = sorted(set(cfg) - set(required) - set(optional))
    if unknown:
        sys.exit(f"error: {path}: unknown key {unknown[0]!r}; allowed: {', '.join(required + optional)}")
    if "recipes" in required:
        if not isinstance(cfg["recipes"], dict) or not cfg["recipes"]:
            sys.exit(f"error: {path}: recipes must map each recipe name to its settings")
        bad = [r for r in cfg["recipes"] if not re.fullmatch(r"[\w.-]+", str(r))]
        if bad:
            sys.exit(f"error: {path}: recipe name {bad[0]!r}: letters, digits, _ . - only (it names a folder)")
    return cfg


def same_settings(folder: Path, settings: dict, who: str, growing: str | None = None, others: str | None = None) -> None:
    """Record in <folder>/recipe.json what a recipe's runs are made with; refuse to resume them
    under other settings. `growing` names a list in `settings` that may gain entries at its
    end (tune.py's stronger settings): the runs already made keep their positions and stay
    valid. Keys starting with `others` (compare.py's attack lists, one per attack folder) are
    kept for runs made under them: one recorded earlier must match, one absent is added."""
    record = folder / "recipe.json"
    old = json.loads(record.read_text()) if record.is_file() else None
    if old is not None:
        if others is not None:
            own = {k: v for k, v in settings.items() if not k.startswith(others)}
            same = ({k: v for k, v in old.items() if not k.startswith(others)} == own
                    and all(old.get(k, v) == v for k, v in settings.items() if k.startswith(others)))
            settings = {**old, **settings}
        elif growing is None:
            same = old == settings
        else:
            n = len(old.get(growing, []))
            same = {**old, growing: None} == {**settings, growing: None} and settings[growing][:n] == old.get(growing, [])
        if not same:
            sys.exit(f"{who}: {folder} holds runs of other settings than {settings}; move it away or restore them")
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=1) + "\n")


def done(folder: Path) -> bool:
    """Whether a run (rmu.train or rmu.attack) finished: both write their folder atomically,
    results.json included, so a killed run leaves nothing that looks finished."""
    return (folder / "results.json").is_file()


def sweep(module: str, overrides: list[str], launcher: str | None, sweep_dir: Path) -> None:
    """One Hydra sweep (-m) of `python -m <module>`; stops the script if a job failed."""
    cmd = [sys.executable, "-m", module, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    print(f"robust: {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(f"robust: `{module}` failed (exit {proc.returncode}); the finished runs are kept, run again to resume")


def fmt(x: float | None, pattern: str = "{:.3f}") -> str:
    return "n/a" if x is None else pattern.format(x)
