"""Atomic writes: a finished folder or file takes the target's place; a failed one leaves the old target and no temp."""

from pathlib import Path

import pytest

from latentdiff.fileio import atomic_folder, atomic_write


def test_atomic_folder_replaces_on_success_and_keeps_the_old_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one" and oct(target.stat().st_mode & 0o777) != "0o700"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "one"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old folder is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folders left beside it


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.json"

    def fail(tmp):
        Path(tmp).write_text("{partial")
        raise OSError("no space")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    assert target.read_text() == "{}"
