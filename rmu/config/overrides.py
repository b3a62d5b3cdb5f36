"""Command-line mistakes that Hydra answers with a traceback, said in one sentence instead.

Before Hydra composes a command's config, `check_command_line` composes it once itself
from the same overrides. If that fails, and the cause is one of the mistakes below, the
command ends with `error: <sentence>` naming the key and the fix; any other failure is
left to Hydra's own report.

- a key of a section this run does not select: `logger.project=x` without `logger=wandb`,
  `adapter.r=4` without `adapter=lora`, `attack.in_context.shots=[1]` without that attack;
- a section given a value as if it were a choice: `base=<name>` (the attack's original
  model is chosen with `model@base=<name>`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rmu.config.schema import CONF_DIR

# How each optional section is switched on, for the message.
SELECT = {"adapter": "adapter=lora", "logger": "logger=wandb"}
# Sections filled from a config group under another name: `section` comes from `group@section`.
PACKAGED = {"base": "model", "oracle": "model"}


def check_command_line(command: str, argv: list[str]) -> None:
    """Exit with one sentence if `argv` holds one of the mistakes above; otherwise return
    and let Hydra compose (sweeps, `--help` and Hydra's own flags are left to it)."""
    if any(a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if "=" in a and not a.lstrip("+~").startswith("hydra")]
    message = explain(command, overrides)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def explain(command: str, overrides: list[str]) -> str | None:
    """The sentence for the first mistake in `overrides`, or None when they compose."""
    from hydra import compose, initialize_config_dir

    def composed(items):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(command, overrides=items)

    try:
        composed(overrides)
        return None
    except Exception:  # noqa: BLE001 - only to find which override is at fault; Hydra reports the rest
        pass
    choices = [o for o in overrides if "." not in o.split("=", 1)[0]]
    try:
        base = composed(choices)  # the sections this run selects, before any key is set
    except Exception:  # noqa: BLE001 - a bad choice itself: Hydra's message names it
        base = None
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if base is not None and "." in key:
            section = unselected_section(base, key)
            if section:
                how = SELECT.get(section) or (f"attack={section.split('.', 1)[1]} or attack=all"
                                              if section.startswith("attack.") else f"a {section} option")
                return f"{key}={value}: this run does not use {section} (it is off); select it with {how}, or drop the key"
        if key in PACKAGED:
            group = PACKAGED[key]
            options = ", ".join(sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")))
            return (f"{key}={value}: `{key}` is a section of keys, not a choice; choose its config with "
                    f"{group}@{key}=<name> ({options}) or set its keys, e.g. {key}.path=<folder>")
    return None


def unselected_section(cfg: DictConfig, key: str) -> str | None:
    """The section on `key`'s path that this config leaves empty (null), if any."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            return None  # an unknown key: the schema check names it
        node = node[part]
        if node is None:
            return ".".join(parts[:i + 1])
        if not isinstance(node, DictConfig):
            return None
    return None
