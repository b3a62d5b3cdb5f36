"""The recipe (rmu/unlearn/recipe.py: setup, fit, write_run) on the tiny random Llama, run
whole: exactly the selected tensors change, the same seed gives the same weights, the auto
steering coefficient is β times the measured norm, bfloat16 and a local Hugging Face folder
go through the same path."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from rmu.config.plan import plan_train
from rmu.models.loading import load_model
from rmu.train import train


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def test_only_the_selected_tensors_change(tiny_cfg, tmp_path):
    cfg = tiny_cfg("rmu.update_params=[mlp.down_proj.weight,re:self_attn\\.o_proj\\..*]")
    results = train(cfg)
    base, _ = load_model(cfg.model, cfg.seed)
    base_sd = base.state_dict()
    out = weights(cfg.output_dir)
    expected = {f"model.layers.{i}.{p}" for i in (0, 1, 2) for p in ("mlp.down_proj.weight", "self_attn.o_proj.weight")}
    assert set(results.updated_parameters) == expected
    changed = {name for name, t in out.items() if not torch.equal(t, base_sd[name])}
    assert changed == expected


def test_same_seed_gives_bit_identical_weights(tiny_cfg):
    a, b, c = tiny_cfg(output="a"), tiny_cfg(output="b"), tiny_cfg("seed=7", output="c")
    for cfg in (a, b, c):
        train(cfg)
    wa, wb, wc = weights(a.output_dir), weights(b.output_dir), weights(c.output_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_auto_steering_coefficient_is_beta_times_measured_norm(tiny_cfg):
    cfg = tiny_cfg("rmu.steering_coeff=auto", "rmu.auto_beta=3.0", "trainer.max_steps=2")
    results = train(cfg)
    model, tok = load_model(cfg.model, cfg.seed)
    tok.padding_side = "right"
    plan = plan_train(tiny_cfg(output="unused"))
    for k, corpus in enumerate(plan.forget):
        batch = tok(corpus.texts[:2], return_tensors="pt", padding=True, truncation=True, max_length=32)
        with torch.no_grad():
            h = model(**batch, output_hidden_states=True).hidden_states[plan.layer_id + 1]  # after layer ℓ
        mask = batch["attention_mask"].bool()
        expected = 3.0 * h[mask].norm(dim=-1).mean().item()
        assert abs(results.steering_coeff[k] - expected) <= 1e-4 * expected


def test_bfloat16_run_trains_and_saves_bfloat16_weights(tiny_cfg):
    cfg = tiny_cfg("model.dtype=bfloat16")
    results = train(cfg)
    out = weights(cfg.output_dir)
    assert out["model.layers.2.mlp.down_proj.weight"].dtype == torch.bfloat16
    rows = [json.loads(line) for line in open(Path(cfg.output_dir) / "metrics.jsonl")]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows) and results.steps == 4


def test_a_local_hugging_face_folder_trains_through_the_same_path(tiny_cfg, tmp_path):
    first = tiny_cfg(output="first")
    train(first)
    # model.path = a folder written by save_pretrained, as for any downloaded Hub model
    second = tiny_cfg(f"model.path={first.output_dir}", "model.arch=null", output="second")
    results = train(second)
    start, end = weights(first.output_dir), weights(second.output_dir)
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed == set(results.updated_parameters) and changed


def test_layered_unlearning_runs_one_stage_per_topic_each_retaining_the_later_topics(tiny_cfg):
    import pytest

    from rmu.errors import ConfigError
    from rmu.unlearn.recipe import fit, setup, step_texts

    run = setup(tiny_cfg("rmu.layered=true", "trainer.max_steps=6", "trainer.batch_size=4"))
    chem, astro = (set(c.texts) for c in run.plan.forget)
    stages = [step_texts(run, step, 4) for step in range(6)]
    assert [(k, stage) for k, stage, _, _ in stages] == [(0, 1), (0, 1), (0, 1), (0, 2), (1, 2), (0, 2)]
    for k, stage, forget, retain in stages:
        assert set(forget) <= (chem if k == 0 else astro)
        later = [t for t in retain if t in astro]
        assert len(later) == (2 if stage == 1 else 0)  # stage 1 keeps astro: half its retain batch is astro text
    rows = fit(run, ({}, None))
    assert [r["stage"] for r in rows] == [1, 1, 1, 2, 2, 2] and [r["topic"] for r in rows][3:] == ["chem", "astro", "chem"]
    plain = setup(tiny_cfg(output="plain"))
    assert step_texts(plain, 3, 4)[:2] == (1, None)  # without layering: topic i % K, no stages
    for bad, key in ((["trainer.batch_size=1"], "rmu.layered"), (["trainer.max_steps=1"], "rmu.layered")):
        with pytest.raises(ConfigError, match=key):
            setup(tiny_cfg("rmu.layered=true", *bad, output="bad"))
