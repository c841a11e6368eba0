"""World position, scale and rotation of splats bound to mesh triangles (GaussianAvatars, SPEC 5)
in one CUDA kernel forward and one backward.

``bound_transform(local_xyz, raw_scaling, raw_rotation, binding, face_center, face_rotation,
face_quaternion, face_scaling) -> (xyz, scaling, rotation)``; the math is
:func:`splat_binding.reference.bound_transform`. Autograd through a composition of gathers,
matrix products and the quaternion product costs dozens of small kernels (and their host
overhead) forward and backward every training iteration; here it is one kernel each way, with
gradients for every input except ``binding`` (face gradients accumulated with atomics).

Dispatch: float32 CUDA tensors go to the compiled extension ``splat_binding._C`` when it is
built; anything else (CPU tensors, other dtypes, no extension) uses the reference.
"""
from __future__ import annotations

import functools
import importlib
from typing import Tuple

import torch
from torch import Tensor

from . import reference

__all__ = ["bound_transform", "cuda_available", "reference"]


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when the compiled extension ``splat_binding._C`` imports."""
    try:
        importlib.import_module(f"{__name__}._C")
    except ImportError:
        return False
    return True


class _BoundTransform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_xyz, raw_scaling, raw_rotation, binding, center, rotmat, quat, k):  # noqa: D102
        from . import _C

        inputs = (local_xyz, raw_scaling, raw_rotation, binding, center, rotmat, quat, k)
        xyz, scaling, rotation = _C.forward(*inputs)
        ctx.save_for_backward(*inputs)
        return xyz, scaling, rotation

    @staticmethod
    def backward(ctx, g_xyz, g_scaling, g_rotation):  # noqa: D102
        from . import _C

        grads = [g.contiguous() if g.dtype == torch.float32 else g.float().contiguous()
                 for g in (g_xyz, g_scaling, g_rotation)]
        d_local, d_s, d_r, d_center, d_rotmat, d_quat, d_k = _C.backward(*ctx.saved_tensors, *grads)
        need = ctx.needs_input_grad
        out = (d_local, d_s, d_r, None, d_center, d_rotmat, d_quat, d_k)
        return tuple(g if (g is not None and need[i]) else None for i, g in enumerate(out))


def _use_kernel(tensors: Tuple[Tensor, ...], binding: Tensor) -> bool:
    if not cuda_available() or binding.dtype != torch.int64 or not binding.is_cuda:
        return False
    dev = binding.device
    return all(t.is_cuda and t.dtype == torch.float32 and t.device == dev for t in tensors)


def bound_transform(local_xyz: Tensor, raw_scaling: Tensor, raw_rotation: Tensor, binding: Tensor,
                    face_center: Tensor, face_rotation: Tensor, face_quaternion: Tensor,
                    face_scaling: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """World ``(xyz (N,3), scaling (N,3), rotation (N,4))``; see the module docstring."""
    floats = (local_xyz, raw_scaling, raw_rotation, face_center, face_rotation, face_quaternion, face_scaling)
    if not _use_kernel(floats, binding):
        return reference.bound_transform(local_xyz, raw_scaling, raw_rotation, binding, face_center,
                                         face_rotation, face_quaternion, face_scaling)
    c = [t.contiguous() for t in floats]
    return _BoundTransform.apply(c[0], c[1], c[2], binding.contiguous(), c[3], c[4], c[5], c[6])
