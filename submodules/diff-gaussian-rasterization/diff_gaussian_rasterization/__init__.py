"""Differentiable Gaussian-splat rasterizer with a CUDA backend and a pure-PyTorch reference.

API compatible with graphdeco's ``diff_gaussian_rasterization``::

    settings = GaussianRasterizationSettings(image_height, image_width, tanfovx, tanfovy, bg,
                                             scale_modifier, viewmatrix, projmatrix, sh_degree,
                                             campos, prefiltered, debug, cx=None, cy=None,
                                             backend="auto")
    color, radii = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., scales=...,
                                                rotations=...)

``backend``: ``"auto"`` uses the compiled CUDA extension (``_C``) when it imports and the inputs are
CUDA tensors, else :mod:`diff_gaussian_rasterization.reference`; ``"cuda"`` / ``"reference"`` force
one.  The math (SPEC section 6) is documented in :mod:`.reference`, which defines it.

Three optional settings let one call run without any host synchronisation, so that a training
step can be captured as a CUDA graph (CUDA backend only):

* ``pair_capacity > 0``: the (tile, splat) pair buffer has this fixed size instead of the exact
  count (which costs one host synchronisation per call). If a frame needs more pairs, the extra
  ones are dropped and the image is incomplete: the caller must check ``pair_count``.
* ``pair_count``: an int64 CUDA tensor whose first element receives the exact number of pairs.
* ``intrinsics``: a float64 CUDA tensor ``(tanfovx, tanfovy, cx, cy)`` (NaN cx / cy: centred)
  read on the device instead of the host values; ``image_height`` / ``image_width`` still apply.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import reference
from ._checks import check_finite, check_inputs

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians", "cuda_available",
           "resolve_backend", "check_finite", "BACKENDS", "cpu_available", "cuda_workspace_bytes",
           "release_cuda_workspaces"]

BACKENDS = ("auto", "cuda", "cpu", "reference")


class GaussianRasterizationSettings(NamedTuple):
    """Camera and render settings (matrices stored transposed: ``p_view = [p, 1] @ viewmatrix``).

    ``cx, cy``: principal point in pixels (``None`` = image centre ``(W - 1) / 2``, ``(H - 1) / 2``);
    it must agree with ``projmatrix`` and sets the asymmetric EWA clamp.  ``backend``: ``"auto"``,
    ``"cuda"`` or ``"reference"``.
    """

    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: Tensor
    scale_modifier: float
    viewmatrix: Tensor
    projmatrix: Tensor
    sh_degree: int
    campos: Tensor
    prefiltered: bool
    debug: bool
    cx: Optional[float] = None
    cy: Optional[float] = None
    backend: str = "auto"
    pair_capacity: int = 0
    pair_count: Optional[Tensor] = None
    intrinsics: Optional[Tensor] = None


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when the compiled extension ``diff_gaussian_rasterization._C`` imports."""
    try:
        importlib.import_module(f"{__name__}._C")
    except ImportError:
        return False
    return True


def cpu_available() -> bool:
    """True when the compiled C++ CPU extension ``diff_gaussian_rasterization._cpu`` imports
    (not cached: a development build may register it later)."""
    from ._cpu_backend import cpu_available as _available

    return _available()


