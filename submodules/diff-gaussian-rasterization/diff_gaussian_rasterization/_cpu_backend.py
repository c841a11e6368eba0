"""Autograd wrapper of the compiled CPU (OpenMP) rasterizer ``diff_gaussian_rasterization._cpu``.

Entry point: :func:`rasterize_gaussians_cpu` (same arguments and results as
:func:`diff_gaussian_rasterization.reference.rasterize_gaussians`).  The C++ code implements the
reference's math (SPEC section 6) and gradient conventions in float32: ``means2D.grad`` holds
``dL/d ndc`` (``dL/d pixel * (W/2, H/2)``), the 0.99 alpha clamp passes gradients straight
through, a clamped EWA coordinate is a constant, a clamped SH channel has zero gradient, and
quaternions are normalised inside.  Float64 inputs are computed in float32; the image and the
gradients come back in the inputs' dtypes.

``cpu_available()`` tells whether the extension imports (it is built by setup.py wherever a C++
compiler exists; ``csrc/cpu/build_dev.py`` builds it for development).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .reference import frustum_limits

__all__ = ["rasterize_gaussians_cpu", "cpu_available", "load_cpu_module"]


_LOADED: Dict[str, ModuleType] = {}


def load_cpu_module() -> ModuleType:
    """The compiled module ``diff_gaussian_rasterization._cpu`` (``ImportError`` when not built).

    A successful import is remembered (failures are retried: a development build may be
    registered later in ``sys.modules`` by ``csrc/cpu/build_dev.py``).
    """
    module = _LOADED.get("_cpu")
    if module is None:
        module = importlib.import_module(f"{__package__}._cpu")
        _LOADED["_cpu"] = module
    return module


def cpu_available() -> bool:
    """True when the compiled CPU extension ``diff_gaussian_rasterization._cpu`` imports."""
    try:
        load_cpu_module()
    except ImportError:
        return False
    return True


def _f32(t: Optional[Tensor]) -> Tensor:
    """Contiguous float32 CPU tensor (detached), or an empty one for absent inputs."""
    if t is None:
        return torch.empty(0, dtype=torch.float32)
    t = t.detach()
    if t.dtype is not torch.float32 or t.device.type != "cpu":
        t = t.to(device="cpu", dtype=torch.float32)
    return t if t.is_contiguous() else t.contiguous()


def _camera_args(settings: Any) -> Tuple[Any, ...]:
    """Camera arguments shared by the C++ forward and backward (focal lengths and EWA limits in pixels)."""
    width, height = int(settings.image_width), int(settings.image_height)
    fx = width / (2.0 * float(settings.tanfovx))
    fy = height / (2.0 * float(settings.tanfovy))
    lim_x = frustum_limits(width, fx, getattr(settings, "cx", None))
    lim_y = frustum_limits(height, fy, getattr(settings, "cy", None))
    return (_f32(settings.viewmatrix), _f32(settings.projmatrix), _f32(settings.campos).reshape(3),
            _f32(settings.bg).reshape(3), width, height, fx, fy, lim_x[0], lim_x[1], lim_y[0], lim_y[1],
            float(settings.scale_modifier), int(settings.sh_degree))


class _RasterizeGaussiansCPU(torch.autograd.Function):
    """Forward/backward through ``_cpu.rasterize_forward`` / ``_cpu.rasterize_backward``."""

    @staticmethod
    def forward(ctx: Any, means3D: Tensor, means2D: Optional[Tensor], sh: Optional[Tensor],  # type: ignore[override]
                colors_precomp: Optional[Tensor], opacities: Tensor, scales: Optional[Tensor],
                rotations: Optional[Tensor], cov3Ds_precomp: Optional[Tensor],
                settings: Any) -> Tuple[Tensor, Tensor]:
        module = load_cpu_module()
        inputs = [_f32(t) for t in (means3D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp)]
        cam = _camera_args(settings)
        color, radii, *state = module.rasterize_forward(*inputs, *cam)
        ctx.cam = cam
        ctx.module = module
        ctx.metas = [None if t is None else (t.shape, t.dtype) for t in
                     (means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp)]
        ctx.save_for_backward(*inputs, radii, *state)
        ctx.mark_non_differentiable(radii)
        dtype = means3D.dtype if means3D.is_floating_point() else torch.float32
        return color.to(device=means3D.device, dtype=dtype), radii.to(means3D.device)

    @staticmethod
    def backward(ctx: Any, grad_color: Tensor, _grad_radii: Optional[Tensor]):  # type: ignore[override]
        saved = ctx.saved_tensors
        inputs, state = saved[:7], saved[7:]
        d_m3, d_m2, d_sh, d_col, d_op, d_sc, d_rot, d_cov = ctx.module.rasterize_backward(
            _f32(grad_color), *inputs, *ctx.cam, *state)
        needs = ctx.needs_input_grad

        def shaped(g: Tensor, index: int) -> Optional[Tensor]:
            meta = ctx.metas[index]
            if not needs[index] or meta is None:
                return None
            shape, dtype = meta
            if g.numel() != torch.Size(shape).numel():
                return None  # an unused alternative input (e.g. shs when colors_precomp won)
            return g.reshape(shape).to(dtype)

        g_m2 = None
        if needs[1] and ctx.metas[1] is not None:
            shape, dtype = ctx.metas[1]
            g_m2 = torch.zeros(shape, dtype=dtype)
            g_m2[:, :2] = d_m2.to(dtype)
        return (shaped(d_m3, 0), g_m2, shaped(d_sh, 2), shaped(d_col, 3), shaped(d_op, 4), shaped(d_sc, 5),
                shaped(d_rot, 6), shaped(d_cov, 7), None)


def rasterize_gaussians_cpu(means3D: Tensor, means2D: Optional[Tensor], sh: Optional[Tensor],
                            colors_precomp: Optional[Tensor], opacities: Tensor, scales: Optional[Tensor],
                            rotations: Optional[Tensor], cov3Ds_precomp: Optional[Tensor],
                            raster_settings: Any) -> Tuple[Tensor, Tensor]:
    """Render on the CPU with the C++ rasterizer: ``(color (3, H, W), radii (N,) int32)``.

    Absent optional inputs are ``None`` or empty tensors.  Colours come from ``colors_precomp`` when
    given, else from ``sh``; covariances from ``cov3Ds_precomp`` when given, else from ``scales`` and
    ``rotations`` (as the reference).  ``means2D`` (``(N, 2)`` or ``(N, 3)``, values ignored)
    receives ``dL/d ndc`` in its first two columns.
    """
    if means3D.device.type != "cpu":
        raise RuntimeError(f"rasterize_gaussians_cpu needs CPU tensors, got means3D on {means3D.device}")
    n = means3D.shape[0]

    def absent(t: Optional[Tensor]) -> bool:
        return t is None or (t.numel() == 0 and n > 0)

    sh, colors_precomp, scales, rotations, cov3Ds_precomp = (
        None if absent(t) else t for t in (sh, colors_precomp, scales, rotations, cov3Ds_precomp))
    if n > 0:
        if sh is None and colors_precomp is None:
            raise ValueError("provide exactly one of shs or colors_precomp (got neither)")
        if cov3Ds_precomp is None and (scales is None or rotations is None):
            raise ValueError("provide either scales and rotations, or cov3D_precomp")
    if colors_precomp is not None:
        sh = None
    if cov3Ds_precomp is not None:
        scales = rotations = None
    if means2D is not None and (means2D.dim() != 2 or means2D.shape[0] != n or means2D.shape[1] not in (2, 3)):
        raise ValueError(f"means2D must have shape (N, 2) or (N, 3), got {tuple(means2D.shape)}")
    return _RasterizeGaussiansCPU.apply(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                                        cov3Ds_precomp, raster_settings)
