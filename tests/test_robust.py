"""The robust variants (rmu/unlearn/robust.py) on the tiny random model: each stage's formula or
invariant, that they compose with LoRA, and what is refused."""

import json
import math
from pathlib import Path

from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from rmu.config.checks import check_robust_processes
from rmu.data import batch_texts, tokenize
from rmu.errors import ConfigError
from rmu.unlearn.losses import forget_loss
from rmu.config.plan import plan_train
from rmu.unlearn.recipe import setup
from rmu.unlearn.robust import Robust, agree, collapse, principal_basis, project_to_ball, robust_step
from rmu.train import train

from tests.conftest import RUN, TINY, run_cli, sigterm_then_resume


def batches(run, step, size=2):
    plan, tok = run.plan, run.tokenizer
    return (tokenize(tok, batch_texts(plan.forget[0], step, size), 32, "cpu"),
            tokenize(tok, batch_texts(plan.retain[0], step, size), 32, "cpu"))


def steps(run, n, robust=None, alpha=100.0):
    """n steps of the run's own step, or of the robust step with the stages `robust`."""
    step_fn = run.step if robust is None else partial(robust_step, run.span, run.updater, robust, ranks=run.ranks)
    return [step_fn(*batches(run, step), run.controls[0], alpha, step) for step in range(n)]


def updated_values(run):
    return [p.detach().clone() for p in run.updated]


def test_all_off_is_no_robust_stage_at_all(tiny_cfg):
    assert setup(tiny_cfg()).robust is None
    assert setup(tiny_cfg("robust.targets=sample")).robust is not None


def test_the_robust_step_with_every_stage_off_is_the_plain_step(tiny_cfg):
    """Two gradients and Updater.apply instead of one backward: the same update (up to the
    order of a float sum), and it moved the weights."""
    plain, other = setup(tiny_cfg("optim.lr=1e-2")), setup(tiny_cfg("optim.lr=1e-2", output="b"))
    start = updated_values(plain)
    records = steps(plain, 3)
    robust_records = steps(other, 3, robust=Robust(other.cfg.robust, 0, other.updated, [], other.model, other.ranks))
    assert any(not torch.equal(a, b) for a, b in zip(start, plain.updated))
    for a, b in zip(plain.updated, other.updated):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for r, s in zip(records, robust_records):
        assert r.keys() == s.keys() and math.isclose(r["forget_loss"], s["forget_loss"], rel_tol=1e-6)


def test_the_separate_gradient_path_equals_the_plain_step_when_the_attacker_does_not_move(tiny_cfg):
    """k = 2 attacker steps at learning rate 0: the forget gradient is taken at the same
    point through the robust path (two gradients, Updater.apply) and must give the plain
    step's weights."""
    plain, meta = setup(tiny_cfg("optim.lr=1e-2")), setup(tiny_cfg("optim.lr=1e-2", output="b"))
    steps(plain, 3)
    cfg = meta.cfg.robust.copy()
    cfg.meta_steps, cfg.meta_lr = 2, 0.0
    robust = Robust(cfg, 0, meta.updated, [], meta.model, meta.ranks)
    steps(meta, 3, robust=robust)
    for a, b in zip(plain.updated, meta.updated):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("attack", ["lm", "activations"])
def test_meta_takes_the_forget_gradient_at_the_attacked_point_and_restores_the_tensors(tiny_cfg, attack):
    run = setup(tiny_cfg("optim.lr=1e-2", "robust.meta_steps=2", "robust.meta_lr=3e-3", f"robust.meta_attack={attack}"))
    plain = setup(tiny_cfg("optim.lr=1e-2", output="plain"))
    steps(run, 1)
    steps(plain, 1)  # one plain step each: now there is something to relearn
    forget, _ = batches(run, 1)
    calls, mask = run.span.prefix(forget), forget["attention_mask"]
    before = updated_values(run)
    with torch.no_grad():
        frozen = run.span.run(calls, frozen=True)
        gap_before = (run.span.run(calls) - frozen).pow(2).mean()
    with run.robust.relearned(run.span, forget, calls, mask):
        moved = updated_values(run)
        with torch.no_grad():
            gap_inside = (run.span.run(calls) - frozen).pow(2).mean()
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))  # the attacker moved them
    assert all(torch.equal(a, b) for a, b in zip(before, run.updated))  # and they are back
    if attack == "activations":
        assert gap_inside < gap_before  # it pulls the forget activations back toward the frozen model's
    # The update differs from the plain step's (the forget gradient is taken elsewhere).
    forget, retain = batches(run, 1)
    for r in (run, plain):
        r.step(forget, retain, r.controls[0], 100.0, 1)
    assert any(not torch.equal(a, b) for a, b in zip(plain.updated, run.updated))


