"""SIGINT (Ctrl-C), SIGHUP (a closed terminal or ssh session) and SIGTERM (a scheduler, a
`kill`) end every command the same way: what there is to keep is kept, one sentence says
what happened and how to go on, locks and temporary folders are released, and the exit
status follows the convention, 128 + the signal: 130, 129, 143.

`run_command` (rmu/run/cli.py) installs the handler for every command. By default a
signal raises `Stopped` where the command is: `finally` blocks and context managers
release the lock and delete the temporary output folder on the way up. A phase with
something to keep installs a `keeper` instead (the training loop, rmu/run/resume.py:
`Preemption`), which decides what the signal does (finish the step and save the state).
A second Ctrl-C stops at once: `Stopped` wherever the command is, also during that save;
a repeated SIGTERM or SIGHUP (a launcher forwarding the scheduler's signal) is ignored.

`deferred()` holds signals back for a few statements that must not be cut in two (the
renames that publish an output folder, the deletion of a temporary one); the signal is
acted on when they are done.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from contextlib import contextmanager

from rmu.run import pause

SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)

_received: int | None = None  # the first signal of this command
_keeper = None  # callable(signum) of the phase that has something to keep, or None
_defer = 0
_pending: list[int] = []


def name(signum: int | None) -> str:
    return signal.Signals(signum or signal.SIGTERM).name


class Stopped(BaseException):
    """A signal ended the command (a BaseException: no `except Exception` swallows it on its
    way up). `note`: what was kept, added by the code that knows."""

    def __init__(self, signum: int, again: bool = False, note: str = ""):
        super().__init__(signum)
        self.signum, self.again, self.note = signum, again, note

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def sentence(self) -> str:
        how = f"stopped at once by a second {name(self.signum)}" if self.again else f"stopped by {name(self.signum)}"
        return f"{how}; {self.note or 'nothing was written'}"


def install() -> dict:
    """Handle SIGINT, SIGHUP and SIGTERM in this process from now on (the main thread only:
    elsewhere Python cannot install handlers, and the defaults stay). Returns the handlers
    it replaced, for `restore`."""
    global _received, _keeper, _defer
    _received, _keeper, _defer = None, None, 0
    _pending.clear()
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handle)
    return previous


def restore(previous: dict) -> None:
    """The handlers `install` replaced (a command run inside another program, e.g. a test)."""
    global _keeper
    _keeper = None
    for s, handler in previous.items():
        if handler is not None:
            signal.signal(s, handler)


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _handle


def received() -> int | None:
    return _received


def keep(keeper) -> None:
    """`keeper(signum)` decides what a signal does from now on (None: back to `Stopped`)."""
    global _keeper
    _keeper = keeper


def note(text: str) -> None:
    """A line on stderr from inside a handler (print is not safe there: it may interrupt a print)."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _handle(signum, frame) -> None:
    if signum == signal.SIGHUP:
        _detach_terminal()
    pause.signalled += 1  # a pause point (tests) stops waiting
    if _defer:
        _pending.append(signum)
        return
    _act(signum)


def _act(signum: int) -> None:
    global _received
    if _received is not None:  # a second signal
        if signum == signal.SIGINT:
            raise Stopped(signum, again=True)
        return  # the same SIGTERM / SIGHUP again (forwarded by a launcher): the first is being handled
    _received = signum
    if _keeper is not None:
        _keeper(signum)
        return
    raise Stopped(signum)


@contextmanager
def deferred():
    """Signals that arrive inside wait until the block is done."""
    global _defer
    _defer += 1
    try:
        yield
    finally:
        _defer -= 1
        if not _defer and _pending:
            waiting = list(_pending)
            _pending.clear()
            for s in waiting:
                _act(s)


def _detach_terminal() -> None:
    """After a hangup the terminal is gone and every write to it fails (EIO): send what
    the run still prints to /dev/null, so that saving the state does not fail on a print."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for fd in (1, 2):
        try:
            if stat.S_ISCHR(os.fstat(fd).st_mode):  # a terminal (after the hangup isatty says no any more)
                os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)
