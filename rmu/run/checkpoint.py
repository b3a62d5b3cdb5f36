"""Writing an output folder so that it appears only when complete, and replacing only what
rmu itself wrote.

Everything is written into a hidden temporary sibling (`.<name>.tmp-XXXX`) and renamed
into place at the end: a crash, a Ctrl-C or a non-finite loss leaves no half-written
model where the user expects one. Every folder rmu publishes holds a marker,
`.rmu-output.json`, listing the files rmu put there. `overwrite=true` replaces a folder
only when that marker is there and the folder holds nothing else, and never the working
folder or a folder that contains the model being read (`check_output_dir`): whatever
rmu did not write, it does not delete.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from rmu.errors import ConfigError, OutputError
from rmu.run.pause import pause_point

MARKER = ".rmu-output.json"
GIB = 2 ** 30


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f", … ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def written_by_rmu(folder: Path) -> tuple[bool, list[str]]:
    """(whether the marker names this folder as rmu's, the entries rmu did not write)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        ours = set(marker["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return False, []
    return True, sorted(p.name for p in folder.iterdir() if p.name not in ours)


def published_by(folder: Path, run_id: str) -> bool:
    """Whether the run `run_id` published `folder` (its marker names that run)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("run_id") == run_id and "files" in marker


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(path: str, overwrite: bool, protected: tuple[str | None, ...] = (), key: str = "output_dir"):
    """Before any compute: the folder can be written (or replaced, with `overwrite`) without
    losing anything rmu did not write. `protected`: paths being read (the model, the source
    checkpoint) that must not be inside a folder this run could replace."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}={path}: exists and is not a folder")
    if os.path.ismount(p):
        raise ConfigError(f"{key}={path}: is a mount point; rmu publishes its output by renaming a finished folder "
                          f"into place, which a mount point cannot take: use a folder inside it, e.g. {p / 'run'}")
    if not p.is_dir() or not any(p.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{key}={path}: already exists and is not empty ({_listing(p)}); choose another "
                          f"{key} or set overwrite=true to replace a folder rmu wrote")
    if _inside(Path.cwd().resolve(), p.resolve()):
        raise ConfigError(f"{key}={path}: is the working folder or contains it; overwrite=true never replaces it")
    for other in protected:
        if other and Path(other).expanduser().exists() and _inside(Path(other).expanduser().resolve(), p.resolve()):
            raise ConfigError(f"{key}={path}: contains {other}, which this command reads; overwrite=true never "
                              f"replaces it")
    ours, foreign = written_by_rmu(p)
    if not ours:
        raise ConfigError(f"{key}={path}: was not written by rmu (no {MARKER}; it holds {_listing(p)}); "
                          f"overwrite=true replaces only folders rmu wrote: move it away or choose another {key}")
    if foreign:
        raise ConfigError(f"{key}={path}: holds files rmu did not write ({', '.join(foreign[:5])}); "
                          f"overwrite=true would delete them: move them away or choose another {key}")


def check_writable(path: str, needed_bytes: int = 0, what: str = "the output", key: str = "output_dir") -> None:
    """Before any compute: a file can be created beside `path` (where the temporary folder
    goes) and the disk has room for `needed_bytes`."""
    parent = Path(path).expanduser().absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".rmu-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write in {parent} ({e.strerror or e})") from None
    free = shutil.disk_usage(parent).free
    if needed_bytes and free < needed_bytes * 1.05:
        raise ConfigError(f"{key}={path}: {what} needs about {needed_bytes / GIB:.2f} GiB, but the disk holding "
                          f"{parent} has {free / GIB:.2f} GiB free; free some space or choose another {key}")


def _publish_elsewhere(tmp: Path, final: Path) -> Path:
    """A visible sibling for a finished folder that cannot go where it was meant to."""
    for i in range(1, 1000):
        candidate = final.with_name(f"{final.name}-{i}")
        if not candidate.exists():
            tmp.rename(candidate)
            return candidate
    return tmp


@contextmanager
def staged_output(final: str | Path, overwrite: bool, run_id: str | None = None):
    """Yield a temporary folder; on success publish it as `final`, on error delete it.
    `run_id` goes into the marker, so that a run can tell its own output from an earlier one.

    If `final` changed during the run so that it may not be replaced, the finished folder
    is kept under a visible sibling name and the error says where."""
    final = Path(final).expanduser().absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    (tmp / MARKER).write_text(json.dumps(_owner(run_id)))  # whose it is, while it is being written
    try:
        yield tmp
        pause_point("publish")
        (tmp / MARKER).write_text(json.dumps({**_owner(run_id), "files": sorted(p.name for p in tmp.iterdir())}))
        _usual_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if final.exists() and any(final.iterdir()):
            check_output_dir(str(final), overwrite)  # raises if it may not be replaced
            old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if final.exists():
                final.rmdir()
            tmp.rename(final)
    except (ConfigError, OSError) as e:
        kept = _publish_elsewhere(tmp, final)
        cause = str(e) if isinstance(e, ConfigError) else f"{e.strerror or e}"
        raise OutputError(f"could not publish {final} ({cause}); the finished output is kept in {kept}") from None


def _owner(run_id: str | None = None) -> dict:
    return {"written_by": "rmu", "host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _usual_modes(folder: Path) -> None:
    """mkdtemp makes the folder private (0700) and safetensors writes its files 0600; give them
    the modes any new folder and file get, so colleagues on a shared cluster can read the
    model when the umask lets them."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clean_leftovers(final: str | Path, live: callable) -> list[str]:
    """Hidden folders beside `final` that killed runs left: temporary and replaced folders
    (`.<name>.tmp-*`, `.<name>.old-*`, rmu's by their marker) are removed unless a live run
    holds `<name>`; interrupted runs' states (`.<name>.resume`) are kept and reported.
    `live(path)`: whether a running process holds the output folder at `path` (this run's
    own name is not asked: it holds that lock itself). Returns the lines to print."""
    parent = Path(final).expanduser().absolute().parent
    if not parent.is_dir():
        return []
    own = Path(final).name
    lines = []
    for p in sorted(parent.glob(".*.*")):
        for kind in (".tmp-", ".old-", ".resume"):
            name, sep, _ = p.name[1:].rpartition(kind)
            if sep and p.is_dir():
                break
        else:
            continue
        if name != own and live(parent / name):
            continue
        size = folder_size(p) / GIB
        if kind == ".resume":
            if name != own:
                lines.append(f"rmu: {p} holds an interrupted run's state ({size:.2f} GiB); resume it with "
                             f"output_dir={parent / name}, or delete it")
        elif (p / MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            lines.append(f"rmu: removed {p}, a folder a killed run left ({size:.2f} GiB)")
        else:
            lines.append(f"rmu: {p} looks like a folder a killed run left ({size:.2f} GiB), but it has no rmu marker: "
                         f"not removed")
    return lines


def save_run(folder: Path, model, tokenizer, cfg, controls: torch.Tensor, topics: list[str],
             coeffs: list[float], state_dict: dict | None = None):
    """The model folder (safetensors, config, tokenizer), the resolved config and the control
    vectors. `state_dict`: the weights to write when the model's own are sharded (FSDP)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    (folder / "rmu_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    save_file({"control_vectors": controls.contiguous()}, folder / "control_vectors.safetensors",
              metadata={"topics": json.dumps(topics), "steering_coeff": json.dumps(coeffs)})


def os_error_message(e: OSError, doing: str) -> str:
    """`doing <path>: <cause>` for an OSError, with disk-full said plainly."""
    cause = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return f"{doing} {e.filename or ''}: {cause}".replace("  ", " ")
