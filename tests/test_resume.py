"""Preemption and resume (rmu/run/resume.py, through the run folder rmu/run/folder.py): a
SIGTERM saves the state and the same command continues to the weights of an uninterrupted
run; a state of another config is refused and kept. (The fault cases are in test_faults.py.)"""

import json

import pytest

from tests.conftest import RUN, run_cli, sigterm_then_resume

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


def test_a_state_saved_on_another_number_of_processes_is_refused(tmp_path):
    """trainer.batch_size is per process: resuming on 1 process what 2 began would change the
    global batch of the remaining steps, silently. The same count resumes."""
    from types import SimpleNamespace

    import torch
    from omegaconf import OmegaConf

    from rmu.errors import ResumeError
    from rmu.run.resume import Resume

    cfg = OmegaConf.create({"output_dir": str(tmp_path / "run"), "seed": 0, "trainer": {"progress": False}})
    w = torch.nn.Parameter(torch.ones(3))
    updater = SimpleNamespace(optimizer=torch.optim.AdamW([w]), masters=None, scale=None, good_steps=0)
    Resume(cfg, processes=2).save(4, [w], updater, rows=[])
    with pytest.raises(ResumeError, match=r"run on 2 process\(es\), this run has 1.*resume on 2 \(accelerate launch"):
        Resume(cfg, processes=1).load()
    assert Resume(cfg, processes=2).load()["step"] == 4
    manifest = tmp_path / ".run.resume" / "state.json"
    assert manifest.exists()  # refused, not deleted
    older = json.loads(manifest.read_text())
    del older["processes"]  # a state saved before the count was kept: not known, resumed
    manifest.write_text(json.dumps(older))
    assert Resume(cfg, processes=1).load()["step"] == 4
