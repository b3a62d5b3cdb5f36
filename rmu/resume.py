"""Checkpoints for preemption: stop, restart the same command, end with the same weights.

With `trainer.save_every=N` the run saves its training state every N steps; on SIGTERM
(what SLURM sends before preempting or at the time limit) it saves at the end of the
current step and exits. The state — values of the updated tensors, optimizer state
(and float32 masters, loss scale), RNG states, the step, the metrics so far — goes to
a hidden folder beside the output folder, `.<output_dir name>.resume/`, written
atomically. A run started with the same config and output_dir finds it, re-creates the
base model and frozen values from `model.path` as usual, loads the state and continues
at the saved step; the folder is deleted once the output folder is written.
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

from rmu.errors import ResumeError

# Keys that may differ between the interrupted and the resumed run.
_FREE = {"trainer": {"progress", "save_every"}, "": {"overwrite"}}


def fingerprint(cfg) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in _FREE[""]:
        plain.pop(key, None)
    for key in _FREE["trainer"]:
        plain["trainer"].pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Resume:
    def __init__(self, cfg):
        out = Path(cfg.output_dir).absolute()
        self.folder = out.with_name(f".{out.name}.resume")
        self.fingerprint = fingerprint(cfg)

    def load(self) -> dict | None:
        state_file = self.folder / "state.pt"
        if not state_file.is_file():
            return None
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state["fingerprint"] != self.fingerprint:
            raise ResumeError(f"{self.folder} holds the state of a run with a different config; delete it to start "
                              f"over, or run the original command to resume it")
        return state

    def save(self, step: int, updated: list[torch.Tensor], updater, rows: list[dict], robust=None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"fingerprint": self.fingerprint, "step": step, "rows": rows,
                 "updated": [p.detach().cpu().clone() for p in updated],
                 "optimizer": updater.optimizer.state_dict(),
                 "masters": [m.detach().cpu().clone() for m in updater.masters] if updater.masters else None,
                 "scale": updater.scale, "good_steps": updater.good_steps,
                 "robust": robust.state_dict() if robust is not None else None,
                 "rng": {"torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
        tmp = self.folder / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.folder / "state.pt")  # atomic: a kill mid-write leaves the previous state

    @staticmethod
    def restore(state: dict, updated: list[torch.Tensor], updater, robust=None) -> None:
        with torch.no_grad():
            for p, v in zip(updated, state["updated"], strict=True):
                p.copy_(v)
            if state["masters"] is not None:
                for m, v in zip(updater.masters, state["masters"], strict=True):
                    m.copy_(v)
        updater.optimizer.load_state_dict(state["optimizer"])
        updater.scale, updater.good_steps = state["scale"], state["good_steps"]
        if robust is not None:  # the robust stages' running values (rmu/robust.py)
            robust.load_state_dict(state["robust"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Preemption:
    """Turns SIGTERM into a flag the training loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)
