"""Invariant tests on the tiny random Llama: what must never change, what must change,
determinism, and agreement with a straightforward implementation of the reference code."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from rmu.config.plan import plan_train
from rmu.data import batch_texts, tokenize
from rmu.models.loading import load_model
from rmu.train import train
from rmu.unlearn.recipe import setup
from tests.conftest import make_cfg

from rmu.unlearn.reference_loop import ReferenceRMU


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def test_rmu_step_never_touches_the_frozen_values_or_other_weights(tiny_cfg):
    run = setup(tiny_cfg("optim.lr=1e-2"))  # the trainer's own wiring
    model, span, plan, tok = run.model, run.span, run.plan, run.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {i: {k: v.clone() for k, v in d.items()} for i, d in span.frozen.items()}
    control = torch.full((model.config.hidden_size,), 3.0)
    for step in range(3):
        forget = tokenize(tok, batch_texts(plan.forget[0], step, 2), 32, "cpu")
        retain = tokenize(tok, batch_texts(plan.retain[0], step, 2), 32, "cpu")
        run.step(forget, retain, control, 100.0, step)
    for i, d in span.frozen.items():
        assert all(torch.equal(v, frozen[i][k]) for k, v in d.items())
    after = model.state_dict()
    assert {k for k in after if not torch.equal(after[k], before[k])} == set(plan.update_names)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in plan.update_names)


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
    out = weights(tmp_path / "ours")
    for name, t in out.items():
        assert torch.allclose(t, ref_weights[name], rtol=1e-5, atol=1e-7), name
    assert any(ref_losses[i][1] > 0 for i in range(steps))  # the retain term really moved


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
