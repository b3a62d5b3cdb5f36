"""Fault injection through the real command line: each row of the README's "Nothing lost"
table, driven as it happens on a cluster — SIGTERM, SIGINT, SIGHUP and SIGKILL at named
points (RMU_PAUSE_AT, rmu/run/pause.py), a real hangup (a pseudo-terminal closed), a
read-only folder, an empty mount point, a full disk (tests/os_faults.py, or a small tmpfs
as root), a batch too large for memory, two runs at once, planted and damaged state files, custom model
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
    # 12 MB: the weights alone would fit; the estimate covers the tokenizer, report, resume state and a margin.
    proc = faulty("rmu.train", *TINY, f"output_dir={tmp_path / 'run'}", free_bytes=12_000_000)
    refused(proc, "weights 12.6 MiB, tokenizer 3.4 MiB", "resume state", "has 11.4 MiB free", "weights in float32")
    assert LOADED not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro", "scratch"] and not any(scratch.iterdir())


@pytest.mark.parametrize("sig,point", [("SIGTERM", "step-4"), ("SIGTERM", "eval_after"), ("SIGTERM", "publish"),
                                       ("SIGINT", "eval_after"), ("SIGINT", "publish"), ("SIGHUP", "eval_after")])
def test_a_signal_after_training_keeps_the_trained_state_and_the_rerun_only_evaluates(tmp_path, straight, sig, point):
    out = tmp_path / "run"  # step-4: the last step; SIGINT: Ctrl-C; SIGHUP: the terminal closed
    rc, stdout, stderr = Paused(*TINY, f"output_dir={out}", point=point).wait().kill(getattr(signal, sig))
    assert rc == 128 + getattr(signal, sig), stderr[-3000:]
    assert "Traceback" not in stderr and stdout.count(f"stopped by {sig}") == 1
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
    assert "rmu: step 4/4 topic astro forget" in proc.stderr


def test_the_readme_table_lists_every_case_tested_here():
    readme = (ROOT / "README.md").read_text()
    for case in ("output_dir=. overwrite=true", "read-only", "mount point", "during the final evaluation",
                 "timestamped", "planted pickle", "damaged", "non-finite", "two runs", "trust_remote_code",
                 "non-UTF-8", "disk full", "killed", "log file",
                 "SIGINT (Ctrl-C) or SIGHUP", "a second Ctrl-C", "closed terminal", "while `rmu.export`",
                 "complete `.o.old-*`", "disk fills up after training", "`trainer.batch_size=100000`",
                 "`rmu.eval output_file=`", "`rmu.report DIR`", "`make robust --out`", "encoder-only model (BERT)",
                 "`model=tiny_random model.path=<a run folder>`", "truncated or overwritten `model.safetensors`",
                 "`results.json` of the wrong shape", "a folder given as a corpus"):
        assert case in readme, case


# Nothing lost, round two (issue 24): every signal, disk and memory before the work, cleanup
# that never deletes the only complete copy.
ATTACK = ["attack=ablate", "model=tiny_random", "model.arch=null", "model@base=tiny_random", "eval.batch_size=32",
          "eval.sets=[{name: chem, path: 'bundled:mcq_chem.jsonl', role: forget},"
          "{name: general, path: 'bundled:mcq_general.jsonl', role: retain}]", "attack.ablate.examples=4"]


def stopped(rc: int, stdout: str, stderr: str, sig: str, *phrases: str):
    """A command a signal ended: 128 + the signal, one `stopped by` sentence, no traceback."""
    assert rc == 128 + getattr(signal, sig), (rc, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stdout.count("rmu: stopped") == 1, stdout[-3000:]
    for phrase in phrases:
        assert phrase in stdout, (phrase, stdout[-3000:])


def isolated_cache(tmp_path: Path) -> dict:
    """An $RMU_CACHE of the test's own (where states kept away from a full disk go, and the
    notes of temporary folders), sharing the converted GGUF of the real one."""
    cache = tmp_path / "cache"
    cache.mkdir()
    gguf = Path(os.environ.get("RMU_CACHE") or Path.home() / ".cache" / "rmu") / "gguf"
    if gguf.is_dir():
        (cache / "gguf").symlink_to(gguf)
    return {"RMU_CACHE": str(cache)}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_during_training_save_the_state_and_the_rerun_continues(tmp_path, straight, sig):
    out = tmp_path / "run"
    rc, stdout, stderr = Paused(*TINY, f"output_dir={out}", point="step-2").wait().kill(getattr(signal, sig))
    stopped(rc, stdout, stderr, sig, f"stopped by {sig} after step 2", f"output_dir={out}")
    assert json.loads((tmp_path / ".run.resume" / "state.json").read_text())["step"] == 2
    assert hidden(tmp_path) == [".run.resume"] and not out.exists()  # no lock, no temporary folder
    again = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at step 2" in again.stdout
    assert_same_weights(straight, out, 0.0)
    assert hidden(tmp_path) == []


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_complete_state(tmp_path, straight):
    """Ctrl-C after step 3 (the state is saved at the end of the step), Ctrl-C again while
    that state is being written: out at once, the state of step 2 (save_every=2) intact."""
    out = tmp_path / "run"
    env = {**ENV, "RMU_PAUSE_AT": "step-3,state_saving", "RMU_PAUSE_SECONDS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "rmu.train", *TINY, f"output_dir={out}", "trainer.save_every=2"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err, saves = [], 0
    for line in proc.stderr:
        err.append(line)
        if line.strip() == "rmu-pause: state_saving":
            saves += 1
            proc.send_signal(signal.SIGUSR1 if saves == 1 else signal.SIGINT)  # step 2's save goes on
            if saves == 2:
                break
        elif line.strip() == "rmu-pause: step-3":
            proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=300)
    stopped(proc.returncode, stdout, "".join(err) + rest, "SIGINT", "stopped at once by a second SIGINT",
            "the state of step 2")
    assert "Ctrl-C again stops at once" in "".join(err)  # the first Ctrl-C said what it does
    assert sorted(p.name for p in (tmp_path / ".run.resume").iterdir()) == ["state.json", "tensors-2.pt"]
    assert hidden(tmp_path) == [".run.resume"]
    again = run_cli("rmu.train", *TINY, f"output_dir={out}", "trainer.save_every=2")
    assert again.returncode == 0 and "resuming at step 2" in again.stdout, again.stderr[-3000:]
    assert_same_weights(straight, out, 0.0)


def test_a_closed_terminal_saves_the_state_although_nothing_can_be_printed(tmp_path, straight):
    """A real hangup: the run's terminal (a pseudo-terminal here) goes away, the kernel sends
    SIGHUP, and every write to the terminal would fail from then on."""
    import pty

    out = tmp_path / "run"
    env = {**ENV, "RMU_PAUSE_AT": "step-2", "RMU_PAUSE_SECONDS": "120"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, in a terminal of its own
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "rmu.train", *TINY, f"output_dir={out}"], env)
        finally:
            os._exit(127)
    seen, deadline = b"", time.monotonic() + 300
    while b"rmu-pause: step-2" not in seen and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert b"rmu-pause: step-2" in seen, seen[-3000:]
    os.close(fd)  # the terminal closes
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 129
    assert json.loads((tmp_path / ".run.resume" / "state.json").read_text())["step"] == 2
    assert hidden(tmp_path) == [".run.resume"]
    again = run_cli("rmu.train", *TINY, f"output_dir={out}")
    assert again.returncode == 0 and "resuming at step 2" in again.stdout, again.stderr[-3000:]
    assert_same_weights(straight, out, 0.0)


@pytest.mark.parametrize("module,sig", [("rmu.export", "SIGTERM"), ("rmu.export", "SIGINT"),
                                        ("rmu.attack", "SIGHUP")])
def test_a_signal_while_export_or_attack_publishes_removes_its_temporary_folder(tmp_path, straight, module, sig):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = snapshot(run)
    out = tmp_path / "out"
    args = ([f"checkpoint={run}", "repo_id=me/model", f"output_dir={out}"] if module == "rmu.export" else
            [*ATTACK, f"model.path={run}", f"output_dir={out}", f"control_cache={tmp_path / 'controls'}"])
    paused = Paused(*args, point="publish", module=module).wait()
    assert any(n.startswith(".out.tmp-") for n in hidden(tmp_path))  # the full-size copy being written
    rc, stdout, stderr = paused.kill(getattr(signal, sig))
    stopped(rc, stdout, stderr, sig, f"stopped by {sig}; nothing was written")
    assert hidden(tmp_path) == [] and not out.exists()  # no hidden copy, no lock
    assert snapshot(run) == before
    again = run_cli(module, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / ("README.md" if module == "rmu.export" else "results.json")).is_file()
    assert hidden(tmp_path) == []


def test_cleanup_restores_the_only_complete_copy_that_a_kill_mid_publish_left(tmp_path, straight):
    """Killed between moving the old output aside and renaming the new one into place: a
    complete `.o.old-*` and `.o.tmp-*` and no `o`. The next command, writing elsewhere,
    finishes the publish: `o` is the new output, nothing else is left."""
    outputs = tmp_path / "outputs"
    shutil.copytree(straight, outputs / "o")
    rc, _, stderr = Paused(*TINY, f"output_dir={outputs / 'o'}", "overwrite=true", "seed=1",
                           point="renaming").wait().kill(signal.SIGKILL)
    assert rc == -signal.SIGKILL, stderr[-3000:]
    [old] = [n for n in hidden(outputs) if n.startswith(".o.old-")]
    [new] = [n for n in hidden(outputs) if n.startswith(".o.tmp-")]
    assert not (outputs / "o").exists()
    new_weights = (outputs / new / "model.safetensors").read_bytes()
    elsewhere = tmp_path / "elsewhere" / "p"  # another folder: found through $RMU_CACHE/staging
    proc = run_cli("rmu.train", *TINY, f"output_dir={elsewhere}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"restored {outputs / 'o'} from {new}" in proc.stdout
    assert f"removed {outputs / old}" in proc.stdout
    assert (outputs / "o" / "model.safetensors").read_bytes() == new_weights
    assert hidden(outputs) == []  # the killed run's lock too
    again = run_cli("rmu.train", *TINY, f"output_dir={outputs / 'o'}", "overwrite=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_weights(straight, outputs / "o", 0.0) and hidden(outputs) == []


def test_a_full_disk_after_training_keeps_the_trained_state_where_there_is_room(tmp_path, straight):
    """Every write under disk/ fails with ENOSPC (tests/os_faults.py): the output cannot be
    written and neither can the state beside it; the state goes to $RMU_CACHE/resume, the
    sentence says where, and the same command finishes once the disk has room."""
    disk, env = tmp_path / "disk", isolated_cache(tmp_path)
    out = disk / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "os_faults.py"), "rmu.train", *TINY,
                           f"output_dir={out}"], cwd=ROOT, env={**ENV, **env, "FAULT_ENOSPC": str(disk)},
                          capture_output=True, text=True, timeout=600)
    kept = Path(env["RMU_CACHE"]) / "resume"
    refused(proc, f"could not write {out} (the disk is full)", f"the trained state is kept in {kept}",
            "run the same command again")
    [state] = kept.iterdir()
    assert json.loads((state / "state.json").read_text())["step"] == 4
    assert not disk.exists() or hidden(disk) == []  # no half output, no state, no lock on the full disk
    again = run_cli("rmu.train", *TINY, f"output_dir={out}", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at step 4 from {state}" in again.stdout
    assert_same_weights(straight, out, 0.0)
    assert hidden(disk) == [] and not any(kept.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_small_real_disk_is_refused_before_loading_and_one_that_fills_up_keeps_the_state(tmp_path, straight):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    env = isolated_cache(tmp_path)
    try:
        proc = run_cli("rmu.train", *TINY, f"output_dir={mnt / 'run'}", env=env)
        refused(proc, "tokenizer 3.4 MiB", "has 12.0 MiB free")  # the weights alone would fit
        assert LOADED not in proc.stdout and not any(mnt.iterdir())
        subprocess.run(["mount", "-o", "remount,size=40m", str(mnt)], check=True)
        cmd = [sys.executable, "-m", "rmu.train", *TINY, f"output_dir={mnt / 'run'}"]
        run = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, **env, "RMU_PAUSE_AT": "eval_after",
                                                   "RMU_PAUSE_SECONDS": "120"},
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for line in run.stderr:
            if line.strip() == "rmu-pause: eval_after":
                break
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (free - 200_000))  # another job fills the disk meanwhile
        run.send_signal(signal.SIGUSR1)
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
        assert f"could not write {mnt / 'run'} (the disk is full)" in stderr
        assert f"the trained state is kept in {Path(env['RMU_CACHE']) / 'resume'}" in stderr
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
        (mnt / "filler").unlink()
        again = run_cli("rmu.train", *TINY, f"output_dir={mnt / 'run'}", env=env)
        assert again.returncode == 0 and "resuming at step 4" in again.stdout, again.stderr[-3000:]
        assert_same_weights(straight, mnt / "run", 0.0)
    finally:
        subprocess.run(["umount", str(mnt)])


def test_a_batch_that_cannot_fit_memory_is_refused_before_loading(tmp_path):
    proc = run_cli("rmu.train", *TINY, f"output_dir={tmp_path / 'run'}", "trainer.batch_size=100000")
    refused(proc, "trainer.batch_size=100000: the run needs about", "of memory", "the CPU has",
            "GiB available; trainer.batch_size=")
    assert proc.stderr.count("error:") == 1 and LOADED not in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no lock left behind


# Nothing lost, round two (issue 24): every command that writes follows the marker rule,
# models are what they claim, the reporting commands' inputs are checked against their shapes.

def in_process(fn, cfg, capsys) -> tuple[int, str]:
    """A command through rmu/run/cli.py's wrapper in this process (each command also has a
    real command-line run below): (exit code, stderr)."""
    from rmu.run.cli import run_command

    capsys.readouterr()
    try:
        run_command(fn, cfg)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_sentence(code: int, err: str, *phrases: str) -> None:
    """Exit 1 and a single `error:` line holding every phrase, no traceback."""
    assert code == 1 and "Traceback" not in err, (code, err[-3000:])
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def eval_cfg(*overrides: str):
    return make_cfg(["model.arch=null", "model.device=cpu", "eval.sets=[]", *overrides], config_name="eval")


def copy_run(straight: Path, to: Path) -> Path:
    shutil.copytree(straight, to)
    return to


def test_eval_writes_only_an_output_file_it_wrote_itself(tmp_path, straight, capsys):
    import rmu.eval
    from rmu.export import prepare

    run = copy_run(straight, tmp_path / "run")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    before = snapshot(tmp_path)
    proc = run_cli("rmu.eval", f"model.path={run}", "model.arch=null", "eval.sets=[]", f"output_file={notes}")
    refused(proc, f"output_file={notes}: already exists and was not written by rmu; rmu.eval replaces only a file "
                  "it wrote", "move it away or choose another output_file")
    assert "model:" not in proc.stdout  # refused before the model loads
    one_sentence(*in_process(rmu.eval.run, eval_cfg(f"model.path={run}", f"output_file={run / 'results.json'}",
                                                    "overwrite=true"), capsys),
                 "results.json: already exists and is part of the output folder rmu wrote there")
    assert snapshot(tmp_path) == before and hidden(tmp_path) == []
    assert prepare(run, "me/run", tmp_path / "hub").is_dir()  # the run's results.json still exports

    out = tmp_path / "evals" / "e.json"
    assert in_process(rmu.eval.run, eval_cfg(f"model.path={run}", f"output_file={out}"), capsys)[0] == 0
    one_sentence(*in_process(rmu.eval.run, eval_cfg(f"model.path={run}", f"output_file={out}"), capsys),
                 "already exists (written by rmu.eval); set overwrite=true to replace it")
    assert in_process(rmu.eval.run, eval_cfg(f"model.path={run}", f"output_file={out}", "overwrite=true"),
                      capsys)[0] == 0
    assert json.loads(out.read_text())["model"] == str(run) and hidden(out.parent) == [MARKER]


def test_report_never_replaces_a_report_it_did_not_draw(tmp_path, straight, capsys):
    from argparse import Namespace

    import rmu.report

    hand = tmp_path / "hand"  # a folder rmu never wrote, with a run's inputs and a report of one's own
    hand.mkdir()
    for name in ("results.json", "metrics.jsonl"):
        shutil.copy(straight / name, hand / name)
    (hand / "report.md").write_text("my own analysis")
    before = snapshot(tmp_path)
    proc = run_cli("rmu.report", str(hand))
    refused(proc, f"{hand / 'report.md'}: already exists and was not written by rmu; rmu.report replaces only a file "
                  "it wrote, unchanged since: move it away")
    assert snapshot(tmp_path) == before and hidden(hand) == []  # report.png not drawn either
    (hand / "report.md").rename(tmp_path / "mine.md")
    assert in_process(rmu.report.run, Namespace(run_dir=str(hand)), capsys)[0] == 0
    assert (hand / "report.png").is_file() and (tmp_path / "mine.md").read_text() == "my own analysis"

    run = copy_run(straight, tmp_path / "run")
    (run / "report.md").write_text((run / "report.md").read_text() + "\nMy notes on this run.\n")
    one_sentence(*in_process(rmu.report.run, Namespace(run_dir=str(run)), capsys),
                 f"{run / 'report.md'}: already exists and was changed since rmu.report wrote it")
    assert (run / "report.md").read_text().endswith("My notes on this run.\n")
    redrawn = copy_run(straight, tmp_path / "redrawn")  # a report rmu drew, unchanged: redrawn
    assert in_process(rmu.report.run, Namespace(run_dir=str(redrawn)), capsys)[0] == 0
    assert not [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name]
    shared = copy_run(straight, tmp_path / "shared")  # a read-only folder (a colleague's run)
    before = snapshot(shared)
    refused(faulty("rmu.report", str(shared), readonly=shared),
            f"{shared / 'report.png'}: cannot write in {shared} (Read-only file system)")
    assert snapshot(shared) == before


def test_a_sweep_never_writes_its_summary_over_one_it_did_not_write(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "summary.md").write_text("my table")
    proc = run_cli("rmu.train", "-m", *TINY, "rmu.alpha=10", f"hydra.sweep.dir={sweep}")
    refused(proc, f"{sweep / 'summary.md'}: already exists and was not written by rmu; the sweep summary replaces "
                  "only a file it wrote")
    assert LOADED not in proc.stdout and [p.name for p in sweep.iterdir()] == ["summary.md"]  # no job ran
    (sweep / "summary.md").rename(tmp_path / "mine.md")
    again = run_cli("rmu.train", "-m", *TINY, "rmu.alpha=10", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "| 0 |" in (sweep / "summary.md").read_text() and (tmp_path / "mine.md").read_text() == "my table"


def test_make_robust_checks_its_tables_before_any_run(tmp_path):
    import yaml

    from rmu.run.checkpoint import check_output_file

    compare = ROOT / "experiments" / "robust" / "compare.py"
    for name in ("results.md", "robust.png"):  # the committed tables are make robust's: it may redraw them
        check_output_file(compare.parent / name, "make robust")
    config = tmp_path / "recipes.yaml"
    config.write_text(yaml.safe_dump({"seeds": [0], "train": TINY, "recipes": {"plain": []}, "attack": []}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("hand-edited results")
    proc = subprocess.run([sys.executable, str(compare), "--config", str(config), "--out", str(out)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    refused(proc, f"{out / 'results.md'}: already exists and was not written by rmu; make robust replaces only a "
                  "file it wrote")
    assert [p.name for p in out.iterdir()] == ["results.md"]  # no run started


BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def bert_folder(folder: Path) -> Path:
    """An encoder-only model folder (BertForMaskedLM) with the bundled tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    from rmu.models.loading import load_tokenizer

    tokenizer = load_tokenizer(make_cfg(TINY).model)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **BERT)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_an_encoder_only_model_is_refused_before_training(tmp_path, capsys):
    import rmu.eval
    import rmu.train

    bert = bert_folder(tmp_path / "bert")
    proc = run_cli("rmu.train", *TINY, f"model.path={bert}", "model.arch=null", "model.name=bert",
                   f"output_dir={tmp_path / 'run'}")
    refused(proc, f"model.path='{bert}': holds a BertForMaskedLM (bert)", "rmu needs a decoder-only causal language "
                                                                          "model")
    assert LOADED not in proc.stdout and not (tmp_path / "run").exists()
    config = json.loads((bert / "config.json").read_text())
    del config["architectures"]  # only the attention tells now
    (bert / "config.json").write_text(json.dumps(config))
    one_sentence(*in_process(rmu.eval.run, eval_cfg(f"model.path={bert}"), capsys),
                 "is an encoder (bert: its attention sees the whole text")
    one_sentence(*in_process(rmu.train.train, make_cfg(TINY + ["model.arch.model_type=bert",
                                                               f"output_dir={tmp_path / 'random'}"]), capsys),
                 "model.arch=", "is an encoder (bert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert"]


