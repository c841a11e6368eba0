"""Install `splat_binding` (splats bound to mesh triangles); build its CUDA extension `_C` only where nvcc exists.

Environment: GA_SKIP_CUDA=1 skips the extension; TORCH_CUDA_ARCH_LIST picks the target
architectures (e.g. "9.0" -> sm_90); CUDA_HOME (or nvcc on PATH) locates the toolkit.
Without the extension the package still installs and serves the pure-PyTorch reference.
"""
import os
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "splat_binding"


def find_cuda_home():
    """Return the CUDA toolkit folder holding bin/nvcc, or None (also when GA_SKIP_CUDA=1)."""
    if os.environ.get("GA_SKIP_CUDA", "") == "1":
        return None
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def cuda_extensions():
    """The `_C` extension and its build command, or ([], {}) when no nvcc is available."""
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("splat_binding: nvcc not found (or GA_SKIP_CUDA=1): installing the pure-PyTorch reference only")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext = CUDAExtension(
        name=f"{PACKAGE}._C",
        sources=[os.path.join("csrc", f) for f in ("binding.cu",)],
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
setup(
    name="splat_binding",
    version="1.0.0",
    description="World position, scale and rotation of mesh-bound splats: one CUDA kernel forward, one backward",
    packages=[PACKAGE],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.9",
)
