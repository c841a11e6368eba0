"""PyTorch mesh rasterizer: coverage, depth test, perspective-correct interpolation, textures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scene.cameras import Camera
from utils.graphics_utils import focal2fov
from utils.mesh_renderer import rasterize, render_mesh, render_mesh_overlay

W, H = 64, 48
FX, FY, CX, CY = 50.0, 52.0, 30.7, 22.4


def _cam(R=np.eye(3), T=np.zeros(3), w=W, h=H):
    return Camera(0, R, T, focal2fov(FX, w), focal2fov(FY, h), w, h, "t", 0, data_device="cpu",
                  cx=CX, cy=CY, fl_x=FX, fl_y=FY)


def _unproject(uv, z):
    """Pixel-index coordinates (pixel (i, j) centred at (i, j)) at depth z -> camera/world coords
    (identity pose). The camera's principal point is in the NeRF/COLMAP convention, where pixel i
    covers [i, i + 1), so pixel index i sits at i + 0.5 there."""
    uv = np.asarray(uv, dtype=np.float64) + 0.5
    return np.stack([(uv[:, 0] - CX) * z / FX, (uv[:, 1] - CY) * z / FY, np.full(len(uv), z)], 1)


def _numpy_coverage(tri_uv):
    """Independent point-in-triangle test at pixel centres; also the distance to the nearest edge."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    p = np.stack([xs, ys], -1)
    signs, dists = [], []
    for i in range(3):
        a, b = tri_uv[i], tri_uv[(i + 1) % 3]
        e = b - a
        cross = e[0] * (p[..., 1] - a[1]) - e[1] * (p[..., 0] - a[0])
        signs.append(cross)
        dists.append(np.abs(cross) / np.linalg.norm(e))
    s = np.stack(signs)
    inside = np.all(s >= 0, 0) | np.all(s <= 0, 0)
    return inside, np.min(np.stack(dists), 0)


@pytest.mark.parametrize("seed", range(4))
def test_single_triangle_coverage_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    tri_uv = rng.uniform([-10, -10], [W + 10, H + 10], size=(3, 2))
    z = rng.uniform(1.0, 3.0)
    verts = torch.tensor(_unproject(tri_uv, z), dtype=torch.float32)
    out = render_mesh(verts, torch.tensor([[0, 1, 2]]), _cam(), shading=False)
    inside, dist = _numpy_coverage(tri_uv)
    ok = dist > 1e-3
    got = out.rgba[3].numpy() > 0
    assert np.array_equal(got[ok], inside[ok])
    assert inside.sum() > 0 or got.sum() == 0
    assert np.allclose(out.depth.numpy()[got], z, rtol=1e-4)


def test_depth_test_front_wins_in_any_order():
    front = _unproject([[5, 5], [60, 8], [30, 45]], 1.0)
    back = _unproject([[0, 0], [63, 0], [32, 47]], 2.0)
    verts = torch.tensor(np.concatenate([front, back]), dtype=torch.float32)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    for faces, fc in ((torch.tensor([[0, 1, 2], [3, 4, 5]]), colors),
                      (torch.tensor([[3, 4, 5], [0, 1, 2]]), colors.flip(0))):
        out = render_mesh(verts, faces, _cam(), face_colors=fc, shading=False)
        inside_front, dist = _numpy_coverage(np.array([[5, 5], [60, 8], [30, 45]], float))
        m = inside_front & (dist > 1e-3)
        assert torch.all(out.rgba[0][torch.from_numpy(m)] == 1.0)
        assert torch.all(out.rgba[1][torch.from_numpy(m)] == 0.0)
        assert np.allclose(out.depth.numpy()[m], 1.0, rtol=1e-5)
        only_back = (~inside_front) & (out.rgba[3].numpy() > 0)
        assert only_back.sum() > 0 and np.all(out.rgba[1].numpy()[only_back] == 1.0)