def test_a_model_group_and_a_run_folder_that_disagree_are_refused(tmp_path, straight, capsys):
    import rmu.eval

    proc = run_cli("rmu.eval", "model=tiny_random", f"model.path={straight}", "eval.sets=[]")
    refused(proc, f"model.path='{straight}': holds a model's weights (model.safetensors), but model.arch is set",
            "reads only the tokenizer from this folder; add model.arch=null to use these weights")
    assert "model:" not in proc.stdout
    out = tmp_path / "e.json"
    assert in_process(rmu.eval.run, eval_cfg("model=tiny_random", f"model.path={straight}", "model.arch=null",
                                             f"output_file={out}"), capsys)[0] == 0
    assert json.loads(out.read_text())["model"] == str(straight)


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_weights_are_one_sentence_naming_the_file_in_every_command(tmp_path, straight, capsys, damage):
    import rmu.attack.cli
    import rmu.eval
    import rmu.train
    from rmu.export import prepare

    run = copy_run(straight, tmp_path / "run")
    weights = run / "model.safetensors"
    good = weights.read_bytes()
    if damage == "truncated":  # a copy cut short
        weights.write_bytes(good[: len(good) // 2])
        phrase = f"{weights} is truncated (its header describes {len(good):,} bytes; the file has {len(good) // 2:,})"
    else:  # bytes overwritten in place: the header still fits, the checksum does not
        weights.write_bytes(good[:-4096] + os.urandom(4096))
        phrase = f"{weights} does not match the SHA-256 rmu recorded when it wrote it"
    before = snapshot(tmp_path)
    proc = run_cli("rmu.export", f"checkpoint={run}", "repo_id=me/run")
    refused(proc, f"checkpoint='{run}': {phrase}")
    assert snapshot(tmp_path) == before and hidden(tmp_path) == []  # nothing packaged, no hidden copy
    model = [f"model.path={run}", "model.arch=null"]
    if damage == "truncated":
        proc = run_cli("rmu.train", *TINY, *model, f"output_dir={tmp_path / 'again'}")
        refused(proc, f"model.path='{run}': {phrase}")
        assert LOADED not in proc.stdout
    else:
        one_sentence(*in_process(rmu.train.train, make_cfg(TINY + model + [f"output_dir={tmp_path / 'again'}"]),
                                 capsys), phrase)
    one_sentence(*in_process(rmu.eval.run, eval_cfg(f"model.path={run}"), capsys), phrase)
    attack = make_cfg(["model=tiny_random", *model, "model@base=tiny_random", "attack=ablate",
                       f"output_dir={tmp_path / 'attack'}"], config_name="attack")
    one_sentence(*in_process(rmu.attack.cli.run, attack, capsys), f"model.path='{run}': {phrase}")
    assert snapshot(tmp_path) == before and hidden(tmp_path) == []
    weights.write_bytes(good)  # restored: the same commands go through
    assert (prepare(run, "me/run") / "model.safetensors").read_bytes() == good


@pytest.mark.parametrize("damage", ["results_shape", "metrics_line"])
def test_the_reporting_commands_check_their_inputs_naming_file_line_and_field(tmp_path, straight, capsys, damage):
    from argparse import Namespace

    import rmu.report
    from rmu.export import prepare, run as export_run

    run = copy_run(straight, tmp_path / "run")
    if damage == "results_shape":  # valid JSON, not a run's results
        path = run / "results.json"
        good = path.read_text()
        results = json.loads(good)
        results["eval"] = {"chem": {"role": "forget", "unlearned": {"acc": 0.3}}}
        path.write_text(json.dumps(results))
        phrase = f"{path}: not the results.json of an rmu.train run: field eval.chem.base: missing"
    else:  # a line cut short, and a field of the wrong type
        path = run / "metrics.jsonl"
        good = path.read_text()
        lines = good.splitlines(keepends=True)
        path.write_text("".join(lines[:2]) + lines[2][:30] + "\n" + "".join(lines[3:]))
        phrase = f"{path}, line 3: not valid JSON"
    (run / "report.png").unlink()  # so that the report would have something to draw
    before = snapshot(tmp_path)
    export = make_cfg([f"checkpoint={run}", "repo_id=me/run"], config_name="export")
    if damage == "results_shape":
        refused(run_cli("rmu.report", str(run)), phrase)
        one_sentence(*in_process(export_run, export, capsys), phrase)
    else:
        refused(run_cli("rmu.export", f"checkpoint={run}", "repo_id=me/run"), phrase)
        one_sentence(*in_process(rmu.report.run, Namespace(run_dir=str(run)), capsys), phrase)
        row = json.loads(lines[1])
        row["forget_loss"] = "low"
        path.write_text(lines[0] + json.dumps(row) + "\n" + "".join(lines[2:]))
        before = snapshot(tmp_path)
        one_sentence(*in_process(rmu.report.run, Namespace(run_dir=str(run)), capsys),
                     f"{path}, line 2: field forget_loss: expected a number, got a string 'low'")
    assert snapshot(tmp_path) == before and hidden(tmp_path) == []
    path.write_text(good)  # restored: both go through
    assert in_process(rmu.report.run, Namespace(run_dir=str(run)), capsys)[0] == 0
    assert prepare(run, "me/run").is_dir()


def test_a_folder_given_as_a_corpus_says_it_is_a_folder(tmp_path, capsys):
    import rmu.train

    one_sentence(*in_process(rmu.train.train, make_cfg(TINY + [f"data.forget.0.path={tmp_path}",
                                                               f"output_dir={tmp_path / 'run'}"]), capsys),
                 f"{tmp_path}: is a folder; give one file (a corpus: .jsonl with one JSON object per line, or .txt")
    assert list(tmp_path.iterdir()) == []
