"""The errors a user can act on. Every `python -m rmu.*` command (rmu/run/cli.py) turns an
`RmuError` into one line on stderr and its exit code; anything else is a bug and keeps
its traceback."""

from __future__ import annotations


class RmuError(Exception):
    """Base of every error rmu reports to the user as a message, not a traceback."""

    exit_code = 1


class ConfigError(RmuError, ValueError):
    """A config value that cannot work; raised before any model is loaded."""


class DataError(RmuError, ValueError):
    """A corpus or multiple-choice file that is missing, empty or malformed."""


class TrainingError(RmuError):
    """Training cannot go on (e.g. a non-finite loss); nothing has been written."""


class ResumeError(RmuError):
    """A resume state that cannot be used: another config, corrupt, or not rmu's."""


class OutputError(RmuError):
    """An output folder or state file that cannot be written, or is in use by another run."""


class ExportError(RmuError):
    """The upload failed; the prepared folder is left as it is."""


class RankFailed(RmuError):
    """Another process of a multi-process run failed; this one stops with its message."""


class Preempted(RmuError):
    """A signal arrived (SIGTERM, SIGINT, SIGHUP); the training state was saved and the same
    command resumes it. The exit code is 128 + the signal (143 for SIGTERM, what a
    scheduler expects from a terminated job; 130 for Ctrl-C; 129 for a hangup)."""

    exit_code = 143

    def __init__(self, message: str, signum: int = 15):
        super().__init__(message)
        self.exit_code = 128 + signum
