"""Named points where a run can be held still, so that the fault-injection tests
(tests/test_faults.py) can send a signal at an exact moment instead of guessing one.

With `RMU_PAUSE_AT=<point>` in the environment, the process prints `rmu-pause: <point>`
to stderr on reaching that point and waits there (up to `RMU_PAUSE_SECONDS`, default
60) until a SIGTERM arrives. Points: `step-<n>` (after step n's update), `eval_after`,
`publish` (the output folder written, not yet renamed into place), `resume_saved`.
Without the variable this does nothing.
"""

from __future__ import annotations

import os
import sys
import time

signalled = False  # set by rmu.resume.Preemption's handler


def pause_point(name: str) -> None:
    if os.environ.get("RMU_PAUSE_AT") != name:
        return
    print(f"rmu-pause: {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + float(os.environ.get("RMU_PAUSE_SECONDS", "60"))
    while not signalled and time.monotonic() < deadline:
        time.sleep(0.02)
