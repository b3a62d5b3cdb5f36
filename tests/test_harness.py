"""lm-evaluation-harness: the bundled sets as lm-eval tasks agree with the built-in
evaluator, results carry what reproduces them, and bad task names fail before loading."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import rmu.train
import rmu.unlearn.recipe
from rmu.errors import ConfigError
from rmu.config.plan import plan_train
from rmu.data import load_mcq
from rmu.evaluation.mcq import evaluate
from rmu.evaluation.harness import run_harness
from rmu.models.loading import load_model
from tests.conftest import TINY, make_cfg, run_cli

SETS = ("chem", "astro", "general")


@pytest.mark.slow
def test_lm_eval_on_the_bundled_sets_matches_the_builtin_evaluator():
    cfg = make_cfg([])  # the bundled SmolLM2-135M: real, non-random answers
    model, tok = load_model(cfg.model, 0)
    hcfg = OmegaConf.create({"tasks": ["rmu_bundled"], "num_fewshot": 0, "batch_size": 16, "limit": None})
    harness = run_harness(model, tok, hcfg, cfg.model.path, None)
    builtin = evaluate(model, tok, [(s, "forget", load_mcq(f"bundled:mcq_{s}.jsonl")) for s in SETS], 16)
    for s in SETS:
        h, b = harness["tasks"][f"rmu_{s}"], builtin[s]
        assert h["n"] == b["n"]
        for metric in ("acc", "acc_norm"):
            assert abs(h[metric] - b[metric]) * b["n"] <= 1 + 1e-9, (s, metric, h[metric], b[metric])
        assert h["version"] == 1.0 and h["num_fewshot"] == 0
    assert builtin["chem"]["acc"] > 0.6  # a model that knows the topic, so agreement is not trivial
    setup = harness["setup"]
    assert setup["lm_eval_version"] and setup["batch_size"] == 16 and setup["model_path"] == cfg.model.path
    assert "rmu_chem" in harness["table"]


@pytest.mark.slow
def test_eval_cli_runs_harness_tasks_and_writes_them(tmp_path):
    proc = run_cli("rmu.eval", "model=tiny_random", "eval.sets=[]", "harness.tasks=[rmu_chem,rmu_general]",
                   "harness.limit=12", f"output_file={tmp_path / 'eval.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert "results" not in report  # built-in sets switched off
    tasks = report["harness"]["tasks"]
    assert set(tasks) == {"rmu_chem", "rmu_general"} and tasks["rmu_chem"]["n"] == 12
    assert 0 <= tasks["rmu_chem"]["acc"] <= 1 and tasks["rmu_chem"]["version"] == 1.0
    assert report["harness"]["setup"]["limit"] == 12 and report["harness"]["setup"]["num_fewshot"] == 0
    assert "rmu_general" in proc.stdout and "acc_norm" in proc.stdout


@pytest.mark.slow
def test_training_runs_the_harness_before_and_after(tiny_cfg):
    cfg = tiny_cfg("harness.tasks=[rmu_astro]", "harness.limit=8")
    results = rmu.train.train(cfg)
    h = results.harness
    assert set(h) == {"setup", "base_model", "base", "unlearned"}
    assert h["base"]["rmu_astro"]["n"] == h["unlearned"]["rmu_astro"]["n"] == 8
    table = (Path(cfg.output_dir) / "eval_table.txt").read_text()
    base, after = h["base"]["rmu_astro"], h["unlearned"]["rmu_astro"]
    assert "rmu_astro (lm-eval)" in table and f"{base['acc']:.3f}" in table and f"{after['acc']:.3f}" in table


def test_unknown_task_fails_before_any_model_loads(tiny_cfg, monkeypatch):
    monkeypatch.setattr(rmu.unlearn.recipe, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=r"harness.tasks=\['wmdp_bioo'\]: lm-eval knows no task or group 'wmdp_bioo'"):
        rmu.train.train(tiny_cfg("harness.tasks=[wmdp_bioo]"))
    with pytest.raises(ConfigError, match="harness.limit=0"):
        plan_train(tiny_cfg("harness.tasks=[rmu_chem]", "harness.limit=0"))


def test_eval_wmdp_selects_the_published_tasks():
    cfg = make_cfg(["eval=wmdp"])
    assert list(cfg.harness.tasks) == ["wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu"] and not cfg.eval.sets
    from rmu.evaluation.harness import unknown_tasks
    assert unknown_tasks(list(cfg.harness.tasks)) == []
