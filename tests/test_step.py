"""`rmu_step` (rmu/unlearn/step.py), the optimised step (shared prefix, stop at ℓ, frozen
copy of the updated tensors only): it computes what the plain reference loop
(rmu/unlearn/reference_loop.py) computes, the same per-step losses and final weights, and
touches nothing but the selected tensors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rmu.config.plan import plan_train
from rmu.data import batch_texts, tokenize
from rmu.models.loading import load_model
from rmu.train import train
from rmu.unlearn.losses import random_directions
from rmu.unlearn.recipe import setup
from rmu.unlearn.reference_loop import ReferenceRMU
from tests.conftest import make_cfg

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