def test_perspective_correct_interpolation():
    """A tilted triangle coloured by its world position: each pixel's colour/depth equals the
    ray-plane intersection (perspective-correct barycentrics)."""
    tri = np.array([[-0.6, -0.5, 1.0], [0.7, -0.4, 3.0], [0.0, 0.6, 2.0]])
    verts = torch.tensor(tri, dtype=torch.float32)
    vc = torch.tensor((tri + 1.0) / 4.0, dtype=torch.float32)
    out = render_mesh(verts, torch.tensor([[0, 1, 2]]), _cam(), vertex_colors=vc, shading=False)
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    d = n @ tri[0]
    ys, xs = np.nonzero(out.rgba[3].numpy() > 0)
    assert len(xs) > 200
    rays = np.stack([(xs + 0.5 - CX) / FX, (ys + 0.5 - CY) / FY, np.ones_like(xs, dtype=float)], 1)
    t = d / (rays @ n)
    P = rays * t[:, None]
    assert np.allclose(out.depth.numpy()[ys, xs], P[:, 2], rtol=1e-4)
    got = out.rgba[:3].numpy()[:, ys, xs].T
    assert np.allclose(got, (P + 1.0) / 4.0, atol=1e-4)


def _quad(u0, v0, u1, v1, z=1.5):
    corners = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], float)
    verts = torch.tensor(_unproject(corners, z), dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    # OBJ convention: v = 0 at the bottom of the texture image; image rows go down with pixel v
    uvs = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    return verts, faces, uvs


def test_constant_texture():
    verts, faces, uvs = _quad(4, 4, 60, 44)
    tex = torch.tensor([0.2, 0.5, 0.9]).expand(8, 8, 3).contiguous()
    out = render_mesh(verts, faces, _cam(), verts_uvs=uvs, faces_uvs=faces, texture=tex, shading=False)
    m = out.rgba[3] > 0
    assert m.sum() > 1500
    assert torch.allclose(out.rgba[:3][:, m], torch.tensor([0.2, 0.5, 0.9])[:, None], atol=1e-6)


def test_checker_texture_sampling():
    u0, v0, u1, v1 = 4.0, 4.0, 60.0, 44.0
    verts, faces, uvs = _quad(u0, v0, u1, v1)
    n = 4                                     # 4x4 cells of 8x8 texels
    cell = (np.indices((n, n)).sum(0) % 2).astype(np.float32)
    tex = np.kron(cell, np.ones((8, 8), np.float32))
    tex_rgb = torch.from_numpy(np.stack([tex, 1 - tex, np.full_like(tex, 0.5)], -1))
    out = render_mesh(verts, faces, _cam(), verts_uvs=uvs, faces_uvs=faces, texture=tex_rgb, shading=False)
    ys, xs = np.nonzero(out.rgba[3].numpy() > 0)
    su = (xs - u0) / (u1 - u0)                 # texture column fraction (u)
    sv = (ys - v0) / (v1 - v0)                 # texture row fraction (1 - v, image rows)
    fu, fv = su * n, sv * n
    away = (np.abs(fu - np.round(fu)) > 0.1) & (np.abs(fv - np.round(fv)) > 0.1)
    exp = ((np.floor(fu).astype(int) + np.floor(fv).astype(int)) % 2).astype(float)
    got = out.rgba[0].numpy()[ys, xs]
    assert away.sum() > 800
    assert np.allclose(got[away], exp[away], atol=1e-5)
    assert np.allclose(out.rgba[1].numpy()[ys, xs][away], 1 - exp[away], atol=1e-5)


def test_lambert_head_light_and_overlay():
    verts, faces, _ = _quad(10, 10, 50, 40, z=2.0)
    out = render_mesh(verts, faces, _cam(), face_colors=torch.ones(2, 3), shading=True, ambient=0.2)
    m = out.rgba[3] > 0
    # facing the camera: n.l = cos(angle between the ray and the optical axis)
    ys, xs = torch.nonzero(m, as_tuple=True)
    rays = torch.stack([(xs + 0.5 - CX) / FX, (ys + 0.5 - CY) / FY, torch.ones_like(xs, dtype=torch.float32)], 1)
    cosang = 1.0 / rays.norm(dim=1)
    assert torch.allclose(out.rgba[0][m], 0.2 + 0.8 * cosang, atol=1e-4)
    img = torch.zeros(3, H, W)
    blended = render_mesh_overlay(img, out.rgba, 0.5)
    assert torch.allclose(blended[:, m], 0.5 * out.rgba[:3][:, m])
    assert torch.all(blended[:, ~m] == 0)
    hwc = render_mesh_overlay(img.permute(1, 2, 0), out.rgba.permute(1, 2, 0), 0.5)
    assert torch.allclose(hwc, blended.permute(1, 2, 0))


def _sphere(n_lat=12, n_lon=16, r=0.3, c=(0, 0, 2.0)):
    verts = [[0, -r, 0], [0, r, 0]]
    for i in range(1, n_lat):
        th = math.pi * i / n_lat - math.pi / 2
        for j in range(n_lon):
            ph = 2 * math.pi * j / n_lon
            verts.append([r * math.cos(th) * math.cos(ph), r * math.sin(th), r * math.cos(th) * math.sin(ph)])
    faces = []
    ring = lambda i, j: 2 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(1, j + 1), ring(1, j)])
        faces.append([1, ring(n_lat - 1, j), ring(n_lat - 1, j + 1)])
        for i in range(1, n_lat - 1):
            faces.append([ring(i, j), ring(i, j + 1), ring(i + 1, j + 1)])
            faces.append([ring(i, j), ring(i + 1, j + 1), ring(i + 1, j)])
    return torch.tensor(verts, dtype=torch.float32) + torch.tensor(c), torch.tensor(faces)


