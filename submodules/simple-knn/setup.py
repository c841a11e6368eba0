"""Install `simple_knn`; build its CUDA extension `_C` only where nvcc exists (see ../cuda_build.py)."""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from cuda_build import cuda_extensions  # noqa: E402  (submodules/cuda_build.py)

PACKAGE = "simple_knn"

ext_modules, cmdclass = cuda_extensions(PACKAGE, HERE, ("ext.cpp", "knn.cu"),
                                        "nvcc not found: installing the pure-PyTorch reference only")
setup(
    name="simple_knn",
    version="1.0.0",
    description="Exact 3-nearest-neighbour distances (CUDA) with a scipy CPU fallback",
    packages=[PACKAGE],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.9",
)
