"""Mean squared distance to the 3 nearest neighbours (initial splat scales of 3DGS).

``distCUDA2(points (N, 3)) -> (N,) float32`` uses the compiled exact GPU search
``simple_knn._C.distCUDA2`` for CUDA tensors when the extension is built, else a scipy
``cKDTree`` search on the CPU (the result goes back to the input's device).  With fewer than
4 points the mean is over the ``N - 1`` others; a single point gets 0.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["distCUDA2", "dist_cpu", "cuda_available"]


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when the compiled extension ``simple_knn._C`` imports."""
    try:
        importlib.import_module(f"{__name__}._C")
    except ImportError:
        return False
    return True


def _check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor):
        raise TypeError(f"distCUDA2: points must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"distCUDA2: points must have shape (N, 3), got {tuple(points.shape)}")


def dist_cpu(points: Tensor) -> Tensor:
    """cKDTree version of :func:`distCUDA2` (float64 search, float32 result on the input's device)."""
    _check_points(points)
    from scipy.spatial import cKDTree

    pts = points.detach().to("cpu", torch.float64).numpy()
    n = pts.shape[0]
    if n <= 1:
        return torch.zeros(n, dtype=torch.float32, device=points.device)
    k = min(4, n)
    dist, _ = cKDTree(pts).query(pts, k=k)
    # Column 0 is a point at distance 0 (the point itself, or a duplicate: same distances either way).
    mean_sq = np.mean(np.square(dist[:, 1:]), axis=1)
    return torch.from_numpy(mean_sq.astype(np.float32)).to(points.device)


def distCUDA2(points: Tensor) -> Tensor:  # noqa: N802 (original name)
    """Mean squared distance of each point to its 3 nearest other points, ``(N,)`` float32."""
    _check_points(points)
    if points.is_cuda and cuda_available():
        from ._C import distCUDA2 as _dist

        return _dist(points)
    return dist_cpu(points)
