"""gaussian_renderer.render: settings from the camera, python SH / covariance paths, gradients."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gaussian_renderer import build_covariance_3d, render
from scene.cameras import Camera
from utils.sh_utils import RGB2SH


class PointModel:
    """Minimal model exposing what render() reads (world-space getters)."""

    def __init__(self, xyz, scales, rots, opacity, features, active_sh_degree):
        self.get_xyz = xyz
        self.get_scaling = scales
        self.get_rotation = rots
        self.get_opacity = opacity
        self.get_features = features
        self.active_sh_degree = active_sh_degree


def make_camera(width=48, height=40, fovx=0.9, cx=None, cy=None) -> Camera:
    """Camera at the origin looking down +z (identity rotation)."""
    fx = width / (2 * math.tan(fovx / 2))
    fovy = 2 * math.atan(height / (2 * fx))
    return Camera(colmap_id=0, R=np.eye(3), T=np.zeros(3), FoVx=fovx, FoVy=fovy, image_width=width,
                  image_height=height, image_name="cam", uid=0, data_device="cpu", cx=cx, cy=cy)


def pipe(**kw):
    base = dict(convert_SHs_python=False, compute_cov3D_python=False, debug=False, backend="reference")
    base.update(kw)
    return SimpleNamespace(**base)


def random_model(n=30, sh_degree=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g) * torch.tensor([1.6, 1.2, 1.0]) - torch.tensor([0.8, 0.6, -2.5])
    scales = torch.rand(n, 3, generator=g) * 0.15 + 0.03
    rots = torch.randn(n, 4, generator=g)
    rots = rots / rots.norm(dim=1, keepdim=True)
    opacity = torch.rand(n, 1, generator=g) * 0.8 + 0.1
    features = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    tensors = [xyz, scales, rots, opacity, features]
    if requires_grad:
        tensors = [t.clone().requires_grad_(True) for t in tensors]
    return PointModel(*tensors, active_sh_degree=sh_degree)


def test_covariance_matches_numpy():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(5, 3, generator=g) + 0.1
    q = torch.randn(5, 4, generator=g)
    cov = build_covariance_3d(s, q, 0.7).numpy()
    for i in range(5):
        w, x, y, z = (q[i] / q[i].norm()).tolist()
        R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        S = np.diag(s[i].numpy() * 0.7)
        full = R @ S @ S @ R.T
        np.testing.assert_allclose(cov[i], full[np.triu_indices(3)], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cx,cy", [(None, None), (30.0, 14.0)])
def test_single_splat_lands_at_projection(cx, cy):
    """A small bright splat at (x, y, z) peaks at u = fx x / z + cx, v = fy y / z + cy."""
    cam = make_camera(cx=cx, cy=cy)
    p = torch.tensor([[0.15, -0.1, 3.0]])
    colors = torch.tensor([[1.0, 1.0, 1.0]])
    model = PointModel(p, torch.full((1, 3), 0.01), torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0.9]]),
                       RGB2SH(colors)[:, None, :], 0)
    out = render(cam, model, pipe(), torch.zeros(3))
    img = out["render"][0]
    v, u = np.unravel_index(int(img.argmax()), img.shape)
    u_exp = cam.fl_x * 0.15 / 3.0 + cam.cx
    v_exp = cam.fl_y * -0.1 / 3.0 + cam.cy
    assert abs(u - u_exp) <= 0.5 + 1e-6 and abs(v - v_exp) <= 0.5 + 1e-6
    assert out["visibility_filter"].tolist() == [True]
    assert int(out["radii"][0]) > 0


def test_python_paths_match_rasterizer_paths():
    cam = make_camera()
    model = random_model()
    bg = torch.tensor([0.2, 0.3, 0.4])
    ref = render(cam, model, pipe(), bg)["render"]
    sh_py = render(cam, model, pipe(convert_SHs_python=True), bg)["render"]
    cov_py = render(cam, model, pipe(compute_cov3D_python=True), bg)["render"]
    assert ref.shape == (3, 40, 48)
    assert float(ref.detach().std()) > 0.01  # something was drawn
    torch.testing.assert_close(sh_py, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cov_py, ref, atol=1e-5, rtol=1e-4)


def test_override_color_and_background():
    cam = make_camera()
    model = random_model()
    empty = PointModel(model.get_xyz[:0], model.get_scaling[:0], model.get_rotation[:0], model.get_opacity[:0],
                       model.get_features[:0], 2)
    bg = torch.tensor([0.1, 0.5, 0.9])
    img = render(cam, empty, pipe(), bg)["render"]
    torch.testing.assert_close(img, bg.reshape(3, 1, 1).expand(3, 40, 48))
    red = torch.zeros(model.get_xyz.shape[0], 3)
    red[:, 0] = 1.0
    img = render(cam, model, pipe(), torch.zeros(3), override_color=red)["render"]
    img = img.detach()
    assert float(img[0].max()) > 0.3 and float(img[1:].abs().max()) == 0.0


def test_gradients_reach_inputs_and_screen_points():
    cam = make_camera()
    model = random_model(requires_grad=True)
    out = render(cam, model, pipe(), torch.zeros(3))
    out["render"].sum().backward()
    grad2d = out["viewspace_points"].grad
    assert grad2d is not None and grad2d.shape == model.get_xyz.shape
    vis = out["visibility_filter"]
    assert vis.any()
    assert float(grad2d[vis, :2].abs().sum()) > 0
    assert float(grad2d[~vis].abs().sum()) == 0
    for t in (model.get_xyz, model.get_scaling, model.get_opacity, model.get_features):
        assert t.grad is not None and float(t.grad.abs().sum()) > 0


def test_splat_behind_camera_is_invisible_and_no_grad_mode():
    cam = make_camera()
    model = random_model(n=3)
    model.get_xyz = model.get_xyz.clone()
    model.get_xyz[1, 2] = -1.0  # behind the camera
    with torch.no_grad():
        out = render(cam, model, pipe(), torch.zeros(3))
    assert out["visibility_filter"].tolist()[1] is False
    assert not out["viewspace_points"].requires_grad


def test_scaling_modifier_shrinks_footprint():
    cam = make_camera()
    model = random_model(n=5)
    big = render(cam, model, pipe(), torch.zeros(3))["radii"]
    small = render(cam, model, pipe(), torch.zeros(3), scaling_modifier=0.3)["radii"]
    vis = big > 0
    assert bool((small[vis] < big[vis]).all())
