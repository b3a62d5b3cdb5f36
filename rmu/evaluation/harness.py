"""Evaluation through lm-evaluation-harness (`pip install rmu[eval]`), on the model in memory.

The field reports RMU with lm-eval's zero-shot `wmdp_bio`, `wmdp_cyber`, `wmdp_chem` and
`mmlu` (and its subsets). `harness.tasks` names any lm-eval task or group; the bundled
sets are lm-eval tasks too (`rmu_chem`, `rmu_astro`, `rmu_general`, group `rmu_bundled`;
YAMLs in rmu/evaluation/harness_tasks, local data), scored like the built-in evaluator.

Results carry what reproducing them needs: the lm-eval version, every task's version and
few-shot count, the batch size, the limit, and the model's path and revision.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "harness_tasks"


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def unknown_tasks(tasks: list[str]) -> list[str]:
    """Names lm-eval does not know (reads only task YAMLs, no data)."""
    known = set(task_manager().all_tasks)
    return [t for t in tasks if t not in known]


def run_harness(model, tokenizer, hcfg, model_path: str, revision: str | None) -> dict:
    """lm-eval's `simple_evaluate` on `model`; returns {"tasks": {name: metrics}, "table", "setup"}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import make_table

    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=hcfg.batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(hcfg.tasks), num_fewshot=hcfg.num_fewshot,
                                  limit=hcfg.limit, task_manager=task_manager(), log_samples=False)
    model.train(was_training)
    tasks = {}
    for name, metrics in out["results"].items():
        row = {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and "," in k}
        row["version"] = out.get("versions", {}).get(name)
        row["num_fewshot"] = out.get("n-shot", {}).get(name)
        row["n"] = (out.get("n-samples", {}).get(name) or {}).get("effective")
        tasks[name] = row
    setup = {"lm_eval_version": version("lm_eval"),
             "num_fewshot": hcfg.num_fewshot, "batch_size": hcfg.batch_size, "limit": hcfg.limit,
             "model_path": model_path, "revision": revision}
    return {"tasks": tasks, "setup": setup, "table": make_table(out)}

