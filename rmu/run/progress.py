"""Progress of a training loop, readable on a terminal and in a log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar on a terminal; in a log file (SLURM, nohup) one plain line per 10 % of
    the run instead of carriage-return frames that `tail` cannot read. `update` takes a
    metrics.jsonl row: its step, topic and forget / retain losses."""

    def __init__(self, enabled: bool, start: int, total: int, name: str = "rmu"):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.total, self.every, self.name = enabled, total, max(1, total // 10), name
        self.bar = tqdm(desc=name, initial=start, total=total) if self.tty else None

    def update(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(topic=record["topic"], forget=f"{record['forget_loss']:.3g}",
                                 retain=f"{record['retain_loss']:.3g}")
        elif self.enabled and ((record["step"] + 1) % self.every == 0 or record["step"] + 1 == self.total):
            print(f"{self.name}: step {record['step'] + 1}/{self.total} {record['topic']} "
                  f"forget {record['forget_loss']:.4g} retain {record['retain_loss']:.4g}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
