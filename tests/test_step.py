"""The optimised step (shared prefix, stop at ℓ, frozen copy of the updated tensors only)
computes what the plain reference loop computes: same per-step losses, same final weights."""

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rmu.config.plan import plan_train
from rmu.data import batch_texts, tokenize
from rmu.unlearn.reference_loop import layer_output
from rmu.unlearn.losses import random_directions
from rmu.models.loading import load_model
from rmu.unlearn.span import LayerSpan
from rmu.train import train
from tests.conftest import ROOT, make_cfg

from rmu.unlearn.reference_loop import ReferenceRMU

STEPS = 4  # two per topic


def run_reference(cfg, plan):
    """The reference loop on exactly the batches and control vectors the trainer uses."""
    model, tok = load_model(cfg.model, cfg.seed)
    frozen, _ = load_model(cfg.model, cfg.seed)
    tok.padding_side = cfg.data.padding_side
    controls = random_directions(len(plan.topics), plan.hidden_size, cfg.seed) * torch.tensor(
        plan.steering_coeff).unsqueeze(1)
    ref = ReferenceRMU(model, frozen, plan.layer_id, plan.update_names, controls, plan.alpha, cfg.optim.lr,
                       mask_padding=cfg.rmu.mask_padding, old_adamw=cfg.optim.name == "adamw_reference")
    losses = []
    for step in range(STEPS):
        k, index = step % len(plan.topics), step // len(plan.topics)
        bs = cfg.trainer.batch_size
        forget = tokenize(tok, batch_texts(plan.forget[k], index, bs), plan.forget[k].max_length, "cpu")
        retain = tokenize(tok, batch_texts(plan.retain[k], index, bs), plan.retain[k].max_length, "cpu")
        losses.append(ref.step(forget, retain, k))
    return losses, model.state_dict()


CASES = {  # hooked layer, updated layers, updated tensors, padding mask, padding side
    "l0-unmasked": (0, [0], ["mlp.down_proj.weight"], False, "left"),
    "l0-masked": (0, [0], ["mlp.down_proj.weight"], True, "right"),
    "l1-masked-two-tensors": (1, [0, 1], ["mlp.down_proj.weight", "self_attn.o_proj.weight"], True, "left"),
    "last-unmasked": (3, [1, 2, 3], ["mlp.down_proj.weight"], False, "left"),
    "last-masked": (3, [1, 2, 3], ["mlp.down_proj.weight"], True, "right"),
    "last-only-hooked-layer": (3, [3], ["mlp.*"], True, "right"),
}


@pytest.mark.parametrize("case", CASES)
def test_optimised_step_matches_the_reference_loop(case, tmp_path):
    layer_id, update_layers, params, mask, side = CASES[case]
    cfg = make_cfg(["experiment=wmdp_reference", "model=tiny_random", "data=bundled", "eval=none",
                    f"trainer.max_steps={STEPS}", "trainer.batch_size=3", "trainer.progress=false",
                    f"rmu.layer_id={layer_id}", f"rmu.update_layers={update_layers}",
                    f"rmu.update_params=[{','.join(params)}]", f"rmu.mask_padding={mask}",
                    f"data.padding_side={side}", "rmu.numerics=float32", "rmu.steering_coeff=[20,8]", "rmu.alpha=[100,30]", "optim.lr=1e-3",
                    "data.forget.0.max_length=40", "data.forget.1.max_length=24", "data.retain.0.max_length=32",
                    f"output_dir={tmp_path / 'ours'}"])
    plan = plan_train(cfg)
    train(cfg)
    ours = [json.loads(line) for line in open(tmp_path / "ours" / "metrics.jsonl")]
    ref_losses, ref_weights = run_reference(cfg, plan)
    for rec, (f, r) in zip(ours, ref_losses, strict=True):
        assert abs(rec["forget_loss"] - f) <= 1e-5 * abs(f), (rec["step"], rec["forget_loss"], f)
        assert abs(rec["retain_loss"] - r) <= 1e-5 * abs(r) + 1e-12, (rec["step"], rec["retain_loss"], r)
    assert any(r > 0 for _, r in ref_losses[1:])  # the updates moved the retain activations
    out = load_file(tmp_path / "ours" / "model.safetensors")
    for name, t in out.items():
        assert torch.allclose(t, ref_weights[name], rtol=1e-5, atol=1e-7), name
    base = load_model(cfg.model, cfg.seed)[0].state_dict()
    assert {n for n, t in out.items() if not torch.equal(t, base[n])} == set(plan.update_names)


def test_span_reproduces_full_forward_on_a_model_mixing_attention_types():
    """Qwen2 with sliding-window layers above max_window_layers: layers of the span get
    different attention masks, so the prefix pass records each layer's own arguments."""
    cfg = make_cfg(["model=tiny_random", "+model.arch.sliding_window=4", "+model.arch.use_sliding_window=true",
                    "+model.arch.max_window_layers=2", "model.arch.model_type=qwen2"])
    model, tok = load_model(cfg.model, 0)
    types = model.config.layer_types
    assert types[1] != types[2], types
    batch = tokenize(tok, ["a longer sentence so that the sliding window matters here", "short"], 16, "cpu")
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    span = LayerSpan(model, 3, names)
    assert not span.shared_kwargs
    with torch.no_grad():
        expected = layer_output(model, 3, batch)
        got = span.run(span.prefix(batch))
        frozen_before = span.run(span.prefix(batch), frozen=True)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert torch.equal(frozen_before, got)
    # After an edit of an updated tensor the live span moves and the frozen span does not.
    with torch.no_grad():
        dict(model.named_parameters())[names[0]].add_(0.5)
        moved = span.run(span.prefix(batch))
        still = span.run(span.prefix(batch), frozen=True)
    assert not torch.allclose(moved, expected, atol=1e-4)
    assert torch.equal(still, frozen_before)


def test_frozen_values_are_copies_of_just_the_updated_tensors():
    cfg = make_cfg(["model=tiny_random"])
    model, _ = load_model(cfg.model, 0)
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    span = LayerSpan(model, 2, names)
    params = dict(model.named_parameters())
    assert {i: set(d) for i, d in span.frozen.items()} == {1: {"mlp.down_proj.weight"}, 2: {"mlp.down_proj.weight"}}
    for name in names:
        i = int(name.split(".")[2])
        frozen = span.frozen[i]["mlp.down_proj.weight"]
        assert torch.equal(frozen, params[name]) and frozen.data_ptr() != params[name].data_ptr()
    with pytest.raises(ValueError, match="outside decoder layers 0..1"):
        LayerSpan(model, 1, names)


@pytest.mark.slow
def test_bench_runs_both_variants_and_reports_agreement():
    """`make bench` on the tiny model with small shapes: the report's format and the loss
    agreement (timings are printed, never asserted)."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench" / "bench.py"), "--model", "tiny_random",
                           "--layer", "2", "--length", "32", "--steps", "2", "--warmup", "1", "--no-scaling"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"bench: speedup=(\S+) memory_ratio=(\S+) max_loss_rel_diff=(\S+)", lines[-1])
    assert m, lines[-1]
    speedup, memory_ratio, diff = map(float, m.groups())
    assert speedup > 0 and memory_ratio > 0 and diff <= 1e-4
    assert any(line.startswith("| reference |") for line in lines) and any(line.startswith("| rmu |") for line in lines)
