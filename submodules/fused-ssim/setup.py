"""Install `ga_ssim` (fused SSIM loss); build its CUDA extension `_C` only where nvcc exists
(see ../cuda_build.py). Without the extension the package still installs and serves the
pure-PyTorch reference.
"""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from cuda_build import cuda_extensions  # noqa: E402  (submodules/cuda_build.py)

PACKAGE = "ga_ssim"

ext_modules, cmdclass = cuda_extensions(PACKAGE, HERE, ("ext.cpp", "ssim.cu"),
                                        "ga_ssim: nvcc not found (or GA_SKIP_CUDA=1): installing the pure-PyTorch SSIM only")
setup(
    name="ga_ssim",
    version="1.0.0",
    description="Fused SSIM loss (one CUDA kernel forward, one backward) with a PyTorch fallback",
    packages=[PACKAGE],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.9",
)
