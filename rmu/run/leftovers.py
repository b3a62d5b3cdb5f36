"""What killed commands left anywhere, found by the next command of any kind.

Every command that writes an output folder writes it into a hidden temporary sibling
(rmu/run/checkpoint.py, `staged_output`) and notes that folder in $RMU_CACHE/staging
(default ~/.cache/rmu/staging) until it is published or removed. A command killed by
SIGKILL, the out-of-memory killer or a power cut leaves its note; the next command of any
kind (`run_command`, rmu/run/cli.py) settles each one whose writer is gone (restored when
it is the only complete copy, removed when it is half-written or replaced) and names the
training states that a run whose disk was full kept elsewhere (rmu/run/resume.py,
`state_places`), with their size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rmu.run.checkpoint import _leftovers, folder_size, human, registered, settle
from rmu.run.lock import _alive, held
from rmu.run.resume import elsewhere_roots


def sweep(own_output: str | Path | None = None) -> list[str]:
    """Settle the temporary folders of commands that are gone; name the training states kept
    away from their output folder. `own_output`: this command's output folder (its own
    state is not named: the command itself resumes it). Returns the lines to print."""
    if os.environ.get("RANK", "0") != "0":  # one process of a multi-process run does it
        return []
    own = Path(own_output).expanduser().absolute() if own_output else None
    lines: list[str] = []
    for entry, note in registered():
        if _alive(note):
            continue
        tmp, final = Path(note.get("tmp", "")), Path(note.get("final", ""))
        if tmp.is_dir() and final.name and not held(final) and final != own:
            found = _leftovers(final.parent).get(final.name, {"tmp": [], "old": [], "resume": []})
            found["resume"] = []  # named by a run beside them; here only what the dead command left
            lines += settle(final, found)
        entry.unlink(missing_ok=True)
    for root in elsewhere_roots():
        for state in sorted(root.glob("*.resume")) if root.is_dir() else []:
            try:
                output_dir = Path(json.loads((state / "state.json").read_text())["output_dir"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if output_dir != own and not held(output_dir):
                lines.append(f"rmu: {state} holds the training state of {output_dir} ({human(folder_size(state))}), "
                             f"kept there when its disk was full; run that command again to finish it, or delete it")
    return lines
