"""Development build of the CPU rasterizer extension (no setup.py / pip install needed).

``load_extension()`` compiles ``csrc/cpu/*.cpp`` with ``torch.utils.cpp_extension.load`` (cached
in ``build_dir``; recompiled only when a source changes) and returns the module, which offers the
same functions as the installed ``diff_gaussian_rasterization._cpu``.  ``install_as_package_module()``
also registers it as ``diff_gaussian_rasterization._cpu`` in ``sys.modules`` so that
``diff_gaussian_rasterization._cpu_backend`` uses it.

Command line: ``python csrc/cpu/build_dev.py [BUILD_DIR]`` builds and prints the module path.
"""
from __future__ import annotations

import os
import sys
import tempfile
from types import ModuleType
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, name) for name in ("rasterize_cpu.cpp", "splat_math.cpp")]
EXTRA_CFLAGS = ["-O3", "-fopenmp", "-march=x86-64-v2"]
EXTRA_LDFLAGS = ["-fopenmp"]
MODULE_NAME = "diff_gaussian_rasterization_cpu"


def default_build_dir() -> str:
    """A per-user folder under the system temp dir (kept between runs, so rebuilds are rare)."""
    return os.path.join(tempfile.gettempdir(), f"dgr_cpu_build_{os.getuid() if hasattr(os, 'getuid') else 0}")


def load_extension(build_dir: Optional[str] = None, verbose: bool = False) -> ModuleType:
    """Compile (if needed) and import the extension; raises ``RuntimeError``/``OSError`` without a compiler."""
    from torch.utils.cpp_extension import load

    build_dir = build_dir or default_build_dir()
    os.makedirs(build_dir, exist_ok=True)
    return load(name=MODULE_NAME, sources=SOURCES, extra_cflags=EXTRA_CFLAGS, extra_ldflags=EXTRA_LDFLAGS,
                extra_include_paths=[HERE], build_directory=build_dir, verbose=verbose)


def install_as_package_module(build_dir: Optional[str] = None, verbose: bool = False) -> ModuleType:
    """Build and register the module as ``diff_gaussian_rasterization._cpu``."""
    module = load_extension(build_dir, verbose)
    sys.modules["diff_gaussian_rasterization._cpu"] = module
    return module


if __name__ == "__main__":
    mod = load_extension(sys.argv[1] if len(sys.argv) > 1 else None, verbose=True)
    print(mod.__file__)
