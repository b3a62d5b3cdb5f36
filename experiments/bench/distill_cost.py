"""What a distilled token costs against a fine-tuned token, measured in one process.

    python experiments/bench/distill_cost.py <overrides of python -m rmu.distill>
    python experiments/bench/distill_cost.py model=lab_base data=lab eval=lab distill=lab \\
        model.path=experiments/lab/runs/rmu/seed0

Builds the distillation run as `python -m rmu.distill` would (rmu/harden/distill.py,
`setup`), then alternates `distill_step` (teacher forward, student forward and backward, KL
over the vocabulary, AdamW) with plain fine-tuning of a second copy of the student on the
same rows (next-token loss, forward and backward, AdamW): the fine-tuning attack's own cost
per token. Prints the median seconds of each and their ratio; --steps sets how many of each
(after one warm-up step each). Nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="overrides of python -m rmu.distill")
    args = p.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_dir

    from rmu.config.schema import CONF_DIR
    from rmu.harden.distill import distill_step, rows_of, setup
    from rmu.unlearn.optim import learning_rate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("distill", overrides=[*args.overrides, "output_dir=/tmp/rmu-distill-cost-unused"])
    run = setup(cfg)
    tuned = copy.deepcopy(run.model).train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=cfg.distill.lr, weight_decay=0.0)

    def finetune_step(ids):
        loss = tuned(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = {"distill": [], "finetune": []}
    for step in range(args.steps + 1):  # step 0 warms both up and is not counted
        ids = rows_of(run, step)
        for name, fn in (("distill", lambda: distill_step(run, ids, learning_rate(step, 100, cfg.distill.lr, 0, 1.0))),
                         ("finetune", lambda: finetune_step(ids))):
            t0 = time.perf_counter()
            fn()
            if step:
                times[name].append(time.perf_counter() - t0)
    tokens = rows_of(run, 0).numel()
    d, f = statistics.median(times["distill"]), statistics.median(times["finetune"])
    print(f"{cfg.model.name}: {tokens} tokens per step ({run.plan.global_rows} rows x {cfg.distill.seq_len}), "
          f"{args.steps} steps each, {torch.get_num_threads()} threads")
    print(f"distillation step: median {d:.3f} s ({tokens / d:.0f} tokens/s)")
    print(f"fine-tuning step:  median {f:.3f} s ({tokens / f:.0f} tokens/s)")
    print(f"a distilled token costs {d / f:.2f}x a fine-tuned token")


if __name__ == "__main__":
    main()
