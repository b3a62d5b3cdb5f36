"""Robustness attacks: each runs end to end through the CLI on the tiny model, the probe
can succeed when the answer is decodable, and ablation undoes a planted direction."""

import copy
import json

import pytest
import torch

from rmu.attack.ablate import ablated, directions, layer_means, topic_directions
from rmu.attack.cli import gap_recovered
from rmu.attack.in_context import shot_contexts
from rmu.attack.probe import features, fit_and_score, probe_features
from rmu.data import MCQItem, load_corpus, load_mcq, tokenize
from rmu.models.loading import load_model
from tests.conftest import ROOT, TINY, make_cfg, run_cli
from rmu.unlearn.reference_loop import layer_output

SMALL = ["model=tiny_random", "model.arch=null", "model@base=tiny_random", "eval.batch_size=32",
         "eval.sets=[{name: chem, path: 'bundled:mcq_chem.jsonl', role: forget},"
         "{name: general, path: 'bundled:mcq_general.jsonl', role: retain}]",
         "attack.probe.steps=30", "attack.probe.pooling=[last_token]", "attack.finetune.examples=8",
         "attack.finetune.lr_full=[1e-4]", "attack.finetune.lr_lora=[1e-3]", "attack.finetune.steps=[1,2]",
         "attack.finetune.modes=[full,lora]", "attack.finetune.data=[unrelated]", "attack.heldout_relearn.steps=2",
         "attack.ablate.examples=8", "attack.ablate_unlearned.examples=8", "attack.in_context.shots=[0,2]"]
ATTACKS = {"probe", "finetune", "ablate", "ablate_unlearned", "in_context", "heldout_relearn"}


def test_gap_recovered_formula():
    assert gap_recovered(0.8, 0.3, 0.3) == 0 and gap_recovered(0.8, 0.3, 0.8) == 1
    assert gap_recovered(0.8, 0.3, 0.55) == pytest.approx(0.5) and gap_recovered(0.5, 0.5, 0.7) is None
    assert gap_recovered(0.80, 0.78, 0.9) is None  # a retain set RMU barely moved: no ratio


@pytest.mark.slow
def test_all_attacks_run_end_to_end_through_the_cli(tmp_path):
    run = tmp_path / "run"
    assert run_cli("rmu.train", *TINY, f"output_dir={run}").returncode == 0
    out, cache = tmp_path / "attack", tmp_path / "controls"
    proc = run_cli("rmu.attack", "attack=all", f"model.path={run}", *SMALL, f"output_dir={out}",
                   f"control_cache={cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["attacks"]) == ATTACKS and set(results["seconds"]) == ATTACKS | {"total"}
    rows = results["summary"]
    assert {r["attack"] for r in rows} == ATTACKS
    for r in rows:
        assert 0 <= r["attacked"] <= 1 and 0 <= r["base"] <= 1
        # By hand: the share of the unlearning gap the attack recovers; no ratio below 5 points of gap.
        if abs(r["base"] - r["unlearned"]) < 0.05:
            assert r["gap_recovered"] is None, r
        else:
            assert r["gap_recovered"] == pytest.approx((r["attacked"] - r["unlearned"]) / (r["base"] - r["unlearned"]))
        # Every attack has its control on the base model (the retain rows after a held-out fine-tune excepted).
        if r["detail"].startswith("after the"):
            assert r["base_attacked"] is None and r["resistance"] is None
        else:
            assert 0 <= r["base_attacked"] <= 1 and r["resistance"] == pytest.approx(r["attacked"] - r["base_attacked"])
    assert len(results["attacks"]["probe"]["last_token"]["chem"]["unlearned"]) == 5  # embeddings + 4 layers
    # One run per mode (full, LoRA), each scored after 1 and 2 steps.
    assert [(r["mode"], r["data"], r["steps"]) for r in results["attacks"]["finetune"]["runs"]] == [
        ("full", "unrelated", 1), ("full", "unrelated", 2), ("lora", "unrelated", 1), ("lora", "unrelated", 2)]
    assert results["attacks"]["ablate"]["layers"] == [0, 1, 2]  # read from the run's results.json
    assert set(results["attacks"]["heldout_relearn"]) == {"chem"}  # forget sets only
    assert set(results["attacks"]["in_context"]["unlearned"]) == {"0", "2"}
    # 0 shots is the plain evaluation
    assert results["attacks"]["in_context"]["unlearned"]["0"]["chem"] == results["unlearned"]["chem"]
    assert results["control_cache"] == {"hits": 0, "misses": 6}  # clean eval + 5 cacheable controls
    summary = (out / "summary.md").read_text()
    assert "| attack | set | role | base | unlearned | attacked | gap_recovered | base attacked | resistance |" in summary
    assert "| heldout_relearn | chem | forget |" in proc.stdout
    assert "| heldout_relearn | general | retain |" in proc.stdout  # the retain set after the fine-tune

    # A second run (another recipe or seed in a comparison) reuses every base-model control.
    again = run_cli("rmu.attack", "attack=all", f"model.path={run}", *SMALL, f"output_dir={tmp_path / 'again'}",
                    f"control_cache={cache}")
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "again" / "results.json").read_text())
    assert second["control_cache"] == {"hits": 6, "misses": 0}
    assert [r["base_attacked"] for r in second["summary"]] == [r["base_attacked"] for r in rows]


