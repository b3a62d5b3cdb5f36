"""Several processes (gloo on CPU) through the real launchers, and preemption / resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rmu.config.checks import check_fsdp
from rmu.errors import ConfigError

from tests.conftest import ENV, ROOT, RUN, assert_same_weights, free_port_pair, run_cli, sigterm_then_resume


def launch(launcher: list[str], *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, "-m", "rmu.train", *overrides], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    evaluated = [o for o in RUN if o != "eval=none"]  # rank 0 evaluates alone, the others wait for it
    one = run_cli("rmu.train", *evaluated, "trainer.batch_size=4", f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    bin_dir = Path(sys.executable).parent
    # accelerate launch starts CPU processes only through mpirun; on GPUs it starts them with
    # torchrun (experiments/accelerate/), which is what runs here.
    runs = {"torchrun": [str(bin_dir / "torchrun"), "--nproc_per_node", "2"]}
    for name, launcher in runs.items():
        proc = launch(launcher, *evaluated, "trainer.batch_size=2", f"output_dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("rmu: wrote") == 1 and "2 processes" in proc.stdout  # only rank 0 writes
        assert_same_weights(tmp_path / "one", tmp_path / name, 1e-5)
        ours = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        ref = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
        for a, b in zip(ours, ref, strict=True):
            assert abs(a["forget_loss"] - b["forget_loss"]) <= 1e-5 * b["forget_loss"]
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["processes"] == 2
        assert results["eval"] == json.loads((tmp_path / "one" / "results.json").read_text())["eval"]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left over


@pytest.mark.distributed
@pytest.mark.slow
def test_robust_stages_on_two_processes_end_where_one_process_does(tmp_path):
    """Every stage that runs on several processes (rmu/unlearn/robust.py): fresh targets, the latent
    adversary, meta-unlearning, normalisation and masking, with the gradients summed over
    ranks before they are combined."""
    robust = ["robust.targets=sample", "robust.lat_eps=0.2", "robust.meta_steps=1", "robust.meta_lr=1e-3",
              "robust.normalize=true", "robust.mask=true", "robust.mask_ema=0.5"]
    one = run_cli("rmu.train", *RUN, *robust, "trainer.batch_size=4", f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
    two = launch(torchrun, *RUN, *robust, "trainer.batch_size=2", f"output_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout
    assert_same_weights(tmp_path / "one", tmp_path / "two", 1e-5)
    ours = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    ref = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    for a, b in zip(ours, ref, strict=True):
        assert abs(a["forget_loss"] - b["forget_loss"]) <= 1e-5 * b["forget_loss"]
        assert a["mask_kept"] == pytest.approx(b["mask_kept"], abs=1e-3)


@pytest.mark.slow
def test_sigterm_then_restart_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    long = [o for o in RUN if not o.startswith("trainer.max_steps")] + [
        "trainer.max_steps=200", "trainer.batch_size=4", "trainer.save_every=20"]
    sigterm_then_resume(tmp_path, long)  # tests/conftest.py: bit-identical weights, every step's row


def test_a_resume_state_of_another_config_is_refused(tmp_path):
    out = tmp_path / "run"
    state_dir = tmp_path / ".run.resume"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({"format": 2, "fingerprint": "something-else",
                                                      "tensors": "tensors-2.pt"}))
    proc = run_cli("rmu.train", *RUN, "trainer.batch_size=2", f"output_dir={out}")
    assert proc.returncode != 0 and "holds the state of a run with a different config" in proc.stderr
    assert (state_dir / "state.json").exists()  # never deleted behind the user's back


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for f in sorted((ROOT / "experiments" / "accelerate").glob("*.yaml")):
        kinds[f.stem] = load_config_from_file(str(f)).distributed_type.value
    assert kinds == {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP"}, kinds


def accelerate_env(config: Path) -> dict:
    """The FSDP variables the trainer reads (rmu/run/distributed.py `Ranks`), from the documented
    keys of an accelerate config file, as `accelerate launch --config_file <config>` sets them."""
    cfg = yaml.safe_load(config.read_text())
    fsdp = cfg.get("fsdp_config", {})
    return {"ACCELERATE_USE_FSDP": str(cfg["distributed_type"] == "FSDP").lower(),
            "FSDP_VERSION": str(fsdp["fsdp_version"]),
            "FSDP_RESHARD_AFTER_FORWARD": str(fsdp["fsdp_reshard_after_forward"]).lower(),
            "FSDP_OFFLOAD_PARAMS": str(fsdp["fsdp_offload_params"]).lower()}


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_shards_the_frozen_layers_and_ends_where_one_process_does(tmp_path):
    # 6 layers, span 2..3 trained: layers 0, 1, 4, 5 are sharded over the 2 ranks.
    six = [o for o in RUN if o != "eval=none" and not o.startswith("rmu.layer_id")] + [
        "model.arch.num_hidden_layers=6", "rmu.layer_id=3", "rmu.update_layers=[2,3]", "harness.tasks=[]"]
    one = run_cli("rmu.train", *six, "trainer.batch_size=4", f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    env = accelerate_env(ROOT / "experiments" / "accelerate" / "fsdp.yaml")
    assert env == {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
                   "FSDP_OFFLOAD_PARAMS": "false"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "rmu.train",
                           *six, "trainer.batch_size=2", f"output_dir={tmp_path / 'fsdp'}"], cwd=ROOT,
                          env={**ENV, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP: 4 frozen decoder layers sharded over 2 processes" in proc.stdout

    assert_same_weights(tmp_path / "one", tmp_path / "fsdp", 1e-5)  # the gathered checkpoint: all 6 layers
    ref = json.loads((tmp_path / "one" / "results.json").read_text())
    ours = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert ours["fsdp"] is True and ref["fsdp"] is False
    # Eval forwards through the sharded layers give the unsharded model's answers.
    assert ours["eval"] == ref["eval"]
    # Rank 0 held half of each sharded layer and all of the rest.
    weights = load_file(tmp_path / "one" / "model.safetensors")
    sharded = sum(t.numel() * 4 for k, t in weights.items() if k.split(".")[2:3] in (["0"], ["1"], ["4"], ["5"]))
    assert ref["rank0_parameter_mib"] - ours["rank0_parameter_mib"] == pytest.approx(sharded / 2 / 2 ** 20, abs=2e-3)


def test_what_fsdp_does_not_cover_is_refused_before_loading(tiny_cfg):
    with pytest.raises(ConfigError, match="adapter='lora': LoRA is not supported under FSDP"):
        check_fsdp(tiny_cfg("adapter=lora"))
    with pytest.raises(ConfigError, match=r"harness.tasks=\['rmu_chem'\]: lm-eval does not run on a sharded model"):
        check_fsdp(tiny_cfg("harness.tasks=[rmu_chem]"))
    check_fsdp(tiny_cfg())


def _one_rank_goes_non_finite(rank: int, port: int, out_dir: str, results) -> None:
    """A rank of a 2-process run (gloo): the trainer's setup, then one step in which only
    rank 1's loss is non-finite, then a rank-0-only write that fails."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from rmu.data import batch_texts, tokenize
    from rmu.errors import RankFailed, TrainingError
    from rmu.unlearn.recipe import setup
    from tests.conftest import TINY, make_cfg

    run = setup(make_cfg(TINY + [f"output_dir={out_dir}"]))
    plan, ranks = run.plan, run.ranks
    control = run.controls[0].clone()
    if rank == 1:
        control.fill_(float("inf"))  # only this rank's forget loss is infinite
    forget = tokenize(run.tokenizer, ranks.shard(batch_texts(plan.forget[0], 0, 4)), 32, run.device)
    retain = tokenize(run.tokenizer, ranks.shard(batch_texts(plan.retain[0], 0, 4)), 32, run.device)
    try:
        run.step(forget, retain, control, 100.0, 0)
        results.put((rank, "step", "no error"))
    except TrainingError as e:
        results.put((rank, "step", f"TrainingError: {e}"))

    def write():
        raise OSError(28, "No space left on device")
    try:
        ranks.on_main(write)
        results.put((rank, "write", "no error"))
    except (OSError, RankFailed) as e:
        results.put((rank, "write", f"{type(e).__name__}: {e}"))
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_a_failure_on_one_rank_stops_every_rank_with_the_same_message(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port_pair()
    procs = [ctx.Process(target=_one_rank_goes_non_finite, args=(r, port, str(tmp_path / "out"), results))
             for r in (0, 1)]
    for p in procs:
        p.start()
    got = {}
    for _ in range(4):
        rank, what, message = results.get(timeout=180)  # a hang in a collective fails here, not forever
        got[rank, what] = message
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # Rank 0's own loss was finite; the decision reads the sums over ranks, so both stop alike.
    assert got[0, "step"] == got[1, "step"] and got[0, "step"].startswith("TrainingError: non-finite loss at step 0")
    # A failed rank-0-only write reaches the other rank as a RankFailed naming the cause.
    assert got[0, "write"] == "OSError: [Errno 28] No space left on device"
    assert got[1, "write"] == "RankFailed: rank 0 failed, so this rank stops too: OSError: [Errno 28] No space left on device"
    assert not (tmp_path / "out").exists()
