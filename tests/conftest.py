"""Test configuration: import paths, markers and skips.

Markers: ``cuda`` (needs a CUDA GPU and the compiled extensions; skipped otherwise) and ``gui``
(needs a display: run under ``xvfb-run``; skipped when no DISPLAY is set).
"""
from __future__ import annotations

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
# Our CUDA packages: the folders only serve when the packages are not installed (pip -e).
_SUBMODULES = os.path.join(REPO_ROOT, "submodules")
for _name in sorted(os.listdir(_SUBMODULES)) if os.path.isdir(_SUBMODULES) else []:
    _path = os.path.join(_SUBMODULES, _name)
    if os.path.isfile(os.path.join(_path, "setup.py")) and _path not in sys.path:
        sys.path.append(_path)


# Software OpenGL under xvfb (mesa llvmpipe) and triton each bring their own LLVM; loading
# triton after a GL context exists crashes the process (torch imports triton lazily, e.g. in a
# later test). Loading it first, when it is installed, avoids that.
try:
    import triton  # noqa: F401
except (ImportError, OSError, RuntimeError):  # optional: without it the order stays as it is
    pass


def _cuda_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "gui: needs a display; run under xvfb-run (skipped without DISPLAY)")
    config.addinivalue_line("markers", "slow: longer end-to-end tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    has_cuda = _cuda_ready()
    has_display = bool(os.environ.get("DISPLAY"))
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a GPU machine)")
    skip_gui = pytest.mark.skip(reason="needs a display (run under xvfb-run)")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "gui" in item.keywords and not has_display:
            item.add_marker(skip_gui)


# ---------------------------------------------------------------------------------------------
# Shared, session-scoped assets (generated once per test run: they take seconds, not minutes)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def flame_assets(tmp_path_factory):
    """The procedural FLAME-format head (flame2023.pkl, FLAME_masks.pkl, OBJ, texture).

    Also points ``FLAME_MODEL_PATH`` / ``FLAME_MASKS_PATH`` at it for the whole session, as a
    user with the procedural head would."""
    from flame_model.procedural import write_assets

    out = tmp_path_factory.mktemp("flame")
    write_assets(out, seed=0)
    os.environ["FLAME_MODEL_PATH"] = str(out / "flame2023.pkl")
    os.environ["FLAME_MASKS_PATH"] = str(out / "FLAME_masks.pkl")
    return out


@pytest.fixture(scope="session")
def small_subject(flame_assets, tmp_path_factory):
    """A small synthetic NeRSemble-format subject (16 cameras, 6 timesteps, 96x66)."""
    from scene.synthetic import main as synth_main

    out = tmp_path_factory.mktemp("subject")
    synth_main(["--out", str(out), "--flame_dir", str(flame_assets), "--width", "96", "--height", "66",
                "--num_cameras", "16", "--num_timesteps", "6", "--seed", "0", "--device", "cpu", "--quiet"])
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of many tiny tensor ops: as fast on 2 cores, and immune to
    OpenMP oversubscription when the machine is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
