"""Pure-PyTorch reference of the bound-splat transform (SPEC 5), differentiable by autograd.

For splat ``i`` bound to face ``f = binding[i]``::

    xyz      = k[f] * R[f] @ local_xyz[i] + center[f]
    scaling  = k[f] * exp(raw_scaling[i])
    rotation = quat[f] (x) normalize(raw_rotation[i])      Hamilton product, wxyz
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def hamilton(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product of wxyz quaternions (broadcasting)."""
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], dim=-1)


def bound_transform(local_xyz: Tensor, raw_scaling: Tensor, raw_rotation: Tensor, binding: Tensor,
                    face_center: Tensor, face_rotation: Tensor, face_quaternion: Tensor,
                    face_scaling: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """World ``(xyz (N,3), scaling (N,3), rotation (N,4))`` of splats bound to faces.

    Shapes: local_xyz/raw_scaling (N,3), raw_rotation (N,4), binding (N,) long, face_center
    (F,3), face_rotation (F,3,3), face_quaternion (F,4), face_scaling (F,1)."""
    k = face_scaling[binding]
    xyz = torch.einsum("nij,nj->ni", face_rotation[binding], local_xyz) * k + face_center[binding]
    scaling = torch.exp(raw_scaling) * k
    rotation = hamilton(face_quaternion[binding], F.normalize(raw_rotation, dim=-1))
    return xyz, scaling, rotation
