"""Tamper-resistant training (rmu/harden/tar.py, the command rmu/tar.py) on the tiny model: the
entropy loss and its weight schedule, the inner adversary restoring θ, the accumulated
first-order gradient, K = 0 as the retain-only update, the run folder, resume after SIGTERM."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmu.data import batch_texts, tokenize
from rmu.errors import ConfigError
from rmu.harden.tar import (lm_loss, negative_entropy, next_token_mask, retain_loss, sample_adversary, setup,
                            tamper_gradients, tar_step, tr_weight, inner_texts)
from rmu.tar import tar
from rmu.train import train
from tests.conftest import ENV, ROOT, TINY, assert_same_weights, make_cfg, sigterm_then_resume


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """An rmu.train run folder of the tiny model: where TAR starts."""
    out = tmp_path_factory.mktemp("start") / "run"
    train(make_cfg(TINY + [f"output_dir={out}"]))
    return out


def tar_args(start: Path, *extra: str, batch: int = 2) -> list[str]:
    """`batch`: every batch size (retain, tamper-resistance, adversary), per process."""
    return ["model=tiny_random", "model.arch=null", f"model.path={start}", "eval=none", f"trainer.batch_size={batch}",
            "trainer.progress=false", "tar.outer_steps=2", "tar.inner_steps=4", "tar.tr_every=2",
            f"tar.tr_batch_size={batch}", f"tar.adversary.batch_size={batch}", "tar.lr=1e-3", "tar.adversary.lrs=[1e-3]",
            "data.forget.0.max_length=32", "data.forget.1.max_length=32", "data.retain.0.max_length=32", *extra]


def test_the_entropy_loss_against_a_hand_computation_and_the_weight_schedule():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # p = (1/2, 1/2) and (3/4, 1/4)
    by_hand = (2 * 0.5 * math.log(0.5) + 0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / 2
    assert abs(negative_entropy(logits, torch.ones(1, 2)).item() - by_hand) < 1e-6
    assert abs(negative_entropy(logits, torch.tensor([[1.0, 0.0]])).item() - math.log(0.5)) < 1e-6
    assert tr_weight(63, 64) == 4.0 and abs(tr_weight(0, 64) - 4 * math.exp(-3.9375)) < 1e-12
    assert all(tr_weight(i, 64) < tr_weight(i + 1, 64) for i in range(63))  # late steps count most


def test_the_adversary_is_sampled_from_the_family_and_the_same_for_the_same_step(start, tmp_path):
    cfg = make_cfg(tar_args(start, f"output_dir={tmp_path / 'x'}", "tar.adversary.lrs=[1e-4,1e-3]"), "tar")
    draws = [sample_adversary(cfg.tar.adversary, 0, step, 64) for step in range(60)]
    assert {d.data for d in draws} == {"forget", "retain", "retain_then_forget"} and {d.lr for d in draws} == {1e-4, 1e-3}
    switches = [d.switch for d in draws if d.data == "retain_then_forget"]
    assert all(0 < s < 64 for s in switches) and 30 < sum(switches) / len(switches) < 55  # Beta(6, 3): mean 2/3 of K
    assert draws[7] == sample_adversary(cfg.tar.adversary, 0, 7, 64)


def test_the_inner_adversary_restores_theta_and_its_gradient_is_the_sum_of_the_first_order_ones(start, tmp_path):
    t = setup(make_cfg(tar_args(start, f"output_dir={tmp_path / 'x'}"), "tar"))
    before = [p.detach().clone() for p in t.updated]
    adv = sample_adversary(t.cfg.tar.adversary, 0, 0, 4)
    total, record = tamper_gradients(t, 0, adv)
    assert all(torch.equal(a, b) for a, b in zip(before, t.updated))
    assert all(p.grad is None for p in t.updated)

    # The same adversary by hand on a copy: AdamW steps, and at steps 2 and 4 the weighted gradient.
    model = copy.deepcopy(t.model)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=adv.lr)
    heldout = tokenize(t.tokenizer, batch_texts(t.plan.tr_forget[0], 0, 2), t.plan.max_length, t.device)
    expected = [torch.zeros_like(p) for p in params]
    for i in range(4):
        batch = tokenize(t.tokenizer, inner_texts(t, adv, 0, i), t.plan.max_length, t.device)
        optimizer.zero_grad()
        lm_loss(model, batch).backward()
        optimizer.step()
        if i in (1, 3):
            loss = tr_weight(i, 4) * negative_entropy(model(**heldout).logits[:, :-1], next_token_mask(heldout))
            for e, g in zip(expected, torch.autograd.grad(loss, params)):
                e.add_(g)
    for a, e in zip(total, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)
    assert any(a.abs().sum() > 0 for a in total) and record["adversary"] == adv.data


def test_with_k_0_an_outer_step_is_the_retain_only_update(start, tmp_path):
    t = setup(make_cfg(tar_args(start, f"output_dir={tmp_path / 'x'}", "tar.inner_steps=0", "tar.tr_every=1"), "tar"))
    by_hand = copy.deepcopy(t.model)
    params = list(by_hand.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batch = tokenize(t.tokenizer, batch_texts(t.plan.retain[0], 0, 2), t.plan.max_length, t.device)
    grads = torch.autograd.grad(retain_loss(by_hand, t.start, batch), params)
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    tar_step(t, 0, 1e-3)
    for a, b in zip(t.model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_a_tar_run_folder_says_how_it_was_made(start, tmp_path):
    results = tar(make_cfg(tar_args(start, f"output_dir={tmp_path / 'out'}", "tar.safeguard_steps=2"), "tar"))
    out = tmp_path / "out"
    rows = [json.loads(line) for line in open(out / "tar_metrics.jsonl")]
    assert [r["phase"] for r in rows] == ["safeguard", "safeguard", "tar", "tar"]
    assert all(r["adversary"] in ("forget", "retain", "retain_then_forget") for r in rows[2:])
    info = json.loads((out / "results.json").read_text())["tar"]
    assert info["passes_per_outer_step"] == 4 + 2 + 1 and info["inner_steps"] == 4 and info["safeguard_steps"] == 2
    assert (out / "rmu_config.yaml").read_text() == (start / "rmu_config.yaml").read_text()
    assert results.tar["seconds_per_outer_step"] > 0 and (out / "report.md").is_file()
    from tests.test_report import png_size

    assert png_size(out / "report.png")[0] == 3 * 5 * 110  # RMU's two losses and TAR's curve (no eval sets here)
    from rmu.export import prepare

    card = (prepare(out, "me/tiny-tar") / "README.md").read_text()
    assert "trained with TAR" in card and "2 outer steps" in card


def test_bad_tar_settings_are_refused_by_name(start, tmp_path):
    for extra, key in ((["tar.tr_every=8"], "tar.tr_every"), (["tar.adversary.data=[pile]"], "tar.adversary.data"),
                       (["tar.heldout_fraction=1.5"], "tar.heldout_fraction")):
        with pytest.raises(ConfigError, match=key):
            setup(make_cfg(tar_args(start, f"output_dir={tmp_path / 'x'}", *extra), "tar"))


@pytest.mark.slow
def test_sigterm_then_restart_ends_with_the_weights_of_an_uninterrupted_tar_run(start, tmp_path):
    args = tar_args(start, "tar.outer_steps=30", "trainer.save_every=3")
    sigterm_then_resume(tmp_path, args, module="rmu.tar", steps=30, metrics="tar_metrics.jsonl")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_plain_and_fsdp_end_where_one_process_with_twice_the_batch_does(start, tmp_path):
    """Each rank takes its slice of every batch and the gradients are summed over the ranks
    (the adversary's, the tamper-resistance ones and the retain one), so every rank's adversary
    takes the same steps: 2 processes with batch b, plain data parallel or FSDP (every
    parameter of the model and its starting copy sharded), end on the weights of 1 process with 2b
    (the FSDP run through a full disk after training and the rerun that writes its kept state)."""
    from tests.test_fsdp import accelerate_env

    extra = ["tar.safeguard_steps=1"]  # a step of the initial safeguard first (its losses through Updater.step)
    tar(make_cfg(tar_args(start, f"output_dir={tmp_path / 'one'}", *extra, batch=4), "tar"))
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "rmu.tar"]
    fsdp_env = accelerate_env(ROOT / "experiments" / "accelerate" / "fsdp.yaml")
    # FSDP on a disk that fills up once training is over: every rank joins gathering the trained
    # shards, rank 0 keeps them where there is room, and the same command then only evaluates and writes
    from tests.test_faults import isolated_cache

    cache, disk = isolated_cache(tmp_path), tmp_path / "disk"
    faulty = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", str(ROOT / "tests" / "os_faults.py"),
              "rmu.tar", *tar_args(start, f"output_dir={disk / 'fsdp'}", *extra)]
    run = subprocess.run(faulty, cwd=ROOT, env={**ENV, **fsdp_env, **cache, "FAULT_ENOSPC": str(disk)},
                         capture_output=True, text=True, timeout=600)
    kept = Path(cache["RMU_CACHE"]) / "resume"
    assert run.returncode != 0 and f"the trained state is kept in {kept}" in run.stderr, run.stderr[-3000:]
    for name, env, says in (("two", ENV, "2 processes"), ("fsdp", {**ENV, **fsdp_env, **cache}, "resuming at step 3")):
        out = tmp_path / name if name == "two" else disk / name
        loads = tmp_path / f"{name}-loads"
        loads.mkdir()
        command = [*torchrun[:-2], str(ROOT / "tests" / "count_loads.py"), "rmu.tar"]
        run = subprocess.run([*command, *tar_args(start, f"output_dir={out}", *extra)], cwd=ROOT,
                             env={**env, "LOADS_DIR": str(loads)}, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert says in run.stdout and run.stdout.count("rmu: wrote") == 1
        # each rank reads the start's weights in plain data parallel; under FSDP rank 0 alone does
        assert sorted(f.name for f in loads.iterdir()) == (["rank0-1", "rank1-1"] if name == "two" else ["rank0-1"])
        if name == "fsdp":
            (tmp_path / name).symlink_to(out)
        # Every parameter trains under two AdamWs (the adversary's and the outer one), whose m/√v turns a
        # summation-order difference in a near-zero gradient into a visible step: 2 entries of 3.2M were
        # more than 1e-4 of their tensor's largest off (an embedding entry 8.8e-4, an up_proj one 2.3e-4;
        # measured); at most 2 in 10 000 of any tensor may be.
        assert_same_weights(tmp_path / "one", tmp_path / name, 1e-4, flipped=2e-4)
        rows = {n: [json.loads(line) for line in open(tmp_path / n / "tar_metrics.jsonl")] for n in ("one", name)}
        assert rows["one"][0]["phase"] == "safeguard"
        assert rows[name][0]["mapping_loss"] == pytest.approx(rows["one"][0]["mapping_loss"], rel=1e-5)
        for a, b in zip(rows["one"], rows[name], strict=True):
            assert b["retain_loss"] == pytest.approx(a["retain_loss"], rel=1e-4)
            if a["phase"] == "tar":
                assert (a["adversary"], a["adversary_lr"]) == (b["adversary"], b["adversary_lr"])
                assert b["tr_loss_last"] == pytest.approx(a["tr_loss_last"], rel=1e-4)
        ours = json.loads((tmp_path / name / "results.json").read_text())
        assert ours["processes"] == 2 and ours["fsdp"] == (name == "fsdp")
    ref, sharded = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "fsdp"))
    assert sharded["rank0_parameter_mib"] == pytest.approx(ref["rank0_parameter_mib"] / 2, rel=0.05)
