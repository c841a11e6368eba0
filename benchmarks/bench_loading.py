"""Time loading a dynamic subject: read_scene_info + parallel image decoding into Cameras.

    python benchmarks/bench_loading.py [--subject DIR] [--cameras 16 --timesteps 100
        --width 802 --height 550] [--data_device cuda|cpu] [--workers N] [--resolution -1]

Without --subject a stand-in subject in the NeRSemble layout is written to a temporary folder:
16 distinct photo-like RGBA PNGs (noise texture inside an elliptic foreground, so they compress
like real images) copied to every timestep, plus FLAME npz files and transforms JSON. Prints
images/s; never asserts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.graphics_utils import look_at_c2w_opengl  # noqa: E402


def make_subject(root: str, n_cams: int, n_t: int, W: int, H: int) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "flame_param"), exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W]
    bases = []
    for c in range(n_cams):
        low = rng.random((H // 8 + 1, W // 8 + 1, 3))
        smooth = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((W, H), Image.BICUBIC)).astype(float)
        img = np.clip(smooth + rng.normal(0, 6, size=(H, W, 3)), 0, 255).astype(np.uint8)
        fg = (((xx - W / 2) / (0.3 * W)) ** 2 + ((yy - H / 2) / (0.42 * H)) ** 2) < 1
        rgba = np.concatenate([img, (fg * 255).astype(np.uint8)[..., None]], -1)
        p = os.path.join(root, f"base_{c:02d}.png")
        Image.fromarray(rgba).save(p)
        bases.append(p)
    fl = 1.8 * W
    splits = {"train": [], "val": [], "test": []}
    n_test_t = max(1, n_t // 5)
    for t in range(n_t):
        np.savez(os.path.join(root, "flame_param", f"{t:05d}.npz"), shape=np.zeros(300, np.float32),
                 expr=np.zeros((1, 100), np.float32), rotation=np.zeros((1, 3), np.float32),
                 neck_pose=np.zeros((1, 3), np.float32), jaw_pose=np.zeros((1, 3), np.float32),
                 eyes_pose=np.zeros((1, 6), np.float32), translation=np.zeros((1, 3), np.float32),
                 static_offset=np.zeros((1, 5023, 3), np.float32))
        for c in range(n_cams):
            fp = f"images/{t:05d}_{c:02d}.png"
            shutil.copyfile(bases[c], os.path.join(root, fp))
            az = math.radians((c - n_cams // 2) * 7.5)
            fr = {"file_path": fp, "transform_matrix": look_at_c2w_opengl([math.sin(az), 0, math.cos(az)], [0, 0, 0]).tolist(),
                  "camera_angle_x": 2 * math.atan(W / (2 * fl)), "fl_x": fl, "fl_y": fl, "cx": W / 2, "cy": H / 2,
                  "w": W, "h": H, "timestep_index": t, "camera_index": c, "flame_param_path": f"flame_param/{t:05d}.npz"}
            split = "test" if t >= n_t - n_test_t else ("val" if c == n_cams // 2 else "train")
            splits[split].append(fr)
    for s, fr in splits.items():
        with open(os.path.join(root, f"transforms_{s}.json"), "w") as f:
            json.dump({"frames": fr}, f)
    np.savez(os.path.join(root, "canonical_flame_param.npz"), shape=np.zeros(300, np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", default=None)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--timesteps", type=int, default=100)
    ap.add_argument("--width", type=int, default=802)
    ap.add_argument("--height", type=int, default=550)
    ap.add_argument("--data_device", default="cuda")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=-1)
    a = ap.parse_args()

    import torch

    from scene.cameras import cameras_from_infos
    from scene.dataset_readers import read_scene_info

    tmp = None
    subject = a.subject
    if subject is None:
        tmp = tempfile.mkdtemp(prefix="bench_loading_")
        t0 = time.perf_counter()
        make_subject(tmp, a.cameras, a.timesteps, a.width, a.height)
        print(f"wrote stand-in subject {a.cameras}x{a.timesteps} at {a.width}x{a.height} in "
              f"{time.perf_counter() - t0:.1f} s")
        subject = tmp
    try:
        t0 = time.perf_counter()
        info = read_scene_info(subject, eval=True, white_background=True, bind_to_mesh=True)
        t1 = time.perf_counter()
        infos = info.train_cameras + info.val_cameras + info.test_cameras
        cams = cameras_from_infos(infos, resolution=a.resolution, data_device=a.data_device,
                                  white_background=True, num_workers=a.workers)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        n = len(cams)
        print(f"read_scene_info: {t1 - t0:.2f} s ({n} frames, {len(info.train_meshes) + len(info.test_meshes)} "
              f"FLAME files)")
        print(f"decode+cache {n} images ({cams[0].image_width}x{cams[0].image_height}) on "
              f"{cams[0].image_uint8.device}: {t2 - t1:.2f} s = {n / (t2 - t1):.1f} images/s "
              f"({os.cpu_count()} CPUs, workers={a.workers or 'auto'})")
        print(f"total: {t2 - t0:.2f} s")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
