"""Install `splat_binding` (splats bound to mesh triangles); build its CUDA extension `_C` only
where nvcc exists (see ../cuda_build.py).
"""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from cuda_build import cuda_extensions  # noqa: E402  (submodules/cuda_build.py)

PACKAGE = "splat_binding"

ext_modules, cmdclass = cuda_extensions(PACKAGE, HERE, ("binding.cu",),
                                        "splat_binding: nvcc not found (or GA_SKIP_CUDA=1): installing the pure-PyTorch reference only")
setup(
    name="splat_binding",
    version="1.0.0",
    description="World position, scale and rotation of mesh-bound splats: one CUDA kernel forward, one backward",
    packages=[PACKAGE],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.9",
)
