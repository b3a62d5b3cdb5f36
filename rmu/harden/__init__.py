"""Hardening: making an unlearned model stay unlearned under fine-tuning.

- `noise.py`: the damaged copy a student starts from (shrink and noise the teacher's weights);
- `distill.py`: distillation of an unlearned teacher into that student (UNDO, Lee et al.
  2025), the recipe `python -m rmu.distill` runs (rmu/distill.py);
- `tar.py`: tamper-resistant training against sampled fine-tuning adversaries (TAR,
  Tamirisa et al. 2025), the recipe `python -m rmu.tar` runs (rmu/tar.py);
- `plan.py`: what both check before any weights load; `output.py`: the run folder both write.
"""
