"""End to end on the bundled SmolLM2-135M-Instruct: the default `python -m rmu.train`
really unlearns chem and astro and keeps general knowledge (the README's table)."""

import json

import pytest

from tests.conftest import run_cli


def assert_unlearned(ev: dict):
    """The README's targets: forget sets at most chance + 10 points, general keeps ≥ 90%."""
    for topic in ("chem", "astro"):
        base, after = ev[topic]["base"], ev[topic]["unlearned"]
        assert base["acc"] >= base["chance"] + 0.15, f"{topic}: the base model must know the topic first"
        assert after["acc"] <= after["chance"] + 0.10, f"{topic}: {after['acc']:.3f} after unlearning"
    general = ev["general"]
    assert general["base"]["acc"] >= general["base"]["chance"] + 0.3
    assert general["unlearned"]["acc"] >= 0.9 * general["base"]["acc"], general


@pytest.mark.e2e
def test_default_run_unlearns_the_forget_topics_and_keeps_general_knowledge(tmp_path):
    out = tmp_path / "default"
    proc = run_cli("rmu.train", f"output_dir={out}", "trainer.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    ev = json.loads((out / "results.json").read_text())["eval"]
    assert_unlearned(ev)

    # The saved checkpoint is the model that was evaluated: rmu.eval on it gives the same table.
    proc = run_cli("rmu.eval", f"model.path={out}", f"output_file={tmp_path / 'eval.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = json.loads((tmp_path / "eval.json").read_text())["results"]
    for name in ("chem", "astro", "general"):
        assert reloaded[name]["acc"] == pytest.approx(ev[name]["unlearned"]["acc"], abs=1.5 / ev[name]["unlearned"]["n"])


@pytest.mark.e2e
def test_lora_run_meets_the_same_targets(tmp_path):
    out = tmp_path / "lora"
    proc = run_cli("rmu.train", "adapter=lora", f"output_dir={out}", "trainer.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    assert_unlearned(json.loads((out / "results.json").read_text())["eval"])


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [0, 1], ids=["tuned-seed0", "untuned-seed1"])
def test_the_recommended_robust_recipe_unlearns_at_matched_retain(tmp_path, seed):
    """experiment=robust_bundled at the seed it was tuned with (seed 0, experiments/robust/tuning.md)
    and at one it was not: forget sets at most chance + 10 points and general at least 95 % of
    the base model's. Measured (CPU, float32): seed 0 chem 0.289, astro 0.213, general 0.770;
    seed 1 chem 0.267, astro 0.164, general 0.770 of base 0.797. General sits one question of
    74 above the floor (57 right; 56 would fail) at both seeds: the recipe was tuned to this edge."""
    out = tmp_path / "robust"
    proc = run_cli("rmu.train", "experiment=robust_bundled", f"seed={seed}", f"output_dir={out}",
                   "trainer.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads((out / "results.json").read_text())["eval"]
    for topic in ("chem", "astro"):
        assert ev[topic]["unlearned"]["acc"] <= ev[topic]["unlearned"]["chance"] + 0.10, ev[topic]
    assert ev["general"]["unlearned"]["acc"] >= 0.95 * ev["general"]["base"]["acc"], ev["general"]
