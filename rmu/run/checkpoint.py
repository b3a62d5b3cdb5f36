"""Writing an output folder so that it appears only when complete, and replacing only what
rmu itself wrote.

Everything is written into a hidden temporary sibling (`.<name>.tmp-XXXX`) and renamed
into place at the end: a crash, a Ctrl-C or a non-finite loss leaves no half-written
model where the user expects one. Every folder rmu publishes holds a marker,
`.rmu-output.json`, listing the files rmu put there. `overwrite=true` replaces a folder
only when that marker is there and the folder holds nothing else, and never the working
folder or a folder that contains the model being read (`check_output_dir`): whatever
rmu did not write, it does not delete.

Single files (rmu.eval's output_file, reports, sweep summaries, `make robust`'s tables) keep
the same rule (write_output_file): written to a hidden temporary file and renamed into
place, recorded in their folder's marker with the command that wrote them and their
SHA-256, and replaced only by that command while unchanged. A published folder's marker
holds every file's SHA-256, which the weights are verified against before they are read
or exported (rmu/models/weights.py).
"""

from __future__ import annotations

import errno
import hashlib
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
from rmu.run.signals import deferred

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
        ours = set(marker["files"]) | set(marker.get("written") or {}) | {MARKER}
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
    margin = needed_bytes * 0.05 + 16 * 2 ** 20  # estimates are estimates; a disk at 100 % helps no one
    if needed_bytes and free < needed_bytes + margin:
        raise ConfigError(f"{key}={path}: {what} needs about {human(needed_bytes)} (and a margin of {human(margin)}), "
                          f"but the disk holding {parent} has {human(free)} free; free some space or choose "
                          f"another {key}")


