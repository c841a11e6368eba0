"""Pure-PyTorch SSIM: the definition the fused CUDA kernels implement (and their CPU fallback).

11x11 Gaussian window (sigma 1.5, normalised 1D taps g, 2D window outer(g, g)), per channel,
'same' filtering with zero padding 5, C1 = 0.01^2, C2 = 0.03^2:
``S = ((2 mu1 mu2 + C1)(2 sigma12 + C2)) / ((mu1^2 + mu2^2 + C1)(sigma1^2 + sigma2^2 + C2))``
with ``sigma1^2 = G*(x^2) - mu1^2``, ``sigma12 = G*(xy) - mu1 mu2``; the loss value is ``S.mean()``.
Everything here is differentiable by autograd in both images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["C1", "C2", "WINDOW", "SIGMA", "gaussian_taps", "check_images", "ssim_map", "ssim", "ssim_with_grad"]

C1 = 0.01**2
C2 = 0.03**2
WINDOW = 11
SIGMA = 1.5


def gaussian_taps(device=None, dtype=torch.float32) -> Tensor:
    """The normalised 1D Gaussian ``(11,)`` (sigma 1.5, centred on tap 5)."""
    x = torch.arange(WINDOW, device=device, dtype=dtype) - (WINDOW // 2)
    g = torch.exp(-(x * x) / (2.0 * SIGMA * SIGMA))
    return g / g.sum()


def check_images(img1: Tensor, img2: Tensor) -> None:
    """Raise a clear error unless both are same-shaped ``(C,H,W)`` / ``(B,C,H,W)`` tensors."""
    for name, t in (("img1", img1), ("img2", img2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"ga_ssim: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(f"ga_ssim: {name} must be (C,H,W) or (B,C,H,W), got {tuple(t.shape)}")
        if t.shape[-1] == 0 or t.shape[-2] == 0 or t.shape[-3] == 0:
            raise ValueError(f"ga_ssim: {name} is empty: {tuple(t.shape)}")
    if img1.shape != img2.shape:
        raise ValueError(f"ga_ssim: image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")


def _window(x: Tensor) -> Tensor:
    """The depthwise 2D window ``(C, 1, 11, 11)`` (outer product of the taps) for ``(B,C,H,W)`` x."""
    g = gaussian_taps(x.device, x.dtype)
    return (g[:, None] * g[None, :]).expand(x.shape[1], 1, WINDOW, WINDOW).contiguous()


def _filter(x: Tensor, window: Tensor) -> Tensor:
    """'Same' 11x11 Gaussian filtering of every channel of ``(B,C,H,W)``, zero padding 5."""
    return F.conv2d(x, window, padding=WINDOW // 2, groups=x.shape[1])


def ssim_map(img1: Tensor, img2: Tensor) -> Tensor:
    """Per-pixel SSIM, same shape as the inputs (computed in their dtype)."""
    check_images(img1, img2)
    squeeze = img1.dim() == 3
    x, y = (img1[None], img2[None]) if squeeze else (img1, img2)
    y = y.to(x.dtype)
    window = _window(x)

    def filt(t: Tensor) -> Tensor:
        return _filter(t, window)

    mu1, mu2 = filt(x), filt(y)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(x * x) - mu1_sq
    sigma2_sq = filt(y * y) - mu2_sq
    sigma12 = filt(x * y) - mu1_mu2
    s = ((2 * mu1_mu2 + C1) * (2 * sigma12 + C2)) / ((mu1_sq + mu2_sq + C1) * (sigma1_sq + sigma2_sq + C2))
    return s[0] if squeeze else s


def ssim(img1: Tensor, img2: Tensor) -> Tensor:
    """Mean SSIM over every pixel and channel (a 0-d tensor)."""
    return ssim_map(img1, img2).mean()


def ssim_with_grad(img1: Tensor, img2: Tensor) -> tuple[Tensor, Tensor]:
    """Mean SSIM and its gradient w.r.t. ``img1`` by the closed form the CUDA kernels use.

    With ``A = 2 mu1 mu2 + C1``, ``B = 2 sigma12 + C2``, ``C = mu1^2 + mu2^2 + C1``,
    ``D = sigma1^2 + sigma2^2 + C2`` and ``S = AB / (CD)``, holding ``E[x^2] = G*(x^2)`` and
    ``E[xy] = G*(xy)`` as the variables beside ``mu1 = G*x``:
    ``dS/dmu1 = 2 (mu2 (B - A) + mu1 S (C - D)) / (CD)``, ``dS/dE[x^2] = -S / D``,
    ``dS/dE[xy] = 2A / (CD)``; the filter is symmetric with zero padding, so its adjoint is
    itself and ``dL/dx = (G*dS/dmu1 + 2x G*dS/dE[x^2] + y G*dS/dE[xy]) / N`` for ``L = mean S``.
    """
    check_images(img1, img2)
    squeeze = img1.dim() == 3
    x, y = (img1[None], img2[None]) if squeeze else (img1, img2)
    x = x.detach()
    y = y.detach().to(x.dtype)
    window = _window(x)

    def filt(t: Tensor) -> Tensor:
        return _filter(t, window)

    mu1, mu2 = filt(x), filt(y)
    e11, e22, e12 = filt(x * x), filt(y * y), filt(x * y)
    a = 2 * mu1 * mu2 + C1
    b = 2 * (e12 - mu1 * mu2) + C2
    c = mu1 * mu1 + mu2 * mu2 + C1
    d = (e11 - mu1 * mu1) + (e22 - mu2 * mu2) + C2
    s = a * b / (c * d)
    d_mu = 2 * (mu2 * (b - a) + mu1 * s * (c - d)) / (c * d)
    d_e11 = -s / d
    d_e12 = 2 * a / (c * d)
    n = s.numel()
    grad = (filt(d_mu) + 2 * x * filt(d_e11) + y * filt(d_e12)) / n
    return s.mean(), (grad[0] if squeeze else grad)
