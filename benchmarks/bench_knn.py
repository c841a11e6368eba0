"""Time simple_knn.distCUDA2 (exact 3-NN mean squared distance) on 100k points.

Points: the rasterizer workload's head-sized ellipsoid shell (and a uniform cube for contrast).
Median of 50 runs with device events after 5 warm-ups; the scipy cKDTree fallback is timed once.
usage: python benchmarks/bench_knn.py [--n 100000].  Prints JSON lines; never asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "submodules", "simple-knn"))

import simple_knn  # noqa: E402


def shell_points(n: int, dev: str) -> torch.Tensor:
    torch.manual_seed(0)
    d = torch.randn(n, 3, device=dev)
    d = d / d.norm(dim=1, keepdim=True)
    return d * torch.tensor([0.085, 0.115, 0.10], device=dev) * (1 + 0.02 * torch.randn(n, 1, device=dev))


def time_cuda(points: torch.Tensor, reps: int = 50) -> float:
    for _ in range(5):
        simple_knn.distCUDA2(points)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        simple_knn.distCUDA2(points)
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    if not (torch.cuda.is_available() and simple_knn.cuda_available()):
        print("bench_knn: needs a CUDA GPU and simple_knn._C")
        return
    for name, pts in (("shell", shell_points(args.n, "cuda")),
                      ("cube", torch.rand(args.n, 3, device="cuda"))):
        ms = time_cuda(pts)
        t0 = time.perf_counter()
        cpu = simple_knn.dist_cpu(pts.cpu())
        cpu_ms = (time.perf_counter() - t0) * 1e3
        err = ((simple_knn.distCUDA2(pts).cpu() - cpu).abs() / cpu.clamp_min(1e-30)).max().item()
        print(json.dumps(dict(points=name, N=args.n, distCUDA2_ms_median=round(ms, 4),
                              ckdtree_cpu_ms=round(cpu_ms, 1), max_rel_diff_vs_ckdtree=err,
                              gpu=torch.cuda.get_device_name())), flush=True)


if __name__ == "__main__":
    main()
