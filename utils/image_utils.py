"""Image metrics on ``[0, 1]`` float images.

PSNR follows SPEC 5: ``20 log10(1 / sqrt(MSE))`` with the MSE taken over every pixel and channel
of one image. ``psnr`` accepts one image ``(C, H, W)`` (returns a 0-dim tensor) or a batch
``(B, C, H, W)`` (returns ``(B,)``). Identical images would give +inf; the MSE is floored at
``1e-10`` (100 dB) so that averages over views stay finite.
"""
from __future__ import annotations

import torch

__all__ = ["mse", "psnr", "MSE_FLOOR"]

MSE_FLOOR = 1e-10


def _per_image(x: torch.Tensor, name: str) -> torch.Tensor:
    """Flatten to ``(B, C*H*W)``; a single ``(C, H, W)`` image becomes a batch of one."""
    if x.dim() == 3:
        return x.reshape(1, -1)
    if x.dim() == 4:
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"{name}: expected an image (C,H,W) or a batch (B,C,H,W), got shape {tuple(x.shape)}")


def mse(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: 0-dim for ``(C,H,W)`` inputs, ``(B,)`` for batches."""
    if img1.shape != img2.shape:
        raise ValueError(f"mse: image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    a = _per_image(img1, "img1").to(torch.float64)
    b = _per_image(img2, "img2").to(torch.float64)
    value = ((a - b) ** 2).mean(dim=1)
    return value[0] if img1.dim() == 3 else value


def psnr(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in ``[0, 1]`` (float64 result)."""
    err = mse(img1, img2).clamp_min(MSE_FLOOR)
    return 20.0 * torch.log10(1.0 / torch.sqrt(err))
