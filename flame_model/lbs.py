"""Rotations and linear blend skinning (batched, differentiable, no Python loops over vertices)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: ``(..., 3)`` axis-angle -> ``(..., 3, 3)`` rotation matrices.

    ``R = I + a K + b K^2`` with ``K`` the cross-product matrix of the (unnormalised) rotation
    vector, ``a = sin(t)/t``, ``b = (1 - cos t)/t^2``; Taylor series near ``t = 0`` keep values and
    gradients finite and exact there.
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(rotvec.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def topological_order(parents: Sequence[int]) -> list:
    """Joint order in which every parent comes before its children."""
    order, done = [], set()
    parents = [int(p) for p in parents]
    while len(order) < len(parents):
        progressed = False
        for j, p in enumerate(parents):
            if j not in done and (p < 0 or p in done):
                order.append(j)
                done.add(j)
                progressed = True
        if not progressed:
            raise ValueError(f"kintree has a cycle: parents={parents}")
    return order


def rigid_transforms(rot_mats: torch.Tensor, joints: torch.Tensor, parents: Sequence[int],
                     order: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global joint transforms.

    Args:
        rot_mats: (B, J, 3, 3) local rotations; joints: (B, J, 3) rest joint locations.
    Returns:
        posed_joints (B, J, 3) and skinning transforms A (B, J, 4, 4) that map rest-pose points to
        posed points (``A_j = G_j`` with the rest joint location removed).
    """
    B, J = joints.shape[:2]
    glob_R = [None] * J
    glob_t = [None] * J
    for j in order:
        p = parents[j]
        if p < 0:
            glob_R[j] = rot_mats[:, j]
            glob_t[j] = joints[:, j]
        else:
            glob_R[j] = glob_R[p] @ rot_mats[:, j]
            glob_t[j] = glob_t[p] + (glob_R[p] @ (joints[:, j] - joints[:, p]).unsqueeze(-1)).squeeze(-1)
    R = torch.stack(glob_R, dim=1)                                     # (B, J, 3, 3)
    t = torch.stack(glob_t, dim=1)                                     # (B, J, 3)
    t_skin = t - (R @ joints.unsqueeze(-1)).squeeze(-1)
    A = torch.cat([R, t_skin.unsqueeze(-1)], dim=-1)                   # (B, J, 3, 4)
    bottom = torch.zeros(B, J, 1, 4, dtype=A.dtype, device=A.device)
    bottom[..., 0, 3] = 1.0
    return t, torch.cat([A, bottom], dim=-2)


def skin(v_posed: torch.Tensor, weights: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning of (B, V, 3) points with (V, J) weights and (B, J, 4, 4) transforms."""
    B, J = A.shape[:2]
    T = (weights @ A[:, :, :3, :].reshape(B, J, 12)).reshape(B, -1, 3, 4)   # (B, V, 3, 4)
    # elementwise product + sum instead of V tiny (3x3)@(3x1) batched matmuls (much faster)
    return (T[..., :3] * v_posed.unsqueeze(-2)).sum(-1) + T[..., 3]
