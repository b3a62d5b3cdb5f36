"""The output folder appears only when complete, and replaces nothing unless asked."""

import json
import os
import re
import shutil
import stat

import pytest

from rmu.run.checkpoint import MARKER, check_output_dir, staged_output
from rmu.errors import ConfigError, OutputError


def test_folder_appears_only_on_success(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with staged_output(final, overwrite=False) as tmp:
            (tmp / "model.safetensors").write_text("half")
            assert not final.exists()
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert list(tmp_path.iterdir()) == []
    with staged_output(final, overwrite=False) as tmp:
        (tmp / "model.safetensors").write_text("whole")
    assert (final / "model.safetensors").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_existing_folder_is_replaced_only_with_overwrite_and_only_when_rmu_wrote_it(tmp_path):
    final = tmp_path / "run"
    with staged_output(final, overwrite=False) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="already exists and is not empty"):
        with staged_output(final, overwrite=False) as tmp:
            (tmp / "new.txt").write_text("new")
    assert (final / "old.txt").read_text() == "old"
    kept = tmp_path / "run-1"  # the finished output that could not go in place is kept, visibly
    assert (kept / "new.txt").read_text() == "new"
    shutil.rmtree(kept)
    with staged_output(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("case", ["foreign", "extra_file", "cwd", "holds_model"])
def test_overwrite_refuses_what_rmu_did_not_write(tmp_path, monkeypatch, case):
    final = tmp_path / "run"
    if case == "foreign":
        final.mkdir()
        (final / "paper.pdf").write_text("x")
        message = "was not written by rmu"
    else:
        with staged_output(final, overwrite=False) as tmp:
            (tmp / "model.safetensors").write_text("x")
        message = {"extra_file": "holds files rmu did not write (notes.txt)", "cwd": "is the working folder",
                   "holds_model": "contains"}[case]
    if case == "extra_file":
        (final / "notes.txt").write_text("mine")
    if case == "cwd":
        monkeypatch.chdir(final)
    protected = (str(final / "model.safetensors"),) if case == "holds_model" else ()
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_output_dir(str(final), overwrite=True, protected=protected)


def test_an_empty_existing_folder_is_used(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    with staged_output(final, overwrite=False) as tmp:
        (tmp / "x").write_text("x")
    assert (final / "x").is_file() and json.loads((final / MARKER).read_text())["files"] == [MARKER, "x"]


def test_the_published_folder_has_the_mode_of_a_new_folder(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_output(tmp_path / "run", overwrite=False) as tmp:
            (tmp / "x").write_text("1")
            (tmp / "x").chmod(0o600)  # as safetensors writes its files
        assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "run" / "x").stat().st_mode) == 0o644
    finally:
        os.umask(old)
