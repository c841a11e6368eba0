"""Where the time of one eager rasterizer forward goes (standard workload): a torch.profiler
timeline of the benchmark's forward step (settings, means2D, the call, the loss), summarised per
step, and the event list of the median step. Prints figures only.

Summary per step (medians over the steps): host time from the step's start to the first launch of
the rasterizer (``host_before_preprocess_us``) and to the end of the host's part of the step,
GPU busy time of the step's kernels, GPU idle time between its first and last kernel, and the
span from the step's start to the end of its last kernel (what the benchmark's forward figure
measures, plus profiler overhead). ``--timeline`` also lists every host call (CUDA runtime calls
included) and kernel of the median step with its start offset and duration in microseconds.

    python benchmarks/profile_rasterizer_step.py [--steps 30] [--mode exact|fixed] [--timeline]
                                                  [--trace FILE]
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

STEP = "bench_forward"


def _is_kernel(e) -> bool:
    return e.device_type == torch.autograd.DeviceType.CUDA


def summarise(events) -> tuple:
    """(per-step summary rows, per-step event lists) from the profiler's events."""
    steps = sorted((e for e in events if e.name == STEP), key=lambda e: e.time_range.start)
    kernels = sorted((e for e in events if _is_kernel(e)), key=lambda e: e.time_range.start)
    host = sorted((e for e in events if not _is_kernel(e) and e.name != STEP), key=lambda e: e.time_range.start)
    rows, lists = [], []
    for k, st in enumerate(steps):
        t0, t1 = st.time_range.start, st.time_range.end
        # kernels launched inside the step: the forward's; a kernel starts after its launch
        launched = [e for e in host if t0 <= e.time_range.start <= t1]
        # the loop synchronises after each forward: kernels that start before that wait ends are the
        # forward's (the backward's start after it)
        waits = [e.time_range.end for e in host if "Synchronize" in e.name and e.time_range.start >= t1]
        bound = min(waits) if waits else float("inf")
        mine = [e for e in kernels if t0 <= e.time_range.start < bound]
        if not mine:
            continue
        pre = next((e for e in mine if "preprocess" in e.name), None)
        pre_launch = None
        if pre is not None:
            # the launch call that precedes the preprocess kernel most closely
            cands = [e for e in launched if "LaunchKernel" in e.name and e.time_range.start <= pre.time_range.start]
            pre_launch = cands[-1].time_range.start - t0 if cands else None
        busy = sum(e.time_range.elapsed_us() for e in mine)
        first, last = mine[0].time_range.start, max(e.time_range.end for e in mine)
        rows.append(dict(host_before_preprocess_us=pre_launch if pre_launch is not None else float("nan"),
                         host_step_us=t1 - t0, gpu_busy_us=busy, gpu_idle_us=(last - first) - busy,
                         step_to_last_kernel_end_us=last - t0, kernels=len(mine)))
        items = [("host", e.name, e.time_range.start - t0, e.time_range.elapsed_us()) for e in launched]
        items += [("gpu", e.name, e.time_range.start - t0, e.time_range.elapsed_us()) for e in mine]
        lists.append(sorted(items, key=lambda r: r[2]))
    return rows, lists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--mode", choices=["exact", "fixed"], default="exact")
    ap.add_argument("--timeline", action="store_true", help="list the events of the median step")
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
            with record_function(STEP):
                loss = forward(cams[i % 16])
            torch.cuda.synchronize()
            loss.backward()
            torch.cuda.synchronize()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    rows, lists = summarise(prof.events())
    if not rows:
        print("no steps found in the trace")
        return
    med = {key: round(sorted(r[key] for r in rows)[len(rows) // 2], 1) for key in rows[0]}
    print(json.dumps({"mode": args.mode, "steps": len(rows), "median": med}))
    if args.timeline:
        order = sorted(range(len(rows)), key=lambda k: rows[k]["step_to_last_kernel_end_us"])
        k = order[len(order) // 2]
        print(f"median step ({rows[k]['step_to_last_kernel_end_us']:.0f} us to the end of its last kernel):")
        for side, name, start, dur in lists[k]:
            print(f"  {side:<4} {start:8.1f} {dur:7.1f}  {name[:90]}")


if __name__ == "__main__":
    main()
