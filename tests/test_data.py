"""Corpus and multiple-choice loading (rmu/data.py) from every supported source, on local
files, and the reference code's way of reading its corpora."""

import json

import pytest

from rmu.data import Corpus, DataError, batch_texts, load_mcq, load_texts

LONG = "a document that is comfortably longer than the fifty character minimum"


def test_jsonl_with_custom_field_and_min_chars(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"body": LONG + " one"}) + "\n\n" + json.dumps({"body": "short"}) + "\n"
                 + json.dumps({"body": LONG + " two"}) + "\n")
    assert load_texts({"path": str(p), "field": "body"}, min_chars=50) == [LONG + " one", LONG + " two"]
    assert len(load_texts({"path": str(p), "field": "body"}, min_chars=0)) == 3
    with pytest.raises(DataError, match=r"c.jsonl, line 1: no string field 'text' \(keys: \['body'\]\)"):
        load_texts({"path": str(p)}, min_chars=0)


def test_txt_one_document_per_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(f"{LONG} A\n\n{LONG} B\n")
    assert load_texts({"path": str(p)}, min_chars=10) == [f"{LONG} A", f"{LONG} B"]


def test_unsupported_suffix_and_non_object_rows(tmp_path):
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(DataError, match="unsupported corpus file type '.csv'"):
        load_texts({"path": str(tmp_path / "c.csv")}, 0)
    (tmp_path / "c.jsonl").write_text('["not", "an", "object"]\n')
    with pytest.raises(DataError, match="line 1: expected a JSON object, got list"):
        load_texts({"path": str(tmp_path / "c.jsonl")}, 0)


def test_datasets_source_reads_a_local_dataset_folder(tmp_path, monkeypatch):
    # The same code path as `dataset: wikitext` / `cais/wmdp-corpora`, on a local folder.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps({"text": f"{LONG} {i}"}) + "\n" for i in range(5))
                                       + json.dumps({"text": ""}) + "\n")
    texts = load_texts({"dataset": str(folder), "split": "test", "field": "text"}, min_chars=50)
    assert texts == [f"{LONG} {i}" for i in range(5)]
    with pytest.raises(DataError, match="no column 'content'"):
        load_texts({"dataset": str(folder), "split": "test", "field": "content"}, min_chars=50)


def test_batches_follow_file_order_and_wrap_around():
    c = Corpus("x", [f"t{i}" for i in range(5)], 16)
    assert batch_texts(c, 0, 2) == ["t0", "t1"]
    assert batch_texts(c, 1, 2) == ["t2", "t3"]
    assert batch_texts(c, 2, 2) == ["t4", "t0"]


def test_bundled_sets_are_large_enough_and_well_formed():
    for name in ("chem", "astro", "general"):
        items = load_mcq(f"bundled:mcq_{name}.jsonl")
        assert len(items) >= 60
        assert all(len(i.choices) == 4 and len(set(i.choices)) == 4 for i in items)
        # answers are spread over the positions, so a position bias cannot look like knowledge
        counts = [sum(i.answer == k for i in items) for k in range(4)]
        assert min(counts) >= len(items) // 8
    for name in ("forget_chem", "forget_astro", "retain_general"):
        assert len(load_texts({"path": f"bundled:{name}.jsonl"}, 50)) >= 60


def test_malformed_mcq_names_file_and_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 0}) + "\n"
                 + json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl, line 2: 'answer' must be an index into choices \(0..1\)"):
        load_mcq(str(p))


def hub_style_dataset(folder, config_name, split, texts):
    """A local dataset folder laid out like a Hub dataset repo with named configs."""
    (folder / config_name).mkdir(parents=True)
    (folder / config_name / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: {config_name}\n  data_files:\n"
                                      f"  - split: {split}\n    path: {config_name}/{split}.jsonl\n---\n")


def test_wmdp_data_config_loads_local_copies_in_the_published_format(tmp_path, monkeypatch):
    from rmu.config.plan import plan_train
    from tests.conftest import TINY, make_cfg

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    bio = tmp_path / "data" / "bio-forget-corpus.jsonl"  # distributed on request, as JSONL with `text`
    bio.parent.mkdir()
    bio.write_text("".join(json.dumps({"title": "t", "text": f"{LONG} bio {i}"}) + "\n" for i in range(3)))
    hub_style_dataset(tmp_path / "wmdp-corpora", "cyber-forget-corpus", "train", [f"{LONG} cyber {i}" for i in range(4)])
    hub_style_dataset(tmp_path / "wikitext", "wikitext-2-raw-v1", "test", ["", " = Heading = ", f"{LONG} wiki"])
    monkeypatch.chdir(tmp_path)  # data/bio-forget-corpus.jsonl is relative, as in the config
    cfg = make_cfg(["data=wmdp", *[o for o in TINY if not o.startswith("data.")], f"output_dir={tmp_path / 'o'}",
                    f"data.forget.1.dataset={tmp_path / 'wmdp-corpora'}", f"data.retain.0.dataset={tmp_path / 'wikitext'}"])
    plan = plan_train(cfg)
    assert plan.topics == ["bio", "cyber"]
    assert [len(c.texts) for c in plan.forget] == [3, 4] and plan.forget[1].max_length == 768
    assert plan.retain[0].texts == plan.retain[1].texts == [f"{LONG} wiki"]  # short lines dropped, shared


def test_raw_lines_and_strictly_longer_read_as_the_reference_does(tmp_path):
    rows = [{"text": ""}, {"text": "x"}, {"text": "a longer text"}, {"text": ""}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n" + json.dumps({"text": "last"}))
    assert load_texts({"path": str(path), "field": "text"}, 0) == ["", "x", "a longer text", "", "last"]
    assert load_texts({"path": str(path), "field": "text"}, 0, strictly_longer=True) == ["x", "a longer text", "last"]
    raw = load_texts({"path": str(path), "field": None}, 0, strictly_longer=True)
    assert raw == [json.dumps(r) + "\n" for r in rows] + ["\n", json.dumps({"text": "last"})]
    # '{"text": ""}\n' is 13 characters: dropped by len > 13, kept by len >= 13
    longer = [json.dumps(rows[1]) + "\n", json.dumps(rows[2]) + "\n", json.dumps({"text": "last"})]
    assert load_texts({"path": str(path), "field": None}, 13, strictly_longer=True) == longer
    assert len(load_texts({"path": str(path), "field": None}, 13)) == len(longer) + 2
