"""The output folder appears only when complete, and replaces nothing unless asked."""

import os
import stat

import pytest

from rmu.checkpoint import staged_output


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


def test_existing_folder_is_replaced_only_with_overwrite(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        with staged_output(final, overwrite=False) as tmp:
            (tmp / "new.txt").write_text("new")
    assert (final / "old.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run"]
    with staged_output(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_an_empty_existing_folder_is_used(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    with staged_output(final, overwrite=False) as tmp:
        (tmp / "x").write_text("x")
    assert (final / "x").is_file()


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
