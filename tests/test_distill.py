"""Distillation into a damaged student (rmu/harden/: noise.py, distill.py, plan.py; the command
rmu/distill.py): the damage formula, the KL, the teacher left untouched, the stopping rule,
bad input refused before loading, resume after SIGTERM and two processes (plain, FSDP) equal to one."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmu.errors import ConfigError
from rmu.harden.distill import fit, kl_divergence, setup
from rmu.harden.noise import damage, xavier_uniform
from rmu.distill import distill
from rmu.export import prepare
from rmu.train import train
from tests.conftest import (ENV, ROOT, TINY, assert_same_weights, make_cfg, run_cli, sigterm_once_saved,
                            sigterm_then_resume)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


def test_damage_with_alpha_0_leaves_every_parameter_as_it_was():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    damage(model, alpha=0.0, beta=0.5, seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_damage_shrinks_vectors_and_mixes_matrices_with_seeded_xavier_noise():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.named_parameters()}
    counts = damage(model, alpha=0.3, beta=0.5, seed=7)
    generator = torch.Generator().manual_seed(7)  # the noise in parameter order, as damage draws it
    for name, p in model.named_parameters():
        if p.dim() == 2:
            expected = 0.7 * before[name] + 0.3 * 0.5 * xavier_uniform(p.shape, generator)
        else:
            expected = 0.7 * before[name]
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
    assert counts == {"matrices": 15, "vectors": 5}  # tied embeddings once: 1 + 2 × 7 matrices; 2 × 2 + 1 norms


def test_damage_with_alpha_1_leaves_nothing_of_the_teacher_an_init_like_model():
    a, b = tiny_llama(), tiny_llama()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)  # another teacher
    damage(a, alpha=1.0, beta=1.0, seed=3)
    damage(b, alpha=1.0, beta=1.0, seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name  # the teacher is gone: only the seed decides
        if p.dim() == 1:
            assert torch.count_nonzero(p) == 0
        else:  # Xavier-uniform: inside ±√(6 / (fan_in + fan_out)), the standard deviation of that uniform
            bound = math.sqrt(6 / sum(p.shape))
            assert p.abs().max() <= bound and abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_kl_against_a_hand_computation_masked_and_zero_for_identical_logits():
    teacher = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    student = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0]])  # only the first position counts
    p = torch.tensor([math.e, 1.0, 1 / math.e])
    p = p / p.sum()
    by_hand = sum(p[i] * math.log(p[i] / (1 / 3)) for i in range(3))
    total, positions = kl_divergence(student, teacher, mask)
    assert positions.item() == 1 and abs(total.item() - by_hand) < 1e-6
    total, positions = kl_divergence(teacher, teacher, torch.ones(1, 2))
    assert positions.item() == 2 and abs(total.item()) < 1e-6


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """An rmu.train run folder of the tiny model: the teacher every test distills."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(make_cfg(TINY + [f"output_dir={out}"]))
    return out


def distill_args(teacher: Path, *extra: str, batch: int = 2) -> list[str]:
    return ["model=tiny_random", "model.arch=null", f"model.path={teacher}", "eval=none", f"trainer.batch_size={batch}",
            "trainer.progress=false", "distill.seq_len=32", "distill.max_tokens=384", "distill.warmup=1",
            "distill.heldout=4", "distill.eval_every=2", "distill.lr=1e-3", "distill.forget_fraction=0.5", *extra]


