"""Small numeric helpers shared by the Gaussian models: activations, learning-rate schedules,
quaternion algebra and seeding.

Quaternions are stored ``wxyz`` (scalar first) everywhere in the toolkit, as in the PLY files.
"""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch

__all__ = [
    "inverse_sigmoid",
    "get_expon_lr_func",
    "build_rotation",
    "build_scaling_rotation",
    "strip_symmetric",
    "strip_lowerdiag",
    "quat_multiply",
    "rotmat_to_quat",
    "quat_table",
    "seed_everything",
]


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Logit: the inverse of ``torch.sigmoid`` (``x`` in (0, 1))."""
    return torch.log(x / (1 - x))


def get_expon_lr_func(
    lr_init: float,
    lr_final: float,
    lr_delay_steps: int = 0,
    lr_delay_mult: float = 1.0,
    max_steps: int = 1_000_000,
) -> Callable[[int], float]:
    """Log-linear learning-rate schedule from ``lr_init`` (step 0) to ``lr_final`` (``max_steps``).

    With ``lr_delay_steps > 0`` the rate is additionally multiplied by a factor that rises from
    ``lr_delay_mult`` to 1 along a quarter sine over the first ``lr_delay_steps`` steps (the
    3DGS/Mip-NeRF schedule). Steps below 0, or an all-zero schedule, give 0.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, got {max_steps}")

    def helper(step: int) -> float:
        if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
            return 0.0
        if lr_delay_steps > 0:
            ramp = np.clip(step / lr_delay_steps, 0.0, 1.0)
            delay_rate = lr_delay_mult + (1.0 - lr_delay_mult) * np.sin(0.5 * np.pi * ramp)
        else:
            delay_rate = 1.0
        t = np.clip(step / max_steps, 0.0, 1.0)
        log_lerp = np.exp(np.log(lr_init) * (1.0 - t) + np.log(lr_final) * t)
        return float(delay_rate * log_lerp)

    return helper


def build_rotation(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from (not necessarily unit) quaternions ``(..., 4)`` wxyz."""
    q = torch.nn.functional.normalize(r, dim=-1)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def build_scaling_rotation(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``L = R(r) diag(s)`` so that the covariance is ``L L^T``; ``s`` (N,3), ``r`` (N,4) wxyz."""
    return build_rotation(r) * s[..., None, :]


def strip_lowerdiag(L: torch.Tensor) -> torch.Tensor:
    """Upper-triangle entries ``[00, 01, 02, 11, 12, 22]`` of symmetric ``(N,3,3)`` matrices."""
    return torch.stack(
        [L[:, 0, 0], L[:, 0, 1], L[:, 0, 2], L[:, 1, 1], L[:, 1, 2], L[:, 2, 2]], dim=-1
    )


def strip_symmetric(sym: torch.Tensor) -> torch.Tensor:
    """Alias of :func:`strip_lowerdiag` (the 6 unique entries of a symmetric 3x3)."""
    return strip_lowerdiag(sym)


def _left_matrix(q: torch.Tensor) -> torch.Tensor:
    """``L(q)`` with ``q * p = L(q) p`` for wxyz quaternions: (..., 4) -> (..., 4, 4)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([w, -x, -y, -z,
                        x, w, -z, y,
                        y, z, w, -x,
                        z, -y, x, w], dim=-1).reshape(q.shape + (4,))


def _right_matrix(p: torch.Tensor) -> torch.Tensor:
    """``R(p)`` with ``q * p = R(p) q`` for wxyz quaternions: (..., 4) -> (..., 4, 4)."""
    w, x, y, z = p.unbind(-1)
    return torch.stack([w, -x, -y, -z,
                        x, w, z, -y,
                        y, -z, w, x,
                        z, y, -x, w], dim=-1).reshape(p.shape + (4,))


class _QuatMultiply(torch.autograd.Function):
    """Hamilton product as two small matrix products, forward and backward: a handful of kernels
    instead of the ~90 that autograd of the component formula launches (the training loop calls
    it for every splat each iteration)."""

    @staticmethod
    def forward(ctx, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(q1, q2)
        return (_left_matrix(q1) @ q2.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q1, q2 = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        g1 = (_right_matrix(q2).transpose(-1, -2) @ g).squeeze(-1) if ctx.needs_input_grad[0] else None
        g2 = (_left_matrix(q1).transpose(-1, -2) @ g).squeeze(-1) if ctx.needs_input_grad[1] else None
        return g1, g2


def quat_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``q1 * q2`` of wxyz quaternions; the rotation of the product applies
    ``q2`` first, then ``q1``. Same-shape (N, 4) inputs take a fused matrix path; other shapes
    broadcast through the component formula."""
    if q1.shape == q2.shape and q1.dim() == 2 and q1.dtype == q2.dtype:
        return _QuatMultiply.apply(q1, q2)
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


# Linear map from the 9 entries of R (row-major) to the four Shepperd candidate quaternions
# (candidate c is built on diagonal term c: w, x, y, z), each wxyz and scaled by 4 * component.
_SHEPPERD_ROWS = (
    # (constant, {flat index: coefficient}) for the 16 outputs, candidate-major
    (1, {0: 1, 4: 1, 8: 1}), (0, {7: 1, 5: -1}), (0, {2: 1, 6: -1}), (0, {3: 1, 1: -1}),
    (0, {7: 1, 5: -1}), (1, {0: 1, 4: -1, 8: -1}), (0, {1: 1, 3: 1}), (0, {2: 1, 6: 1}),
    (0, {2: 1, 6: -1}), (0, {1: 1, 3: 1}), (1, {0: -1, 4: 1, 8: -1}), (0, {5: 1, 7: 1}),
    (0, {3: 1, 1: -1}), (0, {2: 1, 6: 1}), (0, {5: 1, 7: 1}), (1, {0: -1, 4: -1, 8: 1}),
)


def quat_table(device=None, dtype=torch.float32):
    """Constant tensors ``(M (9,16), b (16,))`` used by :func:`rotmat_to_quat`; build them once
    per device and pass them in to avoid a host-to-device copy per call."""
    M = torch.zeros(9, 16, dtype=dtype)
    b = torch.zeros(16, dtype=dtype)
    for j, (const, coeffs) in enumerate(_SHEPPERD_ROWS):
        b[j] = const
        for k, c in coeffs.items():
            M[k, j] = c
    return M.to(device), b.to(device)


def rotmat_to_quat(R: torch.Tensor, table=None) -> torch.Tensor:
    """Unit wxyz quaternions from rotation matrices ``(..., 3, 3)``.

    Branch-free Shepperd method: the four candidate quaternions are formed (one linear map of
    the matrix entries) and, per matrix, the one built on the largest diagonal term is picked with
    ``argmax``/``gather`` (stable for every rotation, differentiable, no host synchronisation,
    a handful of kernels). ``table`` is :func:`quat_table` on ``R``'s device (built if None).
    """
    if table is None:
        table = quat_table(R.device, R.dtype)
    M, b = table
    batch = R.shape[:-2]
    flat = R.reshape(-1, 9, 1)
    cand = ((flat * M).sum(dim=-2) + b).reshape(*batch, 4, 4)  # (..., candidate, wxyz)
    diag = torch.diagonal(cand, dim1=-2, dim2=-1)
    best = diag.argmax(dim=-1, keepdim=True)
    q = torch.gather(cand, -2, best[..., None].expand(*batch, 1, 4)).squeeze(-2)
    return torch.nn.functional.normalize(q, dim=-1)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
