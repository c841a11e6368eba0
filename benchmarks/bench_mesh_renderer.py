"""Time the PyTorch mesh rasterizer: a ~10k-triangle head-sized mesh at 802x550.

    python benchmarks/bench_mesh_renderer.py [--device cpu|cuda|all] [--faces 10000]
        [--width 802 --height 550] [--flame_dir DIR] [--repeats 10] [--batch 16] [--threads N]

Uses the FLAME (or procedural) head from --flame_dir when given, else an ellipsoid with about
--faces triangles. Prints milliseconds per image (median of --repeats), never asserts.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scene.cameras import Camera  # noqa: E402
from utils.graphics_utils import focal2fov, look_at_c2w_opengl  # noqa: E402
from utils.mesh_renderer import render_mesh  # noqa: E402


def ellipsoid(n_faces: int):
    """A head-sized ellipsoid (0.09 x 0.12 x 0.1 m) with about n_faces triangles."""
    n_lon = max(8, int(round(math.sqrt(n_faces))))
    n_lat = max(4, n_faces // (2 * n_lon) + 1)
    th = np.linspace(-math.pi / 2, math.pi / 2, n_lat + 1)[1:-1]
    ph = np.linspace(0, 2 * math.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.cos(T) * np.sin(P) * 0.09, np.sin(T) * 0.12, np.cos(T) * np.cos(P) * 0.1], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, -0.12, 0], [0, 0.12, 0]], ring])
    faces = []
    idx = lambda i, j: 2 + i * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([0, idx(0, j + 1), idx(0, j)])
        faces.append([1, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)])
        for i in range(n_lat - 2):
            faces.append([idx(i, j), idx(i, j + 1), idx(i + 1, j + 1)])
            faces.append([idx(i, j), idx(i + 1, j + 1), idx(i + 1, j)])
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces)


def head_mesh(flame_dir: str):
    from flame_model.flame import FlameHead

    flame = FlameHead(flame_model_path=os.path.join(flame_dir, "flame2023.pkl"))
    return flame.v_template.clone(), flame.faces.clone()


def make_cameras(W: int, H: int, n: int, center: np.ndarray, height_m: float):
    fl = 0.6 * H / height_m
    cams = []
    for i in range(n):
        az = math.radians((i - n // 2) * 7.5)
        c2w = look_at_c2w_opengl(center + np.array([math.sin(az), 0.05, math.cos(az)]), center)
        c2w[:3, 1:3] *= -1
        w2c = np.linalg.inv(c2w)
        cams.append(Camera(i, w2c[:3, :3].T, w2c[:3, 3], focal2fov(fl, W), focal2fov(fl, H), W, H, f"{i}", i,
                           data_device="cpu"))
    return cams


def bench(device: str, verts, faces, cams, repeats: int, batch: int) -> None:
    dev = torch.device(device)
    v, f = verts.to(dev), faces.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for label, fn, per in (("single", lambda: render_mesh(v, f, cams[0]), 1),
                           (f"batch{batch}", lambda: render_mesh(v.expand(batch, -1, -1), f, cams[:batch]), batch)):
        fn()
        sync()
        times, cpu_times = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        cov = float(out.rgba[..., 3, :, :].mean()) if out.rgba.ndim == 4 else float(out.rgba[3].mean())
        med = statistics.median(times)
        print(f"{device:5s} {label:8s} {cams[0].image_width}x{cams[0].image_height} faces={faces.shape[0]}: "
              f"{med * 1000:8.1f} ms/call, {med * 1000 / per:7.1f} ms/image "
              f"(process CPU time {statistics.median(cpu_times) * 1000 / per:.1f} ms/image, coverage {cov:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="all")
    ap.add_argument("--faces", type=int, default=10_000)
    ap.add_argument("--width", type=int, default=802)
    ap.add_argument("--height", type=int, default=550)
    ap.add_argument("--flame_dir", default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    verts, faces = head_mesh(a.flame_dir) if a.flame_dir else ellipsoid(a.faces)
    lo, hi = verts.min(0).values.numpy(), verts.max(0).values.numpy()
    cams = make_cameras(a.width, a.height, max(a.batch, 1), (lo + hi) / 2, float(hi[1] - lo[1]))
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        bench(d, verts, faces, cams, a.repeats if d != "cpu" else max(2, a.repeats // 3), a.batch)


if __name__ == "__main__":
    main()