def read_marker(folder: Path) -> dict:
    """The folder's marker ({} where there is none or it cannot be read)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _why_not_replace(path: Path, command: str, overwrite: bool, key: str | None) -> str | None:
    """Why `command` may not write `path`, or None. It may create it, and replace it only where
    the folder's marker records that `command` wrote it and it is unchanged since (and then
    only with `overwrite`)."""
    name = f"{key}={path}" if key else str(path)
    if path.is_dir():
        return f"{name}: is a folder; give the path of a file"
    if path.name == MARKER:
        return f"{name}: is the name of rmu's marker file; choose another name"
    if not (path.exists() or path.is_symlink()):
        return None
    marker = read_marker(path.parent)
    entry = (marker.get("written") or {}).get(path.name)
    if not isinstance(entry, dict):
        why = ("is part of the output folder rmu wrote there" if path.name in (marker.get("files") or [])
               else f"cannot be shown to be rmu's (the {MARKER} beside it is damaged)"
               if not marker and (path.parent / MARKER).exists() else "was not written by rmu")
    elif entry.get("by") != command:
        why = f"was written by {entry.get('by')}"
    elif path.is_symlink() or entry.get("sha256") != file_sha256(path):
        why = f"was changed since {command} wrote it"
    elif not overwrite:
        return f"{name}: already exists (written by {command}); set overwrite=true to replace it" + (
            f" or choose another {key}" if key else "")
    else:
        return None
    return (f"{name}: already exists and {why}; {command} replaces only a file it wrote, unchanged since: "
            f"move it away" + (f" or choose another {key}" if key else ""))


def check_output_file(path: str | Path, command: str, overwrite: bool = True, key: str | None = None) -> None:
    """Before the work: `command` may write the file `path` (see write_output_file) and can
    create a file beside it. `overwrite`: whether a file it wrote itself may be replaced."""
    p = Path(path).expanduser().absolute()
    why = _why_not_replace(p, command, overwrite, key)
    if str(path).endswith(("/", os.sep)):  # `output_file=results/`: a folder meant, a file would be made
        why = f"{f'{key}={path}' if key else path}: names a folder; give the path of a file"
    if why:
        raise ConfigError(why)
    try:  # a file can be made beside it: the temporary one
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=".rmu-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{f'{key}={path}' if key else p}: cannot write in {p.parent} ({e.strerror or e})") from None


def _free_sibling(path: Path) -> Path:
    for i in range(1, 1000):
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise OutputError(f"{path}: no free name beside it")


def _write_atomically(path: Path, content) -> None:
    """`content` (text, bytes, or a function that writes the path it is given) into a hidden
    temporary file beside `path`, renamed over it once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    tmp = Path(name)
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's file is private; give it the modes of any new file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_output_file(path: str | Path, content, command: str, overwrite: bool = True,
                      key: str | None = None) -> Path:
    """Write one file atomically and record it in its folder's marker as `command`'s, never
    replacing a file `command` did not write (or one changed since it wrote it): the marker
    rule of output folders (check_output_dir), for single files. `overwrite`: whether a
    file `command` wrote itself may be replaced. Call check_output_file before the work;
    if the destination changed during the work so that it may not be replaced, the content
    goes to a visible sibling (`name-1.ext`) and the error says where. Returns the path."""
    p = Path(path).expanduser().absolute()
    why = _why_not_replace(p, command, overwrite, key)
    target = _free_sibling(p) if why else p
    _write_atomically(target, content)
    marker = read_marker(target.parent) or {"written_by": "rmu"}
    sha = file_sha256(target)
    marker.setdefault("written", {})[target.name] = {"by": command, "sha256": sha,
                                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if target.name in (marker.get("sha256") or {}):
        marker["sha256"][target.name] = sha
    _write_atomically(target.parent / MARKER, json.dumps(marker, indent=1) + "\n")
    if why:
        raise OutputError(f"{why}; what {command} wrote is kept in {target}")
    return target


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
    with deferred():  # a signal (rmu/run/signals.py) waits until the folder is there and says whose it is
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        (tmp / MARKER).write_text(json.dumps(_owner(run_id)))  # whose it is, while it is being written
        register(tmp, final)
    try:
        try:
            yield tmp
            pause_point("publish")
            marker = json.dumps(_published_marker(tmp, run_id))
            _usual_modes(tmp)
        except BaseException:
            with deferred():  # a second Ctrl-C does not leave half of it
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        with deferred():  # complete and in place, or not at all: a signal waits for the renames
            try:
                _replace_text(tmp / MARKER, marker)  # from here the folder is complete (clean_leftovers)
                if final.exists() and any(final.iterdir()):
                    check_output_dir(str(final), overwrite)  # raises if it may not be replaced
                    old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
                    final.rename(old)
                    pause_point("renaming")  # the moment a kill leaves two complete copies and no `final`
                    tmp.rename(final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    if final.exists():
                        final.rmdir()
                    tmp.rename(final)
            except (ConfigError, OSError) as e:
                kept = _publish_elsewhere(tmp, final)
                cause = str(e) if isinstance(e, ConfigError) else f"{e.strerror or e}"
                err = OutputError(f"could not publish {final} ({cause}); the finished output is kept in {kept}")
                err.kept = kept
                raise err from None
    finally:
        unregister(tmp)


def _published_marker(folder: Path, run_id: str | None) -> dict:
    """The marker of a finished folder: whose it is, its entries, every file's SHA-256 (what
    weights are verified against before they are read or exported, rmu/models/weights.py)
    and the files a command wrote into it on its own (`written`, write_output_file)."""
    marker = {**_owner(run_id), "files": sorted(p.name for p in folder.iterdir()),
              "sha256": {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}}
    written = read_marker(folder).get("written")
    if written:
        marker["written"] = written
    return marker


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


def human(n: float) -> str:
    """A size as people read it: GiB from 0.1 GiB up, MiB below."""
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2 ** 20:.1f} MiB"


def _marker_of(folder: Path) -> dict:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _replace_text(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file renamed over it: never half a file."""
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


def _complete(folder: Path) -> bool:
    """Whether `folder` is a finished output: its marker lists its files (written just before
    publishing) and every one of them is there (a deletion cut short removes some)."""
    files = _marker_of(folder).get("files")
    return isinstance(files, list) and all((folder / f).exists() for f in files)


def _writer_alive(folder: Path) -> bool:
    """Whether the process its marker names still runs (a command that is writing it now)."""
    from rmu.run.lock import _alive

    owner = _marker_of(folder)
    return bool(owner.get("pid")) and _alive(owner)


def _leftovers(parent: Path) -> dict[str, dict[str, list[Path]]]:
    """{output name: {"tmp": [...], "old": [...], "resume": [...]}} of the hidden folders in `parent`."""
    found: dict[str, dict[str, list[Path]]] = {}
    for p in sorted(parent.glob(".*.*")):
        for kind in (".tmp-", ".old-", ".resume"):
            name, sep, rest = p.name[1:].rpartition(kind)
            if sep and name and p.is_dir() and (kind != ".resume" or not rest):
                found.setdefault(name, {"tmp": [], "old": [], "resume": []})[kind.strip(".-")].append(p)
                break
    return found


def settle(final: Path, found: dict[str, list[Path]], own: bool = False) -> list[str]:
    """What killed commands left for the output `final`: a finished output that never got
    into place is restored (a complete `.tmp-*`, else a complete `.old-*`, renamed to
    `final`) or, when `final` holds another, kept under a visible name; what is left
    half-written or already replaced is removed; what has no rmu marker is only named.
    Never the only complete copy of an output is deleted. Returns the lines to print."""
    lines = []
    tmps = [t for t in found["tmp"] if not _writer_alive(t)]  # a command writing it right now keeps it
    leftovers = tmps + found["old"]
    if not (final.exists() and (not final.is_dir() or any(final.iterdir()))):
        newest = lambda ps: sorted((p for p in ps if _complete(p)), key=lambda p: p.stat().st_mtime)[-1:]  # noqa: E731
        for candidate in newest(tmps) or newest(found["old"]):
            with deferred():
                if final.is_dir():
                    final.rmdir()
                candidate.rename(final)
            leftovers.remove(candidate)
            lines.append(f"rmu: restored {final} from {candidate.name}, the complete output a command killed while "
                         f"publishing it left")
    for p in leftovers:
        size = human(folder_size(p))
        if not (p / MARKER).is_file():
            lines.append(f"rmu: {p} looks like a folder a killed run left ({size}), but it has no rmu marker: "
                         f"not removed")
        elif p in tmps and _complete(p):  # finished, never published, and `final` holds another output
            kept = _publish_elsewhere(p, final)
            lines.append(f"rmu: kept {kept}: the finished output a command killed while publishing it left "
                         f"({size}; {final} holds another)")
        else:
            with deferred():
                shutil.rmtree(p, ignore_errors=True)
            lines.append(f"rmu: removed {p}, a folder a killed run left ({size})")
    if not own and leftovers:
        from rmu.run.lock import remove_stale

        if remove_stale(final):
            lines.append(f"rmu: removed the lock of {final} that a killed run left")
    if not own:
        for p in found["resume"]:
            lines.append(f"rmu: {p} holds an interrupted run's state ({human(folder_size(p))}); resume it with "
                         f"output_dir={final}, or delete it")
    return lines


def clean_leftovers(final: str | Path, live: callable) -> list[str]:
    """Hidden folders beside `final` that killed commands left (`.<name>.tmp-*`,
    `.<name>.old-*`, rmu's by their marker), settled by `settle` unless a live run holds
    `<name>`; interrupted runs' states (`.<name>.resume`) are kept and reported.
    `live(path)`: whether a running process holds the output folder at `path` (this run's
    own name is not asked: it holds that lock itself). Returns the lines to print."""
    final = Path(final).expanduser().absolute()
    parent = final.parent
    if not parent.is_dir():
        return []
    lines = []
    for name, found in _leftovers(parent).items():
        if name != final.name and live(parent / name):
            continue
        lines += settle(parent / name, found, own=name == final.name)
    return lines


def _registry() -> Path:
    root = os.environ.get("RMU_CACHE") or Path.home() / ".cache" / "rmu"
    return Path(root).expanduser().absolute() / "staging"


def _entry(tmp: Path) -> Path:
    return _registry() / f"{hashlib.sha256(str(tmp).encode()).hexdigest()[:16]}.json"


def register(tmp: Path, final: Path) -> None:
    """Note a temporary output folder in $RMU_CACHE/staging (default ~/.cache/rmu), so that
    the next command, wherever it writes, finds it if this one is killed (rmu/run/leftovers.py)."""
    try:
        _registry().mkdir(parents=True, exist_ok=True)
        _entry(tmp).write_text(json.dumps({"tmp": str(tmp), "final": str(final), **_owner()}))
    except OSError:
        pass  # a read-only home: the folder is still found by a command writing beside it


def unregister(tmp: Path) -> None:
    try:
        _entry(tmp).unlink(missing_ok=True)
    except OSError:
        pass


def registered() -> list[tuple[Path, dict]]:
    """(entry file, its content) of every temporary folder noted by `register`."""
    out = []
    try:
        entries = sorted(_registry().glob("*.json"))
    except OSError:
        return out
    for e in entries:
        try:
            out.append((e, json.loads(e.read_text())))
        except (OSError, ValueError):
            continue
    return out


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
    cause = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}.get(e.errno) \
        or e.strerror or str(e)
    return f"{doing} {e.filename or ''}: {cause}".replace("  ", " ")
