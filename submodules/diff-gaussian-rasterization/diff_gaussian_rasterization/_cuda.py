"""Entry point of the compiled tile rasterizer ``diff_gaussian_rasterization._C``.

:func:`rasterize_gaussians_cuda` (same arguments and results as
:func:`diff_gaussian_rasterization.reference.rasterize_gaussians`) calls ``_C.rasterize``, a C++
autograd function of the forward and backward passes (``csrc/bindings.cpp``): inputs of other
dtypes or devices are converted there, and gradients return in the inputs' shapes.  The kernels implement the
reference's math (SPEC section 6) and its gradient conventions: ``means2D.grad`` holds
``dL/d ndc`` (``dL/d pixel * (W/2, H/2)``), the 0.99 alpha clamp passes gradients straight
through, a clamped EWA coordinate is a constant, and quaternions are normalised inside.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from . import _C

__all__ = ["rasterize_gaussians_cuda", "render_cuda", "workspace_bytes", "release_workspaces"]


def _centre(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def _check_finite(named: dict) -> None:
    for name, t in named.items():
        if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"diff_gaussian_rasterization (debug): {name} holds NaN or Inf values")


def rasterize_gaussians_cuda(means3D: Tensor, means2D: Optional[Tensor], sh: Optional[Tensor],
                             colors_precomp: Optional[Tensor], opacities: Tensor, scales: Optional[Tensor],
                             rotations: Optional[Tensor], cov3Ds_precomp: Optional[Tensor],
                             raster_settings: Any) -> Tuple[Tensor, Tensor]:
    """Render with the CUDA kernels: ``(color (3, H, W) float32, radii (N,) int32)``.

    Absent optional inputs are ``None`` or empty tensors.  Colours come from ``colors_precomp`` when
    given, else from ``sh``; covariances from ``cov3Ds_precomp`` when given, else from ``scales`` and
    ``rotations``.  With ``raster_settings.debug`` the inputs are checked for NaN/Inf and every
    kernel launch is followed by a synchronising error check.
    """
    if not means3D.is_cuda:
        raise RuntimeError(f"rasterize_gaussians_cuda needs CUDA tensors, got means3D on {means3D.device}")
    n = means3D.shape[0]

    def absent(t: Optional[Tensor]) -> bool:
        return t is None or (t.numel() == 0 and n > 0)

    sh, colors_precomp, scales, rotations, cov3Ds_precomp = (
        None if absent(t) else t for t in (sh, colors_precomp, scales, rotations, cov3Ds_precomp))
    if colors_precomp is not None:
        sh = None  # precomputed colours win, as in the reference
    if cov3Ds_precomp is not None:
        scales, rotations = None, None
    if bool(raster_settings.debug):
        _check_finite({"means3D": means3D, "opacities": opacities, "shs": sh, "colors_precomp": colors_precomp,
                       "scales": scales, "rotations": rotations, "cov3D_precomp": cov3Ds_precomp,
                       "viewmatrix": raster_settings.viewmatrix, "projmatrix": raster_settings.projmatrix,
                       "campos": raster_settings.campos, "bg": raster_settings.bg})
    return render_cuda(means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
                       raster_settings)


def render_cuda(means3D: Tensor, means2D: Optional[Tensor], sh: Optional[Tensor], colors_precomp: Optional[Tensor],
                opacities: Tensor, scales: Optional[Tensor], rotations: Optional[Tensor],
                cov3Ds_precomp: Optional[Tensor], raster_settings: Any) -> Tuple[Tensor, Tensor]:
    """:func:`rasterize_gaussians_cuda` for inputs already normalised and checked (absent ones
    ``None``, one colour and one covariance source, CUDA tensors, debug checks done): the
    per-call path of :func:`diff_gaussian_rasterization.rasterize_gaussians`."""
    if sh is not None and sh.dim() == 2:
        sh = sh.reshape(sh.shape[0], -1, 3)
    s = raster_settings
    color, radii = _C.rasterize(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp, s.bg, s.viewmatrix,
        s.projmatrix, s.campos, getattr(s, "intrinsics", None), getattr(s, "pair_count", None),
        float(s.scale_modifier), float(s.tanfovx), float(s.tanfovy), int(s.image_height), int(s.image_width),
        int(s.sh_degree), bool(s.debug), _centre(getattr(s, "cx", None)), _centre(getattr(s, "cy", None)),
        int(getattr(s, "pair_capacity", 0) or 0))
    return color, radii


def workspace_bytes() -> int:
    """Bytes of GPU memory held by the calling thread's depth-order workspaces (``csrc/workspace.h``:
    one per device and stream this thread rendered on; they come from PyTorch's caching allocator)."""
    return int(_C.workspace_bytes())


def release_workspaces() -> None:
    """Free the calling thread's depth-order workspaces (after their queued work finishes); the next
    call on a stream makes its workspace again."""
    _C.release_workspaces()
