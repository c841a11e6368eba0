"""simple_knn.distCUDA2: mean squared distance to the 3 nearest other points.

Expectations: a brute-force NumPy search (CPU fallback, runs everywhere) and scipy's cKDTree
(for the CUDA kernel, marker ``cuda``) on uniform, clustered and duplicated points.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import simple_knn
from simple_knn import distCUDA2, dist_cpu


def brute_force(points: np.ndarray) -> np.ndarray:
    """Mean of the min(3, N-1) smallest squared distances to other points (0 for one point)."""
    n = points.shape[0]
    if n <= 1:
        return np.zeros(n)
    d2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    k = min(3, n - 1)
    return np.sort(d2, axis=1)[:, :k].mean(axis=1)


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.uniform(-5, 5, (8, 3))
    spread = 10.0 ** rng.uniform(-3, -1, 8)
    label = rng.integers(0, 8, n)
    return centres[label] + rng.normal(size=(n, 3)) * spread[label, None]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 300])
def test_cpu_fallback_matches_brute_force(n):
    rng = np.random.default_rng(n)
    pts = rng.normal(size=(n, 3))
    out = distCUDA2(torch.tensor(pts, dtype=torch.float32))
    assert out.shape == (n,) and out.dtype == torch.float32
    ref = brute_force(pts.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-12)


def test_cpu_fallback_clustered_and_duplicates():
    rng = np.random.default_rng(0)
    pts = clustered(400, rng)
    pts[100:110] = pts[100]          # ten copies of one point
    pts[200:202] = pts[201]
    out = dist_cpu(torch.tensor(pts, dtype=torch.float32))
    ref = brute_force(pts.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-12)
    assert (out[100:110] == 0).all()


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        distCUDA2(torch.zeros(5, 2))


# ----------------------------------------------------------------------------------------------
# CUDA kernel
# ----------------------------------------------------------------------------------------------
def _require_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not simple_knn.cuda_available():
        pytest.skip("simple_knn._C is not built")


def _ckdtree(points: np.ndarray) -> np.ndarray:
    return dist_cpu(torch.tensor(points, dtype=torch.float32)).numpy().astype(np.float64)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["uniform", "clustered", "duplicates", "plane", "line"])
@pytest.mark.parametrize("n", [5, 1000, 50_000])
def test_cuda_matches_ckdtree(kind, n):
    _require_cuda()
    rng = np.random.default_rng(n + len(kind))
    if kind == "uniform":
        pts = rng.uniform(-1, 1, (n, 3))
    elif kind == "clustered":
        pts = clustered(n, rng)
    elif kind == "duplicates":
        pts = rng.uniform(-1, 1, (n, 3))
        pts[n // 2:] = pts[: n - n // 2]   # every point twice (all distances to the copy are 0)
    elif kind == "plane":
        pts = np.concatenate([rng.uniform(-1, 1, (n, 2)), np.full((n, 1), 0.5)], 1)
    else:
        pts = np.concatenate([rng.uniform(-3, 3, (n, 1)), np.zeros((n, 2))], 1)
    pts = pts.astype(np.float32)
    from simple_knn._C import distCUDA2 as cuda_dist

    out = cuda_dist(torch.tensor(pts, device="cuda")).cpu().numpy()
    ref = _ckdtree(pts)
    assert out.shape == (n,)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1e-10)
    # the dispatcher takes the same path for CUDA tensors
    np.testing.assert_array_equal(distCUDA2(torch.tensor(pts, device="cuda")).cpu().numpy(), out)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_cuda_small_inputs(n):
    _require_cuda()
    rng = np.random.default_rng(n)
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    from simple_knn._C import distCUDA2 as cuda_dist

    out = cuda_dist(torch.tensor(pts, device="cuda").reshape(n, 3)).cpu().numpy()
    np.testing.assert_allclose(out, brute_force(pts.astype(np.float64)), rtol=1e-5, atol=1e-12)


@pytest.mark.cuda
def test_cuda_one_million_points_sampled_check():
    _require_cuda()
    rng = np.random.default_rng(1)
    pts = clustered(1_000_000, rng).astype(np.float32)
    from simple_knn._C import distCUDA2 as cuda_dist

    out = cuda_dist(torch.tensor(pts, device="cuda")).cpu().numpy()
    ref = _ckdtree(pts)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1e-10)
