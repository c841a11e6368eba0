"""Independent NumPy implementations that several test files hold the toolkit to."""
from __future__ import annotations

import numpy as np


def numpy_ssim_map(a: np.ndarray, b: np.ndarray, win: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM map of (C, H, W) arrays per SPEC 5: a Gaussian window (sigma 1.5), zero-padded 'same'
    filtering written as explicit sums of shifted copies, C1 = 0.01^2, C2 = 0.03^2, float64."""
    r = win // 2
    g = np.exp(-((np.arange(win) - r) ** 2) / (2 * sigma**2))
    g /= g.sum()
    w2 = np.outer(g, g)
    _, H, W = a.shape

    def filt(x: np.ndarray) -> np.ndarray:
        xp = np.pad(x, ((0, 0), (r, r), (r, r)))
        out = np.zeros_like(x)
        for dy in range(win):
            for dx in range(win):
                out += w2[dy, dx] * xp[:, dy:dy + H, dx:dx + W]
        return out

    a = a.astype(np.float64)
    b = b.astype(np.float64)
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a**2
    s_bb = filt(b * b) - mu_b**2
    s_ab = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))


def numpy_ssim(a: np.ndarray, b: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Mean of :func:`numpy_ssim_map`."""
    return float(numpy_ssim_map(a, b, win, sigma).mean())


def nerf_pixel_coords(full_proj_transform, X: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) pixel coordinates of world points ``X`` in the NeRF/COLMAP convention (pixel i covers
    [i, i + 1)) through a transposed full projection and the rasterizer's NDC map, which puts pixel
    centres at integers: ``u = ((ndc + 1) W - 1) / 2 + 0.5``. float64 throughout."""
    P = np.asarray(full_proj_transform, dtype=np.float64)
    p = np.concatenate([X, np.ones((len(X), 1))], 1) @ P
    ndc = p[:, :2] / p[:, 3:4]
    return np.stack([((ndc[:, 0] + 1) * width - 1) / 2 + 0.5, ((ndc[:, 1] + 1) * height - 1) / 2 + 0.5], 1)
