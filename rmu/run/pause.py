"""Named points where a run can be held still, so that the fault-injection tests
(tests/test_faults.py) can send a signal at an exact moment instead of guessing one.

With `RMU_PAUSE_AT=<point>[,<point>...]` in the environment, the process prints
`rmu-pause: <point>` to stderr on reaching one of those points and waits there (up to
`RMU_PAUSE_SECONDS`, default 60) until a signal arrives (SIGINT, SIGHUP, SIGTERM: one that
arrived before the point does not count), or a SIGUSR1 tells it to go on. Points:
`step-<n>` (after step n's update), `eval_after`, `publish` (the output folder written,
not yet renamed into place), `renaming` (the folder it replaces moved aside, the new one
not yet in place), `state_saving` (a training state being written), `resume_saved`.
Without the variable this does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

signalled = 0  # how many signals arrived; counted by rmu.run.signals' handler


def pause_point(name: str) -> None:
    if name not in os.environ.get("RMU_PAUSE_AT", "").split(","):
        return
    go_on = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: go_on.append(True))
    seen = signalled
    print(f"rmu-pause: {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + float(os.environ.get("RMU_PAUSE_SECONDS", "60"))
    try:
        while signalled == seen and not go_on and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        signal.signal(signal.SIGUSR1, previous)
