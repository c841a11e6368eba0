"""Autograd wrapper of the compiled tile rasterizer ``diff_gaussian_rasterization._C``.

Entry point: :func:`rasterize_gaussians_cuda` (same arguments and results as
:func:`diff_gaussian_rasterization.reference.rasterize_gaussians`).  The kernels implement the
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

__all__ = ["rasterize_gaussians_cuda"]


def _f32(t: Optional[Tensor], empty: Tensor) -> Tensor:
    """Contiguous float32 tensor (``empty`` for absent inputs); the extension checks devices."""
    if t is None:
        return empty
    if t.dtype is not torch.float32 or not t.is_cuda:
        t = t.detach().to(device=empty.device, dtype=torch.float32)
    return t if t.is_contiguous() else t.contiguous()


def _centre(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def _optional(t: Optional[Tensor], empty: Tensor) -> Tensor:
    """A device-side setting (intrinsics, pair_count) as given, or ``empty`` when absent; the
    extension checks dtype, device and size."""
    return empty if t is None else t


def _check_finite(named: dict) -> None:
    for name, t in named.items():
        if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"diff_gaussian_rasterization (debug): {name} holds NaN or Inf values")


class _RasterizeGaussians(torch.autograd.Function):
    """Forward/backward through ``_C.rasterize_forward`` / ``_C.rasterize_backward``."""

    @staticmethod
    def forward(ctx: Any, means3D: Tensor, means2D: Tensor, sh: Tensor, colors_precomp: Tensor,
                opacities: Tensor, scales: Tensor, rotations: Tensor, cov3Ds_precomp: Tensor,
                settings: Any, shapes: Tuple[Any, ...]) -> Tuple[Tensor, Tensor]:
        empty = means3D.new_empty(0, dtype=torch.float32)
        m3 = _f32(means3D, empty)
        bg = _f32(settings.bg, empty)
        view = _f32(settings.viewmatrix, empty)
        proj = _f32(settings.projmatrix, empty)
        campos = _f32(settings.campos, empty)
        opac = _f32(opacities, empty)
        colors, sc, rot, cov, shs = (_f32(t, empty) if t.numel() else empty
                                     for t in (colors_precomp, scales, rotations, cov3Ds_precomp, sh))
        args = (bg, m3, colors, opac, sc, rot, float(settings.scale_modifier), cov, view, proj,
                float(settings.tanfovx), float(settings.tanfovy), int(settings.image_height),
                int(settings.image_width), shs, int(settings.sh_degree), campos, bool(settings.debug),
                _centre(getattr(settings, "cx", None)), _centre(getattr(settings, "cy", None)))
        intrinsics = _optional(getattr(settings, "intrinsics", None), empty)
        pair_count = _optional(getattr(settings, "pair_count", None), empty)
        color, radii, geom, bins, image = _C.rasterize_forward(
            *args, intrinsics, int(getattr(settings, "pair_capacity", 0) or 0), pair_count)
        ctx.settings = settings
        ctx.shapes = shapes
        ctx.save_for_backward(bg, m3, radii, colors, opac, sc, rot, cov, view, proj, shs, campos, geom, bins, image,
                              intrinsics)
        ctx.mark_non_differentiable(radii)
        return color, radii

    @staticmethod
    def backward(ctx: Any, grad_color: Tensor, _grad_radii: Tensor):
        s = ctx.settings
        (bg, m3, radii, colors, opac, sc, rot, cov, view, proj, shs, campos, geom, bins, image,
         intrinsics) = ctx.saved_tensors
        grad = grad_color if grad_color.dtype is torch.float32 else grad_color.to(torch.float32)
        grad = grad if grad.is_contiguous() else grad.contiguous()
        if bool(s.debug):
            _check_finite({"grad of the rendered image": grad})
        dmeans2D, dcolors, dopac, dmeans3D, dcov, dsh, dscales, drot = _C.rasterize_backward(
            bg, m3, radii, colors, opac, sc, rot, float(s.scale_modifier), cov, view, proj,
            float(s.tanfovx), float(s.tanfovy), grad, shs, int(s.sh_degree), campos, geom, bins, image,
            bool(s.debug), _centre(getattr(s, "cx", None)), _centre(getattr(s, "cy", None)), intrinsics)
        (m3_shape, m2_shape, sh_shape, col_shape, op_shape, sc_shape, rot_shape, cov_shape) = ctx.shapes
        needs = ctx.needs_input_grad

        def shaped(g: Tensor, shape: Optional[torch.Size], need: bool) -> Optional[Tensor]:
            if not need or shape is None:
                return None
            if g.numel() == 0 and math.prod(shape) != 0:
                return None
            return g.reshape(shape) if tuple(g.shape) != tuple(shape) else g

        g_m2 = None
        if needs[1] and m2_shape is not None:
            g_m2 = dmeans2D[:, : m2_shape[-1]].reshape(m2_shape) if len(m2_shape) == 2 else None
        return (shaped(dmeans3D, m3_shape, needs[0]), g_m2, shaped(dsh, sh_shape, needs[2]),
                shaped(dcolors, col_shape, needs[3]), shaped(dopac, op_shape, needs[4]),
                shaped(dscales, sc_shape, needs[5]), shaped(drot, rot_shape, needs[6]),
                shaped(dcov, cov_shape, needs[7]), None, None)


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
    if sh is not None and sh.dim() == 2:
        sh = sh.reshape(n, -1, 3)

    def shape(t: Optional[Tensor]) -> Optional[torch.Size]:
        return None if t is None else t.shape

    shapes = (shape(means3D), shape(means2D), shape(sh), shape(colors_precomp), shape(opacities),
              shape(scales), shape(rotations), shape(cov3Ds_precomp))
    dummy = means3D.new_empty(0)
    return _RasterizeGaussians.apply(
        means3D, means2D if means2D is not None else dummy, sh if sh is not None else dummy,
        colors_precomp if colors_precomp is not None else dummy, opacities,
        scales if scales is not None else dummy, rotations if rotations is not None else dummy,
        cov3Ds_precomp if cov3Ds_precomp is not None else dummy, raster_settings, shapes)
