"""`python tests/os_faults.py <module> <overrides...>`: run an rmu command while the
operating system misbehaves on cue, for tests/test_faults.py. The faults are the ones a
cluster produces and a test cannot make without root and a spare disk:

- FAULT_READONLY=<folder>: creating a file or folder inside it fails with EROFS (a
  read-only mount);
- FAULT_MOUNT=<folder>: that folder is a mount point (an empty scratch mount);
- FAULT_ENOSPC=<text>: writing to a file whose path contains <text> fails with ENOSPC
  (the disk fills up);
- FAULT_FREE_BYTES=<n>: every disk reports n bytes free.

rmu itself runs unchanged: only these os / builtins functions are wrapped.
"""

import builtins
import errno
import os
import runpy
import sys


def _under(path, folder: str) -> bool:
    return os.path.abspath(os.fspath(path)).startswith(os.path.abspath(folder))


def _read_only(folder: str) -> None:
    def guard(fn):
        def guarded(path, *args, **kwargs):
            if _under(path, folder):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return fn(path, *args, **kwargs)
        return guarded
    os.open, os.mkdir = guard(os.open), guard(os.mkdir)


def _mount_point(folder: str) -> None:
    real = os.path.ismount
    os.path.ismount = lambda p: os.path.abspath(os.fspath(p)) == os.path.abspath(folder) or real(p)


class _FullDisk:
    """A file open for writing on a full disk: every write fails."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _disk_full(text: str) -> None:
    real = builtins.open

    def fopen(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        return _FullDisk(f) if text in str(file) and ("w" in mode or "a" in mode) else f
    builtins.open = fopen


def _free(n: int) -> None:
    import shutil

    real = shutil.disk_usage
    shutil.disk_usage = lambda p: real(p)._replace(free=n)


if __name__ == "__main__":
    if os.environ.get("FAULT_FREE_BYTES"):
        _free(int(os.environ["FAULT_FREE_BYTES"]))
    if os.environ.get("FAULT_READONLY"):
        _read_only(os.environ["FAULT_READONLY"])
    if os.environ.get("FAULT_MOUNT"):
        _mount_point(os.environ["FAULT_MOUNT"])
    if os.environ.get("FAULT_ENOSPC"):
        _disk_full(os.environ["FAULT_ENOSPC"])
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
