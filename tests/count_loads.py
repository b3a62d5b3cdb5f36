"""`python tests/count_loads.py <module> <overrides...>`: run an rmu command and record, in the
folder LOADS_DIR, which process read a model's weights: each `from_pretrained` call leaves a
file `rank<RANK>-<n>`. The FSDP tests use it to show that only rank 0 holds a whole model;
rmu itself runs unchanged."""

import os
import runpy
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

_real = AutoModelForCausalLM.from_pretrained.__func__
_calls = []


def _counted(cls, *args, **kwargs):
    _calls.append(1)
    (Path(os.environ["LOADS_DIR"]) / f"rank{os.environ.get('RANK', '0')}-{len(_calls)}").touch()
    return _real(cls, *args, **kwargs)


if __name__ == "__main__":
    AutoModelForCausalLM.from_pretrained = classmethod(_counted)
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