def test_masked_entries_never_change_even_with_adam_momentum(tiny_cfg):
    run = setup(tiny_cfg("robust.mask=true", "optim.lr=1e-2"))
    seen = []
    original = run.robust.combine

    def spy(g_forget, g_retain):
        grads, keep = original(g_forget, g_retain)
        seen.append(keep)
        return grads, keep

    run.robust.combine = spy
    for step in range(4):  # momentum builds up over the first steps; later masks must still hold
        before = updated_values(run)
        record = steps_one(run, step)
        keep = seen[-1]
        for b, a, k in zip(before, run.updated, keep):
            assert torch.equal(a[~k], b[~k])
        assert 0 < record["mask_kept"] <= 1
    assert record["mask_kept"] < 1  # by then the retain gradient is non-zero and disagrees somewhere
    assert any(not torch.equal(a, b) for a, b in zip(before, run.updated))


def steps_one(run, step):
    forget, retain = batches(run, step)
    return run.step(forget, retain, run.controls[0], 100.0, step)


def test_the_mask_formula():
    f = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    r = torch.tensor([2.0, 1.0, -1.0, -3.0, 0.0])
    assert agree(f, r).tolist() == [True, False, False, True, True]


def test_mask_ema_is_the_running_mean_of_the_retain_gradient(tiny_cfg):
    run = setup(tiny_cfg("robust.mask=true", "robust.mask_ema=0.75"))
    robust = run.robust
    g1, g2 = [torch.randn(3, 4)], [torch.randn(3, 4)]
    robust.combine([torch.randn(3, 4)], g1)
    robust.combine([torch.randn(3, 4)], g2)
    torch.testing.assert_close(robust.retain_mean[0], 0.75 * g1[0] + 0.25 * g2[0])


def test_normalised_forget_gradient_has_the_first_steps_norm(tiny_cfg):
    run = setup(tiny_cfg("robust.normalize=true"))
    robust = run.robust
    first = [torch.randn(5, 7), 3 * torch.randn(2, 2)]
    zero = [torch.zeros(5, 7), torch.zeros(2, 2)]
    out, keep = robust.combine(first, zero)
    assert keep is None and all(torch.equal(a, b) for a, b in zip(out, first))
    later = [100 * torch.randn(5, 7), 0.01 * torch.randn(2, 2)]
    out, _ = robust.combine(later, zero)
    for o, f, g in zip(out, first, later):
        torch.testing.assert_close(o.norm(), f.norm())
        torch.testing.assert_close(o / o.norm(), g / g.norm())  # the direction is kept


def test_collapsed_gradient_is_orthogonal_to_both_bases():
    torch.manual_seed(0)
    x = torch.randn(200, 12) + 3.0  # inputs with a large shared mean
    q = principal_basis(x, 3)
    assert q.shape == (12, 4)
    torch.testing.assert_close(q.T @ q, torch.eye(4), atol=1e-5, rtol=0)
    mean = x.mean(0)
    torch.testing.assert_close(q @ (q.T @ mean), mean, atol=1e-4, rtol=0)  # the mean lies in the basis
    q_out = principal_basis(torch.randn(200, 6), 2)
    g = torch.randn(6, 12)
    c = collapse(g, q, q_out)
    assert (c @ q).abs().max() < 1e-5 and (q_out.T @ c).abs().max() < 1e-5
    torch.testing.assert_close(collapse(c, q, q_out), c, atol=1e-5, rtol=0)  # a projector: twice = once


def test_collapse_bases_come_from_the_updated_modules_and_the_step_uses_them(tiny_cfg):
    run = setup(tiny_cfg("robust.collapse_components=3", "robust.collapse_every=2"))
    robust = run.robust
    forget, _ = batches(run, 0)
    calls = run.span.prefix(forget)
    robust.observe(run.span, run.controls[0], 0, forget=(calls, forget["attention_mask"]), retain=None)
    inter, hidden = run.model.config.intermediate_size, run.model.config.hidden_size
    assert [(q_in.shape, q_out.shape) for q_in, q_out in robust.bases] == [((inter, 4), (hidden, 4))] * 3
    kept = robust.bases
    robust.observe(run.span, run.controls[0], 1, forget=(calls, forget["attention_mask"]), retain=None)  # not a multiple of every=2
    assert robust.bases is kept
    grads, _ = robust.combine([torch.randn(hidden, inter) for _ in range(3)], [torch.zeros(hidden, inter)] * 3)
    for g, (q_in, q_out) in zip(grads, robust.bases):
        assert (g @ q_in).abs().max() < 1e-4 and (q_out.T @ g).abs().max() < 1e-4
    steps(run, 3, robust=robust)  # and a run of steps goes through


