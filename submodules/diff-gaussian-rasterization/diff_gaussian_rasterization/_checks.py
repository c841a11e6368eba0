"""Input validation shared by both backends (shapes always; NaN/Inf in debug mode)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor


def check_inputs(settings: Any, means3D: Tensor, means2D: Optional[Tensor], opacities: Tensor,
                 shs: Optional[Tensor], colors_precomp: Optional[Tensor], scales: Optional[Tensor],
                 rotations: Optional[Tensor], cov3D_precomp: Optional[Tensor]) -> None:
    """Raise ``ValueError`` naming the argument when an input is missing, misshaped or (debug) not finite.

    Rules (as the original): exactly one of ``shs`` / ``colors_precomp``; either ``scales`` and
    ``rotations`` or ``cov3D_precomp``.  Shapes: ``means3D (N, 3)``, ``means2D (N, 2|3)``,
    ``opacities (N,)`` or ``(N, 1)``, ``shs (N, K, 3)`` with ``K >= (sh_degree + 1)^2``,
    ``colors_precomp (N, 3)``, ``scales (N, 3)``, ``rotations (N, 4)``, ``cov3D_precomp (N, 6)``,
    ``bg`` / ``campos`` 3 values, ``viewmatrix`` / ``projmatrix (4, 4)``, image size >= 1.
    """
    if (shs is None) == (colors_precomp is None):
        raise ValueError("provide exactly one of shs or colors_precomp "
                         f"(got {'both' if shs is not None else 'neither'})")
    if cov3D_precomp is None and (scales is None or rotations is None):
        raise ValueError("provide either scales and rotations, or cov3D_precomp "
                         f"(scales is {_given(scales)}, rotations is {_given(rotations)})")
    if cov3D_precomp is not None and (scales is not None or rotations is not None):
        raise ValueError("provide either scales and rotations, or cov3D_precomp, not both")
    _check_settings(settings)
    _check_shapes(settings, means3D, (("means2D", means2D), ("opacities", opacities), ("shs", shs),
                                      ("colors_precomp", colors_precomp), ("scales", scales),
                                      ("rotations", rotations), ("cov3D_precomp", cov3D_precomp)))
    if bool(getattr(settings, "debug", False)):
        check_finite({"means3D": means3D, "means2D": means2D, "opacities": opacities, "shs": shs,
                      "colors_precomp": colors_precomp, "scales": scales, "rotations": rotations,
                      "cov3D_precomp": cov3D_precomp})
        check_finite({"bg": settings.bg, "viewmatrix": settings.viewmatrix, "projmatrix": settings.projmatrix,
                      "campos": settings.campos})


def _given(t: Optional[Tensor]) -> str:
    return "missing" if t is None else "given"


def _check_settings(settings: Any) -> None:
    for name in ("image_height", "image_width"):
        if int(getattr(settings, name)) < 1:
            raise ValueError(f"raster_settings.{name} must be >= 1, got {getattr(settings, name)}")
    for name in ("tanfovx", "tanfovy"):
        if not float(getattr(settings, name)) > 0:
            raise ValueError(f"raster_settings.{name} must be > 0, got {getattr(settings, name)}")
    capacity = getattr(settings, "pair_capacity", 0) or 0
    if not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"raster_settings.pair_capacity must be an int >= 0, got {capacity!r}")
    count = getattr(settings, "pair_count", None)
    if count is not None and (not isinstance(count, Tensor) or count.dtype != torch.int64 or count.numel() < 1):
        raise ValueError("raster_settings.pair_count must be an int64 tensor with at least one element")
    intrinsics = getattr(settings, "intrinsics", None)
    if intrinsics is not None and (not isinstance(intrinsics, Tensor) or intrinsics.dtype != torch.float64
                                   or intrinsics.numel() != 4):
        raise ValueError("raster_settings.intrinsics must be a float64 tensor of 4 values (tanfovx, tanfovy, cx, cy)")
    degree = int(settings.sh_degree)
    if not 0 <= degree <= 3:
        raise ValueError(f"raster_settings.sh_degree must be in 0..3, got {degree}")
    for name, want in (("bg", 3), ("viewmatrix", 16), ("projmatrix", 16), ("campos", 3)):
        t = getattr(settings, name)
        if not isinstance(t, Tensor):
            raise ValueError(f"raster_settings.{name} must be a torch.Tensor, got {type(t).__name__}")
        if want == 3 and t.numel() != 3:
            raise ValueError(f"raster_settings.{name} must hold 3 values, got shape {tuple(t.shape)}")
        if want == 16 and t.shape != (4, 4):
            raise ValueError(f"raster_settings.{name} must have shape (4, 4), got {tuple(t.shape)}")


def _two_cols(*allowed: int) -> Any:
    return lambda s: len(s) == 2 and s[1] in allowed


# Expected shape of each per-splat input after its N rows (text for the error, predicate on the shape).
_SHAPE_RULES: Dict[str, Tuple[str, Any]] = {
    "means2D": ("(N, 2) or (N, 3)", _two_cols(2, 3)),
    "opacities": ("(N,) or (N, 1)", lambda s: len(s) == 1 or (len(s) == 2 and s[1] == 1)),
    "colors_precomp": ("(N, 3)", _two_cols(3)),
    "scales": ("(N, 3)", _two_cols(3)),
    "rotations": ("(N, 4)", _two_cols(4)),
    "cov3D_precomp": ("(N, 6)", _two_cols(6)),
    "shs": ("(N, K, 3)", lambda s: len(s) == 3 and s[2] == 3),
}


def _check_shapes(settings: Any, means3D: Any, others: Tuple[Tuple[str, Optional[Tensor]], ...]) -> None:
    """Shapes, dtypes and devices of the per-splat inputs (``others``: ``(name, tensor or None)``).
    Runs on every call, so it touches each tensor's metadata once and builds nothing."""
    if not isinstance(means3D, Tensor):
        raise ValueError(f"means3D must be a torch.Tensor, got {type(means3D).__name__}")
    shape = means3D.shape
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"means3D must have shape (N, 3), got {tuple(shape)}")
    n, device = shape[0], means3D.device
    for name, t in others:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        s = t.shape
        if (s[0] if s else None) != n:
            raise ValueError(f"{name} has {s[0] if s else None} rows but means3D has N = {n}")
        text, ok = _SHAPE_RULES[name]
        if not ok(s):
            raise ValueError(f"{name} must have shape {text} with N = {n}, got {tuple(s)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but means3D is on {device}")
        if name == "shs":
            need = (int(settings.sh_degree) + 1) ** 2
            if s[1] < need:
                raise ValueError(f"shs has {s[1]} coefficients per channel but sh_degree "
                                 f"{int(settings.sh_degree)} needs at least {need}")


def check_finite(tensors: Dict[str, Optional[Tensor]]) -> None:
    """Raise ``ValueError`` like ``"means3D contains NaN at 3 entries"`` for the first bad tensor."""
    for name, t in tensors.items():
        if t is None or not isinstance(t, Tensor) or not t.is_floating_point():
            continue
        with torch.no_grad():
            nans = int(torch.isnan(t).sum().item())
            infs = int(torch.isinf(t).sum().item())
        if nans:
            raise ValueError(f"{name} contains NaN at {nans} entries")
        if infs:
            raise ValueError(f"{name} contains Inf at {infs} entries")