def resolve_backend(settings: GaussianRasterizationSettings, means3D: Tensor) -> str:
    """``"cuda"``, ``"cpu"`` or ``"reference"`` for these settings and inputs (``ValueError``/
    ``RuntimeError`` if impossible). ``auto``: CUDA tensors use the CUDA extension, float32 CPU
    tensors the C++ CPU extension, anything else (float64 checks, nothing built) the reference."""
    backend = getattr(settings, "backend", "auto") or "auto"
    if (backend == "auto" or backend == "cuda") and means3D.is_cuda and cuda_available():
        return "cuda"  # the common case first
    if backend not in BACKENDS:
        raise ValueError(f"raster_settings.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "cuda":
        if not cuda_available():
            raise RuntimeError("backend='cuda' requested but the CUDA extension diff_gaussian_rasterization._C "
                               "is not built (reinstall the package where nvcc is available, or use "
                               "backend='reference')")
        if not means3D.is_cuda:
            raise RuntimeError(f"backend='cuda' needs CUDA tensors, got means3D on {means3D.device}")
        return "cuda"
    if backend == "cpu":
        if means3D.is_cuda:
            raise RuntimeError(f"backend='cpu' needs CPU tensors, got means3D on {means3D.device}")
        if not cpu_available():
            raise RuntimeError("backend='cpu' requested but the C++ extension diff_gaussian_rasterization._cpu "
                               "is not built (reinstall the package with a C++ compiler, or use backend='reference')")
        return "cpu"
    if means3D.is_cuda:
        return "cuda" if cuda_available() else "reference"
    return "cpu" if means3D.dtype != torch.float64 and cpu_available() else "reference"


@functools.lru_cache(maxsize=1)
def _cuda_entry() -> Callable[..., Tuple[Tensor, Tensor]]:
    """The CUDA backend's per-call entry for checked inputs (imported once, lazily: the package
    works without ``_C``)."""
    from ._cuda import render_cuda
    return render_cuda


def cuda_workspace_bytes() -> int:
    """GPU bytes held by the calling thread's depth-order workspaces of the CUDA backend (one per
    device and stream it rendered on, from PyTorch's caching allocator); 0 without the extension."""
    if not cuda_available():
        return 0
    from ._cuda import workspace_bytes
    return workspace_bytes()


def release_cuda_workspaces() -> None:
    """Free the calling thread's depth-order workspaces of the CUDA backend (made again by the next
    call on each stream); nothing to do without the extension."""
    if cuda_available():
        from ._cuda import release_workspaces
        release_workspaces()


def _none_if_empty(t: Optional[Tensor], n: int) -> Optional[Tensor]:
    return None if t is None or (t.numel() == 0 and n > 0) else t


def _host_settings(settings: GaussianRasterizationSettings) -> GaussianRasterizationSettings:
    """Settings for the CPU and reference backends: device intrinsics become host values; the
    fixed-size pair buffer is a CUDA-backend feature."""
    if int(getattr(settings, "pair_capacity", 0) or 0) > 0 or getattr(settings, "pair_count", None) is not None:
        raise ValueError("raster_settings.pair_capacity / pair_count need the CUDA backend")
    intrinsics = getattr(settings, "intrinsics", None)
    if intrinsics is None:
        return settings
    tanfovx, tanfovy, cx, cy = (float(v) for v in intrinsics.detach().reshape(-1).tolist())
    return settings._replace(tanfovx=tanfovx, tanfovy=tanfovy, cx=None if cx != cx else cx,
                             cy=None if cy != cy else cy, intrinsics=None)


def rasterize_gaussians(means3D: Tensor, means2D: Optional[Tensor], sh: Optional[Tensor],
                        colors_precomp: Optional[Tensor], opacities: Tensor, scales: Optional[Tensor],
                        rotations: Optional[Tensor], cov3Ds_precomp: Optional[Tensor],
                        raster_settings: GaussianRasterizationSettings) -> Tuple[Tensor, Tensor]:
    """Validate the inputs and render with the selected backend: ``(color (3, H, W), radii (N,) int32)``.

    Absent optional inputs may be ``None`` or empty tensors (as the original passed them); the
    backend entry points receive ``None`` for them.
    """
    n = means3D.shape[0] if means3D.dim() else 0
    sh, colors_precomp, scales, rotations, cov3Ds_precomp = (
        _none_if_empty(t, n) for t in (sh, colors_precomp, scales, rotations, cov3Ds_precomp))
    check_inputs(raster_settings, means3D, means2D, opacities, sh, colors_precomp, scales, rotations,
                 cov3Ds_precomp)
    backend = resolve_backend(raster_settings, means3D)
    if backend == "cuda":
        entry = _cuda_entry()
    elif backend == "cpu":
        raster_settings = _host_settings(raster_settings)
        from ._cpu_backend import rasterize_gaussians_cpu as entry
    else:
        raster_settings = _host_settings(raster_settings)
        entry = reference.rasterize_gaussians
    return entry(means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
                 raster_settings)


class GaussianRasterizer(nn.Module):
    """Module wrapper holding the settings; ``forward`` renders, ``markVisible`` tests the near plane."""

    def __init__(self, raster_settings: GaussianRasterizationSettings):
        super().__init__()
        self.raster_settings = raster_settings

    def markVisible(self, positions: Tensor) -> Tensor:  # noqa: N802 (original name)
        """Boolean mask ``(N,)`` of points with view depth > 0.2 (no gradient)."""
        return reference.mark_visible(positions, self.raster_settings.viewmatrix)

    def forward(self, means3D: Tensor, means2D: Tensor, opacities: Tensor, shs: Optional[Tensor] = None,
                colors_precomp: Optional[Tensor] = None, scales: Optional[Tensor] = None,
                rotations: Optional[Tensor] = None,
                cov3D_precomp: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Render; see :func:`rasterize_gaussians`.  Returns ``(color (3, H, W), radii (N,) int32)``."""
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales, rotations,
                                   cov3D_precomp, self.raster_settings)
