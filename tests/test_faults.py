"""Fault injection through the real command line: each row of the README's "Nothing lost"
table, driven as it happens on a cluster — SIGTERM / SIGKILL at named points
(RMU_PAUSE_AT, rmu/run/pause.py), a read-only folder, an empty mount point, a full disk
(tests/os_faults.py), two runs at once, planted and damaged state files, custom model
code, bad bytes. Each asserts the exit code, a message naming the cause, that nothing
outside rmu's own folders changed, and after a resume the weights of an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rmu.run.checkpoint import MARKER
from rmu.errors import ResumeError
from rmu.run.resume import Resume, fingerprint
from tests.conftest import ROOT, TINY, assert_same_weights, make_cfg, run_cli

pytestmark = pytest.mark.slow  # every test here runs the CLI in subprocesses
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}
LOADED = "rmu: topics"  # printed once the model has loaded: its absence proves an early failure


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: what must be unchanged after a refusal."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def faulty(module: str, *overrides: str, cwd: Path = ROOT, **faults: str) -> subprocess.CompletedProcess:
    """The command under tests/os_faults.py with FAULT_<name>=<value> set."""
    env = {**ENV, **{f"FAULT_{k.upper()}": str(v) for k, v in faults.items()}}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "os_faults.py"), module, *overrides], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def refused(proc, *phrases: str):
    """A clear refusal: exit 1, one `error:` line holding every phrase, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in proc.stderr, (phrase, proc.stderr[-3000:])


class Paused:
    """A command held at RMU_PAUSE_AT=<point> until it is signalled (or `seconds` pass)."""

    def __init__(self, *overrides: str, point: str, cwd: Path = ROOT, seconds: int = 120, module="rmu.train"):
        env = {**ENV, "RMU_PAUSE_AT": point, "RMU_PAUSE_SECONDS": str(seconds)}
        self.proc = subprocess.Popen([sys.executable, "-m", module, *overrides], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err, self.reached = [], threading.Event()
        self.reader = threading.Thread(target=self._read, args=(point,), daemon=True)
        self.reader.start()

    def _read(self, point):
        for line in self.proc.stderr:
            self.err.append(line)
            if line.strip() == f"rmu-pause: {point}":
                self.reached.set()

    def wait(self):
        assert self.reached.wait(300), "".join(self.err)[-3000:]
        return self

    def kill(self, sig) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out = self.proc.stdout.read()
        self.proc.wait(300)
        self.reader.join(30)
        return self.proc.returncode, out, "".join(self.err)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must match."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_overwrite_never_replaces_the_working_folder_or_what_rmu_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("three years of work")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2")
    before = snapshot(tmp_path)
    refused(run_cli("rmu.train", *TINY, "output_dir=.", "overwrite=true", cwd=tmp_path), "is the working folder")
    refused(run_cli("rmu.train", *TINY, "output_dir=data", "overwrite=true", cwd=tmp_path),
            "was not written by rmu", "x.csv")
    assert snapshot(tmp_path) == before and hidden(tmp_path) == []


def test_export_never_replaces_a_folder_holding_its_source_checkpoint(tmp_path, straight):
    par = tmp_path / "par"
    shutil.copytree(straight, par / "run")
    (par / "notes.md").write_text("mine")
    before = snapshot(tmp_path)
    refused(run_cli("rmu.export", f"checkpoint={par / 'run'}", f"output_dir={par}", "overwrite=true",
                    "repo_id=me/model"), "contains", "which this command reads")
    assert snapshot(tmp_path) == before


