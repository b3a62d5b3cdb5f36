"""rmu: Representation Misdirection for Unlearning (RMU, formerly CUT), as in the WMDP paper."""

import os
import signal
import sys

__version__ = "0.1.0"


def _stopped_early(signum, frame):  # pragma: no cover - exercised through the command line
    """Ctrl-C (or SIGTERM, SIGHUP) while a command is still importing: nothing is held yet."""
    os.write(2, f"rmu: stopped by {signal.Signals(signum).name} before the work began; nothing was written\n"
             .encode())
    os._exit(128 + signum)


if sys.argv[:1] == ["-m"]:  # `python -m rmu.<command>` being started (rmu/run/signals.py takes over in run_command)
    for _s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(_s, _stopped_early)
