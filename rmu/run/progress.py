"""Progress of a training loop, readable on a terminal and in a log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def rmu_fields(record: dict) -> dict[str, str]:
    """What a bar shows of an RMU step's metrics.jsonl row."""
    return {"topic": record["topic"], "forget": f"{record['forget_loss']:.4g}", "retain": f"{record['retain_loss']:.4g}"}


class Progress:
    """A tqdm bar on a terminal; in a log file (SLURM, nohup) one plain line per 10 % of
    the run instead of carriage-return frames that `tail` cannot read. `update` takes a
    step's metrics row (with its `step`); `show` picks what of it to print."""

    def __init__(self, enabled: bool, start: int, total: int, name: str = "rmu", show=rmu_fields):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.total, self.every, self.name, self.show = enabled, total, max(1, total // 10), name, show
        self.bar = tqdm(desc=name, initial=start, total=total) if self.tty else None

    def update(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(self.show(record))
        elif self.enabled and ((record["step"] + 1) % self.every == 0 or record["step"] + 1 == self.total):
            fields = " ".join(f"{k} {v}" for k, v in self.show(record).items())
            print(f"{self.name}: step {record['step'] + 1}/{self.total} {fields}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