@pytest.mark.slow
def test_single_attack_and_bad_settings(tmp_path):
    proc = run_cli("rmu.attack", "attack=ablate", *SMALL[:4], "model.path=/nonexistent-run", f"output_dir={tmp_path}/a")
    assert proc.returncode != 0 and "error: model.path='/nonexistent-run': cannot read the model's config" in proc.stderr
    finetune_only = [o for o in SMALL if not o.startswith(("attack.probe", "attack.heldout", "attack.ablate", "attack.in_context"))]
    proc = run_cli("rmu.attack", "attack=finetune", *finetune_only, "attack.finetune.modes=[full,qlora]",
                   f"output_dir={tmp_path}/b")
    assert proc.returncode != 0 and "attack.finetune.modes[1]='qlora': allowed: full, lora" in proc.stderr
    proc = run_cli("rmu.attack", "attack=probe", *SMALL[:4], "base=tiny_random", f"output_dir={tmp_path}/c")
    # One sentence before Hydra composes (rmu/config/overrides.py): base is chosen with model@base=<name>
    assert proc.returncode == 1 and proc.stderr.startswith("error: base=tiny_random: `base` is a section of keys, "
                                                           "not a choice; choose its config with model@base=<name>")


def probe_layers(model, tokenizer, items, pooling, train_fraction, weight_decay, steps, lr, seed) -> list[float]:
    """Test accuracy of a probe on every layer of `model` (index 0 = embeddings)."""
    x = features(model, tokenizer, items, [pooling])[pooling]
    return probe_features(x, items, train_fraction, weight_decay, steps, lr, seed)


def planted_items(n: int) -> list[MCQItem]:
    """The correct option is always "yes", the others "no": decodable from option tokens."""
    items = []
    for i in range(n):
        choices = ["no"] * 4
        choices[i % 4] = "yes"
        items.append(MCQItem(f"Question number {i}?", choices, i % 4))
    return items


def test_probe_reaches_high_accuracy_when_the_answer_is_decodable():
    cfg = make_cfg(["model=tiny_random"])
    model, tok = load_model(cfg.model, 0)
    accs = probe_layers(model, tok, planted_items(40), "option_mean", 0.5, 0.0, 200, 0.05, seed=0)
    assert accs[0] >= 0.95  # the embeddings of "yes" and "no" differ
    # last_token probe on features with a planted class direction, and on noise alone.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    noise = torch.randn(200, 32, generator=gen)
    planted = noise + 5.0 * torch.nn.functional.one_hot(y, 32).float()
    assert fit_and_score(planted[:100], y[:100], planted[100:], y[100:], 0.01, 200, 0.05) >= 0.95
    assert fit_and_score(noise[:100], y[:100], noise[100:], y[100:], 0.01, 200, 0.05) <= 0.45