def test_latent_perturbation_respects_its_bound_and_raises_the_forget_loss(tiny_cfg):
    run = setup(tiny_cfg("robust.lat_eps=0.2", "robust.lat_steps=5"))
    long_text = run.plan.forget[0].texts[0]
    forget = tokenize(run.tokenizer, ["A short one.", long_text], 32, "cpu")  # padding in the first row
    mask = forget["attention_mask"]
    calls = run.span.prefix(forget)
    perturbed = run.robust.perturb(run.span, calls, run.controls[0], mask)
    h0, h1 = run.span.hidden_in(calls), run.span.hidden_in(perturbed)
    delta = (h1 - h0).float()
    bound = 0.2 * h0.float().norm(dim=-1)
    assert (delta.norm(dim=-1) <= bound * (1 + 1e-5) + 1e-6).all()
    assert (delta.norm(dim=-1)[mask.bool()] > 0.5 * bound[mask.bool()]).all()  # it uses its budget
    assert (~mask.bool()).any() and (delta[~mask.bool()] == 0).all()  # padding untouched
    with torch.no_grad():
        clean = forget_loss(run.span.run(calls), run.controls[0], mask)
        attacked = forget_loss(run.span.run(perturbed), run.controls[0], mask)
    assert attacked > clean
    assert all(p.grad is None for p in run.updated)  # the adversary leaves no gradient behind


def test_projection_onto_the_ball():
    d = torch.tensor([[[3.0, 4.0], [0.3, 0.4]]])
    out = project_to_ball(d, torch.tensor([[[1.0], [1.0]]]))
    torch.testing.assert_close(out, torch.tensor([[[0.6, 0.8], [0.3, 0.4]]]))


@pytest.mark.parametrize("kind", ["sample", "token"])
def test_fresh_targets_share_no_direction_and_keep_the_coefficient(tiny_cfg, kind):
    run = setup(tiny_cfg(f"robust.targets={kind}"))
    forget, _ = batches(run, 0, size=4)
    control = run.controls[0]
    t = run.robust.targets(control, forget, step=3)
    b, length = forget["input_ids"].shape
    assert t.shape == (b, 1 if kind == "sample" else length, control.shape[0])
    torch.testing.assert_close(t.norm(dim=-1), torch.full(t.shape[:2], control.norm().item()))
    flat = torch.nn.functional.normalize(t.reshape(-1, t.shape[-1]), dim=-1)
    cos = flat @ flat.T
    off = cos[~torch.eye(len(flat), dtype=torch.bool)]
    assert off.abs().mean() < 0.3  # Gaussian directions: no shared component (torch.rand ones: ≈ 0.75)
    assert torch.equal(t, run.robust.targets(control, forget, step=3))  # seeded by (seed, step)
    assert not torch.equal(t, run.robust.targets(control, forget, step=4))


def test_token_id_targets_are_a_fixed_map_from_token_to_direction(tiny_cfg):
    run = setup(tiny_cfg("robust.targets=token_id"))
    forget, _ = batches(run, 0, size=4)
    control = run.controls[0]
    a, b = run.robust.targets(control, forget, step=0), run.robust.targets(control, forget, step=9)
    assert torch.equal(a, b) and a.shape == (*forget["input_ids"].shape, control.shape[0])
    torch.testing.assert_close(a.norm(dim=-1), torch.full(a.shape[:2], control.norm().item()))
    ids = forget["input_ids"]
    first = {}
    for (i, j), token in zip(torch.cartesian_prod(torch.arange(ids.shape[0]), torch.arange(ids.shape[1])).tolist(),
                             ids.flatten().tolist()):
        if token in first:
            assert torch.equal(a[i, j], a[first[token]])  # the same token, the same target
        first.setdefault(token, (i, j))
    distinct = torch.nn.functional.normalize(torch.stack([a[p] for p in first.values()]), dim=-1)
    cos = distinct @ distinct.T
    assert cos[~torch.eye(len(distinct), dtype=torch.bool)].abs().mean() < 0.3


def test_each_rank_draws_its_slice_of_the_global_batchs_targets(tiny_cfg):
    class FakeRanks:
        def __init__(self, rank):
            self.rank, self.size = rank, 2

    run = setup(tiny_cfg("robust.targets=sample"))
    forget4, _ = batches(run, 0, size=4)
    forget2, _ = batches(run, 0, size=2)
    whole = run.robust.targets(run.controls[0], forget4, 5)
    halves = []
    for rank in (0, 1):
        r = Robust(run.cfg.robust, run.cfg.seed, run.updated, [], run.model, FakeRanks(rank))
        halves.append(r.targets(run.controls[0], forget2, 5))
    assert torch.equal(torch.cat(halves), whole)


