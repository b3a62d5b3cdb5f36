"""The optimizers (rmu/unlearn/optim.py): in half precision, float32 master copies keep small
updates and float16 loss scaling skips overflows; ReferenceAdamW is the old transformers
formula the reference code ran."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmu.config.checks import check_train_values
from rmu.errors import ConfigError
from rmu.unlearn.optim import INITIAL_SCALE, ReferenceAdamW, Updater
from rmu.train import train


def test_master_weights_keep_updates_that_bfloat16_rounds_away():
    # AdamW moves each weight by about lr per step: 1e-3 is below bf16's spacing at 1.0.
    in_place = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    mastered = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    a = Updater([in_place], lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, master_weights=False)
    b = Updater([mastered], lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, master_weights=True)
    for _ in range(10):
        a.step(in_place.float().sum())
        b.step(mastered.float().sum())
    assert torch.equal(in_place, torch.ones(4, dtype=torch.bfloat16))
    assert b.masters[0].dtype == torch.float32
    assert torch.allclose(b.masters[0], torch.full((4,), 0.99), atol=1e-4)
    assert torch.equal(mastered, b.masters[0].to(torch.bfloat16)) and mastered[0] < 1


def test_float16_overflow_skips_the_step_and_halves_the_scale():
    w = torch.ones(3, dtype=torch.float16, requires_grad=True)
    u = Updater([w], lr=0.1, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, master_weights=True)
    assert u.scale == INITIAL_SCALE
    assert u.step(w.float().sum() * 1e3) is False  # 1e3 × 2^16 overflows float16's 65504
    assert u.scale == INITIAL_SCALE / 2 and torch.equal(w, torch.ones(3, dtype=torch.float16))
    assert u.step(w.float().sum() * 1e-3) is True  # small gradient survives thanks to the scale
    assert torch.allclose(u.masters[0], torch.full((3,), 0.9)) and (w < 1).all()


def test_float16_run_follows_the_float32_run(tiny_cfg):
    runs = {}
    for dtype in ("float32", "float16"):
        cfg = tiny_cfg(f"model.dtype={dtype}", "trainer.max_steps=8", "optim.lr=1e-2", output=dtype)
        train(cfg)
        runs[dtype] = [json.loads(line) for line in open(Path(cfg.output_dir) / "metrics.jsonl")]
        out = load_file(Path(cfg.output_dir) / "model.safetensors")
        assert out["model.layers.2.mlp.down_proj.weight"].dtype == getattr(torch, dtype)
    assert not any(r["skipped"] for r in runs["float16"])
    for a, b in zip(runs["float32"], runs["float16"], strict=True):
        assert abs(a["forget_loss"] - b["forget_loss"]) <= 2e-2 * a["forget_loss"], (a, b)
        assert abs(a["retain_loss"] - b["retain_loss"]) <= 0.1 * a["retain_loss"] + 1e-6, (a, b)
    assert runs["float16"][-1]["retain_loss"] > 0  # the updates really moved the half-precision weights


def test_float16_without_master_weights_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="optim.master_weights=False: float16 needs true"):
        check_train_values(tiny_cfg("model.dtype=float16", "optim.master_weights=false"))


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
