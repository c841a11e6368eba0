"""Install `diff_gaussian_rasterization`; build its CUDA extension `_C` only where nvcc exists, and
its C++ (OpenMP) CPU extension `_cpu` wherever a C++ compiler exists.

Environment: GA_SKIP_CUDA=1 skips the CUDA extension, GA_SKIP_CPU_EXT=1 the CPU one; TORCH_CUDA_ARCH_LIST picks the target
architectures (e.g. "9.0" -> sm_90); CUDA_HOME (or nvcc on PATH) locates the toolkit.
"""
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from cuda_build import cuda_extensions  # noqa: E402  (submodules/cuda_build.py)

PACKAGE = "diff_gaussian_rasterization"


def cpu_extensions():
    """The `_cpu` extension (C++/OpenMP rasterizer for CPU tensors), or [] without a compiler."""
    if os.environ.get("GA_SKIP_CPU_EXT", "") == "1" or shutil.which(os.environ.get("CXX", "c++")) is None:
        print("no C++ compiler (or GA_SKIP_CPU_EXT=1): CPU tensors use the pure-PyTorch reference")
        return []
    from torch.utils.cpp_extension import CppExtension

    cpu_dir = os.path.join("csrc", "cpu")
    return [CppExtension(
        name=f"{PACKAGE}._cpu",
        sources=[os.path.join(cpu_dir, f) for f in ("rasterize_cpu.cpp", "splat_math.cpp")],
        include_dirs=[os.path.join(HERE, "csrc", "cpu")],
        extra_compile_args=["-O3", "-fopenmp", "-march=x86-64-v2"],
        extra_link_args=["-fopenmp"],
    )]


ext_modules, cmdclass = cuda_extensions(PACKAGE, HERE, ("bindings.cpp", "workspace.cpp", "forward.cu", "backward.cu"),
                                        "nvcc not found: installing the pure-PyTorch reference only",
                                        nvcc_flags=("--expt-relaxed-constexpr",))
ext_modules = ext_modules + cpu_extensions()
if ext_modules and not cmdclass:
    from torch.utils.cpp_extension import BuildExtension

    cmdclass = {"build_ext": BuildExtension}
setup(
    name="diff_gaussian_rasterization",
    version="1.0.0",
    description="Tile-based differentiable Gaussian splatting rasterizer (CUDA + PyTorch reference)",
    packages=[PACKAGE],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.9",
)
