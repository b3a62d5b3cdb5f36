"""Named points where a run can be held still, so that the fault-injection tests
(tests/test_faults.py) can send a signal at an exact moment instead of guessing one.

With `RMU_PAUSE_AT=<point>` in the environment, the process prints `rmu-pause: <point>`
to stderr on reaching that point and waits there (up to `RMU_PAUSE_SECONDS`, default
60) until a SIGTERM arrives, or a SIGUSR1 tells it to go on. Points: `step-<n>` (after step n's update), `eval_after`,
`publish` (the output folder written, not yet renamed into place), `resume_saved`.
Without the variable this does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

signalled = False  # set by rmu.run.resume.Preemption's handler


def pause_point(name: str) -> None:
    if os.environ.get("RMU_PAUSE_AT") != name:
        return
    go_on = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: go_on.append(True))
    print(f"rmu-pause: {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + float(os.environ.get("RMU_PAUSE_SECONDS", "60"))
    try:
        while not signalled and not go_on and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        signal.signal(signal.SIGUSR1, previous)
