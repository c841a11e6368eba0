"""Local viewer: the engine (CPU), headless export, motion handling, and the real window (gui)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from gaussian_renderer.motion import (Keyframe, MotionError, interpolate_keyframes, load_motion, save_motion)


# ---------------------------------------------------------------------------------------------
# a small avatar: one opaque splat per triangle, coloured by position, saved like a trained model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def avatar_dir(small_subject, tmp_path_factory):
    from arguments import save_cfg_args
    from scene.dataset_readers import read_scene_info
    from scene.flame_gaussian_model import FlameGaussianModel
    from utils.general_utils import inverse_sigmoid
    from utils.sh_utils import RGB2SH

    info = read_scene_info(str(small_subject), eval=True, white_background=True, bind_to_mesh=True)
    g = FlameGaussianModel(1, device="cpu")
    g.load_meshes(info.train_meshes, info.test_meshes)
    g.create_from_pcd(None, 1.0)
    g.select_mesh_by_timestep(0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        rgb = torch.rand(g._xyz.shape[0], 3, generator=gen) * 0.9 + 0.05   # a colour per triangle
        g._features_dc.data[:] = RGB2SH(rgb)[:, None, :]
        g._opacity.data[:] = inverse_sigmoid(torch.full_like(g._opacity, 0.95))
        g._scaling.data[:] = np.log(0.8)
    model = tmp_path_factory.mktemp("avatar")
    g.save_ply(str(model / "point_cloud" / "iteration_10" / "point_cloud.ply"))
    save_cfg_args(str(model), {"sh_degree": 1, "source_path": str(small_subject), "bind_to_mesh": True,
                               "white_background": True, "eval": True, "model_path": str(model)})
    return model


def _front_camera(engine, width=96, height=66):
    from viewer.camera import OrbitCamera

    cam = OrbitCamera(width=width, height=height, fovy=20.0, radius=1.0, target=engine.head_center())
    return cam


def _mouth_and_forehead_boxes(engine, cam):
    """Pixel boxes around the lips and the forehead of the posed mesh."""
    g = engine.gaussians
    verts = g.verts[0].cpu().numpy()
    lips = g.flame_model.mask.get_vid("lips")
    lips = lips.cpu().numpy() if torch.is_tensor(lips) else np.asarray(lips)
    fore = g.flame_model.mask.get_vid("forehead")
    fore = fore.cpu().numpy() if torch.is_tensor(fore) else np.asarray(fore)
    def box(ids):
        uv = cam.project(verts[ids])
        x0, y0 = np.floor(uv.min(0)).astype(int) - 2
        x1, y1 = np.ceil(uv.max(0)).astype(int) + 3
        return max(0, x0), max(0, y0), min(cam.width, x1), min(cam.height, y1)
    return box(lips), box(fore)


def test_engine_renders_and_jaw_changes_mouth_only(avatar_dir):
    from gaussian_renderer.avatar_engine import AvatarEngine

    engine = AvatarEngine(str(avatar_dir), device="cpu")
    assert engine.bound and engine.num_timesteps == 6 and engine.num_splats > 1000
    cam = _front_camera(engine)
    params = engine.neutral_params()
    engine.pose(params)
    mouth, fore = _mouth_and_forehead_boxes(engine, cam)
    mc = cam.minicam()
    base = engine.render(mc, params)
    assert base.shape == (66, 96, 3)
    assert (np.abs(base - 1.0).sum(-1) > 0.1).mean() > 0.05       # the head covers the image
    opened = {k: v.copy() for k, v in params.items()}
    opened["jaw_pose"][0] = 0.35
    jaw = engine.render(mc, opened)
    diff = np.abs(jaw - base).sum(-1)
    mouth_change = diff[mouth[1]:mouth[3], mouth[0]:mouth[2]].mean()
    fore_change = diff[fore[1]:fore[3], fore[0]:fore[2]].mean()
    assert mouth_change > 0.05
    assert fore_change < 0.2 * mouth_change


def test_plain_ply_disables_flame(tmp_path):
    from gaussian_renderer.avatar_engine import AvatarEngine
    from scene.gaussian_model import GaussianModel
    from utils.graphics_utils import BasicPointCloud

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 3)).astype(np.float32) * 0.05
    g = GaussianModel(0, device="cpu")
    g.create_from_pcd(BasicPointCloud(points=pts, colors=rng.random((200, 3)).astype(np.float32),
                                      normals=np.zeros((200, 3), np.float32)), 1.0)
    ply = tmp_path / "plain.ply"
    g.save_ply(str(ply))
    engine = AvatarEngine(str(ply), device="cpu")
    assert not engine.bound and engine.num_timesteps == 0
    assert any("FLAME controls disabled" in n for n in engine.info.notes)
    from viewer.camera import OrbitCamera

    image = engine.render(OrbitCamera(width=40, height=30, radius=1.0).minicam())
    assert image.shape == (30, 40, 3) and np.isfinite(image).all()


def test_missing_things_give_clear_errors(tmp_path, avatar_dir):
    from gaussian_renderer.avatar_engine import AvatarEngine, AvatarLoadError

    with pytest.raises(AvatarLoadError, match="no such file"):
        AvatarEngine(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(AvatarLoadError, match="point_cloud"):
        AvatarEngine(str(tmp_path), device="cpu")
    # a bound PLY whose flame_param.npz is missing: usable on the neutral head, with a note
    ply_src = avatar_dir / "point_cloud" / "iteration_10" / "point_cloud.ply"
    lone = tmp_path / "lone" / "avatar.ply"
    lone.parent.mkdir()
    lone.write_bytes(ply_src.read_bytes())
    engine = AvatarEngine(str(lone), device="cpu", sh_degree=1)
    assert engine.bound and any("missing" in n for n in engine.info.notes)


def test_motion_expression_count_adapts(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, expr=np.ones((5, 50), np.float32), rotation=np.zeros((5, 3), np.float32),
             neck_pose=np.zeros((5, 3), np.float32), jaw_pose=np.zeros((5, 3), np.float32),
             eyes_pose=np.zeros((5, 6), np.float32), translation=np.zeros((5, 3), np.float32))
    motion, report = load_motion(str(path), n_expr=100)
    assert motion["expr"].shape == (5, 100) and motion["expr"][:, 50:].sum() == 0
    assert "50 expression components" in report.notes[0]
    bad = tmp_path / "bad.npz"
    np.savez(bad, expr=np.full((2, 10), np.nan, np.float32))
    with pytest.raises(MotionError, match="NaN"):
        load_motion(str(bad), 10)
    with pytest.raises(MotionError, match="not found"):
        load_motion(str(tmp_path / "missing.npz"), 10)


def test_keyframe_interpolation_and_export(tmp_path):
    a = Keyframe({"expr": np.zeros(4, np.float32), "jaw_pose": np.zeros(3, np.float32)})
    b = Keyframe({"expr": np.ones(4, np.float32), "jaw_pose": np.array([0.4, 0, 0], np.float32)})
    traj = interpolate_keyframes([a, b], interval=4, cycles=2)
    assert traj["expr"].shape == (10, 4)
    np.testing.assert_allclose(traj["expr"][:5, 0], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(traj["jaw_pose"][2, 0], 0.2, atol=1e-6)
    save_motion(str(tmp_path / "t.npz"), traj)
    with np.load(tmp_path / "t.npz") as data:
        assert data["expr"].shape == (10, 4)


def test_headless_export_matches_direct_render(avatar_dir, tmp_path):
    """The export path renders the avatar's own frames from a cameras.json camera exactly as
    rendering the same camera and timestep directly through the model does."""
    from PIL import Image

    import local_viewer
    from gaussian_renderer import render
    from gaussian_renderer.avatar_engine import AvatarEngine, PipelineSettings
    from scene.flame_gaussian_model import FlameGaussianModel

    entry = {"id": 0, "img_name": "cam", "width": 64, "height": 48, "position": [0.05, 0.02, 1.0],
             "rotation": np.diag([1.0, -1.0, -1.0]).tolist(), "fx": 150.0, "fy": 150.0, "cx": 30.0, "cy": 25.0}
    cams = tmp_path / "cameras.json"
    cams.write_text(json.dumps([entry]))
    out = tmp_path / "export"
    rc = local_viewer.main(["--point_path", str(avatar_dir), "--export", str(out), "--cameras_json", str(cams),
                            "--device", "cpu", "--frames", "0", "3"])
    assert rc == 0
    files = sorted(os.listdir(out))
    assert files == ["00000.png", "00001.png"]
    # independent path: the model's own timestep selection + render()
    g = FlameGaussianModel(1, device="cpu")
    g.load_ply(str(avatar_dir / "point_cloud" / "iteration_10" / "point_cloud.ply"))
    g.active_sh_degree = 1
    cam = local_viewer.camera_from_json_entry(entry, "cpu")
    for i, t in enumerate([0, 3]):
        g.select_mesh_by_timestep(t)
        with torch.no_grad():
            ref = render(cam, g, PipelineSettings(), torch.ones(3))["render"].clamp(0, 1)
        ref8 = (ref.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        got = np.asarray(Image.open(out / f"{i:05d}.png"))
        assert np.abs(got.astype(int) - ref8.astype(int)).max() <= 1


@pytest.mark.gui
def test_window_drives_the_avatar(avatar_dir, tmp_path):
    """The real DearPyGui window: sliders, timeline and save-image change the pixels as expected."""
    import dearpygui.dearpygui as dpg

    import local_viewer

    args = local_viewer.parse_args(["--point_path", str(avatar_dir), "--device", "cpu", "--width", "200",
                                    "--height", "150", "--cpu_scale", "1.0"])
    engine = local_viewer.AvatarEngine(str(avatar_dir), device="cpu")
    viewer = local_viewer.LocalViewer(engine, args)
    viewer.build()
    try:
        for _ in range(3):
            viewer.tick()
        viewer.reset_flame()
        viewer.tick()
        base = viewer.last_image.copy()
        engine.pose(viewer.state.params)
        mouth, fore = _mouth_and_forehead_boxes(engine, viewer.camera)
        # jaw slider (pitch = axis-angle x)
        tag = viewer._slider_tag("jaw_pose", 0)
        dpg.set_value(tag, 0.35)
        viewer.on_flame_slider(tag, 0.35, ("jaw_pose", 0))
        viewer.tick()
        jaw = viewer.last_image.copy()
        diff = np.abs(jaw - base).sum(-1)
        m = diff[mouth[1]:mouth[3], mouth[0]:mouth[2]].mean()
        f = diff[fore[1]:fore[3], fore[0]:fore[2]].mean()
        assert m > 0.05 and f < 0.2 * m
        # expression slider
        tag = viewer._slider_tag("expr", 0)
        dpg.set_value(tag, 2.5)
        viewer.on_flame_slider(tag, 2.5, ("expr", 0))
        viewer.tick()
        assert np.abs(viewer.last_image - jaw).max() > 0.05
        # timeline step (keyboard handler calls set_timestep)
        viewer.set_timestep(3)
        viewer.tick()
        assert dpg.get_value("timestep") == 3
        assert np.abs(viewer.last_image - jaw).max() > 0.01
        # save image
        saved = viewer.save_image(str(tmp_path / "shot.png"))
        from PIL import Image

        img = np.asarray(Image.open(saved))
        assert img.shape == (150, 200, 3)
        assert np.abs(img.astype(float) / 255 - viewer.last_image).max() < 2 / 255
        # keyframes -> motion npz
        viewer.add_keyframe()
        viewer.set_timestep(0)
        viewer.add_keyframe()
        dpg.set_value("kf_interval", 3)
        dpg.set_value("export_motion_path", str(tmp_path / "kf.npz"))
        viewer.export_trajectory()
        with np.load(tmp_path / "kf.npz") as data:
            assert data["expr"].shape[0] == 4
        shot = os.environ.get("GA_VIEWER_SCREENSHOT")
        if shot:
            dpg.output_frame_buffer(shot)
            for _ in range(3):
                dpg.render_dearpygui_frame()
    finally:
        dpg.destroy_context()


@pytest.mark.slow
def test_headless_export_matches_render_py(avatar_dir, small_subject, tmp_path):
    """local_viewer's headless export of the avatar's own motion, from a dataset camera, gives
    render.py's images for the same camera and timesteps."""
    import subprocess
    import sys

    from PIL import Image

    import local_viewer
    from scene.dataset_readers import read_scene_info
    from utils.graphics_utils import fov2focal

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, "render.py"), "-m", str(avatar_dir), "--skip_train",
                           "--skip_val", "--select_camera_id", "8", "--no_video", "--quiet"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    render_dir = next(avatar_dir.glob("test_8/ours_*/renders"))
    rendered = sorted(render_dir.glob("*.png"))
    info = read_scene_info(str(small_subject), eval=True, white_background=True, select_camera_id=8,
                           bind_to_mesh=True)
    cams = info.test_cameras
    assert len(rendered) == len(cams) > 0 and len({c.camera_id for c in cams}) == 1
    c = cams[0]
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = c.R.T, c.T
    c2w = np.linalg.inv(w2c)
    entry = {"id": 0, "img_name": c.image_name, "width": c.width, "height": c.height,
             "position": c2w[:3, 3].tolist(), "rotation": c2w[:3, :3].tolist(),
             "fx": fov2focal(c.FovX, c.width), "fy": fov2focal(c.FovY, c.height), "cx": c.cx, "cy": c.cy}
    (tmp_path / "cameras.json").write_text(json.dumps([entry]))
    out = tmp_path / "export"
    frames = [str(cam.timestep) for cam in cams]
    assert local_viewer.main(["--point_path", str(avatar_dir), "--export", str(out), "--device", "cpu",
                              "--cameras_json", str(tmp_path / "cameras.json"), "--frames", *frames]) == 0
    exported = sorted(out.glob("*.png"))
    assert len(exported) == len(rendered)
    for a, b in zip(rendered, exported):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 2, (a.name, int(diff.max()))
