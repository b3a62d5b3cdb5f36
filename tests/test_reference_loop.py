"""`experiment=wmdp_reference` is the WMDP reference code: its optimizer, its data reading
and its loop, checked against an independent implementation of those semantics
(rmu/unlearn/reference_loop.py) on fixture files laid out as the reference's README asks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmu.data import load_texts
from rmu.unlearn.optim import ReferenceAdamW
from tests.conftest import TINY, make_cfg, run_cli
from rmu.unlearn.reference_loop import wmdp_reference_run

BUNDLED = Path(__file__).resolve().parents[1] / "rmu" / "corpora"


def test_the_reference_adamw_is_the_old_transformers_formula():
    torch.manual_seed(0)
    w0, grads = torch.randn(5, 3, dtype=torch.float64), [torch.randn(5, 3, dtype=torch.float64) for _ in range(4)]
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-6
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t, g in enumerate(grads, 1):  # by hand: eps before the bias correction
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
    ours, torchs = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    opt_ours = ReferenceAdamW([ours], lr=lr, eps=eps)
    opt_torch = torch.optim.AdamW([torchs], lr=lr, eps=eps, weight_decay=0.0)
    for g in grads:
        ours.grad, torchs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_torch.step()
    assert torch.allclose(ours, w, rtol=0, atol=1e-15)
    # The formulas differ: with small gradients the early effective eps (~3e-5 at step 1) shows.
    small = [g * 1e-5 for g in grads]
    a, b = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    oa, ob = ReferenceAdamW([a], lr=lr, eps=eps), torch.optim.AdamW([b], lr=lr, eps=eps, weight_decay=0.0)
    for g in small:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert ((a - w0) - (b - w0)).norm() / (b - w0).norm() > 0.05


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


def reference_folder(root: Path) -> tuple[Path, Path, Path]:
    """(the working folder with data/ as the reference's README lays it out, a 10-layer
    random Llama whose tokenizer truncates on the left, the wikitext-style retain file)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rmu.models.loading import load_tokenizer
    work, model_dir = root / "work", root / "tiny-llama-10l"
    (work / "data").mkdir(parents=True)
    chem = [json.loads(line)["text"] for line in open(BUNDLED / "forget_chem.jsonl")][:40]
    long = [" ".join(chem[i:i + 14]) for i in (0, 10, 20, 26)]  # past 512 tokens: the truncation side matters
    bio_rows = long + chem[:16] + [""] + chem[20:40] + [""]  # empty rows: dropped by len > 0
    (work / "data" / "bio-forget-corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in bio_rows))
    astro = (BUNDLED / "forget_astro.jsonl").read_text().splitlines(keepends=True)[:40]
    (work / "data" / "cyber-forget-corpus.jsonl").write_text("".join(astro[:10]) + "\n" + "".join(astro[10:]))
    general = [json.loads(line)["text"] for line in open(BUNDLED / "retain_general.jsonl")][:30]
    wiki_rows = [t for pair in zip(general, [""] * 30) for t in pair]  # wikitext's empty rows between texts
    wiki = root / "wiki.jsonl"
    wiki.write_text("".join(json.dumps({"text": t}) + "\n" for t in wiki_rows))

    tok = load_tokenizer(make_cfg(TINY).model)
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=10,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                  vocab_size=len(tok), tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok_config["truncation_side"] = "left"  # the reference forces right; so must the recipe
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return work, model_dir, wiki


@pytest.mark.slow
def test_wmdp_reference_run_from_the_reference_layout_matches_the_reference_semantics(tmp_path):
    work, model_dir, wiki = reference_folder(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("rmu.train", "experiment=wmdp_reference", "model=tiny_random", f"model.path={model_dir}",
                   "model.arch=null", "model.name=tiny-llama-10l",
                   f"data.retain=[{{name:wikitext,path:{wiki},field:text,max_length:512}}]",
                   "trainer.progress=false", "seed=42", f"output_dir={out}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps, expected = wmdp_reference_run(model_dir, work, wiki)
    assert steps == 8  # 30 retain texts in batches of 4: the shortest corpus ends the run
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(steps))
    assert json.loads((out / "results.json").read_text())["steps"] == steps
    ours, start = load_file(out / "model.safetensors"), load_file(model_dir / "model.safetensors")
    for name, w in expected.items():
        update_gap = ((ours[name] - w).norm() / (w - start[name]).norm()).item()
        assert (ours[name] - w).abs().max() <= 1e-5 * w.abs().max(), name
        assert update_gap < 1e-3, (name, update_gap)  # the update itself, not just the weights
    shutil.rmtree(out)


def test_the_reference_recipe_refuses_what_it_cannot_reproduce(tiny_cfg):
    from rmu.errors import ConfigError
    from rmu.config.plan import plan_train

    with pytest.raises(ConfigError, match="rmu.numerics='reference': computes the reference's unmasked means"):
        plan_train(tiny_cfg("rmu.numerics=reference"))
    with pytest.raises(ConfigError, match="optim.name='adam': allowed: adamw, adamw_reference"):
        plan_train(tiny_cfg("optim.name=adam"))
    with pytest.raises(ConfigError, match="data.forget\\[0\\].field=None: null \\(the raw line\\) needs a `path`"):
        plan_train(tiny_cfg("data.forget.0.path=null", "+data.forget.0.dataset=wikitext", "data.forget.0.field=null"))
