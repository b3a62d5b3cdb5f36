"""`python -m rmu.eval`: score a model on the multiple-choice sets (rmu/evaluation/mcq.py)
and, with `harness.tasks`, on lm-evaluation-harness tasks (rmu/evaluation/harness.py).

    python -m rmu.eval                                  # the bundled model on the bundled sets
    python -m rmu.eval model.path=outputs/rmu-20261124-101500 output_file=eval.json
    python -m rmu.eval model.path=outputs/rmu-20261124-101500 harness.tasks=[wmdp_bio,wmdp_cyber,mmlu]

`eval.sets=[]` skips the built-in sets. `output_file` is checked before the model loads and
written atomically; it replaces only a file rmu.eval wrote itself (its folder's marker says
so), and that only with `overwrite=true` (rmu/run/checkpoint.py, write_output_file).
"""

from __future__ import annotations

import sys
import json

import hydra
from omegaconf import DictConfig

from rmu.config.checks import check_eval, check_harness, check_model, check_schema
from rmu.config.plan import load_eval_sets, look_up_harness_tasks, read_model_config
from rmu.config.overrides import check_command_line
from rmu.config.schema import CONF_DIR
from rmu.evaluation.harness import run_harness
from rmu.evaluation.mcq import evaluate, format_table
from rmu.models.loading import load_model
from rmu.run.checkpoint import check_output_file, write_output_file
from rmu.run.cli import run_command

COMMAND = "rmu.eval"


def run(cfg: DictConfig) -> dict:
    check_schema(cfg)
    check_model(cfg.model)
    check_eval(cfg.eval)
    check_harness(cfg.harness)
    sets = load_eval_sets(cfg.eval)
    look_up_harness_tasks(cfg.harness)
    read_model_config(cfg.model, "model")
    if cfg.output_file:
        check_output_file(cfg.output_file, COMMAND, cfg.overwrite, key="output_file")

    model, tokenizer = load_model(cfg.model, cfg.seed)
    print(f"model: {cfg.model.path}")
    report = {"model": cfg.model.path, "revision": cfg.model.revision}
    if sets:
        report["results"] = evaluate(model, tokenizer, sets, cfg.eval.batch_size)
        print(format_table(report["results"]))
    if cfg.harness.tasks:
        harness = run_harness(model, tokenizer, cfg.harness, cfg.model.path, cfg.model.revision)
        print(harness.pop("table"))
        report["harness"] = harness
    if cfg.output_file:
        written = write_output_file(cfg.output_file, json.dumps(report, indent=2) + "\n", COMMAND, cfg.overwrite,
                                    key="output_file")
        print(f"eval: wrote {written}")
    return report


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    return run_command(run, cfg)


if __name__ == "__main__":
    check_command_line("eval", sys.argv[1:])  # one sentence for the mistakes Hydra answers with a traceback
    main()
