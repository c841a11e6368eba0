"""render.py end to end on a tiny FLAME-bound model (procedural FLAME head + synthetic subject),
with reenactment and mesh overlays, plus the helpers it relies on: the bounded thread-pool PNG
writer (utils/async_writer.py) and the MP4 writer (utils/video_utils.py)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.async_writer import AsyncImageWriter, ImageWriteError, save_png, to_hwc_uint8
from utils import video_utils as vu


# ---------------------------------------------------------------------------------------------
# async PNG writer
# ---------------------------------------------------------------------------------------------

def test_to_hwc_uint8_rounding_and_layouts():
    x = torch.tensor([[[0.0, 0.5], [1.0, 0.002]]]).expand(3, 2, 2)  # (3, 2, 2) CHW float
    out = to_hwc_uint8(x)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    # torchvision.save_image rounding: floor(x * 255 + 0.5)
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 1]])
    hwc = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(to_hwc_uint8(hwc), hwc)
    np.testing.assert_array_equal(to_hwc_uint8(torch.from_numpy(hwc).permute(2, 0, 1)), hwc)


def test_async_writer_writes_every_frame_with_bounded_backlog(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (9, 13, 3), dtype=np.uint8) for _ in range(12)]
    max_seen = 0
    gate = threading.Event()

    def slow(img):  # runs on the worker thread: holds the first jobs until the gate opens
        gate.wait(5)
        return img

    with AsyncImageWriter(num_workers=2, max_pending=3) as writer:
        opener = threading.Timer(0.3, gate.set)
        opener.start()
        for i, f in enumerate(frames):
            writer.submit(tmp_path / f"{i:05d}.png", f, transform=slow)
            max_seen = max(max_seen, writer.pending)
        opener.join()
    assert max_seen <= 3
    assert writer.written == len(frames)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{i:05d}.png")), f)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left


def test_async_writer_reports_failures_with_file_name(tmp_path):
    writer = AsyncImageWriter(num_workers=1)
    bad = tmp_path / "missing_dir" / "00000.png"
    writer.submit(bad, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageWriteError, match="missing_dir/00000.png"):
        writer.close()


def test_async_writer_waits_on_ready_event(tmp_path):
    class Event:
        def __init__(self):
            self.done = False

        def synchronize(self):
            time.sleep(0.05)
            self.done = True

    ev = Event()
    img = np.full((3, 3, 3), 7, np.uint8)
    with AsyncImageWriter(num_workers=1) as writer:
        writer.submit(tmp_path / "a.png", img, ready=ev)
    assert ev.done
    save_png(tmp_path / "b.png", img)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


# ---------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------

def test_video_odd_size_is_padded_and_decodes(tmp_path):
    h, w, n = 21, 31, 7
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : 4 * (i + 1)] = (40 * i, 255 - 30 * i, 128)  # a bar growing frame by frame
        frames.append(f)
    path = tmp_path / "v.mp4"
    assert vu.write_video(path, frames, fps=25) == n
    decoded, (dw, dh) = vu.read_video_frames(path)
    assert (dw, dh) == (w + 1, h + 1)  # padded to even, not rescaled
    assert len(decoded) == n
    meta = vu.probe_video(path)
    assert meta["n_frames"] == n and meta["fps"] == pytest.approx(25.0)
    assert "h264" in meta["codec"]
    for f, d in zip(frames, decoded):  # lossy, but close: H.264 at crf 23 on flat colours
        assert np.abs(d[:h, :w].astype(int) - f.astype(int)).mean() < 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_video_writer_abort_leaves_no_file(tmp_path):
    path = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with vu.VideoWriter(path) as writer:
            writer.append(np.zeros((8, 8, 3), np.uint8))
            raise RuntimeError("boom")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_encode_png_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((6, 10, 3), 60 * i, np.uint8)).save(tmp_path / f"{i:05d}.png")
    assert vu.encode_png_folder(tmp_path, tmp_path / "out.mp4") == 3
    frames, size = vu.read_video_frames(tmp_path / "out.mp4")
    assert size == (10, 6) and len(frames) == 3
    assert frames[2].mean() > frames[1].mean() > frames[0].mean()
    (tmp_path / "empty").mkdir()
    with pytest.raises(vu.VideoError, match="no PNG frames"):
        vu.encode_png_folder(tmp_path / "empty", tmp_path / "y.mp4")


# ---------------------------------------------------------------------------------------------
# render.py helpers
# ---------------------------------------------------------------------------------------------

def test_copy_to_host_cpu_matches_save_image_rounding():
    import render

    imgs = [torch.rand(3, 5, 7), torch.rand(3, 5, 7)]
    host = render.copy_to_host(imgs)
    assert host.ready is None and host.data.shape == (2, 5, 7, 3) and host.data.dtype == torch.uint8
    for k, im in enumerate(imgs):
        np.testing.assert_array_equal(host.data[k].numpy(), to_hwc_uint8(im))


@pytest.mark.cuda
def test_copy_to_host_cuda_is_async_and_exact():
    import render

    imgs = [torch.rand(3, 64, 48, device="cuda"), torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8, device="cuda")]
    host = render.copy_to_host(imgs)
    assert host.ready is not None and host.data.is_pinned()
    host.wait()
    np.testing.assert_array_equal(host.data[0].numpy(), to_hwc_uint8(imgs[0].cpu()))
    np.testing.assert_array_equal(host.data[1].numpy(), imgs[1].permute(1, 2, 0).cpu().numpy())


# ---------------------------------------------------------------------------------------------
# render.py end to end on a tiny FLAME-bound avatar
# ---------------------------------------------------------------------------------------------

W, H = 47, 33          # odd on purpose: the videos must be padded to 48 x 34
ITER = 3


def _subset_model(g, step: int, seed: int = 0) -> None:
    """Keep every ``step``-th splat (fast CPU rendering) with random colours and larger splats."""
    import math

    keep = torch.arange(0, g.num_points if hasattr(g, "num_points") else g._xyz.shape[0], step)
    n = len(keep)
    gen = torch.Generator().manual_seed(seed)
    g._set_params(g._xyz[keep].detach(), torch.rand(n, 1, 3, generator=gen) * 2 - 1,
                  g._features_rest[keep].detach(), torch.full((n, 3), math.log(4.0)),
                  g._rotation[keep].detach(), torch.full((n, 1), 2.0))
    g.binding = g.binding[keep]
    g.binding_counter = g._count_bindings(g.binding)


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    """A saved FLAME-bound model (cfg_args + PLY + flame_param.npz) on a synthetic subject, and a
    second synthetic subject to reenact with."""
    from arguments import ModelParams, save_cfg_args
    from flame_model.procedural import write_assets
    from scene import Scene
    from scene.flame_gaussian_model import FlameGaussianModel
    from scene.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("avatar")
    flame_dir = write_assets(root / "flame", seed=0, with_texture=False)
    common = dict(flame_dir=str(flame_dir), width=W, height=H, num_cameras=2, progress=False)
    generate(SyntheticConfig(out=str(root / "subject"), num_timesteps=3, seed=0, **common))
    generate(SyntheticConfig(out=str(root / "tgt"), num_timesteps=2, test_fraction=0.5, seed=1, **common))
    params = ModelParams(source_path=str(root / "subject"), model_path=str(root / "model"), data_device="cpu",
                         eval=True, bind_to_mesh=True, white_background=True, sh_degree=1,
                         flame_model_path=str(flame_dir / "flame2023.pkl"),
                         flame_masks_path=str(flame_dir / "FLAME_masks.pkl"))
    g = FlameGaussianModel(1, flame_model_path=params.flame_model_path,
                           flame_masks_path=params.flame_masks_path, device="cpu")
    scene = Scene(params, g, shuffle=False, progress=False)
    _subset_model(g, step=20)
    save_cfg_args(params.model_path, params)
    scene.save(ITER)
    return {"root": root, "model": root / "model", "target": root / "tgt", "params": params}


def _load(avatar, **overrides):
    """Independent load of the saved model (what render.py should have rendered)."""
    import dataclasses

    from scene import Scene
    from scene.flame_gaussian_model import FlameGaussianModel

    p = dataclasses.replace(avatar["params"], **overrides)
    g = FlameGaussianModel(1, flame_model_path=p.flame_model_path, flame_masks_path=p.flame_masks_path,
                           device="cpu")
    return Scene(p, g, load_iteration=-1, shuffle=False, progress=False), g


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _check_video(path: Path, pngs: list[Path]) -> None:
    frames, size = vu.read_video_frames(path)
    assert size == (W + 1, H + 1), path
    assert len(frames) == len(pngs), path
    for f, p in zip(frames, pngs):  # same frames in the same order (lossy codec)
        assert np.abs(f[:H, :W].astype(int) - _png(p).astype(int)).mean() < 12, (path, p)


def _pipe():
    from types import SimpleNamespace

    return SimpleNamespace(convert_SHs_python=False, compute_cov3D_python=False, debug=False, backend="auto")


def test_render_all_splits_with_mesh(avatar):
    import render
    from gaussian_renderer import render as gs_render
    from utils.mesh_renderer import render_mesh

    model = avatar["model"]
    rc = render.main(["-m", str(model), "--render_mesh", "--quiet", "--num_writers", "2"])
    assert rc == 0
    expected = {"train": 2, "val": 2, "test": 2}  # 2 cameras x 3 timesteps: cam 1 = val, t 2 = test
    for split, n in expected.items():
        out = model / split / f"ours_{ITER}"
        for stream in ("renders", "gt", "renders_mesh"):
            pngs = sorted((out / stream).glob("*.png"))
            assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(n)], (split, stream)
            _check_video(out / f"{stream}.mp4", pngs)
        assert not list(out.rglob(".*tmp*"))

    # the test frames are the model's renders / the dataset images / the mesh over gt, in order
    scene, g = _load(avatar)
    bg = torch.ones(3)
    out = model / "test" / f"ours_{ITER}"
    with torch.no_grad():
        for i, view in enumerate(scene.getTestCameras()):
            g.select_mesh_by_timestep(view.timestep)
            img = gs_render(view, g, _pipe(), bg)["render"]
            np.testing.assert_array_equal(_png(out / "renders" / f"{i:05d}.png"), to_hwc_uint8(img))
            gt = view.image_uint8.permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(_png(out / "gt" / f"{i:05d}.png"), gt)
            rgba = render_mesh(g.verts[0], g.faces, camera=view).rgba
            alpha = rgba[3].numpy() > 0
            assert 0.05 < alpha.mean() < 0.95  # the head is in view, not covering everything
            mesh_png = _png(out / "renders_mesh" / f"{i:05d}.png").astype(int)
            np.testing.assert_array_equal(mesh_png[~alpha], gt[~alpha])  # untouched off the mesh
            blend = (rgba[:3].permute(1, 2, 0).numpy() * 0.5 + gt / 255.0 * 0.5)[alpha]
            assert np.abs(mesh_png[alpha] - blend * 255).max() <= 1.0  # 50% mesh over gt

    # metrics.py reads what render.py wrote (test -> results.json, val -> results_val.json)
    import json

    import metrics

    assert metrics.main(["-m", str(model), "--no_lpips", "--device", "cpu", "--quiet"]) == 0
    for res_name, pv_name in (("results.json", "per_view.json"), ("results_val.json", "per_view_val.json")):
        res = json.loads((model / res_name).read_text())
        assert list(res) == [f"ours_{ITER}"]
        assert 0 < res[f"ours_{ITER}"]["PSNR"] < 100 and -1 < res[f"ours_{ITER}"]["SSIM"] < 1
        assert list(json.loads((model / pv_name).read_text())[f"ours_{ITER}"]["PSNR"]) == ["00000.png", "00001.png"]


def test_render_reenactment_with_target(avatar):
    import render

    model, target = avatar["model"], avatar["target"]
    rc = render.main(["-m", str(model), "-t", str(target), "--select_camera_id", "1", "--render_mesh",
                      "--quiet", "--num_writers", "2"])
    assert rc == 0
    out = model / "tgt_1" / f"ours_{ITER}"  # named after the target folder (+ camera id)
    n = 2  # the target's 2 timesteps seen by camera 1 (all target splits merged)
    for stream in ("renders", "gt", "renders_mesh"):
        pngs = sorted((out / stream).glob("*.png"))
        assert len(pngs) == n, stream
        _check_video(out / f"{stream}.mp4", pngs)
    # ground truth is the target's own images; the avatar follows the target's motion
    scene, _ = _load(avatar, target_path=str(target), select_camera_id=1)
    views = scene.getTestCameras()
    assert len(views) == n and all(v.camera_id == 1 for v in views)
    for i, v in enumerate(views):
        np.testing.assert_array_equal(_png(out / "gt" / f"{i:05d}.png"), v.image_uint8.permute(1, 2, 0).numpy())
    r0, r1 = _png(out / "renders" / "00000.png"), _png(out / "renders" / "00001.png")
    assert np.abs(r0.astype(int) - r1.astype(int)).mean() > 0.5  # the motion changes the frames
    assert (r0 < 250).any()  # the avatar is visible on the white background


def test_render_no_video_clears_stale_frames_and_bad_models(avatar, tmp_path, capsys):
    import render

    model = avatar["model"]
    stale = model / "test" / f"ours_{ITER}" / "renders" / "00099.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(stale)
    rc = render.main(["-m", str(model), "--skip_train", "--skip_val", "--no_video", "--quiet",
                      "--iteration", str(ITER)])
    assert rc == 0
    out = model / "test" / f"ours_{ITER}"
    assert not stale.exists()
    assert len(list((out / "renders").glob("*.png"))) == 2
    # videos of the rewritten streams would no longer match their frames: removed
    assert not (out / "renders.mp4").exists() and not (out / "gt.mp4").exists()
    assert (out / "renders_mesh.mp4").exists()  # a stream this run did not touch is left alone

    assert render.main(["-m", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    empty = tmp_path / "untrained"
    empty.mkdir()
    (empty / "cfg_args").write_text((model / "cfg_args").read_text())
    assert render.main(["-m", str(empty), "--quiet"]) == 1
    assert "iteration" in capsys.readouterr().err
    assert render.main(["-m", str(model), "--iteration", "999", "--quiet"]) == 1
    assert "iteration_999" in capsys.readouterr().err


def test_render_plain_3dgs_model(tmp_path, capsys):
    """A model trained without --bind_to_mesh (plain 3DGS, Blender layout) renders too; the mesh
    overlay is refused with a clear message."""
    import render
    from arguments import ModelParams, save_cfg_args
    from scene import Scene
    from scene.gaussian_model import GaussianModel
    from test_scene import make_blender_scene

    src = make_blender_scene(str(tmp_path / "src"), n_train=2, n_test=1, size=31, n_points=200)
    params = ModelParams(source_path=src, model_path=str(tmp_path / "model"), data_device="cpu", eval=True,
                         sh_degree=1)
    scene = Scene(params, GaussianModel(1, device="cpu"), progress=False)
    save_cfg_args(params.model_path, params)
    scene.save(2)
    assert render.main(["-m", params.model_path, "--quiet", "--num_writers", "1"]) == 0
    out = tmp_path / "model"
    for split, n in (("train", 2), ("test", 1)):
        for stream in ("renders", "gt"):
            pngs = sorted((out / split / "ours_2" / stream).glob("*.png"))
            assert len(pngs) == n
            frames, size = vu.read_video_frames(out / split / "ours_2" / f"{stream}.mp4")
            assert size == (32, 32) and len(frames) == n
    assert not (out / "val").exists()  # no val cameras in a Blender scene: nothing written
    assert render.main(["-m", params.model_path, "--quiet", "--render_mesh"]) == 2
    assert "--render_mesh needs a mesh-bound avatar" in capsys.readouterr().err


def test_render_reports_frame_rates(avatar, capsys):
    """Each set reports its views/s with writing and for the render calls alone; the render calls
    are part of the whole, so they cannot take longer than it."""
    import render

    rc = render.main(["-m", str(avatar["model"]), "--skip_train", "--skip_val", "--no_video",
                      "--iteration", str(ITER), "--num_writers", "1"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "views/s with writing" in ln]
    assert len(lines) == 1 and lines[0].startswith("[test] ")
    import re

    total_fps, total_s, render_fps, render_s = map(float, re.findall(r"([0-9.]+) (?:views/s|s\))", lines[0]))
    assert 0 < render_s <= total_s
    # rate x printed seconds = 2 views, up to the rounding of the printed seconds (4 decimals)
    assert abs(total_fps * total_s - 2) <= total_fps * 0.00005 + 0.05
    assert abs(render_fps * render_s - 2) <= render_fps * 0.00005 + 0.05


def test_render_a_model_folder_in_the_original_layout(avatar, tmp_path):
    """A folder as the original code writes it (``Namespace(...)`` cfg_args without our fields, its
    PLY and flame_param.npz keys) renders exactly as the same model in our own folder layout."""
    import shutil

    import render

    src = avatar["model"]
    p = avatar["params"]
    orig = tmp_path / "original_model"
    shutil.copytree(src / "point_cloud", orig / "point_cloud")
    npz = next((orig / "point_cloud").glob("iteration_*/flame_param.npz"))
    with np.load(npz) as data:
        arrays = {k: np.asarray(data[k]) for k in ("shape", "expr", "rotation", "neck_pose", "jaw_pose",
                                                     "eyes_pose", "translation", "static_offset")}
    arrays["dynamic_offset"] = np.zeros((arrays["expr"].shape[0],) + arrays["static_offset"].shape[1:], np.float32)
    npz.unlink()
    np.savez(str(npz), **arrays)
    (orig / "cfg_args").write_text(
        f"Namespace(bind_to_mesh=True, data_device='cuda', disable_flame_static_offset=False, eval=True, "
        f"images='images', model_path='{orig}', not_finetune_flame_params=False, resolution=-1, "
        f"select_camera_id=-1, sh_degree={p.sh_degree}, source_path='{p.source_path}', target_path='', "
        f"white_background=True)")
    flame = ["--flame_model_path", p.flame_model_path, "--flame_masks_path", p.flame_masks_path]
    for model in (src, orig):
        assert render.main(["-m", str(model), "--skip_train", "--no_video", "--quiet", "--num_writers", "1"]
                           + flame) == 0
    for split in ("val", "test"):
        ours = sorted((src / split / f"ours_{ITER}" / "renders").glob("*.png"))
        theirs = sorted((orig / split / f"ours_{ITER}" / "renders").glob("*.png"))
        assert ours and [q.name for q in ours] == [q.name for q in theirs]
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(_png(a), _png(b))
