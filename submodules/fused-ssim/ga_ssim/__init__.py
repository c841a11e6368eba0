"""Fused SSIM for training: one CUDA kernel forward, one backward (issue 11).

``fused_ssim(img1, img2, train=True)`` / ``ssim(img1, img2)`` return the mean SSIM (0-d tensor) of
``(C,H,W)`` or ``(B,C,H,W)`` images, differentiable w.r.t. ``img1`` (the rendered image; ``img2``
is the ground truth). Same definition as :mod:`ga_ssim.reference` and ``utils.loss_utils.ssim``.

Dispatch: float32 CUDA tensors go to the compiled extension ``ga_ssim._C`` when it is built;
anything else (CPU tensors, other dtypes, no extension, or ``img2`` requiring a gradient, which
the kernels do not compute) uses the pure-PyTorch reference, differentiable by autograd.
``train=False`` skips writing the backward coefficient maps (evaluation; no gradient).
``ssim_vjp(img1, img2)`` returns the mean SSIM with a function giving its vector-Jacobian
product, for callers that fuse SSIM into a larger autograd node (``utils/training_loss.py``).
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable, Tuple

import torch
from torch import Tensor

from . import reference
from .reference import check_images

__all__ = ["ssim", "fused_ssim", "ssim_map", "ssim_vjp", "cuda_available", "reference"]


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when the compiled extension ``ga_ssim._C`` imports."""
    try:
        importlib.import_module(f"{__name__}._C")
    except ImportError:
        return False
    return True


def _use_kernel(img1: Tensor, img2: Tensor) -> bool:
    return (img1.is_cuda and img2.is_cuda and img1.dtype == torch.float32 and img2.dtype == torch.float32
            and img1.device == img2.device and cuda_available())


class _FusedSSIM(torch.autograd.Function):
    """Mean SSIM through the fused kernels; gradient for img1 only."""

    @staticmethod
    def forward(ctx, img1: Tensor, img2: Tensor, train: bool) -> Tensor:  # noqa: D102
        from . import _C

        img1, img2 = img1.contiguous(), img2.contiguous()
        smap, dm, d11, d12 = _C.forward(img1, img2, bool(train))
        ctx.train = bool(train)
        if train:
            ctx.save_for_backward(img1, img2, dm, d11, d12)
        return smap.mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: D102
        if not ctx.train:
            raise RuntimeError("ga_ssim: backward through fused_ssim(..., train=False); use train=True")
        from . import _C

        img1, img2, dm, d11, d12 = ctx.saved_tensors
        dx = _C.backward(grad_out.detach(), img1, img2, dm, d11, d12)
        return dx, None, None


def fused_ssim(img1: Tensor, img2: Tensor, train: bool = True) -> Tensor:
    """Mean SSIM of ``img1`` (rendered) against ``img2`` (ground truth) as a 0-d tensor."""
    check_images(img1, img2)
    needs_img2_grad = img2.requires_grad and torch.is_grad_enabled()
    if _use_kernel(img1, img2) and not needs_img2_grad:
        train = train and img1.requires_grad and torch.is_grad_enabled()
        if not train:
            with torch.no_grad():
                return _FusedSSIM.apply(img1, img2, False)
        return _FusedSSIM.apply(img1, img2, True)
    if not train:
        with torch.no_grad():
            return reference.ssim(img1, img2)
    return reference.ssim(img1, img2)


def ssim_vjp(img1: Tensor, img2: Tensor) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``(mean SSIM (0-d), vjp)`` without autograd: ``vjp(grad_out)`` (a 0-d tensor) returns
    ``grad_out * d mean SSIM / d img1``, shaped like ``img1``. The fused kernels serve float32 CUDA
    images; elsewhere the reference's closed-form gradient (computed here, scaled by ``vjp``)."""
    check_images(img1, img2)
    with torch.no_grad():
        if _use_kernel(img1, img2):
            from . import _C

            x, y = img1.detach().contiguous(), img2.detach().contiguous()
            smap, dm, d11, d12 = _C.forward(x, y, True)

            def kernel_vjp(grad_out: Tensor) -> Tensor:
                return _C.backward(grad_out.detach(), x, y, dm, d11, d12)

            return smap.mean(), kernel_vjp
        value, grad = reference.ssim_with_grad(img1, img2)

    def reference_vjp(grad_out: Tensor) -> Tensor:
        return grad * grad_out.detach().to(grad.dtype)

    return value, reference_vjp


def ssim(img1: Tensor, img2: Tensor) -> Tensor:
    """Mean SSIM (training mode of :func:`fused_ssim`)."""
    return fused_ssim(img1, img2, train=True)


def ssim_map(img1: Tensor, img2: Tensor) -> Tensor:
    """Per-pixel SSIM map (no gradient), from the kernel where it serves, else the reference."""
    check_images(img1, img2)
    with torch.no_grad():
        if _use_kernel(img1, img2):
            from . import _C

            return _C.forward(img1.contiguous(), img2.contiguous(), False)[0]
        return reference.ssim_map(img1, img2)
