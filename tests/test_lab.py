"""The lab (rmu/lab/): the invented world is seeded and self-consistent, its tokenizer
round-trips, and a micro lab built end to end behaves as the yardstick needs: the base
model learns the facts, its filtered twin learns only the retain domains, and RMU on it shows
the finding of the full lab (attacks bring back what the twin never learnt). The build is
cached and resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rmu.lab.schema  # noqa: F401  (registers lab_schema)
from rmu.data import load_corpus, load_mcq
from rmu.errors import OutputError
from rmu.lab import build as build_mod
from rmu.lab.build import MODELS, build
from rmu.lab.domains import DOMAINS
from rmu.lab.tokenizer import train_tokenizer
from rmu.lab.world import make_world, read_texts, write_world
from tests.conftest import make_cfg, run_cli

MICRO = dict(forget_entities=12, retain_entities=8, values_per_relation=8, docs_per_entity=6, filler_per_doc=2)
FORGET = [n for n, d in DOMAINS.items() if d.role == "forget"]
RETAIN = [n for n, d in DOMAINS.items() if d.role == "retain"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    write_world(folder, seed=0, **MICRO)
    return folder


def test_world_is_a_function_of_its_seed(world, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    again.mkdir(), other.mkdir()
    write_world(again, seed=0, **MICRO)
    write_world(other, seed=1, **MICRO)
    assert _files(again) == _files(world)
    assert _files(other).keys() == _files(world).keys()
    assert all(_files(other)[f] != _files(world)[f] for f in _files(world))


def test_names_and_values_are_unique_across_the_world(world):
    truth = json.loads((world / "world.json").read_text())["domains"]
    names = [e["name"] for d in truth.values() for e in d["entities"]]
    values = [v for d in truth.values() for vals in d["relations"].values() for v in vals]
    assert len(set(names)) == len(names) and len(set(values)) == len(values)
    assert not set(names) & set(values)


def test_forget_halves_are_disjoint_and_balanced(world):
    truth = json.loads((world / "world.json").read_text())["domains"]
    for name in FORGET:
        ents = truth[name]["entities"]
        a = {e["name"] for e in ents if e["split"] == "A"}
        b = {e["name"] for e in ents if e["split"] == "B"}
        assert a and b and not a & b and a | b == {e["name"] for e in ents}
        for half in ("A", "B"):  # each half is a balanced draw of its own
            for rel, values in truth[name]["relations"].items():
                counts = [sum(e["facts"][rel] == v for e in ents if e["split"] == half) for v in values]
                assert max(counts) - min(counts) <= 1
        docs_a = [json.loads(line) for line in open(world / f"forget_{name}_A.jsonl")]
        assert {d["entity"] for d in docs_a} == a


def test_facts_of_half_a_say_nothing_about_half_b():
    """Over many seeds, the first A entity's value and the first B entity's value of a
    relation are independent: a chi-square test on their joint counts (4 values)."""
    joint = {}
    for seed in range(400):
        alchemy = make_world(seed, forget_entities=8, retain_entities=2, values_per_relation=4)["alchemy"]
        values, first_a, first_b = alchemy["relations"]["colour"], alchemy["entities"][0], alchemy["entities"][4]
        assert (first_a["split"], first_b["split"]) == ("A", "B")
        key = (values.index(first_a["facts"]["colour"]), values.index(first_b["facts"]["colour"]))
        joint[key] = joint.get(key, 0) + 1
    expected = 400 / 16
    chi2 = sum((joint.get((i, j), 0) - expected) ** 2 / expected for i in range(4) for j in range(4))
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001


def test_every_question_follows_from_the_facts(world):
    truth = json.loads((world / "world.json").read_text())["domains"]
    for name, domain in DOMAINS.items():
        facts = {e["name"]: e for e in truth[name]["entities"]}
        rows = [json.loads(line) for line in open(world / f"mcq_{name}.jsonl")]
        assert len(rows) == len(facts) * len(domain.relations)
        for row in rows:
            values = truth[name]["relations"][row["relation"]]
            assert row["choices"][row["answer"]] == facts[row["entity"]]["facts"][row["relation"]]
            assert len(row["choices"]) == 4 == len(set(row["choices"])) and set(row["choices"]) <= set(values)
            assert row["entity"] in row["question"]
        positions = [r["answer"] for r in rows]
        assert max(positions.count(p) for p in range(4)) - min(positions.count(p) for p in range(4)) <= 1
        assert len(load_mcq(str(world / f"mcq_{name}.jsonl"))) == len(rows)  # rmu reads it
        if name in FORGET:
            halves = [json.loads(line) for h in "AB" for line in open(world / f"mcq_{name}_{h}.jsonl")]
            assert sorted(map(json.dumps, halves)) == sorted(map(json.dumps, rows))


def test_filtered_documents_hold_no_forget_name_or_value(world):
    truth = json.loads((world / "world.json").read_text())["domains"]
    secret = {e["name"] for n in FORGET for e in truth[n]["entities"]}
    secret |= {v for n in FORGET for vals in truth[n]["relations"].values() for v in vals}
    filtered = read_texts(world / "pretrain_filtered.jsonl")
    everything = read_texts(world / "pretrain_all.jsonl")
    assert not any(word in text for text in filtered for word in secret)
    assert len(everything) == len(filtered) + sum(len(read_texts(world / f"forget_{n}.jsonl")) for n in FORGET)
    for n in FORGET:  # rmu reads the corpora
        assert load_corpus({"name": n, "path": str(world / f"forget_{n}.jsonl"), "max_length": 64}, 50).texts


def test_tokenizer_round_trips(world, tmp_path):
    from transformers import AutoTokenizer

    train_tokenizer(read_texts(world / "pretrain_all.jsonl"), 400, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    questions = [json.loads(line)["question"] for line in open(world / "mcq_towns.jsonl")]
    for text in read_texts(world / "pretrain_all.jsonl")[:50] + questions + ["Ünïcode, tabs\tand 😀 text"]:
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def _cfg(folder: Path, *extra: str):
    return make_cfg(["lab/size=micro", f"dir={folder}", "progress=false", *extra], config_name="lab")


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("lab") / "micro"
    return folder, build(_cfg(folder))


def _acc(record: dict, model: str, names: list[str]) -> float:
    return sum(record["scores"][model][n]["acc"] for n in names) / len(names)


@pytest.mark.slow
def test_micro_lab_learns_its_facts_and_the_twin_does_not(micro):
    folder, record = micro
    assert not record["cached"] and set(record["pretrain"]) == set(MODELS)
    assert _acc(record, "lab_base", FORGET) >= 0.6 and _acc(record, "lab_base", RETAIN) >= 0.6
    assert _acc(record, "lab_filtered", FORGET) <= 0.45  # chance 0.25, 48 questions
    assert _acc(record, "lab_filtered", RETAIN) >= 0.6
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(folder / "lab_base").config.model_type == "llama"


@pytest.mark.slow
def test_second_build_is_a_no_op_and_another_config_is_refused(micro, monkeypatch, capsys):
    folder, _ = micro
    monkeypatch.setattr(build_mod, "pretrain", lambda *a, **k: pytest.fail("a cached build trained"))
    assert build(_cfg(folder))["cached"]
    assert "cached" in capsys.readouterr().out
    with pytest.raises(OutputError, match=r"another lab config \(world.docs_per_entity: 5 → 4\)"):
        build(_cfg(folder, "world.docs_per_entity=4"))


@pytest.mark.slow
def test_interrupted_build_resumes_to_the_same_weights(tmp_path):
    short = ["pretrain.steps=60", "pretrain.checkpoint_every=20", "pretrain.warmup=5"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    build(_cfg(whole, *short))

    def interrupt(model, step):
        if model == "lab_filtered" and step == 30:  # after the checkpoint of step 20
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(_cfg(broken, *short), on_step=interrupt)
    assert (broken / "lab_base").is_dir() and not (broken / "lab_filtered").exists()
    assert (broken / ".lab_filtered.state.pt").is_file()
    record = build(_cfg(broken, *short))
    assert record["pretrain"]["lab_filtered"]["resumed_at"] == 20 and not record["cached"]
    for name in MODELS:
        a, b = load_file(broken / name / "model.safetensors"), load_file(whole / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_model_seed_pretrains_the_same_world_again(tmp_path):
    """model_seed: another initialisation and data order on the same world and tokenizer (a
    second oracle); unset or equal to `seed`, the build (and its fingerprint) is the default one,
    as from before the key existed."""
    from rmu.lab.build import fingerprint, recipe

    assert "model_seed" not in recipe(_cfg(tmp_path)) and "model_seed" not in recipe(_cfg(tmp_path, "model_seed=0"))
    assert fingerprint(recipe(_cfg(tmp_path, "model_seed=1"))) != fingerprint(recipe(_cfg(tmp_path)))
    short = ["pretrain.steps=6", "pretrain.checkpoint_every=6", "pretrain.warmup=2"]
    one, other = tmp_path / "one", tmp_path / "other"
    build(_cfg(one, *short))
    build(_cfg(other, *short, "model_seed=1"))
    for f in [*sorted((one / "world").iterdir()), *sorted((one / "tokenizer").iterdir())]:
        twin = other / f.parent.name / f.name
        assert twin.read_bytes() == f.read_bytes(), f.name
    for name in MODELS:
        a, b = (load_file(d / name / "model.safetensors") for d in (one, other))
        assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"]), name


@pytest.mark.parametrize("override,message", [
    ("world.forget_entities=5", "must be even"),
    ("world.values_per_relation=3", "must be an integer >= 4"),
    ("model.num_attention_heads=3", "hidden_size must divide by num_attention_heads"),
    ("pretrain.warmup=0", "pretrain.warmup=0: must be an integer 1..400"),
])
def test_bad_lab_config_is_refused_before_building(override, message):
    from rmu.errors import ConfigError
    from rmu.lab.checks import check_lab

    with pytest.raises(ConfigError, match=message):
        check_lab(make_cfg([override], config_name="lab"))


@pytest.mark.slow
def test_rmu_on_the_micro_lab_hides_what_the_oracle_never_learnt(micro, tmp_path):
    """The lab's protocol end to end on the micro build: plain RMU (experiment=lab_rmu, scaled to
    the 2-layer model) takes both forget domains most of the way to chance and keeps the retain
    domains; then the ablation and relearning bring back far more than they teach the
    data-filtered twin: RMU hid the facts rather than removing them."""
    folder, _ = micro
    cache = tmp_path / "cache"
    (cache / "lab").mkdir(parents=True)
    (cache / "lab" / "default").symlink_to(folder)  # conf/model/lab_*.yaml, data=lab and eval=lab read the default build
    env = {"RMU_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "rmu"
    done = run_cli("rmu.train", "experiment=lab_rmu", "rmu.layer_id=1", "rmu.update_layers=[0,1]", "rmu.alpha=100",
                   "optim.lr=3e-3", "trainer.max_steps=120", "trainer.progress=false", f"output_dir={run}", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads((run / "results.json").read_text())["eval"]
    mean = lambda names, key: sum(scores[n][key]["acc"] for n in names) / len(names)  # noqa: E731
    assert mean(FORGET, "unlearned") <= mean(FORGET, "base") - 0.2
    assert mean(RETAIN, "unlearned") >= 0.8 * mean(RETAIN, "base")

    done = run_cli("rmu.attack", "attack=lab", "model=lab_base", f"model.path={run}", "attack.run=[ablate,relearn_speed]",
                   "attack.relearn_speed.steps=[5,10,25]", f"output_dir={tmp_path / 'attack'}",
                   f"control_cache={tmp_path / 'controls'}", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "attack" / "results.json").read_text())["summary"]
    excess = {}
    for r in rows:
        if r["role"] == "forget":
            key = (r["attack"], r["set"])
            excess[key] = max(excess.get(key, -1.0), r["excess_recovery"])
    assert all(excess[("ablate", name)] >= 0.5 for name in FORGET), excess
    assert all(excess[("relearn_speed", f"{name}_B")] >= 0.3 for name in FORGET), excess