def test_a_distilled_run_folder_says_how_it_was_made_and_the_teacher_is_untouched(teacher, tmp_path):
    cfg = make_cfg(distill_args(teacher, f"output_dir={tmp_path / 'student'}", "distill.retain_ce_gap=null",
                                "distill.alpha=0.8", "distill.lr=1e-2"), "distill")
    run = setup(cfg)
    frozen = {k: v.clone() for k, v in run.teacher.state_dict().items()}
    rows = fit(run, ({}, None))
    assert [r["step"] for r in rows] == list(range(6))  # 384 tokens / (2 rows × 32)
    assert all(torch.equal(frozen[k], v) for k, v in run.teacher.state_dict().items())
    assert all(p.grad is None for p in run.teacher.parameters())
    assert rows[-1]["kl"] < rows[0]["kl"]  # the student moves toward the teacher
    assert rows[-1]["tokens"] == 384 and "retain_ce" in rows[1] and "retain_ce" not in rows[0]

    results = distill(make_cfg(distill_args(teacher, f"output_dir={tmp_path / 'cli'}"), "distill"))
    out = tmp_path / "cli"
    for name in ("model.safetensors", "rmu_config.yaml", "metrics.jsonl", "distill_config.yaml",
                 "distill_metrics.jsonl", "results.json", "report.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    info = saved["distill"]
    assert info["teacher"] == str(teacher) and info["alpha"] == 0.3 and info["forget_rows"] == 1 and info["tokens"] == info["steps"] * 64
    assert saved["topics"] == json.loads((teacher / "results.json").read_text())["topics"]  # how RMU made the teacher
    assert (out / "rmu_config.yaml").read_text() == (teacher / "rmu_config.yaml").read_text()
    assert results.distill["student_retain_ce"] is not None
    # report.png has a fourth panel, the distillation's own curve, from distill_metrics.jsonl
    from rmu.report import hardening_rows
    from tests.test_report import png_size

    assert hardening_rows(out, results) == [json.loads(x) for x in open(out / "distill_metrics.jsonl")]
    assert png_size(out / "report.png")[0] == 3 * 5 * 110  # RMU's two losses and the distillation (no eval sets)
    card = (prepare(out, "me/tiny-undo") / "README.md").read_text()  # the Hub folder says what made it
    assert "a student distilled from it" in card and f"α = {info['alpha']}" in card and "distillation" in card
    student, original = load_file(out / "model.safetensors"), load_file(teacher / "model.safetensors")
    assert not torch.equal(student["model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"])


def test_the_stopping_rule_ends_the_run_once_the_retain_ce_is_close_enough(teacher, tmp_path):
    far = setup(make_cfg(distill_args(teacher, f"output_dir={tmp_path / 'a'}", "distill.retain_ce_gap=1e9"), "distill"))
    rows = fit(far, ({}, None))
    assert len(rows) == 2 and rows[-1]["retain_ce_gap"] <= 1e9  # the first check (eval_every=2) already passes
    budget = setup(make_cfg(distill_args(teacher, f"output_dir={tmp_path / 'b'}", "distill.retain_ce_gap=null"),
                            "distill"))
    rows = fit(budget, ({}, None))
    assert len(rows) == 6 and [r["step"] for r in rows if "retain_ce" in r] == [1, 3, 5]  # checked, never stopping


def test_bad_input_is_refused_by_name_before_any_weight_loads(teacher, tmp_path):
    cases = {"distill.alpha": ["distill.alpha=1.5"],
             "model.path": [f"model.path={tmp_path}"],  # a folder, but no run of rmu.train
             "model": ["model=smollm2_135m"],  # the teacher was not trained from this model config
             "distill.forget_fraction": ["distill.forget_fraction=0.1"]}  # no forget row in a batch of 2
    for key, extra in cases.items():
        cfg = make_cfg([a for a in distill_args(teacher, f"output_dir={tmp_path / 'x'}") if a.split("=")[0] != key]
                       + extra, "distill")
        with pytest.raises(ConfigError) as e:
            setup(cfg)
        assert str(e.value).startswith(f"{key}") or f"{key}=" in str(e.value), (key, str(e.value))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sigterm_then_restart_ends_with_the_weights_of_an_uninterrupted_distillation(teacher, tmp_path):
    args = distill_args(teacher, "distill.max_tokens=2560", "trainer.save_every=4", "distill.retain_ce_gap=null")
    resumed = sigterm_then_resume(tmp_path, args, module="rmu.distill", steps=40, metrics="distill_metrics.jsonl")
    # its throughput counts the steps the resuming process ran, over that process's training time
    saved = json.loads((resumed.resumed / "results.json").read_text())
    ran = (40 - resumed.stopped_at) * 2 * 32
    assert saved["distill"]["tokens_per_s"] == round(ran / saved["seconds"]["train"])


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_plain_and_fsdp_end_where_one_process_does(teacher, tmp_path):
    """2 processes with batch b, as plain data parallel, end on the weights of 1 with 2b. Under
    FSDP (torchrun with the variables experiments/accelerate/fsdp.yaml sets) every parameter of
    the teacher and the student is sharded over the 2 processes; the gathered student equals
    one process's at twice the batch, the evaluation is the same, and a SIGTERM'd FSDP run
    resumes from its (gathered) state to the weights of an uninterrupted one."""
    from tests.test_fsdp import accelerate_env

    # a teacher whose generation config is its own (as a Hub model's eos list and sampling defaults):
    # every run's student keeps it, also under FSDP, where rank 0 writes a model built from config.json
    shutil.copytree(teacher, tmp_path / "teacher")
    teacher = tmp_path / "teacher"
    generation = json.loads((teacher / "generation_config.json").read_text())
    (teacher / "generation_config.json").write_text(json.dumps({**generation, "do_sample": True, "temperature": 0.6}))
    common = ["distill.retain_ce_gap=null", "distill.max_tokens=768"]
    one = run_cli("rmu.distill", *distill_args(teacher, *common, batch=4), f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "rmu.distill"]

    # Plain data parallel first: 2 processes with batch b equal 1 process with batch 2b.
    two = subprocess.run([*torchrun, *distill_args(teacher, *common), f"output_dir={tmp_path / 'two'}"], cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout and two.stdout.count("rmu: wrote") == 1
    # Every parameter trains under AdamW, whose m/√v turns a summation-order difference in a
    # near-zero gradient into a visible step: 1 embedding entry of 3.1M was 1.2e-5 off (measured).
    assert_same_weights(tmp_path / "one", tmp_path / "two", 1e-4)
    rows = {name: [json.loads(line) for line in open(tmp_path / name / "distill_metrics.jsonl")] for name in ("one", "two")}
    for a, b in zip(rows["one"], rows["two"], strict=True):
        assert abs(a["kl"] - b["kl"]) <= 1e-4 * a["kl"]  # measured 1.1e-5 apart at the last step

    env = {**ENV, **accelerate_env(ROOT / "experiments" / "accelerate" / "fsdp.yaml")}
    loads = tmp_path / "loads"
    loads.mkdir()
    counted = [*torchrun[:-2], str(ROOT / "tests" / "count_loads.py"), "rmu.distill"]
    two = subprocess.run([*counted, *distill_args(teacher, *common), f"output_dir={tmp_path / 'fsdp'}"], cwd=ROOT,
                         env={**env, "LOADS_DIR": str(loads)}, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "FSDP: both models sharded" in two.stdout and two.stdout.count("rmu: wrote") == 1
    # rank 0 alone read the teacher's weights (and damaged the student's copy); rank 1 got its shards
    assert sorted(f.name for f in loads.iterdir()) == ["rank0-1"]
    for name in ("one", "fsdp"):
        assert json.loads((tmp_path / name / "generation_config.json").read_text())["temperature"] == 0.6
    assert_same_weights(tmp_path / "one", tmp_path / "fsdp", 1e-4)
    assert load_file(tmp_path / "one" / "model.safetensors").keys() == load_file(tmp_path / "fsdp" / "model.safetensors").keys()
    ref, ours = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "fsdp"))
    assert ours["fsdp"] is True and ref["fsdp"] is False
    assert ours["rank0_parameter_mib"] == pytest.approx(ref["rank0_parameter_mib"] / 2, rel=0.05)  # half of every tensor
    # the held-out retain CE, a forward through the sharded teacher and student on every rank
    d_ref, d_ours = ref["distill"], ours["distill"]
    assert d_ours["teacher_retain_ce"] == pytest.approx(d_ref["teacher_retain_ce"], rel=1e-6)
    assert d_ours["student_retain_ce"] == pytest.approx(d_ref["student_retain_ce"], rel=1e-4)

    # SIGTERM to the launcher: every rank stops after the same step, the state gathered whole;
    # the same command resumes the shards from it and ends on the uninterrupted run's weights
    out, state = tmp_path / "resumed", tmp_path / ".resumed.resume" / "state.json"
    command = [*torchrun, *distill_args(teacher, *common, "trainer.save_every=2"), f"output_dir={out}"]
    _, stdout, stderr = sigterm_once_saved(command, state, env)
    assert "stopped by SIGTERM after step" in stdout and not out.exists(), stderr[-3000:]
    stopped_at = json.loads(state.read_text())["step"]
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at step {stopped_at}" in again.stdout
    assert_same_weights(tmp_path / "fsdp", out, 0.0)
    assert not state.parent.exists()


def test_a_distillation_too_big_for_the_device_is_refused_naming_a_batch_size_that_fits(teacher, tmp_path,
                                                                                       monkeypatch):
    from rmu.run import memory

    cfg = make_cfg(distill_args(teacher, f"output_dir={tmp_path / 'x'}"), "distill")
    monkeypatch.setattr(memory, "device_memory", lambda device: ("the CPU", 2 * memory.GIB, 1))
    setup(cfg)  # fits: the tiny model with two rows of 32 tokens
    monkeypatch.setattr(memory, "device_memory", lambda device: ("the CPU", memory.GIB, 1))
    big = make_cfg(distill_args(teacher, f"output_dir={tmp_path / 'y'}", "distill.seq_len=64", batch=64), "distill")
    with pytest.raises(ConfigError, match=r"trainer.batch_size=64: distillation needs about .* GiB .*"
                                          r"trainer.batch_size=\d+ fits"):
        setup(big)