def test_a_read_only_folder_a_mount_point_and_a_small_disk_fail_before_the_model_loads(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = faulty("rmu.train", *TINY, f"output_dir={ro / 'run'}", readonly=ro)
    refused(proc, f"output_dir={ro / 'run'}: cannot write in {ro}", "Read-only file system")
    assert LOADED not in proc.stdout
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = faulty("rmu.train", *TINY, f"output_dir={scratch}", mount=scratch)
    refused(proc, "is a mount point", f"{scratch / 'run'}")
    assert LOADED not in proc.stdout
    proc = faulty("rmu.train", *TINY, f"output_dir={tmp_path / 'run'}", free_bytes=1_000_000)
    refused(proc, "needs about 0.01 GiB", "has 0.00 GiB free", "M parameters in float32")
    assert LOADED not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro", "scratch"] and not any(scratch.iterdir())


@pytest.mark.parametrize("point", ["step-4", "eval_after", "publish"])  # step-4: the last step
def test_sigterm_after_training_keeps_the_trained_state_and_the_rerun_only_evaluates(tmp_path, straight, point):
    out = tmp_path / "run"
    rc, stdout, stderr = Paused(*TINY, f"output_dir={out}", point=point).wait().kill(signal.SIGTERM)
    assert rc == 143, stderr[-3000:]
    assert "after training, before the output was written" in stdout and f"output_dir={out}" in stdout
    state = json.loads((tmp_path / ".run.resume" / "state.json").read_text())
    assert state["step"] == 4 and not out.exists()
    again = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at step 4" in again.stdout
    assert_same_weights(straight, out, 0.0)
    assert [json.loads(r)["step"] for r in open(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert hidden(tmp_path) == []  # the state, the lock and the temporary folder are gone


def test_the_same_command_continues_an_interrupted_run_with_the_default_timestamped_folder(tmp_path, straight):
    rc, stdout, stderr = Paused(*TINY, point="step-2", cwd=tmp_path).wait().kill(signal.SIGTERM)
    assert rc == 143, stderr[-3000:]
    assert "stopped by SIGTERM after step 2" in stdout
    [state] = (tmp_path / "outputs").glob(".rmu-*.resume")
    name = state.name[1:].removesuffix(".resume")
    time.sleep(1.1)  # the rerun's own timestamp differs
    again = run_cli("rmu.train", *TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing the interrupted run {tmp_path / 'outputs' / name}" in again.stdout
    assert "resuming at step 2" in again.stdout
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [name]
    assert_same_weights(straight, tmp_path / "outputs" / name, 0.0)


def state_files(folder: Path, cfg, tensors: bytes) -> None:
    """A resume folder whose state.json is valid and points at `tensors`."""
    folder.mkdir()
    (folder / "tensors-2.pt").write_bytes(tensors)
    (folder / "state.json").write_text(json.dumps({
        "format": 2, "fingerprint": fingerprint(cfg), "step": 2, "tensors": "tensors-2.pt",
        "sha256": hashlib.sha256(tensors).hexdigest(), "scale": 1.0, "good_steps": 0, "rows": [], "before": None}))


class Planted:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "code ran"))


def test_a_planted_pickle_as_resume_state_is_refused_before_the_model_loads_and_never_runs(tmp_path):
    out, sentinel = tmp_path / "run", tmp_path / "pwned"
    state_files(tmp_path / ".run.resume", make_cfg(TINY + [f"output_dir={out}"]),
                pickle.dumps({"updated": Planted(sentinel)}))
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}")
    refused(proc, "tensors-2.pt is not a state rmu can read", "it was not loaded", "to start over")
    assert not sentinel.exists() and LOADED not in proc.stdout
    assert (tmp_path / ".run.resume" / "tensors-2.pt").exists()  # never deleted behind the user's back


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "older_rmu"])
def test_a_damaged_resume_state_names_the_file_and_how_to_start_over(tmp_path, damage):
    cfg = make_cfg(TINY + [f"output_dir={tmp_path / 'run'}"])
    folder = tmp_path / ".run.resume"
    good = torch.nn.Linear(2, 2).state_dict()
    path = tmp_path / "t.pt"
    torch.save(good, path)
    state_files(folder, cfg, path.read_bytes())
    if damage == "empty":
        (folder / "state.json").write_text("")
    elif damage == "truncated":
        data = (folder / "tensors-2.pt").read_bytes()
        (folder / "tensors-2.pt").write_bytes(data[: len(data) // 2])
    elif damage == "random":
        (folder / "tensors-2.pt").write_bytes(os.urandom(4096))
    else:  # an older rmu's single state.pt
        (folder / "state.json").unlink()
        (folder / "tensors-2.pt").rename(folder / "state.pt")
    with pytest.raises(ResumeError, match=f"delete {folder} to start over"):
        Resume(cfg).load()


def test_a_damaged_state_through_the_cli_fails_in_seconds(tmp_path):
    out = tmp_path / "run"
    state_files(tmp_path / ".run.resume", make_cfg(TINY + [f"output_dir={out}"]), os.urandom(1000))
    (tmp_path / ".run.resume" / "tensors-2.pt").write_bytes(os.urandom(1000))  # no longer matches its checksum
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}")
    refused(proc, "is missing or damaged (its checksum does not match state.json)")
    assert LOADED not in proc.stdout


def test_a_non_finite_loss_keeps_only_finite_state_and_says_so(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("rmu.train", *TINY, f"output_dir={out}", "optim.lr=1e30", "trainer.max_steps=6",
                   "trainer.save_every=1")
    refused(proc, "non-finite loss at step 1", "the state of step 1 in", "is kept")
    state = json.loads((tmp_path / ".run.resume" / "state.json").read_text())
    assert state["step"] == 1
    tensors = torch.load(tmp_path / ".run.resume" / state["tensors"], weights_only=True)
    assert all(torch.isfinite(t).all() for t in tensors["updated"])
    assert not out.exists()


def test_two_runs_into_one_output_dir_the_second_stops_before_loading(tmp_path):
    out = tmp_path / "run"
    first = Paused(*TINY, f"output_dir={out}", "trainer.save_every=1", point="step-1").wait()
    second = run_cli("rmu.train", *TINY, f"output_dir={out}", "trainer.save_every=1")
    refused(second, f"output_dir={out} is in use by another run", f"pid {first.proc.pid}")
    assert LOADED not in second.stdout
    first.proc.send_signal(signal.SIGUSR1)  # go on
    first.proc.wait(300)
    assert first.proc.returncode == 0, "".join(first.err)[-3000:]
    assert (out / "model.safetensors").is_file() and hidden(tmp_path) == []


def test_a_live_run_beside_keeps_its_temporary_folder(tmp_path):
    outputs = tmp_path / "outputs"
    first = Paused(*TINY, f"output_dir={outputs / 'a'}", point="publish").wait()
    assert any(n.startswith(".a.tmp-") for n in hidden(outputs))
    second = run_cli("rmu.train", *TINY, f"output_dir={outputs / 'b'}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "a killed run left" not in second.stdout  # a's folder belongs to a live run
    first.proc.send_signal(signal.SIGUSR1)  # go on
    first.proc.wait(300)
    assert first.proc.returncode == 0, "".join(first.err)[-3000:]
    assert (outputs / "a" / "model.safetensors").is_file() and hidden(outputs) == []


def test_a_state_killed_during_its_first_save_is_no_state(tmp_path):
    cfg = make_cfg(TINY + [f"output_dir={tmp_path / 'run'}"])
    folder = tmp_path / ".run.resume"
    folder.mkdir()
    (folder / "tensors-3.pt.tmp").write_bytes(os.urandom(100))  # SIGKILL mid-write, nothing committed
    (folder / "tensors-3.pt").write_bytes(os.urandom(100))  # renamed, but state.json not yet replaced
    assert Resume(cfg).load() is None and not any(folder.iterdir())


def test_a_killed_run_leaves_nothing_the_next_run_does_not_clean_or_report(tmp_path, straight):
    out = tmp_path / "run"
    rc, _, _ = Paused(*TINY, f"output_dir={out}", point="publish").wait().kill(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert any(n.startswith(".run.tmp-") for n in hidden(tmp_path)) and ".run.lock" in hidden(tmp_path)
    (tmp_path / ".other.resume").mkdir()
    (tmp_path / ".other.resume" / "state.json").write_text("{}")
    again = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "a folder a killed run left" in again.stdout and "took over the lock of a run that is gone" in again.stdout
    assert f"{tmp_path / '.other.resume'} holds an interrupted run's state" in again.stdout
    assert hidden(tmp_path) == [".other.resume"]
    assert_same_weights(straight, out, 0.0)


CUSTOM_CONFIG = '''import os
from pathlib import Path

from transformers import LlamaConfig

Path(os.environ["RMU_TEST_SENTINEL"]).write_text("custom code ran")


class CustomConfig(LlamaConfig):
    model_type = "custom_llama"
'''
CUSTOM_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


def custom_code_model(folder: Path) -> Path:
    """A local model folder whose config and model classes are custom code."""
    from transformers import AutoModelForCausalLM

    from rmu.models.loading import load_tokenizer
    cfg = make_cfg(TINY)
    tok = load_tokenizer(cfg.model)
    model = AutoModelForCausalLM.from_config(
        __import__("transformers").AutoConfig.for_model(**dict(cfg.model.arch), vocab_size=len(tok)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_llama", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODEL)
    return folder


def test_custom_model_code_runs_only_with_trust_remote_code_and_then_on_every_load_path(tmp_path, monkeypatch):
    model = custom_code_model(tmp_path / "custom")
    sentinel = tmp_path / "ran"
    env = {"RMU_TEST_SENTINEL": str(sentinel), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [*TINY, f"model.path={model}", "model.arch=null", "model.name=custom"]
    proc = run_cli("rmu.train", *args, f"output_dir={tmp_path / 'a'}", env=env)
    refused(proc, "model.path=", "trust_remote_code")
    assert not sentinel.exists()
    proc = run_cli("rmu.train", *args, "model.trust_remote_code=true", f"output_dir={tmp_path / 'b'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sentinel.read_text() == "custom code ran" and (tmp_path / "b" / "model.safetensors").is_file()


def test_bad_bytes_bad_paths_and_a_full_disk_end_in_one_sentence(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1"}\n')
    refused(run_cli("rmu.train", *TINY, f"output_dir={tmp_path / 'a'}", f"data.forget.0.path={bad}"),
            f"{bad}, line 2: not UTF-8 (byte 0xe9 at column 14)")
    refused(run_cli("rmu.train", *TINY, f"output_dir={tmp_path / 'b'}", f"model.path={tmp_path / 'no-tokenizer'}"),
            f"model.path='{tmp_path / 'no-tokenizer'}'", "no such folder", "the tokenizer is read from this path")
    refused(run_cli("rmu.eval", f"model.path={tmp_path / 'no-model'}", "model.arch=null"), "no such folder")
    out = tmp_path / "run"
    proc = faulty("rmu.train", *TINY, f"output_dir={out}", "trainer.save_every=2", "trainer.max_steps=6",
                  enospc="tensors-4.pt")
    refused(proc, "could not save the training state of step 4", "the disk is full", "the state of step 2")
    assert json.loads((tmp_path / ".run.resume" / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in (tmp_path / ".run.resume").iterdir()) == ["state.json", "tensors-2.pt"]


def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    proc = run_cli("rmu.train", *[o for o in TINY if o != "trainer.progress=false"], f"output_dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout + proc.stderr
    assert "rmu: step 4/4 astro forget" in proc.stderr


def test_the_readme_table_lists_every_case_tested_here():
    readme = (ROOT / "README.md").read_text()
    for case in ("output_dir=. overwrite=true", "read-only", "mount point", "during the final evaluation",
                 "timestamped", "planted pickle", "damaged", "non-finite", "two runs", "trust_remote_code",
                 "non-UTF-8", "disk full", "killed", "log file"):
        assert case in readme, case
