"""Image losses: L1, L2 and SSIM (SPEC 5: 11x11 Gaussian window, sigma 1.5, C1 = 0.01^2,
C2 = 0.03^2, zero-padded 'same' convolution per channel, mean over pixels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["l1_loss", "l2_loss", "gaussian_window", "ssim"]

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def l1_loss(network_output: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return torch.abs(network_output - gt).mean()


def l2_loss(network_output: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return ((network_output - gt) ** 2).mean()


def gaussian_window(window_size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1D Gaussian ``(window_size,)`` centred on the middle tap, built on ``device``
    (no host-to-device copy)."""
    x = torch.arange(window_size, device=device, dtype=dtype) - (window_size // 2)
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _create_window(window_size: int, channel: int, device, dtype) -> torch.Tensor:
    g = gaussian_window(window_size, 1.5, device=device, dtype=dtype)
    w2d = g[:, None] * g[None, :]
    return w2d.expand(channel, 1, window_size, window_size).contiguous()


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, size_average: bool = True) -> torch.Tensor:
    """Structural similarity of ``(C,H,W)`` or ``(B,C,H,W)`` images.

    Returns the mean SSIM (a scalar) when ``size_average``; otherwise the per-image mean ``(B,)``
    (``(1,)`` for unbatched input).
    """
    if img1.shape != img2.shape:
        raise ValueError(f"ssim: image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if img1.dim() == 3:
        img1, img2 = img1[None], img2[None]
    elif img1.dim() != 4:
        raise ValueError(f"ssim: expected (C,H,W) or (B,C,H,W), got {tuple(img1.shape)}")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"ssim: window_size must be odd and positive, got {window_size}")
    channel = img1.shape[1]
    window = _create_window(window_size, channel, img1.device, img1.dtype)
    pad = window_size // 2

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=pad, groups=channel)

    mu1 = filt(img1)
    mu2 = filt(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(img1 * img1) - mu1_sq
    sigma2_sq = filt(img2 * img2) - mu2_sq
    sigma12 = filt(img1 * img2) - mu1_mu2

    ssim_map = ((2 * mu1_mu2 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / (
        (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2)
    )
    if size_average:
        return ssim_map.mean()
    return ssim_map.flatten(1).mean(1)
