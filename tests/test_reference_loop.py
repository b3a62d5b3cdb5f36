"""The reference oracle (rmu/unlearn/reference_loop.py: the public WMDP code's loop, written
independently) against `experiment=wmdp_reference`: the trainer in that mode computes what
the oracle computes, fed as the public code feeds it, on fixture files laid out as the
reference's README asks and on the bundled corpora. (Its optimizer is checked in
test_optim.py, its data reading in test_data.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmu.models.loading import load_model
from rmu.train import train
from rmu.unlearn.reference_loop import ReferenceRMU, wmdp_reference_run
from tests.conftest import TINY, make_cfg, run_cli

BUNDLED = Path(__file__).resolve().parents[1] / "rmu" / "corpora"


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


def reference_rmu(cfg, steps):
    """The public code's loop (rmu/unlearn/reference_loop.py) fed the way the public code
    reads its data: consecutive batches of raw lines, left padding, fixed c per topic."""
    model, tok = load_model(cfg.model, cfg.seed)
    frozen, _ = load_model(cfg.model, cfg.seed)
    tok.padding_side = "left"
    gen = torch.Generator().manual_seed(cfg.seed)
    controls = []
    for c in cfg.rmu.steering_coeff:
        r = torch.rand(1, 1, model.config.hidden_size, generator=gen)
        controls.append((r / torch.norm(r) * c).view(-1))
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in cfg.rmu.update_layers]
    ref = ReferenceRMU(model, frozen, cfg.rmu.layer_id, names, torch.stack(controls), list(cfg.rmu.alpha),
                       cfg.optim.lr, old_adamw=True)
    bs = cfg.trainer.batch_size

    def read(path):
        return [json.loads(line)["text"] for line in open(path.replace("bundled:", "rmu/corpora/"))]

    forget = [[t[i:i + bs] for i in range(0, len(t), bs)] for t in (read(e.path) for e in cfg.data.forget)]
    retain_texts = read(cfg.data.retain[0].path)
    retain = [retain_texts[i:i + bs] for i in range(0, len(retain_texts), bs)]
    losses = []
    for idx in range(steps):
        k, b = idx % len(forget), idx // len(forget)
        f_in = tok(forget[k][b], return_tensors="pt", padding=True, truncation=True,
                   max_length=cfg.data.forget[k].max_length)
        r_in = tok(retain[b], return_tensors="pt", padding=True, truncation=True, max_length=cfg.data.retain[0].max_length)
        losses.append(ref.step(f_in, r_in, k))
    return losses, model.state_dict()


def test_wmdp_reference_matches_a_plain_two_model_implementation(tmp_path):
    steps = 6
    cfg = make_cfg(["experiment=wmdp_reference", "model=tiny_random", "data=bundled", "eval=none",
                    f"trainer.max_steps={steps}", "trainer.batch_size=3", "trainer.progress=false",
                    "rmu.layer_id=2", "rmu.update_layers=[0,1,2]", "rmu.steering_coeff=[20,8]", "rmu.alpha=[100,30]",
                    "optim.lr=1e-3", "data.forget.0.max_length=40", "data.forget.1.max_length=24",
                    "data.retain.0.max_length=32", f"output_dir={tmp_path / 'ours'}"])
    assert cfg.data.padding_side == "left" and cfg.rmu.mask_padding is False and cfg.data.min_chars == 0
    train(cfg)
    ours = [json.loads(line) for line in open(tmp_path / "ours" / "metrics.jsonl")]
    ref_losses, ref_weights = reference_rmu(cfg, steps)
    for rec, (f, r) in zip(ours, ref_losses, strict=True):
        assert abs(rec["forget_loss"] - f) <= 1e-5 * abs(f), (rec["step"], rec["forget_loss"], f)
        assert abs(rec["retain_loss"] - r) <= 1e-5 * abs(r) + 1e-12, (rec["step"], rec["retain_loss"], r)
    out = load_file(tmp_path / "ours" / "model.safetensors")
    for name, t in out.items():
        assert torch.allclose(t, ref_weights[name], rtol=1e-5, atol=1e-7), name
    assert any(ref_losses[i][1] > 0 for i in range(steps))  # the retain term really moved
