"""The per-iteration training loss of GaussianAvatars (SPEC 5).

:func:`compute_losses` is the loss the trainer optimises: the image terms and the default
regularisers of mesh-bound models through one autograd node, the other terms added by autograd
operators. :func:`training_terms`, that node, returns the four weighted terms

    [ (1 - lambda_dssim) L1(image, gt),
      lambda_dssim (1 - SSIM(image, gt)),
      lambda_xyz   mean_vis relu(|mu_local| - threshold_xyz),
      lambda_scale mean_vis |relu(exp(s) - threshold_scale)| ]

as one ``(4,)`` tensor whose backward is written out by hand. Composed from autograd operators
the same loss is ~35 recorded operators forward and ~25 autograd nodes backward, each a kernel
launch and Python/dispatcher work per iteration. Float32 CUDA tensors take the native path:
``ga_ssim._C.training_terms_forward/backward``, the same operators called from C++ around the
fused SSIM kernels (the loop is host-bound; Python costs more per operator than the kernel
runs). Elsewhere the operators below run from Python, SSIM through ``ga_ssim.ssim_vjp``.
``mean_vis`` is the mean over the visible splats (``mask``), with no host synchronisation. The
same values and gradients as :func:`composed_terms`, which spells the loss out with autograd
operators and is what the tests hold this node to.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from arguments import OptimizationParams

__all__ = ["LossWeights", "TERM_NAMES", "training_terms", "composed_terms", "native_module", "compute_losses",
           "gt_image_on", "is_bound"]

TERM_NAMES = ("l1", "ssim", "xyz", "scale")


@dataclass(frozen=True)
class LossWeights:
    """Weights and thresholds of the four terms (a zero weight drops its term's work)."""

    l1: float
    ssim: float
    xyz: float = 0.0
    xyz_threshold: float = 1.0
    scale: float = 0.0
    scale_threshold: float = 0.6


@functools.lru_cache(maxsize=32)
def _coefficients(weights: LossWeights, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """``(scale, offset)`` with ``terms = offset + scale * [L1, SSIM, xyz mean, scale mean]``."""
    scale = torch.tensor([weights.l1, -weights.ssim, weights.xyz, weights.scale], dtype=dtype, device=device)
    offset = torch.tensor([0.0, weights.ssim, 0.0, 0.0], dtype=dtype, device=device)
    return scale, offset


def _visible_weights(mask: Optional[Tensor], n: int, like: Tensor) -> Tensor:
    """``w_i / max(sum w, 1)`` for the bool mask (all ones without a mask): the visible mean."""
    if mask is None:
        return torch.full((n,), 1.0 / max(n, 1), dtype=like.dtype, device=like.device)
    w = mask.reshape(-1).to(like.dtype)
    return w / w.sum().clamp_min(1.0)


@functools.lru_cache(maxsize=1)
def native_module() -> Any:
    """``ga_ssim._C`` when it is built with the training-loss entry points, else None."""
    try:
        from ga_ssim import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "training_terms_forward") else None


def _native_for(image: Tensor, gt: Tensor, *splat_tensors: Optional[Tensor]) -> Any:
    if not (image.is_cuda and image.dtype == torch.float32 and gt.dtype == torch.float32 and gt.is_cuda):
        return None
    if any(t is not None and (not t.is_cuda or t.dtype != torch.float32) for t in splat_tensors):
        return None
    return native_module()


class _TrainingTerms(torch.autograd.Function):
    """Forward: the four weighted terms; backward: gradients for image, xyz and scaling."""

    @staticmethod
    def forward(ctx: Any, image: Tensor, gt: Tensor, xyz: Optional[Tensor], scaling: Optional[Tensor],
                mask: Optional[Tensor], weights: LossWeights) -> Tensor:
        scale_vec, offset_vec = _coefficients(weights, image.device, image.dtype)
        native = _native_for(image, gt, xyz, scaling)
        ctx.native = native
        if native is not None:
            empty = image.new_empty(0)
            out = native.training_terms_forward(
                image, gt, empty if xyz is None else xyz, empty if scaling is None else scaling,
                empty if mask is None else mask, scale_vec, offset_vec, weights.l1, weights.ssim, weights.xyz,
                weights.xyz_threshold, weights.scale, weights.scale_threshold)
            # diff, x, y, dm, d11, d12, norm, excess, exp_s, excess_s, norm_s, mean_w (empty: not computed)
            ctx.save_for_backward(scale_vec, xyz if xyz is not None else empty, *out[1:])
            return out[0]
        zero = image.new_zeros(())
        diff = l1 = ssim_vjp = None
        if weights.l1 != 0.0:
            diff = image - gt
            l1 = torch.linalg.vector_norm(diff, ord=1) / diff.numel()
        s_mean = zero
        if weights.ssim != 0.0:
            from ga_ssim import ssim_vjp as _ssim_vjp

            s_mean, ssim_vjp = _ssim_vjp(image, gt)
        ctx.ssim_vjp = ssim_vjp
        mean_w = None
        if (xyz is not None and weights.xyz != 0.0) or (scaling is not None and weights.scale != 0.0):
            n = (xyz if xyz is not None else scaling).shape[0]
            mean_w = _visible_weights(mask, n, image)
        x_mean = s_mean_reg = zero
        norm = excess = exp_s = excess_s = norm_s = None
        if xyz is not None and weights.xyz != 0.0:
            norm = torch.linalg.vector_norm(xyz, dim=1)
            excess = torch.relu(norm - weights.xyz_threshold)
            x_mean = torch.dot(excess, mean_w)
        if scaling is not None and weights.scale != 0.0:
            exp_s = torch.exp(scaling)
            excess_s = torch.relu(exp_s - weights.scale_threshold)
            norm_s = torch.linalg.vector_norm(excess_s, dim=1)
            s_mean_reg = torch.dot(norm_s, mean_w)
        raw = torch.stack([l1 if l1 is not None else zero, s_mean, x_mean, s_mean_reg])
        ctx.save_for_backward(diff, xyz, norm, excess, exp_s, excess_s, norm_s, mean_w, scale_vec)
        return torch.addcmul(offset_vec, raw, scale_vec)

    @staticmethod
    def backward(ctx: Any, grad_terms: Tensor):  # noqa: D102
        if ctx.native is not None:
            scale_vec, xyz, diff, x, y, dm, d11, d12, norm, excess, exp_s, excess_s, norm_s, mean_w = ctx.saved_tensors
            grads = ctx.native.training_terms_backward(
                grad_terms.contiguous(), scale_vec, diff, x, y, dm, d11, d12, xyz, norm, excess, exp_s, excess_s,
                norm_s, mean_w, ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
            g_image, g_xyz, g_scaling = (g if g.numel() else None for g in grads)
            return g_image, None, g_xyz, g_scaling, None, None
        diff, xyz, norm, excess, exp_s, excess_s, norm_s, mean_w, scale_vec = ctx.saved_tensors
        c = grad_terms * scale_vec  # (4,): upstream gradient times each term's weight (and sign)
        grad_image = grad_xyz = grad_scaling = None
        if ctx.needs_input_grad[0]:
            if ctx.ssim_vjp is not None:
                grad_image = ctx.ssim_vjp(c[1])
            if diff is not None:
                l1_part = torch.sign(diff).mul_(c[0] / diff.numel())
                grad_image = l1_part if grad_image is None else grad_image.add_(l1_part)
        tiny = torch.finfo(grad_terms.dtype).tiny
        if ctx.needs_input_grad[2] and norm is not None:
            # d/dmu relu(|mu| - t) = [|mu| > t] mu / |mu|   (relu'(0) = 0, as autograd)
            q = torch.where(excess > 0, mean_w * c[2], 0.0) / norm.clamp_min(tiny)
            grad_xyz = xyz * q[:, None]
        if ctx.needs_input_grad[3] and norm_s is not None:
            # d/ds |relu(exp(s) - t)| = relu(exp(s) - t) exp(s) / |relu(exp(s) - t)|
            r = (mean_w * c[3]) / norm_s.clamp_min(tiny)
            grad_scaling = (excess_s * exp_s) * r[:, None]
        return grad_image, None, grad_xyz, grad_scaling, None, None


def training_terms(image: Tensor, gt: Tensor, weights: LossWeights, xyz: Optional[Tensor] = None,
                   scaling: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
    """The ``(4,)`` weighted terms (order :data:`TERM_NAMES`) in one autograd node.

    ``image`` (3,H,W) the render, ``gt`` the ground truth (no gradient); ``xyz`` (N,3) the local
    splat positions and ``scaling`` (N,3) the log scales (``None``: that term is 0); ``mask`` (N,)
    bool, the splats the means run over (the visibility filter; ``None``: all).
    """
    if image.shape != gt.shape:
        raise ValueError(f"training loss: image {tuple(image.shape)} and ground truth {tuple(gt.shape)} differ")
    for name, t in (("xyz", xyz), ("scaling", scaling)):
        if t is not None and (t.dim() != 2 or t.shape[1] != 3):
            raise ValueError(f"training loss: {name} must be (N, 3), got {tuple(t.shape)}")
    if xyz is not None and scaling is not None and xyz.shape[0] != scaling.shape[0]:
        raise ValueError(f"training loss: xyz has {xyz.shape[0]} rows, scaling {scaling.shape[0]}")
    if mask is not None:
        n = (xyz if xyz is not None else scaling).shape[0] if (xyz is not None or scaling is not None) else None
        if mask.dtype != torch.bool or (n is not None and mask.numel() != n):
            raise ValueError(f"training loss: mask must be bool with one entry per splat, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
    return _TrainingTerms.apply(image, gt.detach(), xyz, scaling, mask, weights)


def composed_terms(image: Tensor, gt: Tensor, weights: LossWeights, xyz: Optional[Tensor] = None,
                   scaling: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
    """The same ``(4,)`` terms from autograd operators (the reference :func:`training_terms` is
    tested against; SSIM from ``ga_ssim.reference``)."""
    from ga_ssim import reference

    zero = image.new_zeros(())
    l1 = (image - gt).abs().mean() * weights.l1
    ssim = (1.0 - reference.ssim(image, gt)) * weights.ssim
    n = xyz.shape[0] if xyz is not None else (scaling.shape[0] if scaling is not None else 0)
    w = mask.to(image.dtype) if mask is not None else image.new_ones(n)
    count = w.sum().clamp_min(1.0)
    x_term = zero if xyz is None else (torch.relu(xyz.norm(dim=1) - weights.xyz_threshold) * w).sum() / count \
        * weights.xyz
    s_term = zero if scaling is None else \
        (torch.relu(torch.exp(scaling) - weights.scale_threshold).norm(dim=1) * w).sum() / count * weights.scale
    return torch.stack([l1, ssim, x_term, s_term])


# ------------------------------------------------------------------------------------------
# The trainer's loss
# ------------------------------------------------------------------------------------------

def is_bound(gaussians: Any) -> bool:
    return getattr(gaussians, "binding", None) is not None


def gt_image_on(cam: Any, device: torch.device) -> torch.Tensor:
    """The camera's ground truth as float (3,H,W) on ``device``: the cached uint8 image is moved
    first (a quarter of the bytes) and converted there."""
    img = cam.image_uint8
    if img.device != device:
        img = img.to(device, non_blocking=True)
    return img.float().div_(255.0)


@functools.lru_cache(maxsize=1)
def _fused_terms_available() -> bool:
    try:
        import ga_ssim  # noqa: F401  (its reference serves where the kernels are not built)
    except ImportError:
        return False
    return True


def compute_losses(image: torch.Tensor, gt_image: torch.Tensor, gaussians: Any, opt: OptimizationParams,
                   visibility_filter: torch.Tensor, timestep: Optional[int]) -> Dict[str, torch.Tensor]:
    """Image loss (1-λ) L1 + λ (1-SSIM) plus the regularisers of mesh-bound models (SPEC 5).

    The image terms and the default (local, non-metric) position and scale regularisers are one
    autograd node (:func:`training_terms`); metric variants and the offset/Laplacian terms
    are added by autograd operators."""
    from utils import loss_utils

    bound = is_bound(gaussians)
    vis = visibility_filter
    use_fused = _fused_terms_available()
    fuse_xyz = use_fused and bound and opt.lambda_xyz != 0 and not opt.metric_xyz
    fuse_scale = use_fused and bound and opt.lambda_scale != 0 and not opt.metric_scale
    losses: Dict[str, torch.Tensor] = {}
    outside: List[torch.Tensor] = []  # terms from autograd operators, added to the fused node's sum

    def composed(name: str, value: torch.Tensor) -> None:
        losses[name] = value
        outside.append(value)

    fused = None
    if use_fused:
        weights = LossWeights(l1=1.0 - opt.lambda_dssim, ssim=opt.lambda_dssim,
                              xyz=opt.lambda_xyz if fuse_xyz else 0.0, xyz_threshold=opt.threshold_xyz,
                              scale=opt.lambda_scale if fuse_scale else 0.0, scale_threshold=opt.threshold_scale)
        fused = training_terms(image, gt_image, weights, xyz=gaussians._xyz if fuse_xyz else None,
                               scaling=gaussians._scaling if fuse_scale else None, mask=vis if bound else None)
        losses["l1"], losses["ssim"] = fused[0], fused[1]
    else:
        composed("l1", loss_utils.l1_loss(image, gt_image) * (1.0 - opt.lambda_dssim))
        composed("ssim", (1.0 - loss_utils.ssim(image, gt_image)) * opt.lambda_dssim)
    if bound:
        if fuse_xyz:
            losses["xyz"] = fused[2]
        elif opt.lambda_xyz != 0:
            composed("xyz", gaussians.compute_xyz_loss(opt.threshold_xyz, metric=opt.metric_xyz, mask=vis)
                     * opt.lambda_xyz)
        if fuse_scale:
            losses["scale"] = fused[3]
        elif opt.lambda_scale != 0:
            composed("scale", gaussians.compute_scale_loss(opt.threshold_scale, metric=opt.metric_scale, mask=vis)
                     * opt.lambda_scale)
        if opt.lambda_dynamic_offset != 0:
            composed("dy_off", gaussians.compute_dynamic_offset_loss() * opt.lambda_dynamic_offset)
        if opt.lambda_dynamic_offset_std != 0:
            composed("dynamic_offset_std",
                     gaussians.compute_dynamic_offset_std_loss() * opt.lambda_dynamic_offset_std)
        if opt.lambda_laplacian != 0:
            composed("lap", gaussians.compute_laplacian_loss() * opt.lambda_laplacian)
    total = fused.sum() if fused is not None else None
    for value in outside:
        total = value if total is None else total + value
    losses["total"] = total
    return losses
