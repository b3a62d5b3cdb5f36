"""`make robust` (experiments/robust/compare.py) end to end on the tiny model: 2 recipes ×
1 seed, a tiny attack grid, killed mid-way and resumed."""

import json
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY

COMPARE = ROOT / "experiments" / "robust" / "compare.py"
ATTACK = ["attack=all", "model@base=tiny_random", "eval.batch_size=32", "attack.probe.steps=20",
          "attack.probe.pooling=[last_token]", "attack.finetune.examples=8", "attack.finetune.lr_full=[1e-4]",
          "attack.finetune.lr_lora=[1e-3]", "attack.finetune.steps=[2]", "attack.finetune.modes=[full]",
          "attack.finetune.data=[unrelated]", "attack.heldout_relearn.steps=2", "attack.ablate.examples=8",
          "attack.ablate_unlearned.examples=8", "attack.in_context.shots=[0,1]"]


# rmu.distill of the tiny model's run, in two steps of 2 rows × 32 tokens.
DISTILL = ["model=tiny_random", "model.arch=null", "eval=bundled", "eval.batch_size=32", "trainer.batch_size=2",
           "trainer.progress=false", "distill.seq_len=32", "distill.max_tokens=128", "distill.forget_fraction=0.5",
           "distill.heldout=4", "distill.warmup=1"]


