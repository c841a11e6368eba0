"""Cameras, matrices, the resolution rule and image loading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from scene.cameras import Camera, MiniCam, cameras_from_infos, camera_to_json, scaled_intrinsics
from scene.dataset_readers import CameraInfo
from utils.graphics_utils import (focal2fov, fov2focal, getProjectionMatrix, getWorld2View2, qvec2rotmat,
                                  rotmat2qvec)
from utils.image_io import DatasetError, composite_uint8, load_image, target_resolution
from numpy_oracles import nerf_pixel_coords


def _rot(seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=4)
    return qvec2rotmat(q / np.linalg.norm(q))


def _project(cam, X: np.ndarray) -> np.ndarray:
    """Pixel coords of ``X`` in the NeRF/COLMAP convention (pixel i covers [i, i + 1))."""
    return nerf_pixel_coords(cam.full_proj_transform.cpu().numpy(), X, cam.image_width, cam.image_height)


def test_focal_fov_roundtrip():
    assert focal2fov(fov2focal(0.8, 640), 640) == pytest.approx(0.8)
    assert fov2focal(2 * math.atan(0.5), 100) == pytest.approx(100)


def test_world2view_matches_definition():
    R, T = _rot(1), np.array([0.1, -0.2, 2.0])
    W2V = getWorld2View2(R, T)
    assert np.allclose(W2V[:3, :3], R.T, atol=1e-6) and np.allclose(W2V[:3, 3], T, atol=1e-6)
    # translate/scale move the camera centre
    C = -R @ T
    W2V2 = getWorld2View2(R, T, translate=np.array([1.0, 2.0, 3.0]), scale=2.0)
    C2 = np.linalg.inv(W2V2)[:3, 3]
    assert np.allclose(C2, (C + [1, 2, 3]) * 2, atol=1e-5)


def test_quaternion_roundtrip():
    R = _rot(3)
    assert np.allclose(qvec2rotmat(rotmat2qvec(R)), R, atol=1e-9)


@pytest.mark.parametrize("W,H,fx,fy,cx,cy", [(64, 48, 50.0, 52.0, 30.2, 21.7), (80, 60, 70.0, 70.0, 39.5, 29.5),
                                               (33, 77, 40.0, 45.0, 10.0, 50.0)])
def test_principal_point_pinhole(W, H, fx, fy, cx, cy):
    """A point projected through our matrices lands on u = fx x/z + cx, v = fy y/z + cy."""
    R, T = _rot(7), np.array([0.05, 0.02, 3.0])
    cam = Camera(0, R, T, focal2fov(fx, W), focal2fov(fy, H), W, H, "c", 0, data_device="cpu",
                 cx=cx, cy=cy, fl_x=fx, fl_y=fy)
    rng = np.random.default_rng(0)
    X = rng.uniform(-0.5, 0.5, size=(20, 3))
    Xc = X @ R + T            # w2c = [R^T | T]: x_cam = R^T x + T
    expected = np.stack([fx * Xc[:, 0] / Xc[:, 2] + cx, fy * Xc[:, 1] / Xc[:, 2] + cy], 1)
    assert np.allclose(_project(cam, X), expected, atol=2e-3)
    # camera centre and view-space depth
    assert np.allclose(cam.camera_center.cpu().numpy(), -R @ T, atol=1e-5)
    pv = torch.tensor(np.concatenate([X, np.ones((20, 1))], 1), dtype=torch.float32) @ cam.world_view_transform.cpu()
    assert np.allclose(pv[:, 2].numpy(), Xc[:, 2], atol=1e-5)


def test_centered_default_equals_explicit_center():
    P0 = getProjectionMatrix(0.01, 100, 0.9, 0.7)
    P1 = getProjectionMatrix(0.01, 100, 0.9, 0.7, cx=64 / 2, cy=48 / 2, width=64, height=48)
    assert torch.allclose(P0, P1, atol=1e-7)
    # depth maps near->0, far->1
    for z, ndc in ((0.01, 0.0), (100.0, 1.0)):
        p = P0 @ torch.tensor([0.0, 0.0, z, 1.0])
        assert float(p[2] / p[3]) == pytest.approx(ndc, abs=1e-5)


def test_minicam_matches_camera():
    R, T = _rot(2), np.array([0.0, 0.0, 2.0])
    cam = Camera(0, R, T, 0.8, 0.6, 64, 48, "x", 0, data_device="cpu", cx=30.0, cy=20.0)
    mini = MiniCam(64, 48, 0.6, 0.8, 0.01, 100.0, cam.world_view_transform, cam.full_proj_transform,
                   timestep=3, cx=30.0, cy=20.0)
    assert torch.allclose(mini.camera_center, cam.camera_center, atol=1e-5)
    assert torch.allclose(mini.projection_matrix, cam.projection_matrix, atol=1e-4)
    assert mini.original_image is None and mini.timestep == 3


@pytest.mark.parametrize("w,h,res,scale,expected", [
    (802, 550, -1, 1.0, (802, 550)),
    (3200, 1800, -1, 1.0, (1600, 900)),
    (802, 550, 2, 1.0, (401, 275)),
    (800, 600, 4, 1.0, (200, 150)),
    (800, 600, 8, 2.0, (50, 38)),
    (800, 600, 400, 1.0, (400, 300)),
    (550, 802, -1, 1.0, (550, 802)),      # portrait: never assume an orientation
    (1000, 500, 1, 1.0, (1000, 500)),
])
def test_resolution_rule(w, h, res, scale, expected):
    assert target_resolution(w, h, res, scale) == expected


def test_resolution_rule_rejects_bad():
    with pytest.raises(ValueError):
        target_resolution(100, 100, 0)


def test_composite_exact():
    rgb = np.array([[[200, 100, 0]]], dtype=np.uint8)
    a = np.array([[128]], dtype=np.uint8)
    out = composite_uint8(rgb, a, (1.0, 1.0, 1.0))
    exp = np.round(rgb.astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.array_equal(out[0, 0], exp[0, 0].astype(np.uint8))


def _write_rgba(path, W, H, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    arr[: H // 2, :, 3] = 0
    arr[H // 2:, :, 3] = 255
    Image.fromarray(arr, "RGBA").save(path)
    return arr


def test_load_image_composites_and_keeps_alpha(tmp_path):
    arr = _write_rgba(tmp_path / "a.png", 12, 8)
    d = load_image(str(tmp_path / "a.png"), background=(1.0, 1.0, 1.0))
    assert d.rgb.dtype == np.uint8 and d.rgb.shape == (8, 12, 3)
    assert np.all(d.rgb[:4] == 255)                      # transparent -> white
    assert np.array_equal(d.rgb[4:], arr[4:, :, :3])     # opaque -> unchanged
    assert np.array_equal(d.alpha, arr[..., 3])
    with pytest.raises(DatasetError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        load_image(str(tmp_path / "bad.png"))


def test_cameras_from_infos_loads_and_rescales(tmp_path):
    W, H = 40, 30
    paths = []
    for i in range(3):
        _write_rgba(tmp_path / f"{i}.png", W, H, seed=i)
        paths.append(str(tmp_path / f"{i}.png"))
    R, T = _rot(5), np.array([0.0, 0.1, 2.5])
    fx, fy, cx, cy = 35.0, 36.0, 18.3, 16.1
    infos = [CameraInfo(uid=i, R=R, T=T, FovY=focal2fov(fy, H), FovX=focal2fov(fx, W), image_path=p,
                        image_name=f"{i}", width=W, height=H, bg=np.ones(3), timestep=i, camera_id=7,
                        cx=cx, cy=cy, fl_x=fx, fl_y=fy) for i, p in enumerate(paths)]
    cams = cameras_from_infos(infos, resolution=-1, data_device="cpu", progress=False, num_workers=2)
    assert [c.timestep for c in cams] == [0, 1, 2] and cams[0].camera_id == 7
    img = cams[1].original_image
    assert img.dtype == torch.float32 and img.shape == (3, H, W)
    assert cams[1].image_uint8.dtype == torch.uint8
    assert torch.all(img[:, : H // 2] == 1.0)               # white background composited
    assert cams[1].alpha_mask.shape == (1, H, W)
    assert torch.equal(cams[1].original_image, cams[1].image_uint8.float() / 255)

    # half resolution: the intrinsics follow (pixel i covers [i, i + 1): coordinates halve)
    half = cameras_from_infos(infos[:1], resolution=2, data_device="cpu", progress=False)[0]
    assert (half.image_width, half.image_height) == (20, 15)
    assert half.original_image.shape == (3, 15, 20)
    X = np.random.default_rng(1).uniform(-0.3, 0.3, size=(10, 3))
    full_uv = _project(cams[0], X)
    half_uv = _project(half, X)
    assert np.allclose(full_uv * 0.5, half_uv, atol=2e-3)

    # black background when asked, no images when not loaded
    black = cameras_from_infos(infos[:1], data_device="cpu", white_background=False, progress=False)[0]
    assert torch.all(black.original_image[:, : H // 2] == 0.0)
    none = cameras_from_infos(infos[:1], data_device="cpu", load_images=False, progress=False)[0]
    assert none.original_image is None

    entry = camera_to_json(0, cams[0])
    assert np.allclose(entry["position"], -R @ T, atol=1e-6)
    assert entry["fx"] == pytest.approx(fx) and entry["cx"] == pytest.approx(cx)


def test_scaled_intrinsics_centre_stays_centre():
    out = scaled_intrinsics(100, 50, 25, 12, 1.0, 0.5, 50.0, 25.0, 80.0, 80.0)
    assert out["cx"] == pytest.approx(25 / 2)
    assert out["fl_x"] == pytest.approx(20.0)


def test_camera_rejects_bad_image():
    with pytest.raises(ValueError):
        Camera(0, np.eye(3), np.zeros(3), 1.0, 1.0, 4, 4, "x", 0, image=np.zeros((4, 4, 3), np.float32),
               data_device="cpu")
    with pytest.raises(ValueError):
        Camera(0, np.eye(3), np.zeros(3), 1.0, 1.0, 4, 4, "x", 0, image=np.zeros((5, 4, 3), np.uint8),
               data_device="cpu")


@pytest.mark.cuda
def test_cuda_data_device(tmp_path):
    _write_rgba(tmp_path / "a.png", 16, 12)
    info = CameraInfo(uid=0, R=np.eye(3), T=np.array([0, 0, 2.0]), FovY=0.8, FovX=1.0, image_path=str(tmp_path / "a.png"),
                      image_name="a", width=16, height=12)
    gpu = cameras_from_infos([info], data_device="cuda", progress=False)[0]
    assert gpu.image_uint8.is_cuda and gpu.original_image.is_cuda and gpu.world_view_transform.is_cuda
    cpu = cameras_from_infos([info], data_device="cpu", progress=False)[0]
    assert cpu.image_uint8.device.type == "cpu" and cpu.image_uint8.is_pinned()
    assert torch.equal(cpu.image_uint8, gpu.image_uint8.cpu())
