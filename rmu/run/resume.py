"""Checkpoints for preemption: stop, restart the same command, end with the same weights.

With `trainer.save_every=N` the run saves its training state every N steps; on SIGTERM
(what SLURM sends before preempting or at the time limit) it saves at the end of the
current step and exits; a SIGTERM after the last step (during the final evaluation or
the save) saves the trained state at once, so that only the evaluation is redone. The
state goes to a hidden folder beside the output folder, `.<output_dir name>.resume/`:

- `tensors-<step>.pt`: the updated tensors, the optimizer state (and float32 masters,
  loss scale), the robust stages' values and the RNG states: tensors, numbers and
  strings only, read back with `torch.load(weights_only=True)`, so a state file can
  never run code;
- `state.json`: the config's fingerprint, the step, the metrics so far, the evaluation
  before training, and the tensors file's name and SHA-256. Replacing it is the commit:
  a kill at any moment leaves the previous complete state.

The state is checked (fingerprint, checksum, format) before any weights load. A run
started with the same config and output_dir resumes from it; with the default
timestamped output_dir it resumes the newest interrupted run of the same config beside
it (`find_interrupted`). The folder is deleted once the output folder is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rmu.run import pause
from rmu.run.checkpoint import os_error_message
from rmu.errors import OutputError, ResumeError, TrainingError
from rmu.run.lock import held

FORMAT = 2
# Keys that may differ between the interrupted and the resumed run; output_dir is where
# the state lives, so it is bound to the state by its place, not its fingerprint.
_FREE = {"trainer": {"progress", "save_every"}, "": {"overwrite", "output_dir"}}


def fingerprint(cfg) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in _FREE[""]:
        plain.pop(key, None)
    for key in _FREE["trainer"]:
        plain["trainer"].pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_folder(output_dir: str | Path) -> Path:
    out = Path(output_dir).expanduser().absolute()
    return out.with_name(f".{out.name}.resume")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def find_interrupted(cfg) -> str | None:
    """The output_dir of the newest interrupted run of this config beside cfg.output_dir
    that no live run holds, or None."""
    parent = Path(cfg.output_dir).expanduser().absolute().parent
    if not parent.is_dir():
        return None
    mine, found = fingerprint(cfg), []
    for manifest in parent.glob(".*.resume/state.json"):
        try:
            state = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        output_dir = parent / manifest.parent.name[1:].removesuffix(".resume")
        if state.get("fingerprint") == mine and not output_dir.exists() and not held(output_dir):
            found.append((manifest.stat().st_mtime, str(output_dir)))
    return max(found)[1] if found else None


class Resume:
    def __init__(self, cfg):
        self.folder = state_folder(cfg.output_dir)
        self.fingerprint = fingerprint(cfg)
        self.saved_step: int | None = None  # the step of the state on disk, once one is known

    def load(self) -> dict | None:
        """The saved state, checked; None when there is none. Raises ResumeError naming the
        file and how to start over when it cannot be used."""
        manifest = self.folder / "state.json"
        start_over = f"delete {self.folder} to start over"
        if not self.folder.is_dir():
            return None
        if not manifest.is_file():
            uncommitted = [p for p in self.folder.iterdir() if p.name.startswith(("tensors-", "state.json.tmp"))]
            if len(uncommitted) == len(list(self.folder.iterdir())):  # killed during its first save
                for p in uncommitted:
                    p.unlink()
                return None
            raise ResumeError(f"{self.folder} holds no state.json: it was written by an older rmu or is damaged; "
                              f"{start_over}")
        try:
            state = json.loads(manifest.read_text())
            tensors = self.folder / state["tensors"]
            if state.get("format") != FORMAT:
                raise ResumeError(f"{manifest}: state format {state.get('format')!r}, this rmu reads {FORMAT}; "
                                  f"{start_over}")
        except (ValueError, KeyError, TypeError):
            raise ResumeError(f"{manifest} is damaged (not the JSON rmu writes); {start_over}") from None
        if state["fingerprint"] != self.fingerprint:
            raise ResumeError(f"{self.folder} holds the state of a run with a different config; delete it to start "
                              f"over, or run the original command to resume it")
        if not tensors.is_file() or _sha256(tensors) != state.get("sha256"):
            raise ResumeError(f"{tensors} is missing or damaged (its checksum does not match state.json); "
                              f"{start_over}")
        try:
            state.update(torch.load(tensors, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - a file that does not unpickle as plain tensors
            raise ResumeError(f"{tensors} is not a state rmu can read ({type(e).__name__}); it was not loaded; "
                              f"{start_over}") from None
        self.saved_step = state["step"]
        return state

    def save(self, step: int, updated: list[torch.Tensor], updater, rows: list[dict], robust=None,
             before=None) -> None:
        """Write the state after `step` steps, atomically. Refuses values that are not finite.
        A state of this very step on disk is kept as it is (a run resumed after training and
        stopped again during the evaluation)."""
        if self.saved_step == step:
            return
        tensors = {"updated": [p.detach().cpu().clone() for p in updated],
                   "optimizer": updater.optimizer.state_dict(),
                   "masters": [m.detach().cpu().clone() for m in updater.masters] if updater.masters else None,
                   "robust": robust.state_dict() if robust is not None else None,
                   "rng": {"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
        if not _finite(tensors["updated"] + (tensors["masters"] or [])):
            raise TrainingError(f"the updated tensors are not finite after step {step}; no state was saved"
                                + self.kept_note())
        name = f"tensors-{step}.pt"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{name}.tmp"
            with open(tmp, "wb") as f:
                torch.save(tensors, f)
            os.replace(tmp, self.folder / name)
            manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "step": step, "tensors": name,
                        "sha256": _sha256(self.folder / name), "scale": updater.scale,
                        "good_steps": updater.good_steps, "rows": rows, "before": before}
            text = json.dumps(manifest, default=str)
            with open(self.folder / "state.json.tmp", "w") as f:
                f.write(text)
            os.replace(self.folder / "state.json.tmp", self.folder / "state.json")  # the commit
        except OSError as e:
            for p in self.folder.glob("*.tmp"):
                p.unlink(missing_ok=True)
            if (self.folder / name).is_file() and self.saved_step != step:
                (self.folder / name).unlink()
            raise OutputError(os_error_message(e, f"could not save the training state of step {step} to")
                              + self.kept_note()) from None
        for old in self.folder.glob("tensors-*.pt"):
            if old.name != name:
                old.unlink()
        self.saved_step = step
        pause.pause_point("resume_saved")

    def kept_note(self) -> str:
        """What a failed run leaves behind, for the end of its message."""
        if self.saved_step is None:
            return "; nothing was written"
        return (f"; the state of step {self.saved_step} in {self.folder} is kept (rerunning the same command "
                f"resumes there)")

    @staticmethod
    def restore(state: dict, updated: list[torch.Tensor], updater, robust=None) -> None:
        shapes = [tuple(v.shape) for v in state["updated"]]
        if shapes != [tuple(p.shape) for p in updated]:
            raise ResumeError(f"the resume state holds tensors of shapes {shapes}, this run updates "
                              f"{[tuple(p.shape) for p in updated]}")
        with torch.no_grad():
            for p, v in zip(updated, state["updated"], strict=True):
                p.copy_(v)
            if state["masters"] is not None:
                for m, v in zip(updater.masters, state["masters"], strict=True):
                    m.copy_(v)
        updater.optimizer.load_state_dict(state["optimizer"])
        updater.scale, updater.good_steps = state["scale"], state["good_steps"]
        if robust is not None:  # the robust stages' running values (rmu/unlearn/robust.py)
            robust.load_state_dict(state["robust"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Interrupted(BaseException):
    """SIGTERM during the final evaluation or save (a BaseException: nothing catches it by
    accident on its way up)."""


class Preemption:
    """Turns SIGTERM into a flag the training loop checks after each step; after the last
    step (`at_once()`), into an `Interrupted` raised wherever the run is."""

    def __init__(self):
        self.requested = False
        self.raise_at_once = False
        pause.signalled = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        pause.signalled = True
        if self.raise_at_once:
            self.raise_at_once = False  # one Interrupted: the handler of it saves the state undisturbed
            raise Interrupted()

    def at_once(self):
        self.raise_at_once = True
        if self.requested:  # the signal came between the last step's check and now
            self._handle(signal.SIGTERM, None)

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)
