"""Cost of the remote viewer link inside the training loop.

1. ``ViewerServer.handle()`` per call with nobody connected (default config: one
   ``time.monotonic()`` per call, a non-blocking ``accept`` at most every 100 ms), with an accept
   attempt on every call (``poll_interval_s=0``), and with a viewer connected but not asking
   (one non-blocking ``recv``). Median of 5 batches, microseconds per call.
2. With ``--train`` (needs train.py, FLAME assets or the procedural head and the synthetic
   subject generator): ``train.py`` iterations per second with ``--port 0`` (no link) and with a
   port (link open, nobody connected), same seed, in-process, alternating, best of ``--repeats``.

usage: python benchmarks/bench_viewer_overhead.py [--calls 200000] [--train --iterations 20]
Prints JSON lines; never asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("", os.path.join("submodules", "diff-gaussian-rasterization"), os.path.join("submodules", "simple-knn")):
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.append(path)

import torch  # noqa: E402

from viewer.server import DemoGaussians, DemoPipe, ServerConfig, ViewerServer  # noqa: E402


def per_call_us(server: ViewerServer, calls: int) -> float:
    model, pipe, bg = DemoGaussians(64, 4), DemoPipe(), torch.ones(3)
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for it in range(calls):
            server.handle(it, model, None, pipe, bg)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


def bench_handle(calls: int) -> None:
    quiet = dict(quiet=True, log=lambda s: None)
    with ViewerServer.start("127.0.0.1", 0, **quiet) as srv:
        print(json.dumps({"case": "handle, nobody connected (default: accept poll every 100 ms)",
                          "us_per_call": round(per_call_us(srv, calls), 3)}))
    with ViewerServer.start("127.0.0.1", 0, config=ServerConfig(poll_interval_s=0.0), **quiet) as srv:
        print(json.dumps({"case": "handle, nobody connected, accept attempt every call",
                          "us_per_call": round(per_call_us(srv, calls // 10), 3)}))
    with ViewerServer.start("127.0.0.1", 0, config=ServerConfig(idle_timeout_s=3600), **quiet) as srv:
        client = socket.create_connection(srv.address)
        model = DemoGaussians(64, 4)
        while not srv.connected:
            srv.handle(0, model, None, DemoPipe(), torch.ones(3))
        print(json.dumps({"case": "handle, viewer connected but idle (one non-blocking recv)",
                          "us_per_call": round(per_call_us(srv, calls // 10), 3)}))
        client.close()


def bench_training(iterations: int, repeats: int) -> None:
    try:
        import train
        from training.trainer import Trainer
    except ImportError as e:
        print(json.dumps({"case": "train.py", "skipped": f"train.py not importable ({e})"}))
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "submodules", "diff-gaussian-rasterization"),
                                                       os.path.join(ROOT, "submodules", "simple-knn")]))
    work = tempfile.mkdtemp(prefix="bench_viewer_")
    flame, subject = os.path.join(work, "flame"), os.path.join(work, "subject")
    subprocess.run([sys.executable, "-m", "flame_model.procedural", "--out", flame], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "scene.synthetic", "--out", subject, "--flame_dir", flame, "--width", "64",
                    "--height", "48", "--num_cameras", "3", "--num_timesteps", "3", "--device",
                    "cuda" if torch.cuda.is_available() else "cpu", "--quiet"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def one(p: int, k: int) -> float:
        argv = ["-s", subject, "-m", os.path.join(work, f"out_{p}_{k}"), "--bind_to_mesh", "--white_background",
                "--port", str(p), "--quiet", "--interval", "0", "--iterations", str(iterations), "--seed", "0",
                "--data_device", "cuda" if torch.cuda.is_available() else "cpu",
                "--flame_model_path", os.path.join(flame, "flame2023.pkl"),
                "--flame_masks_path", os.path.join(flame, "FLAME_masks.pkl")]
        args = train.build_parser().parse_args(argv)
        trainer = Trainer(train.ModelParams.extract(args), train.OptimizationParams.extract(args),
                          train.PipelineParams.extract(args), train.RunOptions.from_args(args), args)
        t0 = time.perf_counter()
        trainer.train()
        return iterations / (time.perf_counter() - t0)

    rates = {0: [], port: []}
    for k in range(repeats):
        for p in ((0, port) if k % 2 == 0 else (port, 0)):
            rates[p].append(one(p, k))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} torch threads)"
    print(json.dumps({"case": f"train.py {iterations} iterations, synthetic subject 64x48, {device}",
                      "it_per_s_no_port": round(max(rates[0]), 3),
                      "it_per_s_port_open_nobody_connected": round(max(rates[port]), 3),
                      "samples_no_port": [round(r, 2) for r in rates[0]],
                      "samples_port": [round(r, 2) for r in rates[port]]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--train", action="store_true", help="also time train.py with and without --port")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    bench_handle(args.calls)
    if args.train:
        bench_training(args.iterations, args.repeats)


if __name__ == "__main__":
    main()
