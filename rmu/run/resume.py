"""Checkpoints for preemption: stop, restart the same command, end with the same weights.

With `trainer.save_every=N` the run saves its training state every N steps; on SIGTERM
(what SLURM sends before preempting or at the time limit), SIGINT (Ctrl-C) or SIGHUP (a
closed terminal) it saves at the end of the current step and exits (rmu/run/signals.py);
a signal after the last step (during the final evaluation or the save), or a failure to
write the output (a full disk), saves the trained state at once, so that only the
evaluation is redone. The state goes to a hidden folder beside the output folder,
`.<output_dir name>.resume/` (when that disk is full: `state_places`, under $RMU_CACHE
or $TMPDIR, where the same command looks too):

- `tensors-<step>.pt`: the updated tensors, the optimizer state (and float32 masters,
  loss scale), the robust stages' values and the RNG states: tensors, numbers and
  strings only, read back with `torch.load(weights_only=True)`, so a state file can
  never run code;
- `state.json`: the config's fingerprint, the number of processes, the step, the metrics
  so far, the evaluation before training, and the tensors file's name and SHA-256.
  Replacing it is the commit: a kill at any moment leaves the previous complete state.

The state is checked (fingerprint, number of processes, checksum, format) before any
weights load. A run started with the same config and output_dir resumes from it; with the
default timestamped output_dir it resumes the newest interrupted run of the same config
beside it (`find_interrupted`). The folder is deleted once the output folder is written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rmu.run import pause, signals
from rmu.run.checkpoint import os_error_message
from rmu.errors import OutputError, ResumeError, TrainingError
from rmu.run.lock import held
from rmu.run.shards import like, sharded_optimizer_state

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


def state_places(output_dir: str | Path) -> list[Path]:
    """Where the state of `output_dir` may be, in the order a save tries them: beside the
    output folder; when that disk is full, under $RMU_CACHE/resume (default
    ~/.cache/rmu/resume) and then under $TMPDIR/rmu-resume, in a folder named after the
    output folder and a hash of its path."""
    out = Path(output_dir).expanduser().absolute()
    key = f"{out.name}-{hashlib.sha256(str(out).encode()).hexdigest()[:12]}.resume"
    return [state_folder(out)] + [root / key for root in elsewhere_roots()]


def elsewhere_roots() -> list[Path]:
    cache = Path(os.environ.get("RMU_CACHE") or Path.home() / ".cache" / "rmu").expanduser().absolute()
    return [cache / "resume", Path(tempfile.gettempdir()).absolute() / "rmu-resume"]


def _write_state(folder: Path, name: str, tensors: dict, manifest: dict) -> None:
    """tensors-<step>.pt, then state.json (the commit), into `folder`; whatever fails or is
    cut short (a second Ctrl-C) leaves the state that was there before."""
    try:
        committed = folder / json.loads((folder / "state.json").read_text())["tensors"]
    except (OSError, ValueError, KeyError, TypeError):
        committed = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        pause.pause_point("state_saving")
        tmp = folder / f"{name}.tmp"
        with open(tmp, "wb") as f:
            torch.save(tensors, f)
        os.replace(tmp, folder / name)
        text = json.dumps({**manifest, "sha256": _sha256(folder / name)}, default=str)
        with open(folder / "state.json.tmp", "w") as f:
            f.write(text)
        os.replace(folder / "state.json.tmp", folder / "state.json")  # the commit
    except BaseException:
        with signals.deferred():
            for p in folder.glob("*.tmp"):
                p.unlink(missing_ok=True)
            if (folder / name).is_file() and folder / name != committed:
                (folder / name).unlink()
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _nbytes(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_nbytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_nbytes(v) for v in tree)
    return 0


def _room(folder: Path, size: int) -> None:
    """An ENOSPC OSError when the disk holding `folder` has less than `size` (+ 5 %, + 1 MiB) free."""
    probe = next(p for p in [folder, *folder.parents] if p.exists())
    free = shutil.disk_usage(probe).free
    if free < size * 1.05 + 2 ** 20:
        raise OSError(errno.ENOSPC, f"the disk is full ({free / 2 ** 20:.1f} MiB free, the state needs "
                                    f"{size / 2 ** 20:.1f} MiB)", str(folder))


def write_failure(folder: Path, e: BaseException) -> str:
    """Why writing into `folder` failed, in words: a full disk said plainly, whichever
    library reports it (torch.save and safetensors do not raise an OSError for it)."""
    if isinstance(e, OSError):
        return os_error_message(e, "").split(": ", 1)[-1].strip() or type(e).__name__
    text = str(e)
    if "No space left" in text or "os error 28" in text:
        return "the disk is full"
    try:
        probe = next(p for p in [folder, *folder.parents] if p.exists())
        if shutil.disk_usage(probe).free < 64 * 2 ** 20:
            return "the disk is full"
    except (OSError, StopIteration):
        pass
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


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
    mine, found = fingerprint(cfg), []
    beside = sorted(parent.glob(".*.resume/state.json")) if parent.is_dir() else []
    elsewhere = [m for root in elsewhere_roots() if root.is_dir() for m in sorted(root.glob("*.resume/state.json"))]
    for manifest in beside + elsewhere:  # elsewhere: states a run whose disk was full kept there
        try:
            state = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if manifest in beside:
            output_dir = parent / manifest.parent.name[1:].removesuffix(".resume")
        elif isinstance(state.get("output_dir"), str) and Path(state["output_dir"]).parent == parent:
            output_dir = Path(state["output_dir"])
        else:
            continue
        if state.get("fingerprint") == mine and not output_dir.exists() and not held(output_dir):
            found.append((manifest.stat().st_mtime, str(output_dir)))
    return max(found)[1] if found else None


class Resume:
    def __init__(self, cfg, processes: int = 1):
        self.processes = processes  # trainer.batch_size is per process: the global batch is part of the run
        self.output_dir = Path(cfg.output_dir).expanduser().absolute()
        # Beside the output folder, or where a run whose disk was full kept it (state_places).
        self.folder = next((f for f in state_places(self.output_dir) if f.is_dir()), state_folder(self.output_dir))
        self.fingerprint = fingerprint(cfg)
        self.saved_step: int | None = None  # the step of the state on disk, once one is known
        self.moved: str | None = None  # the line to print when a save went elsewhere (the disk was full)

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
        saved = state.get("processes", self.processes)  # states from before the count was kept: not known
        if saved != self.processes:
            raise ResumeError(f"{self.folder} holds the state of a run on {saved} process(es), this run has "
                              f"{self.processes}: each process takes trainer.batch_size texts a step, so the "
                              f"steps left would train on another batch; resume on {saved} (accelerate launch "
                              f"--num_processes {saved}), set output_dir to start a new run beside it, or delete "
                              f"it to start over")
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
             before=None, whole: dict | None = None) -> None:
        """Write the state after `step` steps, atomically. Refuses values that are not finite.
        A state of this very step on disk is kept as it is (a run resumed after training and
        stopped again during the evaluation). `whole`: the trained tensors, optimizer state and
        masters already gathered from FSDP shards (rmu/run/shards.py `gathered`)."""
        if self.saved_step == step:
            return
        tensors = whole or {"updated": [p.detach().cpu().clone() for p in updated],
                            "optimizer": updater.optimizer.state_dict(),
                            "masters": [m.detach().cpu().clone() for m in updater.masters] if updater.masters else None}
        tensors = {**tensors,
                   "robust": robust.state_dict() if robust is not None else None,
                   "rng": {"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
        if not _finite(tensors["updated"] + (tensors["masters"] or [])):
            raise TrainingError(f"the updated tensors are not finite after step {step}; no state was saved"
                                + self.kept_note())
        name = f"tensors-{step}.pt"
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "step": step, "tensors": name,
                    "scale": updater.scale, "good_steps": updater.good_steps, "rows": rows, "before": before,
                    "output_dir": str(self.output_dir), "processes": self.processes}
        failures, size = [], _nbytes(tensors)
        for folder in [self.folder] + [f for f in state_places(self.output_dir) if f != self.folder]:
            try:
                _room(folder, size)  # never fill a disk (a home quota) to find out
                _write_state(folder, name, tensors, manifest)
            except (OSError, RuntimeError) as e:  # torch.save says a full disk as a RuntimeError
                failures.append((folder, e))
                continue
            if folder != self.folder:  # the usual place had no room: the newer state replaces the older one
                shutil.rmtree(self.folder, ignore_errors=True)
                self.moved = (f"rmu: could not save the training state in {failures[0][0]} "
                              f"({write_failure(*failures[0])}); saved it in {folder} instead")
                self.folder = folder
            break
        else:
            folder, e = failures[0]
            where = f"could not save the training state of step {step} to {folder}: {write_failure(folder, e)}"
            others = "; ".join(f"{f}: {write_failure(f, x)}" for f, x in failures[1:])
            raise OutputError(where + (f" (nor to {others})" if others else "") + self.kept_note()) from None
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
        with torch.no_grad():  # like(): whole saved values into FSDP shards (rmu.distill under FSDP)
            for p, v in zip(updated, state["updated"], strict=True):
                p.copy_(like(v, p))
            if state["masters"] is not None:
                for m, v in zip(updater.masters, state["masters"], strict=True):
                    m.copy_(like(v, m))
        params = updater.masters or updater.params
        updater.optimizer.load_state_dict(sharded_optimizer_state(state["optimizer"], params) if updater.sharded
                                          else state["optimizer"])
        updater.scale, updater.good_steps = state["scale"], state["good_steps"]
        if robust is not None:  # the robust stages' running values (rmu/unlearn/robust.py)
            robust.load_state_dict(state["robust"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def clear(self) -> None:
        with signals.deferred():  # a signal in the middle would leave half a state
            for folder in {self.folder, *state_places(self.output_dir)}:
                shutil.rmtree(folder, ignore_errors=True)


class Interrupted(BaseException):
    """A signal during the final evaluation or save (a BaseException: nothing catches it by
    accident on its way up)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Preemption:
    """The training loop's keeper of SIGINT, SIGHUP and SIGTERM (rmu/run/signals.py): a flag
    the loop checks after each step; after the last step (`at_once()`), an `Interrupted`
    raised wherever the run is. A second Ctrl-C stops at once (`signals.Stopped`)."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None  # the signal that stopped this rank (None: another rank's)
        self.raise_at_once = False
        self._previous = None
        if not signals.installed():  # train() called without a command (tests, notebooks): for this run only
            self._previous = signals.install()
        signals.keep(self._on_signal)

    def _on_signal(self, signum):
        self.requested, self.signum = True, signum
        if self.raise_at_once:
            self.raise_at_once = False  # one Interrupted: the handler of it saves the state undisturbed
            raise Interrupted(signum)
        if signum == signal.SIGINT:
            signals.note("rmu: Ctrl-C: the training state is saved at the end of this step; Ctrl-C again stops "
                         "at once, keeping only the last saved state")

    @property
    def signal_name(self) -> str:
        return signals.name(self.signum)

    def at_once(self):
        self.raise_at_once = True
        if self.requested:  # the signal came between the last step's check and now
            self._on_signal(self.signum or signal.SIGTERM)

    def restore(self):
        signals.keep(None)
        if self._previous:
            signals.restore(self._previous)
