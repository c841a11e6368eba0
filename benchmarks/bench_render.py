"""Rendering throughput of a trained avatar: the viewer engine (frames per second at 802x550, no
writing; also with the avatar grown to --splats splats) and render.py (views per second with PNG
and video writing, and of the render calls alone, as render.py reports them).
Prints figures; asserts nothing.

    python benchmarks/bench_render.py [--model MODEL] [--iterations 1500] [--timesteps 10]
        [--frames 200] [--width 802 --height 550] [--splats 100000]

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


def replicate_splats(gaussians, target: int, jitter: float = 0.05, seed: int = 0) -> None:
    """Grow a mesh-bound avatar to ``target`` splats for a load test: copies of the trained
    splats on the same faces, local positions jittered by ``jitter`` (triangle units)."""
    n = gaussians.num_points
    if target <= n:
        return
    gen = torch.Generator(device=gaussians._xyz.device).manual_seed(seed)
    idx = torch.arange(target, device=gaussians._xyz.device) % n
    with torch.no_grad():
        xyz = gaussians._xyz[idx].clone()
        xyz[n:] += jitter * torch.randn(xyz[n:].shape, device=xyz.device, generator=gen)
        gaussians._xyz = torch.nn.Parameter(xyz)
        for name in ("_features_dc", "_features_rest", "_opacity", "_scaling", "_rotation"):
            setattr(gaussians, name, torch.nn.Parameter(getattr(gaussians, name)[idx].clone()))
        gaussians.binding = gaussians.binding[idx]
        gaussians.binding_counter = torch.bincount(gaussians.binding, minlength=gaussians.num_faces)


def engine_fps(model: str, width: int, height: int, frames: int, device: str, splats: int = 0) -> dict:
    """Frames per second of the viewer engine: a new FLAME frame each time (posing + render),
    the same frame (render only), both with the image left on the device; and the viewer's path
    (new frame, image copied to the host as float32)."""
    from gaussian_renderer.avatar_engine import AvatarEngine, RenderOptions
    from viewer.camera import OrbitCamera

    engine = AvatarEngine(model, device=device)
    if splats and engine.bound:
        replicate_splats(engine.gaussians, splats)
    cam = OrbitCamera(width=width, height=height, fovy=20.0, radius=1.0, target=engine.head_center())
    minicam = cam.minicam(device=engine.device)
    opts = RenderOptions()
    n_t = max(1, engine.num_timesteps)
    params = [engine.params_at(t) for t in range(n_t)]
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        for i in range(5):  # warm-up
            fn(i)
        sync()
        t0 = time.perf_counter()
        for i in range(frames):
            fn(i)
        sync()
        return frames / (time.perf_counter() - t0)

    out = {"splats": engine.num_splats}
    out["new_frame"] = timed(lambda i: engine.render_image(minicam, params[i % n_t], opts))
    if engine.bound:
        engine.pose(params[0])
    from gaussian_renderer import render as render_gaussians

    bg = torch.tensor(opts.background, dtype=torch.float32, device=engine.device)

    def same_frame(_i: int) -> None:
        with torch.no_grad():
            render_gaussians(minicam, engine.gaussians, engine.pipe, bg)

    out["same_frame"] = timed(same_frame)
    out["viewer"] = timed(lambda i: engine.render(minicam, params[i % n_t], opts))
    return out


def grown_copy(model: str, splats: int) -> str:
    """A copy of the model folder whose latest avatar is grown to ``splats`` splats (see
    :func:`replicate_splats`), for timing render.py at that size; returns the copy's path."""
    import shutil

    from gaussian_renderer.avatar_engine import AvatarEngine

    dst = model.rstrip(os.sep) + f"_{splats}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(model, dst, ignore=shutil.ignore_patterns("train", "val", "test"))
    engine = AvatarEngine(dst, device="cpu")
    replicate_splats(engine.gaussians, splats)
    engine.gaussians.save_ply(engine.info.ply_path)
    return dst


