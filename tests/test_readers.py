"""Dataset readers on small fixtures written by the tests: COLMAP (text and binary), Blender,
the dynamic NeRSemble layout, and the error cases."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from scene import colmap_loader as cl
from scene.cameras import cameras_from_infos
from scene.dataset_readers import DatasetError, detect_layout, load_flame_param, read_scene_info
from utils.graphics_utils import look_at_c2w_opengl, qvec2rotmat, rotmat2qvec
from numpy_oracles import nerf_pixel_coords


def _project(cam, X: np.ndarray) -> np.ndarray:
    """Pixel coords of ``X`` in the NeRF/COLMAP convention (pixel i covers [i, i + 1))."""
    return nerf_pixel_coords(cam.full_proj_transform.cpu().numpy(), X, cam.image_width, cam.image_height)


def _png(path, W, H, rgba=False, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(H, W, 4 if rgba else 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


# ----------------------------------------------------------------------------- COLMAP

def _colmap_fixture(root, binary: bool, n_images: int = 9):
    W, H = 32, 24
    cams = {1: cl.ColmapCamera(1, "PINHOLE", W, H, np.array([30.0, 31.0, 14.2, 12.7])),
            2: cl.ColmapCamera(2, "SIMPLE_RADIAL", W, H, np.array([28.0, 16.5, 10.9, 0.01]))}
    rng = np.random.default_rng(0)
    images = {}
    for i in range(n_images):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        t = np.array([0.1 * i, -0.05, 3.0])
        images[i + 1] = cl.ColmapImage(i + 1, q, t, 1 + i % 2, f"img_{i:02d}.png", np.zeros((1, 2)),
                                       np.array([-1]))
        _png(os.path.join(root, "imgs", f"img_{i:02d}.png"), W, H, seed=i)
    xyz = rng.uniform(-1, 1, size=(20, 3))
    rgb = rng.integers(0, 256, size=(20, 3)).astype(np.uint8)
    sp = os.path.join(root, "sparse", "0")
    os.makedirs(sp, exist_ok=True)
    if binary:
        cl.write_cameras_binary(cams, os.path.join(sp, "cameras.bin"))
        cl.write_images_binary(images, os.path.join(sp, "images.bin"))
        cl.write_points3D_binary(xyz, rgb, os.path.join(sp, "points3D.bin"))
    else:
        with open(os.path.join(sp, "cameras.txt"), "w") as f:
            f.write("# Camera list\n")
            for c in cams.values():
                f.write(f"{c.id} {c.model} {c.width} {c.height} " + " ".join(map(repr, c.params.tolist())) + "\n")
        with open(os.path.join(sp, "images.txt"), "w") as f:
            f.write("# Image list\n# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
            for im in images.values():
                f.write(f"{im.id} " + " ".join(map(repr, im.qvec.tolist() + im.tvec.tolist())) +
                        f" {im.camera_id} {im.name}\n")
                f.write("\n" if im.id % 2 else "1.0 2.0 -1\n")   # empty points2D lines happen
        with open(os.path.join(sp, "points3D.txt"), "w") as f:
            f.write("# 3D point list\n")
            for i, (p, c) in enumerate(zip(xyz, rgb)):
                f.write(f"{i + 1} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r} {c[0]} {c[1]} {c[2]} 0.5 1 0\n")
    return cams, images, xyz, rgb


@pytest.mark.parametrize("binary", [False, True])
def test_colmap_reader(tmp_path, binary):
    cams, images, xyz, rgb = _colmap_fixture(str(tmp_path), binary)
    assert detect_layout(str(tmp_path)) == "Colmap"
    info = read_scene_info(str(tmp_path), images="imgs", eval=True)
    assert len(info.train_cameras) == 7 and len(info.test_cameras) == 2       # llffhold = 8
    assert [c.image_name for c in info.test_cameras] == ["img_00", "img_08"]
    assert np.allclose(info.point_cloud.points, xyz, atol=1e-6)
    assert np.allclose(info.point_cloud.colors, rgb / 255.0, atol=1e-6)
    full = read_scene_info(str(tmp_path), images="imgs", eval=False)
    assert len(full.train_cameras) == 9 and not full.test_cameras

    loaded = cameras_from_infos(full.train_cameras, data_device="cpu", progress=False)
    X = np.random.default_rng(1).uniform(-0.5, 0.5, size=(15, 3))
    for cam, ci in zip(loaded, full.train_cameras):
        im = images[ci.uid]
        c = cams[im.camera_id]
        fx, fy, cx, cy = c.intrinsics()
        Xc = X @ qvec2rotmat(im.qvec).T + im.tvec
        expected = np.stack([fx * Xc[:, 0] / Xc[:, 2] + cx, fy * Xc[:, 1] / Xc[:, 2] + cy], 1)
        assert np.allclose(_project(cam, X), expected, atol=2e-3), ci.image_name
        assert cam.original_image.shape == (3, 24, 32)
    # nerf normalisation: radius = 1.1 x the largest distance to the mean camera centre
    centres = np.stack([-qvec2rotmat(im.qvec).T @ im.tvec for im in images.values()])
    d = np.linalg.norm(centres - centres.mean(0), axis=1).max()
    assert full.nerf_normalization["radius"] == pytest.approx(1.1 * d, rel=1e-5)


def test_colmap_text_equals_binary(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _colmap_fixture(str(a), False)
    _colmap_fixture(str(b), True)
    ca, ia = cl.read_model(str(a / "sparse" / "0"))
    cb, ib = cl.read_model(str(b / "sparse" / "0"))
    assert ca.keys() == cb.keys() and ia.keys() == ib.keys()
    for k in ca:
        assert ca[k].model == cb[k].model and np.allclose(ca[k].params, cb[k].params)
    for k in ia:
        assert ia[k].name == ib[k].name and np.allclose(ia[k].qvec, ib[k].qvec) and np.allclose(ia[k].tvec, ib[k].tvec)


def test_colmap_missing_image(tmp_path):
    _colmap_fixture(str(tmp_path), True)
    os.remove(tmp_path / "imgs" / "img_03.png")
    with pytest.raises(DatasetError, match="img_03.png"):
        read_scene_info(str(tmp_path), images="imgs")


def test_colmap_bad_text(tmp_path):
    sp = tmp_path / "sparse" / "0"
    sp.mkdir(parents=True)
    (sp / "cameras.txt").write_text("1 PINHOLE 10 10 1.0 2.0\n")
    (sp / "images.txt").write_text("")
    with pytest.raises(DatasetError, match="cameras.txt:1"):
        read_scene_info(str(tmp_path))


# ----------------------------------------------------------------------------- Blender

def _blender_fixture(root, W=20, H=16, fovx=0.9):
    frames = {}
    for split, n in (("train", 3), ("test", 2)):
        fr = []
        for i in range(n):
            ang = 2 * math.pi * i / n
            c2w = look_at_c2w_opengl([3 * math.sin(ang), 0.5, 3 * math.cos(ang)], [0, 0, 0])
            _png(os.path.join(root, split, f"r_{i}.png"), W, H, rgba=True, seed=i)
            fr.append({"file_path": f"./{split}/r_{i}", "rotation": 0.0, "transform_matrix": c2w.tolist()})
        frames[split] = fr
        with open(os.path.join(root, f"transforms_{split}.json"), "w") as f:
            json.dump({"camera_angle_x": fovx, "frames": fr}, f)
    return frames


def test_blender_reader(tmp_path):
    frames = _blender_fixture(str(tmp_path))
    assert detect_layout(str(tmp_path)) == "Blender"
    info = read_scene_info(str(tmp_path), eval=True, white_background=True)
    assert len(info.train_cameras) == 3 and len(info.test_cameras) == 2
    # random initial points, saved as in 3DGS
    assert info.point_cloud.points.shape == (100_000, 3)
    assert np.all(np.abs(info.point_cloud.points) <= 1.3)
    assert os.path.exists(tmp_path / "points3d.ply")
    again = read_scene_info(str(tmp_path), eval=False)
    assert len(again.train_cameras) == 5
    assert np.allclose(again.point_cloud.points, info.point_cloud.points, atol=1e-6)
    # the OpenGL -> OpenCV flip: the look-at target (origin) projects to the image centre
    cams = cameras_from_infos(info.train_cameras, data_device="cpu", progress=False)
    for cam in cams:
        uv = _project(cam, np.zeros((1, 3)))[0]
        assert np.allclose(uv, [20 / 2, 16 / 2], atol=1e-3)
        # a point above the origin (world +y, Blender up) appears above the centre (smaller v)
        assert _project(cam, np.array([[0.0, 0.3, 0.0]]))[0, 1] < 16 / 2
        # camera centre matches the transform's translation
    c2w0 = np.array(frames["train"][0]["transform_matrix"])
    assert np.allclose(cams[0].camera_center.cpu().numpy(), c2w0[:3, 3], atol=1e-5)
    # white background composited where alpha < 255
    img = Image.open(tmp_path / "train" / "r_0.png")
    arr = np.asarray(img).astype(float)
    a = arr[..., 3:4] / 255
    exp = arr[..., :3] * a + 255 * (1 - a)
    assert np.abs(cams[0].image_uint8.permute(1, 2, 0).numpy().astype(float) - exp).max() <= 1.0


# ----------------------------------------------------------------------------- dynamic (NeRSemble)

FLAME_KEYS = {"shape": (300,), "expr": (1, 100), "rotation": (1, 3), "neck_pose": (1, 3), "jaw_pose": (1, 3),
              "eyes_pose": (1, 6), "translation": (1, 3), "static_offset": (1, 50, 3)}


def _flame_npz(path, t, **override):
    d = {k: np.full(s, 0.01 * t, dtype=np.float32) for k, s in FLAME_KEYS.items()}
    d.update(override)
    np.savez(path, **d)


def _dynamic_fixture(root, n_cams=3, n_t=4, W=24, H=18, fx=20.0, cx=11.0, cy=9.3, with_intrinsics=True):
    """Cameras 0..n_cams-1 (front = 1), timesteps 0..n_t-1 (last one = test)."""
    os.makedirs(os.path.join(root, "flame_param"), exist_ok=True)
    for t in range(n_t):
        _flame_npz(os.path.join(root, "flame_param", f"{t:05d}.npz"), t)
    _flame_npz(os.path.join(root, "canonical_flame_param.npz"), 0)
    cams = []
    for c in range(n_cams):
        az = (c - 1) * 0.4
        cams.append(look_at_c2w_opengl([math.sin(az), 0.1, math.cos(az)], [0, 0, 0]))
    splits = {"train": [], "val": [], "test": []}
    for t in range(n_t):
        for c in range(n_cams):
            fp = f"images/{t:05d}_{c:02d}"
            _png(os.path.join(root, fp + ".png"), W, H, rgba=True, seed=t * 10 + c)
            fr = {"file_path": fp, "transform_matrix": cams[c].tolist(), "timestep_index": t,
                  "camera_index": c, "flame_param_path": f"flame_param/{t:05d}.npz",
                  "camera_angle_x": 2 * math.atan(W / (2 * fx))}
            if with_intrinsics:
                fr.update({"fl_x": fx, "fl_y": fx, "cx": cx, "cy": cy, "w": W, "h": H})
            split = "test" if t == n_t - 1 else ("val" if c == 1 else "train")
            splits[split].append(fr)
    for s, fr in splits.items():
        with open(os.path.join(root, f"transforms_{s}.json"), "w") as f:
            json.dump({"frames": fr}, f)
    return cams


def test_dynamic_reader_splits(tmp_path):
    c2ws = _dynamic_fixture(str(tmp_path))
    assert detect_layout(str(tmp_path)) == "DynamicNerf"
    info = read_scene_info(str(tmp_path), eval=True, white_background=True, bind_to_mesh=True)
    assert len(info.train_cameras) == 6 and len(info.val_cameras) == 3 and len(info.test_cameras) == 3
    assert {c.camera_id for c in info.val_cameras} == {1}
    assert {c.timestep for c in info.test_cameras} == {3}
    assert sorted(info.train_meshes) == [0, 1, 2] and sorted(info.test_meshes) == [3]
    assert info.point_cloud is None
    m = info.train_meshes[2]
    assert m["expr"].shape == (1, 100) and m["expr"].dtype == np.float32 and m["expr"][0, 0] == pytest.approx(0.02)
    # without --eval everything is training data
    merged = read_scene_info(str(tmp_path), eval=False, bind_to_mesh=True)
    assert len(merged.train_cameras) == 12 and not merged.val_cameras and not merged.test_cameras
    assert sorted(merged.train_meshes) == [0, 1, 2, 3]
    # select_camera_id keeps only that camera in val/test
    sel = read_scene_info(str(tmp_path), eval=True, select_camera_id=2, bind_to_mesh=True)
    assert {c.camera_id for c in sel.test_cameras} == {2} and len(sel.train_cameras) == 6
    # no --bind_to_mesh: a random point cloud like 3DGS
    plain = read_scene_info(str(tmp_path), eval=True)
    assert plain.point_cloud.points.shape[1] == 3 and os.path.exists(tmp_path / "points3d.ply")


def test_dynamic_principal_point_and_flip(tmp_path):
    W, H, fx, cx, cy = 24, 18, 20.0, 11.0, 9.3
    c2ws = _dynamic_fixture(str(tmp_path), W=W, H=H, fx=fx, cx=cx, cy=cy)
    info = read_scene_info(str(tmp_path), eval=True, bind_to_mesh=True)
    cams = cameras_from_infos(info.train_cameras + info.val_cameras, data_device="cpu", progress=False)
    X = np.random.default_rng(0).uniform(-0.2, 0.2, size=(10, 3))
    for cam in cams:
        c2w = c2ws[cam.camera_id].copy()
        c2w[:3, 1:3] *= -1                      # OpenGL -> OpenCV
        w2c = np.linalg.inv(c2w)
        Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
        expected = np.stack([fx * Xc[:, 0] / Xc[:, 2] + cx, fx * Xc[:, 1] / Xc[:, 2] + cy], 1)
        assert np.allclose(_project(cam, X), expected, atol=2e-3)
        assert cam.image_width == W and cam.image_height == H
        assert cam.alpha_mask is not None


def test_dynamic_size_from_image_without_wh(tmp_path):
    _dynamic_fixture(str(tmp_path), W=30, H=14, with_intrinsics=False)
    info = read_scene_info(str(tmp_path), eval=True, bind_to_mesh=True)
    c = info.train_cameras[0]
    assert (c.width, c.height) == (30, 14) and c.cx is None
    assert c.FovX == pytest.approx(2 * math.atan(30 / 40))


def test_dynamic_target_path(tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    _dynamic_fixture(str(src))
    _dynamic_fixture(str(tgt), n_t=5)
    info = read_scene_info(str(src), eval=True, target_path=str(tgt), bind_to_mesh=True)
    assert len(info.test_cameras) == 15 and not info.val_cameras
    assert all(str(tgt) in c.image_path for c in info.test_cameras)
    assert sorted(info.tgt_train_meshes) == [0, 1, 2, 3, 4]
    one = read_scene_info(str(src), eval=True, target_path=str(tgt), select_camera_id=1, bind_to_mesh=True)
    assert len(one.test_cameras) == 5 and {c.camera_id for c in one.test_cameras} == {1}


# ----------------------------------------------------------------------------- errors

def _edit_json(path, fn):
    with open(path) as f:
        d = json.load(f)
    fn(d)
    with open(path, "w") as f:
        json.dump(d, f)


def test_error_missing_image(tmp_path):
    _dynamic_fixture(str(tmp_path))
    os.remove(tmp_path / "images" / "00001_00.png")
    with pytest.raises(DatasetError, match=r"transforms_train.json.*file_path.*00001_00.png"):
        read_scene_info(str(tmp_path), eval=True)


def test_error_bad_json(tmp_path):
    _dynamic_fixture(str(tmp_path))
    (tmp_path / "transforms_val.json").write_text("{ not json")
    with pytest.raises(DatasetError, match=r"transforms_val.json.*invalid JSON"):
        read_scene_info(str(tmp_path), eval=True)


def test_error_missing_transform_matrix(tmp_path):
    _dynamic_fixture(str(tmp_path))
    _edit_json(tmp_path / "transforms_test.json", lambda d: d["frames"][1].pop("transform_matrix"))
    with pytest.raises(DatasetError, match=r"transforms_test.json: frames\[1\].*transform_matrix"):
        read_scene_info(str(tmp_path), eval=True)


def test_error_empty_split(tmp_path):
    _dynamic_fixture(str(tmp_path))
    _edit_json(tmp_path / "transforms_val.json", lambda d: d.update(frames=[]))
    with pytest.raises(DatasetError, match=r"transforms_val.json.*frames.*empty"):
        read_scene_info(str(tmp_path), eval=True)


@pytest.mark.parametrize("key,value,pattern", [
    ("expr", np.zeros((2, 100), np.float32), r"'expr' must have shape \(1,\*\)"),
    ("eyes_pose", np.zeros((1, 3), np.float32), r"'eyes_pose' must have shape \(1,6\)"),
    ("static_offset", np.zeros((50, 3), np.float32), r"'static_offset' must have shape"),
    ("jaw_pose", np.array([[0.0, np.nan, 0.0]], np.float32), r"'jaw_pose' contains NaN"),
    ("translation", np.array([[0.0, np.inf, 0.0]], np.float32), r"'translation' contains NaN or Inf"),
])
def test_error_bad_flame_npz(tmp_path, key, value, pattern):
    _dynamic_fixture(str(tmp_path))
    _flame_npz(tmp_path / "flame_param" / "00002.npz", 2, **{key: value})
    with pytest.raises(DatasetError, match=r"00002.npz.*" + pattern):
        read_scene_info(str(tmp_path), eval=True)


def test_error_missing_flame_key_and_file(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, shape=np.zeros(300, np.float32))
    with pytest.raises(DatasetError, match=r"x.npz: missing key 'expr'"):
        load_flame_param(str(p))
    with pytest.raises(DatasetError, match=r"nope.npz"):
        load_flame_param(str(tmp_path / "nope.npz"))


def test_error_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="could not recognize"):
        read_scene_info(str(tmp_path))


def test_flame_param_keys_match_spec(tmp_path):
    p = tmp_path / "ok.npz"
    _flame_npz(p, 1, shape=np.zeros((1, 300), np.float64))
    d = load_flame_param(str(p))
    assert d["shape"].shape == (300,) and all(v.dtype == np.float32 for v in d.values())


# ----------------------------------------------------------------------------- pixel convention
# Every reader takes cx, cy in the NeRF/COLMAP convention: pixel i covers [i, i + 1), so a centred
# camera has cx = W / 2 and a point on its optical axis lands exactly between the two middle
# columns (and rows) of an even-sized image.

def _axis_point(cam) -> np.ndarray:
    """A world point 2 units in front of the camera, on its optical axis."""
    c = cam.camera_center.cpu().numpy().astype(np.float64)
    forward = np.asarray(cam.R, dtype=np.float64)[:, 2]          # R is camera-to-world (3DGS)
    return (c + 2.0 * forward)[None]


def _centred_cameras(layout: str, root: str, W: int, H: int):
    if layout == "COLMAP":
        cams = {1: cl.ColmapCamera(1, "PINHOLE", W, H, np.array([30.0, 30.0, W / 2, H / 2]))}
        q = np.array([0.9, 0.1, -0.3, 0.2])
        images = {1: cl.ColmapImage(1, q / np.linalg.norm(q), np.array([0.1, -0.2, 3.0]), 1, "a.png",
                                    np.zeros((1, 2)), np.array([-1]))}
        _png(os.path.join(root, "imgs", "a.png"), W, H)
        sp = os.path.join(root, "sparse", "0")
        os.makedirs(sp, exist_ok=True)
        cl.write_cameras_binary(cams, os.path.join(sp, "cameras.bin"))
        cl.write_images_binary(images, os.path.join(sp, "images.bin"))
        cl.write_points3D_binary(np.zeros((4, 3)), np.zeros((4, 3), np.uint8), os.path.join(sp, "points3D.bin"))
        info = read_scene_info(root, images="imgs")
    elif layout == "Blender":                     # camera_angle_x only: a centred frustum
        _blender_fixture(root, W=W, H=H)
        info = read_scene_info(root)
    else:                                         # NeRSemble transforms with explicit cx = W / 2
        _dynamic_fixture(root, W=W, H=H, cx=W / 2, cy=H / 2)
        info = read_scene_info(root, bind_to_mesh=True)
    return cameras_from_infos(info.train_cameras, data_device="cpu", progress=False)


@pytest.mark.parametrize("layout", ["COLMAP", "Blender", "DynamicNerf"])
def test_centred_camera_puts_the_axis_between_the_middle_pixels(tmp_path, layout):
    W, H = 32, 24
    cams = _centred_cameras(layout, str(tmp_path), W, H)
    assert cams
    for cam in cams:
        assert (cam.cx, cam.cy) == (W / 2, H / 2)
        uv = _project(cam, _axis_point(cam))[0]
        assert np.allclose(uv, [W / 2, H / 2], atol=1e-4)


@pytest.mark.parametrize("layout", ["COLMAP", "Blender", "DynamicNerf"])
def test_mirror_symmetric_scene_renders_mirror_symmetric(tmp_path, layout):
    """Splats placed symmetrically about a centred camera's optical axis render an image equal to
    its own left-right and up-down mirror (half a pixel off would break the symmetry)."""
    from types import SimpleNamespace
    from gaussian_renderer import render

    W, H = 32, 24
    cam = _centred_cameras(layout, str(tmp_path), W, H)[0]
    R = torch.tensor(np.asarray(cam.R), dtype=torch.float32)         # camera-to-world rotation
    centre = cam.camera_center.cpu().float()
    local = torch.tensor([[0.0, 0.0, 2.0], [0.25, 0.1, 2.2], [-0.25, 0.1, 2.2], [0.25, -0.1, 2.2],
                          [-0.25, -0.1, 2.2]])
    n = local.shape[0]
    model = SimpleNamespace(
        get_xyz=centre + local @ R.T, get_scaling=torch.full((n, 3), 0.05),
        get_rotation=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1), get_opacity=torch.full((n, 1), 0.9),
        get_features=torch.full((n, 1, 3), 0.8), active_sh_degree=0)
    pipe = SimpleNamespace(convert_SHs_python=False, compute_cov3D_python=False, debug=False, backend="reference")
    img = render(cam, model, pipe, torch.zeros(3))["render"].detach().numpy()
    assert img.max() > 0.3
    np.testing.assert_allclose(img, img[:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(img, img[:, ::-1, :], atol=1e-5)
