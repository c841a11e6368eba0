"""File-system helpers: atomic writes and iteration folders.

Everything the toolkit writes that a user would hate to lose half-written (PLYs, checkpoints,
FLAME parameters, JSON results) goes through :func:`atomic_write`: the data lands in a temporary
file in the destination folder, is flushed to disk, and then replaces the destination in one
``os.replace``. A crash leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import IO, Iterator, Optional

__all__ = ["atomic_write", "mkdir_p", "searchForMaxIteration", "list_iterations"]


def mkdir_p(folder_path: str) -> None:
    """Create a folder and its parents; no error if it exists."""
    os.makedirs(folder_path, exist_ok=True)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and rename it onto
    ``path``. On an exception the temporary file is removed and ``path`` is untouched."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports 'w'/'wb' modes, got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        if "b" in mode:
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    _fsync_dir(folder)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    """Make the rename durable (best effort: not every file system supports it)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


_ITER_RE = re.compile(r"^iteration_(\d+)$")


def list_iterations(folder: str) -> list:
    """Sorted iteration numbers of ``folder/iteration_N`` subfolders."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _ITER_RE.match(name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def searchForMaxIteration(folder: str) -> int:
    """Largest N among ``folder/iteration_N``; FileNotFoundError naming the folder if none."""
    iterations = list_iterations(folder)
    if not iterations:
        raise FileNotFoundError(f"no iteration_N folders in {folder}: has this model been trained and saved?")
    return iterations[-1]
