"""scene.Scene: splits, cameras.json, input.ply, save / load of iterations (Blender layout).

``make_blender_scene`` (also used by test_train.py) writes a tiny NeRF-synthetic style scene:
a few cameras on a ring around a ball of coloured Gaussians, rendered with the reference
rasterizer, plus a small ``points3d.ply``.
"""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from arguments import ModelParams


def _look_at_c2w_blender(eye: np.ndarray) -> np.ndarray:
    """Camera-to-world in Blender/OpenGL axes (x right, y up, looking down -z) aiming at the origin."""
    forward = -eye / np.linalg.norm(eye)  # viewing direction
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, eye
    return c2w


def _ground_truth_model(n: int = 150, seed: int = 0) -> SimpleNamespace:
    """Splats on a unit sphere coloured by direction (view-independent colours)."""
    from utils.sh_utils import RGB2SH

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    colors = (d + 1) / 2 * 0.8 + 0.1
    return SimpleNamespace(get_xyz=d * 0.8, get_scaling=torch.full((n, 3), 0.18), get_rotation=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                           get_opacity=torch.full((n, 1), 0.95), get_features=RGB2SH(colors)[:, None, :],
                           active_sh_degree=0)


def make_blender_scene(root: str, n_train: int = 6, n_test: int = 2, size: int = 32, fovx: float = 0.8,
                       radius: float = 3.5, n_points: int = 120) -> str:
    """Write ``transforms_{train,test}.json``, PNG images and ``points3d.ply`` under ``root``."""
    from gaussian_renderer import render
    from scene.cameras import Camera
    from scene.dataset_readers import storePly

    os.makedirs(os.path.join(root, "train"), exist_ok=True)
    os.makedirs(os.path.join(root, "test"), exist_ok=True)
    model = _ground_truth_model()
    pipe = SimpleNamespace(convert_SHs_python=False, compute_cov3D_python=False, debug=False, backend="reference")
    total = n_train + n_test
    for split, indices in (("train", range(n_train)), ("test", range(n_train, total))):
        frames = []
        for k, i in enumerate(indices):
            angle = 2 * math.pi * (i + 0.5 * (split == "test")) / n_train
            eye = np.array([radius * math.cos(angle), radius * math.sin(angle), 0.8 * math.sin(3 * angle)])
            c2w = _look_at_c2w_blender(eye)
            cv = c2w.copy()
            cv[:3, 1:3] *= -1
            w2c = np.linalg.inv(cv)
            fy_fov = 2 * math.atan(math.tan(fovx / 2))  # square image
            cam = Camera(colmap_id=i, R=w2c[:3, :3].T, T=w2c[:3, 3], FoVx=fovx, FoVy=fy_fov, image_width=size,
                         image_height=size, image_name=f"r_{k}", uid=i, data_device="cpu")
            with torch.no_grad():
                img = render(cam, model, pipe, torch.zeros(3))["render"].clamp(0, 1)
            arr = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(root, split, f"r_{k}.png"))
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": c2w.tolist()})
        with open(os.path.join(root, f"transforms_{split}.json"), "w") as fh:
            json.dump({"camera_angle_x": fovx, "frames": frames}, fh)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1.0, 1.0, (n_points, 3))
    storePly(os.path.join(root, "points3d.ply"), pts, rng.integers(0, 255, (n_points, 3)).astype(np.uint8))
    return root


def model_params(source: str, model: str, **kw) -> ModelParams:
    p = ModelParams(source_path=source, model_path=model, data_device="cpu", **kw)
    p.validate()
    return p


@pytest.fixture(scope="module")
def blender_scene(tmp_path_factory) -> str:
    return make_blender_scene(str(tmp_path_factory.mktemp("blender")))


def _gaussians():
    from scene.gaussian_model import GaussianModel

    return GaussianModel(1, device="cpu")


