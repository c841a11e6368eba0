"""Where the time of one eager rasterizer forward goes (standard workload): a torch.profiler
timeline of the benchmark's step, summarised per step as host time before the first kernel, GPU
busy time, GPU idle gaps and the span from the first kernel to the last. Prints figures only.

    python benchmarks/profile_rasterizer_step.py [--steps 20] [--mode exact|fixed] [--trace FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_rasterizer import make_workload  # noqa: E402

import diff_gaussian_rasterization as dgr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mode", choices=["exact", "fixed"], default="exact")
    ap.add_argument("--trace", default=None, help="also write the Chrome trace (JSON) here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("profile_rasterizer_step: needs a CUDA GPU")
        return
    from torch.profiler import ProfilerActivity, profile, record_function

    width, height = 802, 550
    (means, scales, rots, opac, shs), cams, bg, tanx, tany = make_workload(100_000, width, height)
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    capacity = 0

    def forward(cam):
        view, fullp, campos = cam
        s = dgr.GaussianRasterizationSettings(
            image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=bg, scale_modifier=1.0,
            viewmatrix=view, projmatrix=fullp, sh_degree=3, campos=campos, prefiltered=False, debug=False,
            backend="cuda", pair_capacity=capacity, pair_count=count if args.mode == "fixed" else None)
        means2d = torch.zeros_like(means, requires_grad=True)
        img, _ = dgr.GaussianRasterizer(s)(means3D=means, means2D=means2d, shs=shs, opacities=opac, scales=scales,
                                           rotations=rots)
        return (img - 0.5).abs().mean()

    if args.mode == "fixed":
        most = 0
        for cam in cams:
            with torch.no_grad():
                forward(cam)
            most = max(most, int(count.item()))
        capacity = -(-int(1.5 * most) // 65536) * 65536
    for i in range(10):
        forward(cams[i % 16]).backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(args.steps):
            with record_function("bench_forward"):
                loss = forward(cams[i % 16])
            torch.cuda.synchronize()
            loss.backward()
            torch.cuda.synchronize()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    events = prof.events()
    steps = sorted((e for e in events if e.name == "bench_forward"), key=lambda e: e.time_range.start)
    kernels = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    rows = []
    for k, st in enumerate(steps):
        end = steps[k + 1].time_range.start if k + 1 < len(steps) else float("inf")
        mine = [e for e in kernels if st.time_range.start <= e.time_range.start < end
                and e.time_range.start < st.time_range.end + 5000]
        # forward kernels: those that start before the host left the forward's range + the tail
        fwd = [e for e in mine if e.time_range.start <= st.time_range.end + 2000]
        if not fwd:
            continue
        first, last = fwd[0].time_range.start, max(e.time_range.end for e in fwd)
        busy = sum(e.time_range.elapsed_us() for e in fwd)
        rows.append(dict(host_before_first_kernel_us=first - st.time_range.start,
                         host_forward_us=st.time_range.elapsed_us(), gpu_busy_us=busy,
                         first_to_last_kernel_us=last - first, idle_gaps_us=(last - first) - busy,
                         kernels=len(fwd)))
    if not rows:
        print("no steps found in the trace")
        return
    med = {key: sorted(r[key] for r in rows)[len(rows) // 2] for key in rows[0]}
    print(json.dumps({"mode": args.mode, "steps": len(rows), "median": med}))


if __name__ == "__main__":
    main()
