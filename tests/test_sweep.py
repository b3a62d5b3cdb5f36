"""Hydra sweeps: one folder per job, the summary table, and sweeps submitted to a real SLURM.

The SLURM test starts a one-machine cluster with experiments/slurm/cluster.sh (munged,
slurmctld, slurmd on 127.0.0.1), submits the sweep through `sbatch` (hydra/launcher=slurm)
and stops exactly the daemons it started. It needs Debian's slurmctld, slurmd and munge
and root; .ci/run installs them and sets RMU_TEST_REQUIRE_SLURM=1, so there a missing
SLURM fails the test. On a machine without them the test is skipped, and the skip says why.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmu.train import train
from tests.conftest import ROOT, TINY, assert_same_weights, free_port_pair, make_cfg, run_cli

CLUSTER = ROOT / "experiments" / "slurm" / "cluster.sh"
SWEEP = TINY + ["eval=bundled"]  # the bundled eval sets: accuracies in the summary
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_each_job_writes_its_own_folder_and_the_summary_lists_failures(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # layer 9 does not exist in the 4-layer model: that job fails, the other one still runs.
    proc = run_cli("rmu.train", "-m", *SWEEP, "rmu.alpha=10", "rmu.layer_id=2,9", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode != 0  # Hydra reports the failed job at the end
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".")) == [
        "0", "multirun.yaml", "summary.csv", "summary.md"]
    results = json.loads((sweep_dir / "0" / "results.json").read_text())
    assert results["output_dir"] == str(sweep_dir / "0") and results["layer_id"] == 2

    ok, failed = rows(sweep_dir)
    assert (ok["job"], ok["status"], ok["output_dir"]) == ("0", "completed", str(sweep_dir / "0"))
    forget = [e["unlearned"]["acc"] for e in results["eval"].values() if e["role"] == "forget"]
    assert float(ok["forget_acc"]) == pytest.approx(sum(forget) / len(forget))
    assert float(ok["retain_acc"]) == pytest.approx(results["eval"]["general"]["unlearned"]["acc"])
    assert float(ok["seconds"]) == pytest.approx(results["seconds"]["total"], abs=0.1)
    assert failed["status"] == "failed" and failed["forget_acc"] == ""
    assert failed["error"].startswith("ConfigError: rmu.layer_id=9: must be in 0..3")

    table = (sweep_dir / "summary.md").read_text()
    assert "| 0 | rmu.layer_id=2 | completed |" in table  # shared overrides are listed once, above the table
    assert "| 1 | rmu.layer_id=9 | failed: ConfigError: rmu.layer_id=9" in table
    assert "Shared overrides: debug=tiny" in table


@pytest.mark.slow
def test_output_dir_given_on_the_command_line_is_kept_in_a_sweep(tmp_path):
    proc = run_cli("rmu.train", "-m", *TINY, "rmu.alpha=10,20", f"output_dir={tmp_path}/a${{rmu.alpha}}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["output_dir"] for r in rows(tmp_path / "sweep")] == [str(tmp_path / "a10"), str(tmp_path / "a20")]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [  # no empty job folders
        ".jobs", ".rmu-output.json", ".summary.lock", "multirun.yaml", "summary.csv", "summary.md"]


def slurm_available() -> str | None:
    """None if a cluster can be started here, else why not."""
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not installed (as root: bash experiments/slurm/cluster.sh install)"
    if os.geteuid() != 0:
        return "not root (experiments/slurm/cluster.sh starts munged, slurmctld and slurmd as root)"
    return None


@pytest.fixture
def launcher(tmp_path):
    """(hydra/launcher overrides, env, daemon pids) for a started one-machine SLURM."""
    why_not = slurm_available()
    if why_not:
        if os.environ.get("RMU_TEST_REQUIRE_SLURM") == "1":
            pytest.fail(f"RMU_TEST_REQUIRE_SLURM=1 but no SLURM here: {why_not}")
        pytest.skip(f"no SLURM here: {why_not}")
    env = {**os.environ, "RMU_SLURM_DIR": str(tmp_path / "slurm"), "RMU_SLURM_PORT": str(free_port_pair())}
    start = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    pids = [int(p) for p in (tmp_path / "slurm" / "pids").read_text().split()]
    env["SLURM_CONF"] = start.stdout.strip().split("=", 1)[1]
    try:
        yield (["hydra/launcher=slurm", "hydra.launcher.partition=local", "hydra.launcher.gpus_per_node=null",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.tasks_per_node=2"], env, pids)
    finally:
        stop = subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        for pid in pids:  # exactly the daemons it started are gone
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_a_two_job_sweep_through_slurm_with_a_requeue(tmp_path, launcher):
    overrides, env, pids = launcher
    sweep_dir = tmp_path / "sweep"
    steps = ["trainer.batch_size=2", "trainer.max_steps=600", "trainer.save_every=100"]
    proc = subprocess.Popen([sys.executable, "-m", "rmu.train", "-m", *overrides, *SWEEP, *steps, "rmu.alpha=10,100",
                             f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env={**os.environ, **OFFLINE, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    requeued = None
    # Preempt a job once it has saved its first state: `scontrol requeue` SIGTERMs its tasks,
    # they save at the end of the step and exit; SLURM starts the job again and it resumes.
    deadline = time.time() + 600  # a wait, not a timing: the cluster shares the machine with the other tests
    while requeued is None and time.time() < deadline and proc.poll() is None:
        requeued = next((n for n in (0, 1) if (sweep_dir / f".{n}.resume" / "state.json").exists()), None)
        time.sleep(0.1)
    assert requeued is not None, "no job saved a training state"
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
    subprocess.run(["scontrol", "requeue", next(j for j in jobs if j.endswith(f"_{requeued}"))], env=env, check=True)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]

    table = rows(sweep_dir)
    assert [(r["job"], r["status"]) for r in table] == [("0", "completed"), ("1", "completed")]
    for row, alpha in zip(table, (10, 100)):
        assert row["overrides"].endswith(f"rmu.alpha={alpha}")
        results = json.loads((Path(row["output_dir"]) / "results.json").read_text())
        assert Path(row["output_dir"]) == sweep_dir / row["job"] and results["alpha"] == [alpha, alpha]
        assert float(row["forget_acc"]) == pytest.approx(
            sum(e["unlearned"]["acc"] for e in results["eval"].values() if e["role"] == "forget") / 2)
    assert "| 0 | rmu.alpha=10 | completed |" in (sweep_dir / "summary.md").read_text()
    assert not list(sweep_dir.glob(".*.resume"))  # the states are gone once the models are written

    # What SLURM ran: sbatch scripts of 2 tasks on partition `local`; the requeued job stopped and resumed.
    script = next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --partition=local" in script and "#SBATCH --ntasks-per-node=2" in script
    log = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob(f"*_{requeued}/*_0_log.out"))
    assert "rmu: stopped by SIGTERM after step" in log and "rmu: resuming at step" in log, log[-3000:]
    results = json.loads((sweep_dir / str(requeued) / "results.json").read_text())
    assert results["processes"] == 2
    # 2 ranks × batch 2, preempted and requeued mid-way, end with the weights of one uninterrupted
    # process with batch 4 on the same data.
    alpha = (10, 100)[requeued]
    cfg = make_cfg(TINY + ["trainer.batch_size=4", "trainer.max_steps=600", f"rmu.alpha={alpha}",
                            f"output_dir={tmp_path / 'one'}"])
    train(cfg)
    assert_same_weights(tmp_path / "one", sweep_dir / str(requeued), 1e-5)
    assert subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip() == ""


@pytest.mark.slow
def test_a_two_job_sweep_through_submitit_local(tmp_path):
    # hydra/launcher=submitit_local: the same submitit job files as SLURM, as local processes.
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("rmu.train", "-m", "hydra/launcher=submitit_local", *SWEEP, "rmu.alpha=10,100",
                   f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = rows(sweep_dir)
    assert [(r["job"], r["status"]) for r in table] == [("0", "completed"), ("1", "completed")]
    for row, alpha in zip(table, (10, 100)):
        results = json.loads((sweep_dir / row["job"] / "results.json").read_text())
        assert row["output_dir"] == str(sweep_dir / row["job"]) and results["alpha"] == [alpha, alpha]
    assert list((sweep_dir / ".submitit").glob("*/*_submitted.pkl"))  # submitit ran the jobs


def test_the_slurm_launcher_config_composes_onto_submitit():
    from hydra import compose, initialize_config_dir

    from rmu.config.schema import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1, 1)
    assert launcher.timeout_min == 240 and launcher.max_num_timeout == 0
    assert [c._target_ for c in cfg.hydra.callbacks.values()] == ["rmu.run.sweep.SweepSummary"]
