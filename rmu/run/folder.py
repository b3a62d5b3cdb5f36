"""The output folder a training run owns, from before its model loads until it ends.

`RunFolder` is entered by `train()` only: it picks the folder (with the default
timestamped `output_dir`, the newest interrupted run of the same config is continued),
takes the lock, cleans what killed runs left beside it, and reads the resume state
(checked before any weights load). Tests and the bench build runs without one, so they
never take a lock.
"""

from __future__ import annotations

import shlex
import sys

from rmu.errors import ResumeError
from rmu.run.checkpoint import check_output_dir, clean_leftovers
from rmu.run.distributed import Ranks
from rmu.run.lock import OutputLock, held
from rmu.run.resume import Resume, find_interrupted


class RunFolder:
    """`with RunFolder(cfg, ranks, auto_resume) as folder:` — `folder.resume` saves and
    clears the training state, `folder.state` is the state this run continues (or None).
    `auto_resume`: `output_dir` is the default timestamped one, so the same command
    continues an interrupted run of this config instead of starting a new folder."""

    def __init__(self, cfg, ranks: Ranks, auto_resume: bool):
        self.cfg, self.ranks, self.auto_resume = cfg, ranks, auto_resume
        self.lock: OutputLock | None = None
        self.resume: Resume | None = None
        self.state: dict | None = None

    def __enter__(self) -> RunFolder:
        cfg, ranks = self.cfg, self.ranks
        if self.auto_resume:
            interrupted = ranks.on_main(lambda: find_interrupted(cfg))
            if interrupted:
                ranks.print(f"rmu: continuing the interrupted run {interrupted} (same config; set output_dir to "
                            f"start a new run instead)")
                cfg.output_dir = interrupted
        cfg.output_dir = ranks.same(str(cfg.output_dir))  # one folder, even if ranks started in different seconds
        self.lock = OutputLock(cfg.output_dir)
        note = ranks.on_main(self.lock.acquire)  # a second run into this output_dir stops here
        try:
            for line in ranks.on_main(lambda: clean_leftovers(cfg.output_dir, held)) or []:
                ranks.print(line)
            # A finished output a killed run left may have been restored into output_dir: checked again.
            ranks.on_main(lambda: check_output_dir(cfg.output_dir, cfg.overwrite, protected=(cfg.model.path,)))
            if note:
                ranks.print(note)
            self.resume = Resume(cfg, ranks.size)
            self.state = self._agreed_state()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _agreed_state(self) -> dict | None:
        """The saved state, read by rank 0 first (a bad state fails there in seconds), then
        by every other rank, which must find the same step."""
        ranks, resume = self.ranks, self.resume
        state = ranks.on_main(resume.load)
        if not ranks.main:
            state = resume.load()
        step = ranks.same(None if state is None else state["step"])
        if (None if state is None else state["step"]) != step:  # e.g. an output_dir on a node-local disk
            raise ResumeError(f"rank {ranks.rank} finds {'no resume state' if state is None else 'another state'} "
                              f"in {resume.folder} than rank 0 (step {step}); put output_dir on a shared disk")
        return state

    def resume_command(self) -> str:
        """The exact command that continues this run, `output_dir` included."""
        args = [a for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") not in ("output_dir", "overwrite")]
        module = getattr(sys.modules.get("__main__"), "__spec__", None)
        return shlex.join(["python", "-m", module.name if module else "rmu.train", *args,
                           f"output_dir={self.cfg.output_dir}"])

    def stopped_message(self, when: str, by: str = "SIGTERM") -> str:
        """What a preempted run says: where the state is and the exact command that resumes it."""
        return (f"stopped by {by} {when}; the state is in {self.resume.folder}: run the same command again to "
                f"resume, or exactly: {self.resume_command()}")
