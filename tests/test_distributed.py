"""Several processes (rmu/run/distributed.py; gloo on CPU) through the real launchers: they
end where one process with the whole batch does, and a failure on one rank stops every rank.
(FSDP: test_fsdp.py; preemption and resume: test_resume.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ENV, ROOT, RUN, assert_same_weights, free_port_pair, run_cli


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
    # The disruption mask keeps an entry by the sign of the forget and retain gradients: where
    # one is ~0, summing it over two ranks instead of one batch can flip the sign, and that entry
    # then moves by a whole AdamW step or not at all. Measured: 1 entry of 8192. Every other
    # entry must agree to 1e-5.
    assert_same_weights(tmp_path / "one", tmp_path / "two", 1e-5, flipped=0.001)
    ours = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    ref = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    for a, b in zip(ours, ref, strict=True):
        assert abs(a["forget_loss"] - b["forget_loss"]) <= 1e-5 * b["forget_loss"]
        assert a["mask_kept"] == pytest.approx(b["mask_kept"], abs=1e-3)


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for f in sorted((ROOT / "experiments" / "accelerate").glob("*.yaml")):
        kinds[f.stem] = load_config_from_file(str(f)).distributed_type.value
    assert kinds == {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP"}, kinds


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
