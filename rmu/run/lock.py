"""One run per output folder: a lock file `.<name>.lock` beside it, holding the owner's
host, pid and SLURM job, taken before anything loads and released at the end.

A second run into the same output_dir (two sweep jobs that collide, a command started
twice) stops at once with the owner named. A lock whose owner is gone — the same host
and a pid that no longer runs, or the same SLURM job (a requeued job starts again after
its first run was killed) — is stale and is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from rmu.errors import OutputError


def lock_path(output_dir: str | Path) -> Path:
    out = Path(output_dir).expanduser().absolute()
    return out.with_name(f".{out.name}.lock")


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _alive(owner: dict) -> bool:
    if owner.get("slurm_job") and owner["slurm_job"] == os.environ.get("SLURM_JOB_ID") \
            and int(owner.get("slurm_restart", 0)) < int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0):
        return False  # this SLURM job, requeued since the owner ran: that run is gone
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell from here: assume it runs
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def read_owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: judged by age below


def held(output_dir: str | Path) -> bool:
    """Whether a live run holds this output folder."""
    owner = read_owner(lock_path(output_dir))
    return owner is not None and (_alive(owner) if owner else True)


def remove_stale(output_dir: str | Path) -> bool:
    """Remove the lock of `output_dir` when its owner is gone (the same take-over as
    `OutputLock.acquire`, so that a run taking it at this moment keeps its own)."""
    path = lock_path(output_dir)
    owner = read_owner(path)
    if not owner or _alive(owner):
        return False
    stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, stale)
    except FileNotFoundError:
        return False
    if read_owner(stale) != owner:  # another run took it over first: give its lock back
        os.replace(stale, path)
        return False
    stale.unlink(missing_ok=True)
    return True


class OutputLock:
    def __init__(self, output_dir: str | Path):
        self.path = lock_path(output_dir)
        self.output_dir = output_dir
        self.taken = False

    def acquire(self) -> str | None:
        """Take the lock or raise OutputError naming its owner; returns a note when a stale
        lock was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_owner(self.path)
                if owner == {} and time.time() - self.path.stat().st_mtime < 10:
                    time.sleep(0.5)  # another run is writing its lock right now: look again
                    continue
                if owner and _alive(owner):
                    raise OutputError(
                        f"output_dir={self.output_dir} is in use by another run (host {owner.get('host')}, pid "
                        f"{owner.get('pid')}, started {owner.get('started')}); wait for it or choose another "
                        f"output_dir. If no such run is alive, delete {self.path}") from None
                stale = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, stale)  # one taker wins; the others find the new lock
                    if read_owner(stale) != owner:  # another run took it over first: give its lock back
                        os.replace(stale, self.path)
                        continue
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
                note = f"rmu: took over the lock of a run that is gone ({owner or 'unreadable'})"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
            self.taken = True
            return note
        raise OutputError(f"could not take the lock {self.path}; another run keeps taking it")

    def release(self) -> None:
        if self.taken and (read_owner(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.taken = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
