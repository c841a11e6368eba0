"""Rendering throughput of a trained avatar: the viewer engine (frames per second at 802x550, no
writing) and render.py (images per second with PNG writing and videos, and without videos).
Prints figures; asserts nothing.

    python benchmarks/bench_render.py [--model MODEL] [--iterations 1500] [--timesteps 10]
        [--frames 200] [--width 802 --height 550]

Without --model a synthetic subject is generated and an avatar trained for --iterations with the
real trainer first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def engine_fps(model: str, width: int, height: int, frames: int, device: str) -> tuple:
    from gaussian_renderer.avatar_engine import AvatarEngine, RenderOptions
    from utils.viewer_camera import OrbitCamera

    engine = AvatarEngine(model, device=device)
    cam = OrbitCamera(width=width, height=height, fovy=20.0, radius=1.0, target=engine.head_center())
    minicam = cam.minicam(device=engine.device)
    opts = RenderOptions()
    n_t = max(1, engine.num_timesteps)
    for t in range(5):                                        # warm-up
        engine.render(minicam, engine.params_at(t % n_t), opts)
    t0 = time.perf_counter()
    for i in range(frames):
        engine.render(minicam, engine.params_at(i % n_t), opts)
    fps = frames / (time.perf_counter() - t0)
    return fps, engine.num_splats


def render_script(model: str, extra: list) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "render.py"), "-m", model, "--skip_train", "--quiet"] + extra,
                   cwd=ROOT, check=True)
    return time.perf_counter() - t0


def count_images(model: str) -> int:
    total = 0
    for split in ("val", "test"):
        folder = os.path.join(model, split)
        if not os.path.isdir(folder):
            continue
        for method in os.listdir(folder):
            renders = os.path.join(folder, method, "renders")
            if os.path.isdir(renders):
                total += len([f for f in os.listdir(renders) if f.endswith(".png")])
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--width", type=int, default=802)
    p.add_argument("--height", type=int, default=550)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model
    if model is None:
        from bench_training import make_subject, run_training

        work = tempfile.mkdtemp(prefix="bench_render_")
        subject = make_subject(work, args.width, args.height, args.timesteps)
        ns = argparse.Namespace(densify_from=500, densify_every=500, densify_until=10 ** 6, opacity_reset=10 ** 6,
                                no_finetune=False)
        model = os.path.join(work, "model")
        res = run_training(subject, model, args.iterations, ns, timed=False)
        print(f"[bench] trained {args.iterations} iterations at {res['it_per_s']:.1f} it/s ({res['splats']} splats)")
    fps, splats = engine_fps(model, args.width, args.height, args.frames, device)
    print(f"[bench] viewer engine: {fps:.1f} frames/s at {args.width}x{args.height}, {splats} splats, on {device}")
    wall = render_script(model, [])
    n = count_images(model)
    print(f"[bench] render.py (PNGs + videos): {n} images in {wall:.1f} s = {n / wall:.1f} images/s (process included)")
    wall_nv = render_script(model, ["--no_video"])
    print(f"[bench] render.py (PNGs, no videos): {n} images in {wall_nv:.1f} s = {n / wall_nv:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