def render_loop_fps(model: str) -> dict:
    """Views per second of render.py's own per-view work (batched FLAME posing + render, image
    left on the device) over its val and test sets, without writing: ``render.load_sets`` and
    ``render.render_view``, as render.py calls them; one warm-up view per set."""
    import render as render_py
    from arguments import ModelParams, PipelineParams, get_combined_args

    args = get_combined_args(render_py.build_parser(), ["-m", model, "--skip_train", "--quiet"])
    dataset, pipeline = ModelParams.extract(args), PipelineParams.extract(args)
    loaded = render_py.load_sets(dataset, -1, True, False, False, quiet=True)
    sync = torch.cuda.synchronize if loaded.background.device.type == "cuda" else (lambda: None)
    out = {"splats": int(loaded.gaussians.num_points), "sets": {}}
    with torch.no_grad():
        for name, views in loaded.sets:
            render_py.render_view(render_py.make_poser(views[:1], loaded.gaussians, 64), 0, views[0],
                                  loaded.gaussians, pipeline, loaded.background)
            poser = render_py.make_poser(views, loaded.gaussians, render_py.RenderOptions.pose_chunk)
            sync()
            t0 = time.perf_counter()
            for k, view in enumerate(views):
                render_py.render_view(poser, k, view, loaded.gaussians, pipeline, loaded.background)
            sync()
            out["sets"][name] = (len(views), len(views) / (time.perf_counter() - t0))
    return out


def png_rate(width: int, height: int, workers: int, count: int = 400) -> float:
    """PNGs per second that render.py's writer pool (``workers`` threads, its compression level)
    encodes and writes for a smooth synthetic 8-bit image of the given size."""
    import shutil

    from utils.async_writer import AsyncImageWriter

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                    ((xx + yy) * 7) % 256], -1).astype(np.uint8)
    folder = tempfile.mkdtemp(prefix="bench_png_")
    try:
        t0 = time.perf_counter()
        with AsyncImageWriter(num_workers=workers) as writer:
            for i in range(count):
                writer.submit(os.path.join(folder, f"{i:05d}.png"), img)
        return count / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def render_script(model: str, extra: list) -> tuple:
    """Run render.py; returns (wall seconds, its per-set report lines)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "render.py"), "-m", model, "--skip_train"] + extra,
                          cwd=ROOT, check=True, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if "views/s" in ln]
    return time.perf_counter() - t0, lines


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
    p.add_argument("--splats", type=int, default=100_000,
                   help="also time the engine and render.py with the avatar grown to this many splats (0: skip)")
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
    for target in [0] + ([args.splats] if args.splats else []):
        r = engine_fps(model, args.width, args.height, args.frames, device, splats=target)
        print(f"[bench] viewer engine, {r['splats']} splats, {args.width}x{args.height} on {device}: "
              f"{r['new_frame']:.0f} frames/s posing each frame, {r['same_frame']:.0f} frames/s render only "
              f"(image on the device); {r['viewer']:.0f} frames/s with the host copy the viewer needs")
    workers = min(8, os.cpu_count() or 1)  # render.py's default --num_writers
    print(f"[bench] PNG writer pool ({workers} threads), {args.width}x{args.height}: "
          f"{png_rate(args.width, args.height, workers):.0f} images/s (render.py writes 2 per view: render + gt)")
    for folder in [model] + ([grown_copy(model, args.splats)] if args.splats else []):
        loop = render_loop_fps(folder)
        print(f"[bench] render.py's per-view work without writing (batched posing + render), {loop['splats']} splats: "
              + ", ".join(f"{name} {n} views at {fps:.0f} views/s" for name, (n, fps) in loop["sets"].items()))
        wall, lines = render_script(folder, [])
        n = count_images(folder)
        print(f"[bench] render.py on {os.path.basename(folder)} (PNGs + videos): {n} images, process wall {wall:.1f} s")
        for ln in lines:
            print(f"[bench]   {ln}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
