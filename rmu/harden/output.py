"""The run folder a hardening command writes (rmu.distill, rmu.tar): the trained weights, the
starting run's RMU files as they are, the command's own config and per-step metrics, results.json,
eval_table.txt and the report, atomically (rmu/run/checkpoint.py); and the scores both take of
the starting and the trained model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from rmu.evaluation.mcq import evaluate
from rmu.evaluation.results import RunResults
from rmu.report import write_report
from rmu.run.checkpoint import staged_output

# The starting run's files the output keeps as they are: they say how RMU made that model.
START_FILES = ("rmu_config.yaml", "metrics.jsonl", "control_vectors.safetensors")


def scores_on_ranks(run, model) -> dict:
    """The evaluation sets' scores of `model` (the starting one or the trained one): rank 0
    alone, or under FSDP every rank (the sharded layers gather over all of them)."""
    scores = lambda: evaluate(model, run.tokenizer, run.plan.eval_sets, run.cfg.eval.batch_size)  # noqa: E731
    return (scores() if run.ranks.fsdp else run.ranks.on_main(scores)) or {}


def write_hardened(run, kind: str, results: RunResults, rows: list[dict], started: float, folder=None,
                   weights: dict | None = None) -> RunResults:
    """Write `run`'s output folder: `kind`_config.yaml and `kind`_metrics.jsonl beside the rest
    (`kind`: distill | tar). `weights`: the model's whole state dict when it is sharded (FSDP).
    Once written, the run folder's resume state is cleared."""
    cfg, source, t0 = run.cfg, Path(run.cfg.model.path).expanduser(), time.perf_counter()
    with staged_output(cfg.output_dir, cfg.overwrite, run.run_id) as out:
        run.model.save_pretrained(out, state_dict=weights, safe_serialization=True)
        run.tokenizer.save_pretrained(out)
        for name in START_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
        (out / f"{kind}_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with open(out / f"{kind}_metrics.jsonl", "w") as log:
            log.writelines(json.dumps(r) + "\n" for r in rows)
        results.seconds["save"] = time.perf_counter() - t0
        results.seconds["total"] = time.perf_counter() - started
        results.write(out)
        (out / "eval_table.txt").write_text(results.table() + "\n")
        write_report(out)
    if folder is not None:
        folder.resume.clear()
    run.tracker.finish(results)
    return results
