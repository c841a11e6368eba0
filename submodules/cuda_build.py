"""Build helpers shared by the setup.py of every package under submodules/.

Each package builds its CUDA extension ``<package>._C`` only where nvcc is found; without it the
package still installs and serves its pure-PyTorch (or CPU) code.

Environment: GA_SKIP_CUDA=1 skips the CUDA extension; TORCH_CUDA_ARCH_LIST picks the target
architectures (e.g. "9.0" -> sm_90); CUDA_HOME (or CUDA_PATH, or nvcc on PATH) locates the toolkit.
"""
import os
import shutil
from typing import Dict, List, Sequence, Tuple


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


def cuda_extensions(package: str, here: str, sources: Sequence[str], without_nvcc: str,
                    nvcc_flags: Sequence[str] = ()) -> Tuple[List, Dict]:
    """The ``<package>._C`` extension built from ``csrc/<sources>`` and its build command, or
    ``([], {})`` (after printing ``without_nvcc``) when no nvcc is available."""
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print(without_nvcc)
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext = CUDAExtension(
        name=f"{package}._C",
        sources=[os.path.join("csrc", f) for f in sources],
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *nvcc_flags]},
    )
    return [ext], {"build_ext": BuildExtension}
