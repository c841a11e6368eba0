"""splat_binding: world position/scale/rotation of mesh-bound splats.

The reference is held to an independent NumPy computation of SPEC 5 and to the model's own
getters; the CUDA kernel (``-m cuda``) is held to the reference, values and every gradient, with
several splats per face (atomic accumulation) and faces without splats.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import splat_binding
from splat_binding import reference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_flame_gaussian_model import make_model, randomize  # noqa: E402


def random_inputs(n=2000, faces=700, dtype=torch.float32, device="cpu", seed=0):
    """Random splats on random faces: proper rotations R, their quaternions, positive scales."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(faces, 3, 3, generator=g, dtype=torch.float64)
    Q, Rr = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(Rr, dim1=-2, dim2=-1)).unsqueeze(-2)
    Q[torch.det(Q) < 0, :, 0] *= -1  # det +1
    quat = torch.randn(faces, 4, generator=g, dtype=torch.float64)  # any quaternion: the op is linear in it
    hi = faces - 50 if faces > 100 else faces
    binding = torch.randint(0, hi, (n,), generator=g)  # with > 100 faces the last 50 hold no splat
    tensors = dict(
        local_xyz=torch.randn(n, 3, generator=g, dtype=torch.float64),
        raw_scaling=torch.randn(n, 3, generator=g, dtype=torch.float64) - 2,
        raw_rotation=torch.randn(n, 4, generator=g, dtype=torch.float64),
        face_center=torch.randn(faces, 3, generator=g, dtype=torch.float64),
        face_rotation=Q,
        face_quaternion=quat,
        face_scaling=torch.rand(faces, 1, generator=g, dtype=torch.float64) + 0.1,
    )
    out = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    out["binding"] = binding.to(device)
    return out


def call(fn, t):
    return fn(t["local_xyz"], t["raw_scaling"], t["raw_rotation"], t["binding"], t["face_center"],
              t["face_rotation"], t["face_quaternion"], t["face_scaling"])


def numpy_transform(t):
    """SPEC 5 in NumPy, float64: rotate, scale and translate; Hamilton product written out."""
    a = {k: v.detach().cpu().double().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in t.items()}
    b = a["binding"]
    k = a["face_scaling"][b]
    xyz = np.einsum("nij,nj->ni", a["face_rotation"][b], a["local_xyz"]) * k + a["face_center"][b]
    scaling = np.exp(a["raw_scaling"]) * k
    q = a["raw_rotation"] / np.linalg.norm(a["raw_rotation"], axis=1, keepdims=True)
    p = a["face_quaternion"][b]
    w1, x1, y1, z1 = p.T
    w2, x2, y2, z2 = q.T
    rot = np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                    w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=1)
    return xyz, scaling, rot


def test_reference_matches_numpy():
    t = random_inputs(n=300, faces=120, dtype=torch.float64)
    for got, want in zip(call(reference.bound_transform, t), numpy_transform(t)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_rotation_composes_as_rotation_matrices():
    """quat(R_face) (x) q rotates like R_face @ R(q): the rendered orientation is the face's
    rotation applied after the splat's local one."""
    from utils.general_utils import build_rotation, rotmat_to_quat

    t = random_inputs(n=50, faces=120, dtype=torch.float64)
    t["face_quaternion"] = rotmat_to_quat(t["face_rotation"])
    _, _, rot = call(reference.bound_transform, t)
    want = t["face_rotation"][t["binding"]] @ build_rotation(t["raw_rotation"])
    torch.testing.assert_close(build_rotation(rot), want, rtol=1e-9, atol=1e-9)


def test_model_world_transform_matches_getters():
    g = make_model()
    randomize(g, seed=3)
    xyz, scaling, rotation = g.world_transform()
    torch.testing.assert_close(xyz, g.get_xyz)
    torch.testing.assert_close(scaling, g.get_scaling)
    torch.testing.assert_close(rotation, g.get_rotation)


def test_cpu_tensors_use_the_reference():
    t = random_inputs(n=40, faces=60)
    for a, b in zip(call(splat_binding.bound_transform, t), call(reference.bound_transform, t)):
        assert torch.equal(a, b)


FLOAT_KEYS = ("local_xyz", "raw_scaling", "raw_rotation", "face_center", "face_rotation", "face_quaternion",
              "face_scaling")


def _grads(fn, t, weights):
    leaves = {k: t[k].detach().clone().requires_grad_(True) for k in FLOAT_KEYS}
    leaves["binding"] = t["binding"]
    outs = call(fn, leaves)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    return [o.detach() for o in outs], {k: leaves[k].grad for k in FLOAT_KEYS}


@pytest.mark.cuda
@pytest.mark.parametrize("n,faces", [(1, 1), (2000, 700), (60000, 11000)])
def test_cuda_kernel_matches_reference(n, faces):
    assert splat_binding.cuda_available(), "splat_binding._C is not built"
    t32 = random_inputs(n=n, faces=faces, device="cuda")
    t64 = {k: (v.double() if v.is_floating_point() else v) for k, v in t32.items()}
    gen = torch.Generator(device="cuda").manual_seed(1)
    weights = [torch.randn(n, c, device="cuda", generator=gen) for c in (3, 3, 4)]
    outs, grads = _grads(splat_binding.bound_transform, t32, weights)
    ref_outs, ref_grads = _grads(reference.bound_transform, t64, [w.double() for w in weights])
    for o, r in zip(outs, ref_outs):
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=1e-5)
    for k in FLOAT_KEYS:
        torch.testing.assert_close(grads[k].double(), ref_grads[k], rtol=1e-4, atol=1e-4, msg=k)
    if faces > 100:
        assert torch.count_nonzero(grads["face_center"][-50:]) == 0  # faces without splats get nothing


@pytest.mark.cuda
def test_cuda_model_render_matches_reference_path():
    """The renderer's fused path gives the getters' images and parameter gradients."""
    from gaussian_renderer import PipelineSettings, render
    from scene.cameras import MiniCam
    import scene.flame_gaussian_model as fgm

    g = make_model(device="cuda")
    randomize(g, seed=5)
    with torch.no_grad():
        g._xyz.mul_(0.1)
        g._scaling.sub_(2.0)
    view = torch.eye(4, device="cuda")
    view[3, 2] = 6.0  # camera 6 units in front (row-vector convention)
    proj = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 1.0], [0, 0, -0.01, 0]], device="cuda")
    cam = MiniCam(64, 64, 2 * np.arctan(0.5), 2 * np.arctan(0.5), 0.01, 100.0, view, view @ proj)
    bg = torch.zeros(3, device="cuda")
    results = []
    saved = fgm.splat_binding
    try:
        for module in (saved, None):
            fgm.splat_binding = module
            g.optimizer = None
            for p in (g._xyz, g._scaling, g._rotation):
                p.grad = None
            img = render(cam, g, PipelineSettings(), bg)["render"]
            img.square().sum().backward()
            results.append((img.detach(), [p.grad.clone() for p in (g._xyz, g._scaling, g._rotation)]))
    finally:
        fgm.splat_binding = saved
    (img_a, grads_a), (img_b, grads_b) = results
    assert img_a.abs().sum() > 0
    torch.testing.assert_close(img_a, img_b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