def test_the_variants_compose_with_lora_and_train(tiny_cfg):
    """Every stage LoRA allows, together on an adapter run: the adapters move (LoRA's B starts
    at zero), every metrics row is finite, and results.json names exactly these stages."""
    cfg = tiny_cfg("adapter=lora", "adapter.merge=false", "robust.targets=token", "robust.lat_eps=0.1",
                   "robust.meta_steps=1", "robust.normalize=true", "robust.mask=true", "trainer.max_steps=4")
    results = train(cfg)
    assert results.steps == 4
    out = Path(cfg.output_dir)
    adapters = load_file(out / "adapter_model.safetensors")
    b = {k: t for k, t in adapters.items() if ".lora_B." in k}
    assert {int(k.split("layers.")[1].split(".")[0]) for k in b} == set(results.update_layers)
    assert all(t.abs().max() > 0 for t in b.values()), {k: t.abs().max().item() for k, t in b.items()}
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "forget_loss", "retain_loss")), r
        assert 0 < r["mask_kept"] <= 1, r
    recorded = json.loads((out / "results.json").read_text())["robust"]
    assert recorded == {"targets": "token", "latent_adversary": {"eps": 0.1, "steps": 4},
                        "meta_unlearning": {"steps": 1, "lr": 1e-4, "attack": "lm"}, "normalize": True,
                        "mask": {"ema": 0.0}}


def test_all_stages_together_train(tiny_cfg):
    cfg = tiny_cfg("robust.targets=sample", "robust.lat_eps=0.1", "robust.meta_steps=1", "robust.collapse_components=2",
                   "robust.normalize=true", "robust.mask=true", "robust.mask_ema=0.5", "trainer.max_steps=4")
    results = train(cfg)
    assert results.steps == 4
    rows = [json.loads(line) for line in open(Path(cfg.output_dir) / "metrics.jsonl")]
    assert all(0 < r["mask_kept"] <= 1 and math.isfinite(r["loss"]) for r in rows)
    recorded = json.loads((Path(cfg.output_dir) / "results.json").read_text())["robust"]
    assert set(recorded) == {"targets", "latent_adversary", "collapse", "meta_unlearning", "normalize", "mask"}


@pytest.mark.slow
def test_a_preempted_robust_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    """The stages' running values (retain-gradient mean, first norms, collapse bases)
    travel in the resume state: SIGTERM mid-run, rerun, bit-identical weights."""
    long = [o for o in RUN if not o.startswith("trainer.max_steps")] + [
        "trainer.max_steps=120", "trainer.batch_size=2", "trainer.save_every=10", "robust.mask=true",
        "robust.mask_ema=0.5", "robust.normalize=true", "robust.collapse_components=2", "robust.collapse_every=7",
        "robust.targets=sample"]
    sigterm_then_resume(tmp_path, long)  # tests/conftest.py: stopped mid-run, resumed, bit-identical weights


def test_what_the_variants_do_not_cover_is_refused_before_loading(tiny_cfg):
    with pytest.raises(ConfigError, match="robust.collapse_components=2: projects full weight gradients"):
        plan_train(tiny_cfg("adapter=lora", "robust.collapse_components=2"))
    with pytest.raises(ConfigError, match="model.dtype='float16'"):
        plan_train(tiny_cfg("model.dtype=float16", "robust.mask=true"))
    with pytest.raises(ConfigError, match="robust.meta_lr=0.1: is not used while robust.meta_steps is off"):
        plan_train(tiny_cfg("robust.meta_lr=0.1"))
    with pytest.raises(ConfigError, match="linear layers"):
        plan_train(tiny_cfg("robust.collapse_components=2", "rmu.update_params=[post_attention_layernorm.weight]"))
    with pytest.raises(ConfigError, match="one process only"):
        check_robust_processes(tiny_cfg("robust.collapse_components=2").robust, 2, False)
    with pytest.raises(ConfigError, match="not supported under FSDP"):
        check_robust_processes(tiny_cfg("robust.meta_steps=1").robust, 2, True)
    check_robust_processes(tiny_cfg("robust.meta_steps=1", "robust.mask=true").robust, 2, False)  # data parallel: fine


def test_the_cli_names_a_bad_robust_value():
    proc = run_cli("rmu.train", *TINY, "robust.targets=mean")
    assert proc.returncode != 0 and "robust.targets='mean': allowed: topic, sample, token" in proc.stderr
