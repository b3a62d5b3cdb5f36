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


def test_a_single_file_is_written_atomically_and_replaced_only_by_the_command_that_wrote_it(tmp_path):
    """write_output_file: the marker rule for single files (rmu.eval's output_file, reports,
    sweep summaries, make robust's tables)."""
    from rmu.run.checkpoint import check_output_file, write_output_file

    out = tmp_path / "e.json"
    assert write_output_file(out, "1", "rmu.eval", overwrite=False, key="output_file") == out
    assert out.read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "e.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's private 0600
    with pytest.raises(ConfigError, match=r"output_file=.*e.json: already exists \(written by rmu.eval\); set "
                                          r"overwrite=true"):
        check_output_file(out, "rmu.eval", overwrite=False, key="output_file")
    write_output_file(out, "2", "rmu.eval", overwrite=True)
    with pytest.raises(ConfigError, match="was written by rmu.eval; rmu.report replaces only a file it wrote"):
        check_output_file(out, "rmu.report")
    out.write_text("2, and my notes")  # edited by hand since
    with pytest.raises(ConfigError, match="was changed since rmu.eval wrote it"):
        check_output_file(out, "rmu.eval", overwrite=True)
    mine = tmp_path / "notes.md"
    mine.write_text("mine")
    with pytest.raises(ConfigError, match="notes.md: already exists and was not written by rmu; .* move it away"):
        check_output_file(mine, "rmu.report")
    with pytest.raises(ConfigError, match="is a folder; give the path of a file"):
        check_output_file(tmp_path, "rmu.eval", key="output_file")
    # The destination changed during the work: what was computed is kept beside it, and said so.
    with pytest.raises(OutputError, match=r"what rmu.report wrote is kept in .*notes-1.md"):
        write_output_file(mine, "report", "rmu.report")
    assert mine.read_text() == "mine" and (tmp_path / "notes-1.md").read_text() == "report"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_file_written_into_a_published_folder_keeps_the_folder_rmus(tmp_path):
    from rmu.run.checkpoint import check_output_file, read_marker, write_output_file, written_by_rmu

    final = tmp_path / "run"
    with staged_output(final, overwrite=False) as tmp:
        (tmp / "results.json").write_text("{}")
        write_output_file(tmp / "report.md", "# report", "rmu.report")
    marker = read_marker(final)
    assert marker["written"]["report.md"]["by"] == "rmu.report" and set(marker["sha256"]) == {"results.json",
                                                                                             "report.md"}
    write_output_file(final / "eval.json", "{}", "rmu.eval")
    assert written_by_rmu(final) == (True, [])  # check_output_dir may still replace it whole
    with pytest.raises(ConfigError, match="is part of the output folder rmu wrote there"):
        check_output_file(final / "results.json", "rmu.eval", overwrite=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
