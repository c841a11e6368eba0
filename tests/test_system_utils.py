"""Atomic writes leave either the old file or the new one; iteration folders are found."""
import os

import pytest

from utils.system_utils import atomic_write, list_iterations, searchForMaxIteration


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with atomic_write(str(path)) as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_failure_keeps_old(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path), mode="w") as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_iterations(tmp_path):
    for n in (7000, 30000, 600):
        os.makedirs(tmp_path / f"iteration_{n}")
    os.makedirs(tmp_path / "iteration_x")
    assert list_iterations(str(tmp_path)) == [600, 7000, 30000]
    assert searchForMaxIteration(str(tmp_path)) == 30000
    with pytest.raises(FileNotFoundError, match="iteration_N"):
        searchForMaxIteration(str(tmp_path / "missing"))


def test_atomic_write_uses_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "p.txt"
        with atomic_write(str(path), mode="w") as fh:
            fh.write("x")
        assert (path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