def test_fresh_scene_writes_cameras_and_input(blender_scene, tmp_path):
    from scene import Scene

    out = str(tmp_path / "model")
    g = _gaussians()
    scene = Scene(model_params(blender_scene, out, eval=True), g, progress=False)
    assert len(scene.getTrainCameras()) == 6 and len(scene.getTestCameras()) == 2
    assert scene.getValCameras() == []
    assert scene.loaded_iter is None
    assert g.get_xyz.shape == (120, 3)
    assert os.path.isfile(os.path.join(out, "input.ply"))
    with open(os.path.join(blender_scene, "points3d.ply"), "rb") as a, open(os.path.join(out, "input.ply"), "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(out, "cameras.json")) as fh:
        cams = json.load(fh)
    assert len(cams) == 8
    assert [c["id"] for c in cams] == list(range(8))
    with open(os.path.join(blender_scene, "transforms_train.json")) as fh:
        frames = json.load(fh)["frames"]
    fx_expected = 32 / (2 * math.tan(0.4))
    for cam, frame in zip(cams[:6], frames):
        c2w = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(cam["position"], c2w[:3, 3], atol=1e-6)
        flip = c2w[:3, :3] * np.array([1, -1, -1])
        np.testing.assert_allclose(np.array(cam["rotation"]), flip, atol=1e-6)
        assert cam["width"] == 32 and cam["height"] == 32
        assert cam["fx"] == pytest.approx(fx_expected) and cam["fy"] == pytest.approx(fx_expected)
        assert set(cam) >= {"id", "img_name", "width", "height", "position", "rotation", "fx", "fy"}
    # extent: 1.1 x max distance of camera centres to their mean
    centres = np.array([c["position"] for c in cams[:6]])
    expected = 1.1 * np.linalg.norm(centres - centres.mean(0), axis=1).max()
    assert scene.cameras_extent == pytest.approx(expected, rel=1e-5)


def test_without_eval_all_cameras_train(blender_scene, tmp_path):
    from scene import Scene

    scene = Scene(model_params(blender_scene, str(tmp_path / "m")), _gaussians(), progress=False)
    assert len(scene.getTrainCameras()) == 8 and scene.getTestCameras() == []


def test_shuffle_follows_global_seed(blender_scene, tmp_path):
    import random

    from scene import Scene

    names: List[List[str]] = []
    for k in range(2):
        random.seed(123)
        s = Scene(model_params(blender_scene, str(tmp_path / f"m{k}"), eval=True), _gaussians(), progress=False)
        names.append([c.image_name for c in s.getTrainCameras()])
    assert names[0] == names[1]
    s = Scene(model_params(blender_scene, str(tmp_path / "m3"), eval=True), _gaussians(), shuffle=False, progress=False)
    assert [c.image_name for c in s.getTrainCameras()] == [f"train/r_{k}" for k in range(6)]


def test_save_and_load_latest_iteration(blender_scene, tmp_path):
    from scene import Scene

    out = str(tmp_path / "model")
    g = _gaussians()
    scene = Scene(model_params(blender_scene, out, eval=True), g, progress=False)
    with torch.no_grad():
        g._opacity += 0.25  # make the saved state differ from a fresh initialisation
    p7 = scene.save(7)
    scene.save(30)
    assert p7 == os.path.join(out, "point_cloud", "iteration_7", "point_cloud.ply")
    assert os.path.isfile(os.path.join(out, "point_cloud", "iteration_30", "point_cloud.ply"))
    cams_before = open(os.path.join(out, "cameras.json")).read()

    g2 = _gaussians()
    loaded = Scene(model_params(blender_scene, out, eval=True), g2, load_iteration=-1, progress=False)
    assert loaded.loaded_iter == 30
    torch.testing.assert_close(g2._opacity, g._opacity)
    torch.testing.assert_close(g2.get_xyz, g.get_xyz)
    assert open(os.path.join(out, "cameras.json")).read() == cams_before
    g3 = _gaussians()
    assert Scene(model_params(blender_scene, out, eval=True), g3, load_iteration=7, progress=False).loaded_iter == 7
    with pytest.raises(FileNotFoundError, match="iteration_9"):
        Scene(model_params(blender_scene, out, eval=True), _gaussians(), load_iteration=9, progress=False)


def test_bad_source_paths(tmp_path):
    from scene import Scene
    from utils.image_io import DatasetError

    with pytest.raises(FileNotFoundError, match="source path"):
        Scene(model_params(str(tmp_path / "missing"), str(tmp_path / "m")), _gaussians(), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="could not recognize"):
        Scene(model_params(str(empty), str(tmp_path / "m")), _gaussians(), progress=False)
    assert not (tmp_path / "m" / "cameras.json").exists()
