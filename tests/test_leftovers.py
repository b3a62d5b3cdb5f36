"""What killed commands leave (rmu/run/checkpoint.py clean_leftovers / settle, and
rmu/run/leftovers.py sweep): the only complete copy of an output is never deleted, a
half-written folder is, a folder without rmu's marker is only named, and a command writing
anywhere finds what a killed command noted in $RMU_CACHE/staging. The CLI cases are in
tests/test_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmu.run import checkpoint, leftovers
from rmu.run.checkpoint import MARKER, clean_leftovers, register, staged_output


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def output(folder: Path, pid: int, complete: bool = True, content: str = "weights") -> Path:
    """A folder as staged_output writes it: its marker names the writer, and once complete its files."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(content)
    marker = {"written_by": "rmu", "host": os.uname().nodename, "pid": pid}
    if complete:
        marker["files"] = [MARKER, "model.safetensors"]
    (folder / MARKER).write_text(json.dumps(marker))
    return folder


def never_live(path) -> bool:
    return False


def test_a_complete_tmp_with_no_output_is_restored_and_the_replaced_one_removed(tmp_path, dead_pid):
    output(tmp_path / ".o.old-abc", dead_pid, content="old")
    output(tmp_path / ".o.tmp-abc", dead_pid, content="new")
    lines = clean_leftovers(tmp_path / "other", never_live)
    assert (tmp_path / "o" / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert any("restored" in line and ".o.tmp-abc" in line for line in lines)


def test_only_a_complete_old_is_restored_when_the_new_one_is_half_written(tmp_path, dead_pid):
    output(tmp_path / ".o.old-abc", dead_pid, content="old")
    output(tmp_path / ".o.tmp-abc", dead_pid, complete=False)
    clean_leftovers(tmp_path / "other", never_live)
    assert (tmp_path / "o" / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_complete_tmp_beside_an_existing_output_is_kept_under_a_visible_name(tmp_path, dead_pid):
    output(tmp_path / "o", dead_pid, content="published")
    output(tmp_path / ".o.tmp-abc", dead_pid, content="finished, never published")
    lines = clean_leftovers(tmp_path / "other", never_live)
    assert (tmp_path / "o" / "model.safetensors").read_text() == "published"
    assert (tmp_path / "o-1" / "model.safetensors").read_text() == "finished, never published"
    assert any(f"kept {tmp_path / 'o-1'}" in line for line in lines)


def test_a_deletion_cut_short_is_not_complete_and_a_folder_without_marker_is_only_named(tmp_path, dead_pid):
    output(tmp_path / "o", dead_pid)
    cut = output(tmp_path / ".o.old-abc", dead_pid)
    (cut / "model.safetensors").unlink()  # rmtree of the replaced folder was killed half-way
    (tmp_path / ".p.tmp-xyz").mkdir()
    (tmp_path / ".p.tmp-xyz" / "thesis.tex").write_text("mine")
    lines = clean_leftovers(tmp_path / "other", never_live)
    assert not cut.exists() and (tmp_path / ".p.tmp-xyz" / "thesis.tex").exists()
    assert any("has no rmu marker: not removed" in line for line in lines)


def test_a_folder_being_written_by_a_live_command_is_left_alone(tmp_path):
    output(tmp_path / ".o.tmp-abc", os.getpid(), complete=False)  # this process writes it
    assert clean_leftovers(tmp_path / "other", never_live) == []
    assert (tmp_path / ".o.tmp-abc").is_dir()


def test_a_command_anywhere_settles_what_a_killed_command_noted(tmp_path, dead_pid, monkeypatch):
    monkeypatch.setenv("RMU_CACHE", str(tmp_path / "cache"))
    far = tmp_path / "far"
    tmp = output(far / ".o.tmp-abc", dead_pid)
    note = {"tmp": str(tmp), "final": str(far / "o"), "host": os.uname().nodename, "pid": dead_pid}
    register(tmp, far / "o")
    checkpoint._entry(tmp).write_text(json.dumps(note))  # noted by the killed command
    lines = leftovers.sweep(tmp_path / "near" / "x")
    assert (far / "o" / "model.safetensors").exists() and any("restored" in line for line in lines)
    assert not any((tmp_path / "cache" / "staging").iterdir())


def test_staged_output_notes_its_folder_only_while_it_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RMU_CACHE", str(tmp_path / "cache"))
    with staged_output(tmp_path / "o", overwrite=False) as tmp:
        (tmp / "a.txt").write_text("a")
        [(entry, note)] = checkpoint.registered()
        assert note["tmp"] == str(tmp) and note["pid"] == os.getpid()
    assert checkpoint.registered() == [] and (tmp_path / "o" / "a.txt").exists()
    assert json.loads((tmp_path / "o" / MARKER).read_text())["files"] == [MARKER, "a.txt"]