def test_ablation_removes_a_planted_direction_and_restores_behaviour():
    cfg = make_cfg(["model=tiny_random"])
    base, tok = load_model(cfg.model, 0)
    base.eval()
    edited = copy.deepcopy(base)
    d = torch.randn(base.config.hidden_size, generator=torch.Generator().manual_seed(1))
    d = d / d.norm()
    # Plant: layer 1's down-projection now also writes 40·d whenever its input is active.
    w = edited.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        w += 40.0 * torch.outer(d, torch.ones(w.shape[1]) / w.shape[1] ** 0.5)
    texts = load_corpus({"name": "chem", "path": "bundled:forget_chem.jsonl", "max_length": 32}, 0).texts[:16]
    batch = tokenize(tok, load_corpus({"name": "g", "path": "bundled:retain_general.jsonl", "max_length": 32},
                                      0).texts[:8], 32, "cpu")
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = base(**batch).logits.argmax(-1)[mask]
        broken = edited(**batch).logits.argmax(-1)[mask]
        found = directions(edited, base, tok, texts, [1], 32)
        with ablated(edited, {1: found[1][0]}):
            fixed = edited(**batch).logits.argmax(-1)[mask]
    assert abs(torch.dot(found[1][0], d)) > 0.9  # the attack finds the planted direction
    agree_broken, agree_fixed = (broken == ref).float().mean(), (fixed == ref).float().mean()
    assert agree_broken < 0.6 and agree_fixed > 0.8, (agree_broken, agree_fixed)