def test_batch_and_chunking_are_consistent():
    verts, faces = _sphere()
    R = np.array([[math.cos(0.3), 0, math.sin(0.3)], [0, 1, 0], [-math.sin(0.3), 0, math.cos(0.3)]])
    cams = [_cam(), _cam(R=R, T=np.array([0.3, 0.0, 0.1]))]
    single = [render_mesh(verts, faces, c) for c in cams]
    batch = render_mesh(verts.expand(2, -1, -1), faces, cams)
    small = render_mesh(verts, faces, cams[1], chunk_size=97)
    for i in range(2):
        assert torch.allclose(batch.rgba[i], single[i].rgba, atol=1e-6)
        assert torch.equal(batch.face_id[i], single[i].face_id)
    assert torch.equal(small.face_id, single[1].face_id)
    # closed sphere: the silhouette is a disc-like blob, depth within the sphere's range
    d = single[0].depth[single[0].face_id >= 0]
    assert d.min() > 1.69 and d.max() < 2.31


def test_behind_camera_and_offscreen_are_dropped():
    verts = torch.tensor([[-0.1, 0, -1.0], [0.1, 0, -1.0], [0, 0.1, -1.0],
                          [50.0, 50.0, 1.0], [51.0, 50.0, 1.0], [50.0, 51.0, 1.0]])
    out = render_mesh(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), _cam())
    assert out.rgba[3].sum() == 0 and torch.all(out.face_id == -1)
    r = rasterize(verts, torch.tensor([[0, 1, 2]]), _cam().full_proj_transform, W, H)
    assert r.face_id.shape == (1, H, W)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    verts, faces = _sphere(24, 32)
    cam = _cam()
    cpu = render_mesh(verts, faces, cam)
    gpu = render_mesh(verts.cuda(), faces.cuda(), cam)
    assert torch.equal(cpu.face_id, gpu.face_id.cpu())
    assert torch.allclose(cpu.rgba, gpu.rgba.cpu(), atol=1e-5)