def compare(config: Path, out: Path, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(COMPARE), "--config", str(config), "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_compare_two_recipes_resumes_after_a_kill(tmp_path):
    config = tmp_path / "recipes.yaml"
    config.write_text(yaml.safe_dump({
        "seeds": [0], "train": [*TINY, "eval=bundled", "eval.batch_size=32"],
        "recipes": {"plain": [], "weak": ["rmu.alpha=1000", "trainer.max_steps=2"],
                    "undo": {"teacher": "plain", "distill": ["distill.alpha=0.5"]}},
        "distill": DISTILL, "pretrain_tokens": 1024, "attack": ATTACK}))
    out = tmp_path / "out"
    first = compare(config, out, start_new_session=True)
    plain_attack = out / "runs" / "plain" / "seed0-attack" / "results.json"
    deadline = time.time() + 600
    while not plain_attack.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the comparison and the run it started
    first.wait()
    trained = (out / "runs" / "plain" / "seed0" / "results.json").stat().st_mtime_ns
    attacked = plain_attack.stat().st_mtime_ns

    second = compare(config, out)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log[-3000:]
    # The finished recipe was not redone; the other one was trained and attacked.
    assert (out / "runs" / "plain" / "seed0" / "results.json").stat().st_mtime_ns == trained
    assert plain_attack.stat().st_mtime_ns == attacked
    assert "model.path=" + str(out / "runs" / "plain" / "seed0") not in log
    assert (out / "runs" / "weak" / "seed0-attack" / "results.json").is_file()
    distilled = json.loads((out / "runs" / "undo" / "seed0" / "results.json").read_text())
    assert distilled["distill"]["teacher"] == str(out / "runs" / "plain" / "seed0") and distilled["distill"]["steps"] == 2
    assert (out / "runs" / "undo" / "seed0-attack" / "results.json").is_file()
    assert (out / "distill.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = (out / "results.md").read_text()
    assert "| recipe | clean forget acc | general acc (% of base) | training time (× plain) |" in md
    rows = {}  # the first table's row of each recipe
    for line in md.splitlines():
        if line.startswith(("| plain |", "| weak |", "| undo |")):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    assert set(rows) == {"plain", "weak", "undo"}
    assert "| 1.00 |" in rows["plain"]  # training time relative to itself
    assert "`plain`, then `python -m rmu.distill" in md
    assert (out / "robust.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A hardened run that resumed has seconds for its own steps only: no training time from it
    record = out / "runs" / "undo" / "seed0" / "results.json"
    record.write_text(json.dumps({**distilled, "resumed_at": 1}))
    third = compare(config, out)
    log, _ = third.communicate(timeout=300)
    assert third.returncode == 0, log[-3000:]
    md = (out / "results.md").read_text()
    undo = next(line for line in md.splitlines() if line.startswith("| undo |"))
    assert undo.split(" | ")[3] == "n/a" and "Training time of `undo`: the median over the seeds that ran in one" in md


@pytest.mark.slow
def test_tune_picks_the_last_setting_that_unlearns_before_general_falls_below_the_floor(tmp_path):
    """experiments/robust/tune.py on the tiny model: three settings, one seed; the pick in
    tuning.md is recomputed here from each run's results.json."""
    config = tmp_path / "tune.yaml"
    settings = [["rmu.alpha=100"], ["rmu.alpha=1"], ["rmu.alpha=0", "rmu.steering_coeff=1000"]]
    config.write_text(yaml.safe_dump({"seed": 0, "floor": 0.99, "forget_ceiling": 0.5, "train": [*TINY, "eval=bundled", "eval.batch_size=32",
                                                                          "trainer.max_steps=4", "optim.lr=0.05"],
                                      "recipes": {"strength": settings}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "robust" / "tune.py"), "--config", str(config),
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from rmu.evaluation.results import RunResults
    runs = [RunResults.read(tmp_path / "runs" / "tune" / "strength" / str(n)) for n in range(3)]
    base = runs[0].eval["general"]["base"]["acc"]
    expected = None
    for n, r in enumerate(runs):
        if r.eval["general"]["unlearned"]["acc"] < 0.99 * base:
            break
        if max(r.eval[s]["unlearned"]["acc"] for s in ("chem", "astro")) <= 0.5:
            expected = n
    md = (tmp_path / "tuning.md").read_text()
    for n, (s, r) in enumerate(zip(settings, runs)):
        name = f"`{' '.join(s)}`"
        row = next(line for line in md.splitlines() if name in line)
        assert row.startswith(f"| **{name}**" if n == expected else f"| {name}")
        assert f"{r.eval['general']['unlearned']['acc']:.3f}" in row
    pick = "no setting unlearns at matched retain" if expected is None else " ".join(settings[expected])
    assert f"tune: strength: {pick}" in proc.stdout


def robust_common():
    """experiments/robust/common.py, the module compare.py and tune.py share."""
    spec = importlib.util.spec_from_file_location("robust_common", ROOT / "experiments" / "robust" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shared_config_reader_and_resume_check(tmp_path, monkeypatch):
    common = robust_common()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"seeds": [0], "recipes": {"a": []}, "train": [], "attack": [], "bogus": 1}))
    with pytest.raises(SystemExit, match="unknown key 'bogus'; allowed: seeds, recipes, train, attack, work_dir"):
        common.load_config(bad, ("seeds", "recipes", "train", "attack"), optional=("work_dir",))
    bad.write_text(yaml.safe_dump({"seed": 0, "recipes": {"a b": [["x"]]}}))
    with pytest.raises(SystemExit, match="recipe name 'a b': letters, digits"):
        common.load_config(bad, ("seed", "recipes"))

    # compare.py: a hardened recipe names an earlier trained recipe, and the file lists its command's overrides
    monkeypatch.syspath_prepend(str(COMPARE.parent))  # compare.py imports its sibling common.py
    compare_py = importlib.util.spec_from_file_location("compare", COMPARE)
    module = importlib.util.module_from_spec(compare_py)
    compare_py.loader.exec_module(module)
    base = {"seeds": [0], "train": [], "attack": [], "distill": [], "tar": []}
    for recipes, message in (({"a": {"teacher": "b", "distill": []}, "b": []}, "must be a trained recipe listed before"),
                             ({"a": [], "b": {"teacher": "a", "tar": [], "distill": []}}, "a hardened recipe is"),
                             ({"a": [], "b": {"teacher": "a", "tar": []}}, None)):
        bad.write_text(yaml.safe_dump({**base, "recipes": recipes}))
        if message is None:
            assert module.hardening(module.read_config(bad)["recipes"]["b"]) == "tar"
        else:
            with pytest.raises(SystemExit, match=message):
                module.read_config(bad)

    # a hardened recipe may run some of the file's seeds (an expensive point of a curve), said in the tables
    bad.write_text(yaml.safe_dump({**base, "seeds": [0, 1], "recipes": {"a": [], "b": {"teacher": "a", "tar": [],
                                                                                      "seeds": [2]}}}))
    with pytest.raises(SystemExit, match=r"recipe b: seeds \[2\] must be some of the file's seeds \[0, 1\]"):
        module.read_config(bad)
    bad.write_text(yaml.safe_dump({**base, "seeds": [0, 1], "recipes": {"a": [], "b": {"teacher": "a", "tar": [],
                                                                                      "seeds": [1]}}}))
    cfg = module.read_config(bad)
    assert module.seeds_of(cfg, "a") == [0, 1] and module.seeds_of(cfg, "b") == [1]
    # so may a trained one ({train:, seeds:}): attacked on those, trained also where its hardened recipes start
    bad.write_text(yaml.safe_dump({**base, "seeds": [0, 1], "recipes": {"a": {"train": ["x=1"], "seeds": [0]},
                                                                        "b": {"teacher": "a", "tar": []}}}))
    cfg = module.read_config(bad)
    assert cfg["recipes"]["a"] == ["x=1"] and module.seeds_of(cfg, "a") == [0] and module.seeds_of(cfg, "b") == [0, 1]
    assert module.trained_seeds(cfg, "a") == [0, 1] and module.trained_seeds(cfg, "b") == [0, 1]
    for recipes, message in (({"a": {"train": [], "seeds": [3]}}, r"seeds \[3\] must be some of the file's"),
                             ({"a": {"train": [], "seed": [0]}}, r"a trained recipe on some seeds is")):
        bad.write_text(yaml.safe_dump({**base, "seeds": [0, 1], "recipes": recipes}))
        with pytest.raises(SystemExit, match=message):
            module.read_config(bad)
    assert module.named("b", [{"seed": 1}], 2) == "b (seed 1 only)" and module.named("a", [{}, {}], 2) == "a"

    # compare.py: a recipe's runs resume only under the settings they were made with
    folder, settings = tmp_path / "rmu", {"train": ["a"], "attack": ["b"]}
    common.same_settings(folder, settings, "robust")
    common.same_settings(folder, settings, "robust")
    with pytest.raises(SystemExit, match="robust: .* holds runs of other settings"):
        common.same_settings(folder, {**settings, "train": ["a", "c"]}, "robust")
    # a second attack list (attack_name: tamper) on the same models is recorded beside the first;
    # each list must stay what it was, and the training settings must match
    common.same_settings(folder, {"train": ["a"], "attack_tamper": ["t"]}, "robust", others="attack")
    assert json.loads((folder / "recipe.json").read_text()) == {"train": ["a"], "attack": ["b"], "attack_tamper": ["t"]}
    common.same_settings(folder, {"train": ["a"], "attack": ["b"]}, "robust", others="attack")
    for other in ({"train": ["a"], "attack_tamper": ["u"]}, {"train": ["z"], "attack_tamper": ["t"]}):
        with pytest.raises(SystemExit, match="robust: .* holds runs of other settings"):
            common.same_settings(folder, other, "robust", others="attack")
    bad.write_text(yaml.safe_dump({**base, "recipes": {"a": []}, "attack_name": "Tamper-2"}))
    with pytest.raises(SystemExit, match="attack_name 'Tamper-2': lower-case letters and _ only"):
        module.read_config(bad)
    bad.write_text(yaml.safe_dump({**base, "recipes": {"a": []}}))
    assert module.read_config(bad)["attack_name"] == "attack"
    # tune.py: the same, except that stronger settings may be added at the end of the list
    folder, settings = tmp_path / "tune", {"seed": 0, "train": [], "settings": [["x"]]}
    common.same_settings(folder, settings, "tune", growing="settings")
    common.same_settings(folder, {**settings, "settings": [["x"], ["y"]]}, "tune", growing="settings")
    for other in ({**settings, "settings": [["y"], ["x"]]}, {**settings, "seed": 1, "settings": [["x"], ["y"]]}):
        with pytest.raises(SystemExit, match="tune: .* holds runs of other settings"):
            common.same_settings(folder, other, "tune", growing="settings")


def load_compare(monkeypatch):
    """experiments/robust/compare.py as a module (it imports its neighbour common.py)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "robust"))
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_takes_the_attackers_best_probe_row_per_set(monkeypatch):
    compare = load_compare(monkeypatch)
    rows = [{"attack": "probe", "set": "chem", "role": "forget", "gap_recovered": 0.1},
            {"attack": "probe", "set": "chem", "role": "forget", "gap_recovered": 0.5},  # another pooling
            {"attack": "probe", "set": "astro", "role": "forget", "gap_recovered": 0.3},
            {"attack": "probe", "set": "general", "role": "retain", "gap_recovered": None},
            {"attack": "ablate", "set": "chem", "role": "forget", "gap_recovered": None}]
    assert compare.forget_mean(rows, "probe", "gap_recovered") == pytest.approx((0.5 + 0.3) / 2)
    assert compare.forget_mean(rows, "ablate", "gap_recovered") is None


def test_the_oracle_table_and_the_relearning_curves(monkeypatch, tmp_path):
    """With an oracle: excess recovery per attack (relearn_speed's worst step count per set),
    the oracle's own row, and the curves averaged over splits."""
    compare = load_compare(monkeypatch)
    split = lambda acc: {"curve": {"5": {"a_B": {"acc": acc[0]}}, "50": {"a_B": {"acc": acc[1]}}}}  # noqa: E731
    attack = {"attacks": {"relearn_speed": {"a_B": {"unlearned": split((0.9, 1.0)), "base": split((1.0, 1.0)),
                                                    "oracle": split((0.25, 0.5))}}},
              "summary": [{"attack": "relearn_speed", "set": "a_B", "role": "forget", "oracle": 0.25,
                           "excess_recovery": e} for e in (0.87, 0.66)]}
    assert compare.curves(attack) == {"unlearned": {5: 0.9, 50: 1.0}, "base": {5: 1.0, 50: 1.0},
                                      "oracle": {5: 0.25, 50: 0.5}}
    assert compare.forget_mean(attack["summary"], "relearn_speed", "excess_recovery") == pytest.approx(0.87)
    seed = {"excess": {"relearn_speed": 0.87}, "oracle_forget": compare.oracle_forget(attack),
            "curves": compare.curves(attack)}
    table = "\n".join(compare.excess_md({"rmu": [seed]}, ["relearn_speed"], 1))
    assert "| rmu | +0.87 [+0.87, +0.87] | +0.87 [+0.87, +0.87] |" in table
    assert "| oracle (clean forget acc 0.250) |" in table
    compare.plot_curves({"rmu": [seed]}, tmp_path / "relearning.png")
    assert (tmp_path / "relearning.png").read_bytes()[:4] == b"\x89PNG"


def test_lab_noise_tables_the_finished_twins_without_redoing_them(tmp_path):
    """experiments/lab/noise.py: each twin's clean accuracy (its build's scores, the domain sets),
    its excess per attack (the attacker's best row per set, mean over forget sets), its worst,
    and median [min, max] over twins; a twin whose attack finished is not rebuilt (nothing here
    could build one); a twin built from another lab config and model seed 0 are refused."""
    def row(attack, name, excess):
        return {"attack": attack, "set": name, "role": "forget", "gap_recovered": None, "resistance": None,
                "excess_recovery": excess}

    cache = tmp_path / "cache"
    recipe = {"seed": 0, "world": {"forget_entities": 52}}
    lab = {"alchemy": {"acc": 0.25}, "stars": {"acc": 0.35}, "alchemy_B": {"acc": 0.9}, "towns": {"acc": 0.9},
           "musicians": {"acc": 1.0}}
    for folder in (cache / "lab" / "default", *(tmp_path / "oracles" / f"m{s}" for s in (1, 2))):
        folder.mkdir(parents=True)
        (folder / "build.json").write_text(json.dumps({"recipe": {**recipe, "model_seed": folder.name[1:] or None}}))
        (folder / "lab.json").write_text(json.dumps({"scores": {"lab_filtered": lab}}))
    for seed, (e1, e2) in {1: (0.02, 0.12), 2: (-0.08, 0.04)}.items():
        folder = tmp_path / "oracles" / f"m{seed}-attack"
        folder.mkdir(parents=True)
        summary = [row("heldout_relearn", "alchemy_B", e1), row("heldout_relearn", "stars_B", e2),
                   row("probe", "alchemy", 0.5 * seed), row("probe", "alchemy", 0.01)]
        (folder / "results.json").write_text(json.dumps({"attacks": {}, "seconds": {"total": 1.0}, "summary": summary}))
    script, out = ROOT / "experiments" / "lab" / "noise.py", tmp_path / "noise.md"
    env = {**os.environ, "RMU_CACHE": str(cache)}
    noise = lambda *a: subprocess.run([sys.executable, str(script), "--work", str(tmp_path), "--out", str(out),  # noqa: E731
                                       "--model-seeds", "1", "2", *a],
                                      capture_output=True, text=True, cwd=ROOT, env=env)
    proc = noise()
    assert proc.returncode == 0, proc.stderr
    table = out.read_text()
    assert "| twin m1 | 0.300 | 0.950 | +0.07 | +0.50 | +0.50 |" in table
    assert "| twin m2 | 0.300 | 0.950 | -0.02 | +1.00 | +1.00 |" in table
    assert "| twins: median [min, max] | | | +0.02 [-0.02, +0.07] | +0.75 [+0.50, +1.00] | +0.75 [+0.50, +1.00] |" in table
    assert "| oracle (model_seed 0) | 0.300 | 0.950 |" in table
    proc = noise("--model-seeds", "0", "1")
    assert proc.returncode != 0 and "0 is the oracle itself" in proc.stderr
    (tmp_path / "oracles" / "m2" / "build.json").write_text(json.dumps({"recipe": {**recipe, "seed": 1}}))
    proc = noise()
    assert proc.returncode != 0 and "built from another lab config" in proc.stderr