@pytest.mark.slow
def test_an_attack_sweep_writes_one_folder_per_job(tmp_path):
    run = tmp_path / "run"
    assert run_cli("rmu.train", *TINY, f"output_dir={run}").returncode == 0
    sweep = tmp_path / "sweep"
    proc = run_cli("rmu.attack", "-m", "attack=ablate", f"model.path={run}", *SMALL[:4],
                   "attack.ablate.examples=4,8", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    norms = [json.loads((sweep / job / "results.json").read_text())["attacks"]["ablate"]["shift_norms"]
             for job in ("0", "1")]
    assert norms[0] != norms[1]  # each job ran its own setting (mean shift over 4 vs 8 texts)


def texts(name: str, n: int) -> list[str]:
    return load_corpus({"name": name, "path": f"bundled:{name}.jsonl", "max_length": 32}, 0).texts[:n]


def test_ablation_leaves_no_component_along_the_direction():
    model, tok = load_model(make_cfg(["model=tiny_random"]).model, 0)
    found = topic_directions(model, tok, texts("forget_chem", 8), texts("retain_general", 8), 32)
    assert set(found) == {0, 1, 2, 3}
    batch = tokenize(tok, texts("forget_astro", 4), 32, "cpu")
    for layer, (d, norm, relative) in found.items():
        assert torch.linalg.vector_norm(d).item() == pytest.approx(1.0) and norm > 0 and relative > 0
        with torch.no_grad():
            before = layer_output(model, layer, batch)
            with ablated(model, {layer: d}):
                after = layer_output(model, layer, batch, stop=False)  # read after the ablation hook
        assert (before @ d).abs().max() > 1e-3  # there was a component to remove
        assert (after @ d).abs().max() <= 1e-5 * after.norm(dim=-1).max()
        assert torch.allclose(after, before - (before @ d).unsqueeze(-1) * d, atol=1e-5)  # and nothing else changed


def test_topic_direction_is_the_normalised_mean_difference():
    model, tok = load_model(make_cfg(["model=tiny_random"]).model, 0)
    topic, general = texts("forget_chem", 6), texts("retain_general", 6)
    found = topic_directions(model, tok, topic, general, 32)
    a, b = layer_means(model, tok, topic, [2], 32)[2], layer_means(model, tok, general, [2], 32)[2]
    d, norm, relative = found[2]
    assert torch.allclose(d, (a - b) / (a - b).norm(), atol=1e-6)
    assert norm == pytest.approx((a - b).norm().item()) and relative == pytest.approx(norm / b.norm().item())


def test_in_context_examples_never_hold_the_scored_question():
    items = load_mcq("bundled:mcq_chem.jsonl")
    for k in (0, 1, 3, 5):
        contexts = shot_contexts(items, k, seed=0)
        assert len(contexts) == len(items)
        for item, context in zip(items, contexts):
            assert context.count("Question: ") == k and f"Question: {item.question}\n" not in context
            if k:  # worked examples end with their correct answer, as the evaluation phrases it
                first = next(o for o in items if context.startswith(f"Question: {o.question}\n"))
                assert context.startswith(f"Question: {first.question}\nAnswer: {first.choices[first.answer]}\n\n")
    assert shot_contexts(items, 3, seed=0) == shot_contexts(items, 3, seed=0) != shot_contexts(items, 3, seed=1)


def test_control_cache_hits_only_for_the_same_settings(tmp_path):
    from rmu.attack.control import ControlCache

    cfg = make_cfg(["model@base=tiny_random", f"control_cache={tmp_path}"], config_name="attack")
    sets = [("chem", "forget", load_mcq("bundled:mcq_chem.jsonl")[:3])]
    cache, calls = ControlCache(cfg, cfg.base), []

    def compute(value):
        return lambda: calls.append(value) or {"acc": value}
    worst = {"mode": "lora", "data": "forget", "lr": 1e-3, "lora_r": 8, "steps": 25, "examples": 32}
    assert cache.get("finetune", {"worst": worst}, sets, compute(1)) == {"acc": 1}
    assert cache.get("finetune", {"worst": worst}, sets, compute(2)) == {"acc": 1}  # cached
    assert cache.get("finetune", {"worst": {**worst, "steps": 100}}, sets, compute(3)) == {"acc": 3}
    fewer = [(n, r, items[:2]) for n, r, items in sets]  # other questions: another key
    assert cache.get("finetune", {"worst": worst}, fewer, compute(4)) == {"acc": 4}
    assert calls == [1, 3, 4] and (cache.hits, cache.misses) == (1, 3)
    other = make_cfg(["model@base=smollm2_135m", f"control_cache={tmp_path}"], config_name="attack")
    other_base = ControlCache(other, other.base)
    assert other_base.get("finetune", {"worst": worst}, sets, compute(5)) == {"acc": 5}


def test_excess_recovery_formula_by_hand():
    from rmu.attack.cli import excess_recovery

    # base knew 0.90, the oracle 0.25; attacked: unlearned 0.60, oracle 0.30 -> (0.60-0.30)/(0.90-0.25)
    assert excess_recovery(0.90, 0.25, 0.60, 0.30) == pytest.approx(0.30 / 0.65)
    assert excess_recovery(0.90, 0.25, 0.30, 0.30) == 0  # no more than a model that never learnt it
    assert excess_recovery(0.90, 0.25, 0.95, 0.30) == pytest.approx(1.0)  # all the base's lead, back
    assert excess_recovery(0.30, 0.28, 0.9, 0.3) is None  # base and oracle alike: no ratio


def test_the_oracle_has_learnt_a_split_only_when_its_curve_flattens_well_above_its_start():
    from rmu.attack.cli import oracle_plateau

    def curves(points, clean=0.25, base=1.0):
        return {"oracle": {"clean": {"s": {"acc": clean}}, "curve": {str(k): {"s": {"acc": a}} for k, a in points}},
                "base": {"clean": {"s": {"acc": base}}}}
    assert oracle_plateau(curves([(5, 0.5), (10, 0.9), (25, 0.91)]), "s") == (10, "the oracle learnt it by 10 steps")
    at, phrase = oracle_plateau(curves([(5, 0.26), (10, 0.27), (25, 0.27)]), "s")  # flat at chance: learnt nothing
    assert at is None and "has not learnt it in 25 steps" in phrase
    assert oracle_plateau(curves([(5, 0.3), (10, 0.6)]), "s")[0] is None  # still rising


def test_plateau_and_schedule():
    from rmu.attack.relearn import plateau_step, warmup_cosine

    assert plateau_step({5: 0.25, 10: 0.40, 25: 0.71, 50: 0.715, 100: 0.72}) == 25
    assert plateau_step({5: 0.25, 10: 0.40, 25: 0.70}) is None  # still learning at the end: run longer
    lrs = [warmup_cosine(s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 % linear warm-up
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.001 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_split_attacks_are_scored_against_the_oracle(tmp_path):
    """Held-out relearning (train on documents of A, score questions of B) and relearning
    speed, with an oracle: every forget row carries the oracle's numbers and the excess
    recovery computed from them, and the oracle's plateau is reported."""
    from rmu.attack.cli import run
    from rmu.run.cli import run_command

    forget, questions = load_corpus({"name": "c", "path": "bundled:forget_chem.jsonl", "max_length": 64}, 0).texts, \
        (ROOT / "rmu" / "corpora" / "mcq_chem.jsonl").read_text().splitlines()
    files = {"A.jsonl": forget[:20], "B.jsonl": forget[20:40]}
    for name, texts in files.items():
        (tmp_path / name).write_text("".join(json.dumps({"text": x}) + "\n" for x in texts))
    (tmp_path / "qA.jsonl").write_text("\n".join(questions[:20]) + "\n")
    (tmp_path / "qB.jsonl").write_text("\n".join(questions[20:40]) + "\n")
    split = lambda train, trained, test: (f"{{name: chem_B, train: {tmp_path / train}, trained: {tmp_path / trained}, "
                                          f"test: {tmp_path / test}}}")  # noqa: E731
    cfg = make_cfg(["attack=lab", "model=tiny_random", "model@base=tiny_random", "model@oracle=tiny_random",
                    "oracle.arch.num_hidden_layers=2", "data=bundled", "eval.batch_size=32",
                    "eval.sets=[{name: chem, path: 'bundled:mcq_chem.jsonl', role: forget}]",
                    "attack.run=[heldout_relearn,relearn_speed]", "attack.heldout_relearn.steps=2",
                    "attack.heldout_relearn.batch_size=2", "attack.heldout_relearn.max_length=32",
                    f"attack.heldout_relearn.splits=[{split('A.jsonl', 'qA.jsonl', 'qB.jsonl')}]",
                    "attack.relearn_speed.steps=[1,2,3]", "attack.relearn_speed.batch_size=2",
                    "attack.relearn_speed.max_length=32",
                    f"attack.relearn_speed.splits=[{split('B.jsonl', 'qB.jsonl', 'qB.jsonl')}]",
                    f"output_dir={tmp_path / 'out'}", f"control_cache={tmp_path / 'cache'}"], config_name="attack")
    results = run_command(run, cfg)
    rows = results["summary"]
    assert [(r["attack"], r["set"]) for r in rows] == [("heldout_relearn", "chem_B")] + [("relearn_speed", "chem_B")] * 3
    for r in rows:
        assert {"oracle", "oracle_attacked", "excess_recovery"} <= set(r)
        expected = None if abs(r["base"] - r["oracle"]) < 0.05 else \
            (r["attacked"] - r["oracle_attacked"]) / (r["base"] - r["oracle"])
        assert r["excess_recovery"] == (pytest.approx(expected) if expected is not None else None)
    speed = results["attacks"]["relearn_speed"]["chem_B"]
    assert set(speed["oracle"]["curve"]) == {"1", "2", "3"} and "oracle_plateau" in speed
    assert "the oracle" in rows[0]["detail"] and "steps" in rows[0]["detail"]
    assert "trained on the documents of A.jsonl" in rows[0]["detail"]  # what it fine-tuned on, not the scored set
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| excess_recovery |" in summary and "oracle (data-filtered twin)" in summary


def test_tamper_adversaries_score_each_step_count_as_a_run_of_that_length():
    """A constant-rate adversary is one run scored at each count; a scheduled one is a run per
    count whose warm-up + cosine spans it: both equal a separate fine-tune of k steps."""
    from rmu.attack.relearn import finetune
    from rmu.attack.tamper import adversary_curve, interleave

    assert interleave([["a1", "a2", "a3"], ["b1"]], 4) == ["a1", "b1", "a2", "a3"]
    assert interleave([["a1"], ["b1", "b2"]], 9) == ["a1", "b1", "b2"]
    model, tok = load_model(make_cfg(["model=tiny_random", "model.arch=null"]).model, 0)
    texts = load_corpus({"name": "c", "path": "bundled:forget_chem.jsonl", "max_length": 32}, 0).texts[:6]
    fingerprint = lambda m: {"w": {"acc": sum(p.double().sum().item() for p in m.parameters())}}  # noqa: E731
    before = fingerprint(model)
    for schedule in ("constant", "warmup_cosine"):
        run = {"mode": "full", "data": "forget", "lr": 1e-3, "batch_size": 2, "schedule": schedule,
               "weight_decay": 0.01, "lora_r": 8}
        curve = adversary_curve(model, tok, texts, run, [3, 1], 32, 0, fingerprint)
        assert list(curve) == ["1", "3"]
        for k in (1, 3):
            alone = finetune(model, tok, texts, "full", 1e-3, k, 2, 32, 8, 0, schedule, 0.01)
            assert curve[str(k)]["w"]["acc"] == pytest.approx(fingerprint(alone)["w"]["acc"], rel=1e-12)
        assert curve["1"] != curve["3"]
    assert fingerprint(model) == before  # the attacked model is untouched


def test_tamper_groups_report_the_strongest_adversary_per_step_count(tmp_path):
    """Through the command: a row per group, step count and set, named <group>@<steps>, from
    the adversary with the highest mean forget accuracy at that count, against the same
    adversary on the base model and the oracle."""
    from rmu.attack.cli import run
    from rmu.run.cli import run_command

    adversary = "{mode: full, data: forget, lr: %s, batch_size: 2}"
    groups = (f"attack.tamper.groups={{in_dist: [{adversary % '1e-4'}, {adversary % '3e-3'}], "
              f"out_dist: [{{mode: lora, data: forget, lr: 1e-2, batch_size: 2, lora_r: 4}}, "
              f"{{mode: full, data: retain, lr: 1e-3, batch_size: 4, schedule: warmup_cosine, weight_decay: 0.01}}]}}")
    cfg = make_cfg(["attack=tamper", "model=tiny_random", "model@base=tiny_random", "model@oracle=tiny_random",
                    "oracle.arch.num_hidden_layers=2", "eval.batch_size=32",
                    "eval.sets=[{name: chem, path: 'bundled:mcq_chem.jsonl', role: forget},"
                    "{name: general, path: 'bundled:mcq_general.jsonl', role: retain}]",
                    "attack.tamper.steps=[1,2]", "attack.tamper.examples=4", "attack.tamper.max_length=32", groups,
                    f"output_dir={tmp_path / 'out'}", f"control_cache={tmp_path / 'cache'}"], config_name="attack")
    results = run_command(run, cfg)
    rows = results["summary"]
    assert [(r["attack"], r["set"]) for r in rows] == [(f"{g}@{k}", s) for g in ("in_dist", "out_dist")
                                                       for k in (1, 2) for s in ("chem", "general")]
    tamper = results["attacks"]["tamper"]
    for group in ("in_dist", "out_dist"):
        adversaries = tamper[group]["adversaries"]
        assert len(adversaries) == 2
        for k in ("1", "2"):
            best = max(range(2), key=lambda i: adversaries[i]["curve"][k]["chem"]["acc"])
            assert tamper[group]["strongest"][k]["adversary"] == best
            chem = next(r for r in rows if r["attack"] == f"{group}@{k}" and r["set"] == "chem")
            assert chem["attacked"] == adversaries[best]["curve"][k]["chem"]["acc"]
            assert f"after {k} steps" in chem["detail"] and {"base_attacked", "oracle_attacked"} <= set(chem)
    assert "| in_dist@2 | chem | forget |" in (tmp_path / "out" / "summary.md").read_text()
    # the base model's and the oracle's runs of the strongest adversaries are cached for the next model
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()).count("tamper") >= 2

    bad = [("attack.tamper.run_groups=[in_dist,qi2]", r"attack.tamper.run_groups\[1\]='qi2': allowed: in_dist, "
                                                      r"out_dist, qi"),
           ("attack.tamper.groups.qi=[{mode: full, data: unrelated, lr: 1e-3, batch_size: 2}]",
            None)]  # qi does not run: its adversaries are not read
    from rmu.config.checks import check_attack_values
    from rmu.errors import ConfigError

    for override, message in bad + [("attack.tamper.groups.in_dist=[{mode: full, data: forget, lr: 0, batch_size: 2}]",
                                      r"attack.tamper.groups.in_dist\[0\].lr=0(.0)?: must be a finite number > 0"),
                                     ("attack.tamper.groups.out_dist=[{mode: qlora, data: forget, lr: 1, batch_size: 2}]",
                                      r"attack.tamper.groups.out_dist\[0\].mode='qlora': allowed: full, lora")]:
        cfg = make_cfg(["attack=tamper", override], config_name="attack")
        if message is None:
            check_attack_values(cfg)
        else:
            with pytest.raises(ConfigError, match=message):
                check_attack_values(cfg)
    # a group written in a YAML file gets the schema's defaults, and a stray key is named
    from omegaconf import OmegaConf
    from rmu.config.checks import tamper_adversaries

    yaml_group = OmegaConf.create({"groups": {"g": [{"mode": "full", "data": "forget", "lr": 1.0, "batch_size": 2}]}})
    assert tamper_adversaries(yaml_group, "g") == [{"mode": "full", "data": "forget", "lr": 1.0, "batch_size": 2,
                                                    "schedule": "constant", "weight_decay": 0.0, "lora_r": 8}]
    yaml_group.groups.g[0].batch = 4
    with pytest.raises(ConfigError, match=r"attack.tamper.groups.g\[0\]=.*: a mapping with the keys batch_size, data, "
                                          r"lora_r, lr, mode, schedule, weight_decay"):
        tamper_adversaries(yaml_group, "g")
