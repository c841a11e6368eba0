"""Time the rasterizer (forward, backward, no-grad render fps) on the project's standard workload.

Workload (shared by the project, docs/PERF_NOTES.md): N splats on a head-sized ellipsoid shell,
SH degree 3, 16 cameras around the head, 802x550 pixels, fx = 1800; loss = mean |img - 0.5|.
Forward/backward medians over 100 steps (device events), fps over 200 no-grad renders.
Backend ``cuda`` sizes the (tile, splat) pair buffer exactly (one host synchronisation per call);
``cuda_fixed`` gives it a fixed size (1.5x the largest count over the 16 cameras, as the training
step graph does) and never synchronises; ``cuda_graph`` replays that forward and backward as CUDA
graphs (what a training iteration runs; the no-grad fps column is still the eager call).

usage: python benchmarks/bench_rasterizer.py [--backend cuda|cuda_fixed|reference|both|all] [--n 100000]
       [--width 802] [--height 550] [--profile] [--cpu-breakdown] [--host-costs] [--graph-ab] [--order-ab]
Prints one JSON line per backend, then a short table.  Never asserts on time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "submodules", "diff-gaussian-rasterization"))

import diff_gaussian_rasterization as dgr  # noqa: E402


def make_workload(n: int, width: int, height: int, dev: str = "cuda"):
    """Splats, cameras and background of the standard workload (seeded)."""
    torch.manual_seed(0)
    d = torch.randn(n, 3, device=dev)
    d = d / d.norm(dim=1, keepdim=True)
    radii = torch.tensor([0.085, 0.115, 0.10], device=dev)
    means = d * radii * (1 + 0.02 * torch.randn(n, 1, device=dev))
    scales = torch.exp(torch.randn(n, 3, device=dev) * 0.4) * 0.0015
    rots = torch.nn.functional.normalize(torch.randn(n, 4, device=dev), dim=1)
    opac = torch.rand(n, 1, device=dev) * 0.7 + 0.3
    shs = torch.randn(n, 16, 3, device=dev) * 0.1
    shs[:, 0] = torch.rand(n, 3, device=dev) * 1.5 - 0.5
    params = [p.requires_grad_(True) for p in (means, scales, rots, opac, shs)]

    def look_at(eye):
        eye = torch.tensor(eye, dtype=torch.float32)
        fwd = -eye / eye.norm()
        up = torch.tensor([0.0, 1.0, 0.0])
        right = torch.cross(fwd, up, dim=0)
        right = right / right.norm()
        down = torch.cross(fwd, right, dim=0)
        rot = torch.stack([right, down, fwd])
        w2c = torch.eye(4)
        w2c[:3, :3] = rot
        w2c[:3, 3] = -rot @ eye
        return w2c

    def proj(znear, zfar, tanx, tany):
        p = torch.zeros(4, 4)
        p[0, 0] = 1 / tanx
        p[1, 1] = 1 / tany
        p[3, 2] = 1.0
        p[2, 2] = zfar / (zfar - znear)
        p[2, 3] = -(zfar * znear) / (zfar - znear)
        return p

    fx = 1800.0
    tanx, tany = width / 2 / fx, height / 2 / fx
    cams = []
    for k in range(16):
        az = (k / 16 - 0.5) * math.pi * 1.2
        el = 0.25 * math.sin(k)
        eye = [1.0 * math.sin(az) * math.cos(el), 1.0 * math.sin(el), 1.0 * math.cos(az) * math.cos(el)]
        w2c = look_at(eye)
        view = w2c.T.contiguous().to(dev)
        fullp = (w2c.T @ proj(0.01, 100, tanx, tany).T).contiguous().to(dev)
        cams.append((view, fullp, torch.tensor(eye, dtype=torch.float32, device=dev)))
    bg = torch.ones(3, device=dev)
    return params, cams, bg, tanx, tany


def graphed_step(params, cams, bg, tanx, tany, width, height, capacity):
    """The rasterizer's forward and backward replayed as CUDA graphs (torch.cuda.make_graphed_callables),
    as the training step runs it: fixed pair buffer, camera matrices in static buffers that the host
    fills before each call (one copy each)."""
    means, scales, rots, opac, shs = params
    view, fullp, campos = (t.clone() for t in cams[0])
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    intr = torch.tensor([tanx, tany, math.nan, math.nan], dtype=torch.float64, device="cuda")
    s = dgr.GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=bg, scale_modifier=1.0,
        viewmatrix=view, projmatrix=fullp, sh_degree=3, campos=campos, prefiltered=False, debug=False,
        backend="cuda", pair_capacity=capacity, pair_count=count, intrinsics=intr)

    def image_of(m, sc, r, o, sh):
        return dgr.rasterize_gaussians(m, None, sh, None, o, sc, r, None, s)[0]

    graphed = torch.cuda.make_graphed_callables(image_of, (means, scales, rots, opac, shs))

    def step(cam, backward=True):
        view.copy_(cam[0])
        fullp.copy_(cam[1])
        campos.copy_(cam[2])
        if not backward:
            with torch.no_grad():
                return image_of(means, scales, rots, opac, shs), None, None
        img = graphed(means, scales, rots, opac, shs)
        return img, None, (img - 0.5).abs().mean()

    return step, count


def run(backend: str, n: int, width: int, height: int, steps: int, fps_frames: int, profile: bool) -> dict:
    (means, scales, rots, opac, shs), cams, bg, tanx, tany = make_workload(n, width, height)
    fixed = backend in ("cuda_fixed", "cuda_graph")
    pair_count = torch.zeros(1, dtype=torch.int64, device="cuda")
    capacity = 0

    def step(cam, backward=True):
        view, fullp, campos = cam
        s = dgr.GaussianRasterizationSettings(
            image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=bg, scale_modifier=1.0,
            viewmatrix=view, projmatrix=fullp, sh_degree=3, campos=campos, prefiltered=False, debug=False,
            backend="cuda" if fixed else backend, pair_capacity=capacity, pair_count=pair_count if fixed else None)
        means2d = torch.zeros_like(means, requires_grad=True)
        img, radii = dgr.GaussianRasterizer(s)(means3D=means, means2D=means2d, shs=shs, colors_precomp=None,
                                               opacities=opac, scales=scales, rotations=rots, cov3D_precomp=None)
        loss = (img - 0.5).abs().mean() if backward else None
        return img, radii, loss

    max_pairs = 0
    if fixed:
        for cam in cams:
            with torch.no_grad():
                step(cam, backward=False)
            max_pairs = max(max_pairs, int(pair_count.item()))
        capacity = -(-int(1.5 * max_pairs) // 65536) * 65536
    if backend == "cuda_graph":
        step, pair_count = graphed_step((means, scales, rots, opac, shs), cams, bg, tanx, tany, width, height,
                                        capacity)
    warm = 10 if backend.startswith("cuda") else 1
    for i in range(warm):
        step(cams[i % 16])[2].backward()
    torch.cuda.synchronize()
    fw, bw = [], []
    for i in range(steps):
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        e0.record()
        img, radii, loss = step(cams[i % 16])
        e1.record()
        loss.backward()
        e2.record()
        torch.cuda.synchronize()
        fw.append(e0.elapsed_time(e1))
        bw.append(e1.elapsed_time(e2))
    fw.sort()
    bw.sort()
    with torch.no_grad():
        t0 = time.perf_counter()
        for i in range(fps_frames):
            step(cams[i % 16], backward=False)
        torch.cuda.synchronize()
        fps = fps_frames / (time.perf_counter() - t0)
    res = dict(backend=backend, N=n, W=width, H=height, fwd_ms_median=round(fw[len(fw) // 2], 4),
               bwd_ms_median=round(bw[len(bw) // 2], 4), fwd_ms_min=round(fw[0], 4), bwd_ms_min=round(bw[0], 4),
               render_fps_nograd=None if backend == "cuda_graph" else round(fps, 1),
               visible=None if radii is None else int((radii > 0).sum().item()),
               mean_pixel=round(img.mean().item(), 6), gpu=torch.cuda.get_device_name())
    if fixed:
        res.update(pair_capacity=capacity, max_pairs=max_pairs)
    if profile and backend.startswith("cuda"):
        res["kernels_us"] = profile_kernels(step, cams)
    return res


def kernel_times(run_step, reps: int, name_of=lambda key: key[:90]) -> dict:
    """Mean CUDA time per step (microseconds) of each kernel over ``reps`` calls of
    ``run_step(i)``, by ``name_of(kernel name)`` (None: left out); kernels whose names map to the
    same name are summed. Its profiler hooks slow later launches in the process: profile last."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(reps):
            run_step(i)
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        name = name_of(evt.key) if t > 0 else None
        if name is not None:
            out[name] = round(out.get(name, 0.0) + t / reps, 1)
    return out


def profile_kernels(step, cams) -> dict:
    """The 20 longest kernels per step (microseconds), forward + backward; names cut to 90
    characters."""
    out = kernel_times(lambda i: step(cams[i % 16])[2].backward(), reps=20)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:20])


def blend_kernel_name(key: str):
    """Short name of the blending and tile-order kernels (None for every other kernel)."""
    if "render_" not in key and "tile_order" not in key:
        return None
    return key.split("(")[0].split("<")[0].replace("void ", "").replace("gsr::", "")


def cpu_breakdown(n: int, width: int, height: int) -> dict:
    """Median wall time (us, synchronised) of the pieces of one forward call: where host time goes."""
    from diff_gaussian_rasterization._checks import check_inputs
    from diff_gaussian_rasterization._cuda import rasterize_gaussians_cuda

    (means, scales, rots, opac, shs), cams, bg, tanx, tany = make_workload(n, width, height)
    view, fullp, campos = cams[0]

    def settings():
        return dgr.GaussianRasterizationSettings(
            image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=bg, scale_modifier=1.0,
            viewmatrix=view, projmatrix=fullp, sh_degree=3, campos=campos, prefiltered=False, debug=False,
            backend="cuda")

    s = settings()
    m2 = torch.zeros_like(means, requires_grad=True)
    pieces = {
        "settings+module": lambda: dgr.GaussianRasterizer(settings()),
        "check_inputs": lambda: check_inputs(s, means, m2, opac, shs, None, scales, rots, None),
        "cuda_entry_nograd": lambda: rasterize_gaussians_cuda(means.detach(), None, shs.detach(), None,
                                                              opac.detach(), scales.detach(), rots.detach(), None, s),
        "cuda_entry_grad": lambda: rasterize_gaussians_cuda(means, m2, shs, None, opac, scales, rots, None, s),
        "api_forward_grad": lambda: dgr.GaussianRasterizer(settings())(means3D=means, means2D=m2, shs=shs,
                                                                       opacities=opac, scales=scales,
                                                                       rotations=rots),
    }
    out = {}
    for name, fn in pieces.items():
        times = []
        for _ in range(60):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        out[name] = round(times[len(times) // 2], 1)
    img, _ = rasterize_gaussians_cuda(means, m2, shs, None, opac, scales, rots, None, s)
    times = []
    for _ in range(60):
        img, _ = rasterize_gaussians_cuda(means, m2, shs, None, opac, scales, rots, None, s)
        loss = img.sum()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    out["backward"] = round(times[len(times) // 2], 1)
    return out


def host_costs(n: int, width: int, height: int, reps: int = 2000) -> dict:
    """Host time (us per call, back-to-back loops, no synchronisation) of the pieces that precede
    the first kernel of an eager forward call: the caller's settings, module and ``zeros_like``,
    the input checks, and whole calls with N = 0 (every layer down to the C++ entry, one memset
    and no other kernel) through the API and through ``_C.rasterize`` directly."""
    from diff_gaussian_rasterization import _C
    from diff_gaussian_rasterization._checks import check_inputs

    (means, scales, rots, opac, shs), cams, bg, tanx, tany = make_workload(n, width, height)
    view, fullp, campos = cams[0]

    def settings():
        return dgr.GaussianRasterizationSettings(
            image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=bg, scale_modifier=1.0,
            viewmatrix=view, projmatrix=fullp, sh_degree=3, campos=campos, prefiltered=False, debug=False)

    s = settings()
    m2 = torch.zeros_like(means, requires_grad=True)
    empty = [torch.zeros(0, *t.shape[1:], device="cuda", requires_grad=True) for t in (means, scales, rots, opac, shs)]
    e_means, e_scales, e_rots, e_opac, e_shs = empty
    e_m2 = torch.zeros(0, 3, device="cuda", requires_grad=True)
    pieces = {
        "settings": settings,
        "module": lambda: dgr.GaussianRasterizer(s),
        "zeros_like_grad": lambda: torch.zeros_like(means, requires_grad=True),
        "check_inputs": lambda: check_inputs(s, means, m2, opac, shs, None, scales, rots, None),
        "api_call_n0": lambda: dgr.GaussianRasterizer(s)(means3D=e_means, means2D=e_m2, shs=e_shs, opacities=e_opac,
                                                          scales=e_scales, rotations=e_rots),
        "C_rasterize_n0": lambda: _C.rasterize(e_means, e_m2, e_shs, None, e_opac, e_scales, e_rots, None, bg, view,
                                               fullp, campos, None, None, 1.0, tanx, tany, height, width, 3, False,
                                               math.nan, math.nan, 0),
    }
    out = {}
    for name, fn in pieces.items():
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = round((time.perf_counter() - t0) / reps * 1e6, 2)
        torch.cuda.synchronize()
    return out


def env_ab(var: str, n: int, width: int, height: int, steps: int = 200) -> dict:
    """Eager forward / backward medians (ms) with the experiment knob ``var`` (read by the
    rasterizer at every call: GSR_DEPTH_GRAPH, GSR_TILE_ORDER) set to 1 and to 0, interleaved
    step by step in one process so that host drift affects both; then no-grad fps and the mean
    kernel times (us per step, forward + backward) of each setting."""
    (means, scales, rots, opac, shs), cams, bg, tanx, tany = make_workload(n, width, height)

    def step(cam):
        view, fullp, campos = cam
        s = dgr.GaussianRasterizationSettings(
            image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=bg, scale_modifier=1.0,
            viewmatrix=view, projmatrix=fullp, sh_degree=3, campos=campos, prefiltered=False, debug=False)
        means2d = torch.zeros_like(means, requires_grad=True)
        img, _ = dgr.GaussianRasterizer(s)(means3D=means, means2D=means2d, shs=shs, opacities=opac, scales=scales,
                                           rotations=rots)
        return (img - 0.5).abs().mean()

    modes = ("on", "off")
    times = {m: ([], []) for m in modes}
    previous = os.environ.get(var)
    try:
        for i in range(2 * steps + 20):
            mode = modes[i % 2]
            os.environ[var] = "1" if mode == "on" else "0"
            torch.cuda.synchronize()
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            loss = step(cams[(i // 2) % 16])
            e1.record()
            loss.backward()
            e2.record()
            torch.cuda.synchronize()
            if i >= 20:
                times[mode][0].append(e0.elapsed_time(e1))
                times[mode][1].append(e1.elapsed_time(e2))
        frames = {m: 0.0 for m in modes}  # no-grad renders, blocks of 50 alternating
        with torch.no_grad():
            for block in range(8):
                mode = modes[block % 2]
                os.environ[var] = "1" if mode == "on" else "0"
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for i in range(50):
                    step(cams[i % 16])
                torch.cuda.synchronize()
                frames[mode] += time.perf_counter() - t0
        kernels = {}
        for mode in modes:
            os.environ[var] = "1" if mode == "on" else "0"
            kernels[mode] = kernel_times(lambda i: step(cams[i % 16]).backward(), reps=32,
                                         name_of=blend_kernel_name)
    finally:
        if previous is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = previous
    out = {"variable": var}
    for mode, (fw, bw) in times.items():
        fw.sort()
        bw.sort()
        out[mode] = {"fwd_ms_median": round(fw[len(fw) // 2], 4), "bwd_ms_median": round(bw[len(bw) // 2], 4),
                     "fwd_ms_p25": round(fw[len(fw) // 4], 4), "fwd_ms_p75": round(fw[3 * len(fw) // 4], 4),
                     "fps_nograd": round(200 / frames[mode], 1), "kernels_us": kernels[mode]}
    return out


ORIGINAL_FWD_MS, ORIGINAL_BWD_MS = 0.71, 1.36  # graphdeco's rasterizer, measured on the device's H100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cuda_fixed", "cuda_graph", "reference", "both", "all"],
                    help="both: cuda, cuda_fixed and cuda_graph; all: also the reference")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=802)
    ap.add_argument("--height", type=int, default=550)
    ap.add_argument("--profile", action="store_true", help="per-kernel times (torch.profiler)")
    ap.add_argument("--cpu-breakdown", action="store_true", help="host time of the pieces of a call")
    ap.add_argument("--host-costs", action="store_true",
                    help="host time of the pieces before the first kernel (no-sync loops, N = 0 calls)")
    ap.add_argument("--graph-ab", action="store_true",
                    help="eager forward with the depth-order graph replay on / off, interleaved in one process")
    ap.add_argument("--order-ab", action="store_true",
                    help="the same with the blending passes' tile order by list length on / off (GSR_TILE_ORDER)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_rasterizer: needs a CUDA GPU")
        return
    if args.cpu_breakdown:
        print(json.dumps({"host_us": cpu_breakdown(args.n, args.width, args.height)}), flush=True)
    if args.host_costs:
        print(json.dumps({"host_costs_us": host_costs(args.n, args.width, args.height)}), flush=True)
    backends = {"both": ["cuda", "cuda_fixed", "cuda_graph"],
                "all": ["cuda", "cuda_fixed", "cuda_graph", "reference"]}.get(args.backend,
                                                                                                [args.backend])
    rows = []
    for b in backends:
        steps, frames = (100, 200) if b.startswith("cuda") else (3, 3)
        res = run(b, args.n, args.width, args.height, steps, frames, args.profile)
        print(json.dumps(res), flush=True)
        rows.append(res)
    print(f"{'backend':<12} {'fwd ms':>9} {'bwd ms':>9} {'fps':>8}")
    for r in rows:
        fps = "-" if r['render_fps_nograd'] is None else f"{r['render_fps_nograd']:.1f}"
        print(f"{r['backend']:<12} {r['fwd_ms_median']:>9.3f} {r['bwd_ms_median']:>9.3f} {fps:>8}")
    # stated baseline: graphdeco's rasterizer on this workload, same H100 (issue 11)
    print(f"{'original':<12} {ORIGINAL_FWD_MS:>9.3f} {ORIGINAL_BWD_MS:>9.3f}        -   (stated, not run here)")
    for r in rows:
        print(f"ratio original/{r['backend']}: forward x{ORIGINAL_FWD_MS / r['fwd_ms_median']:.2f}, "
              f"backward x{ORIGINAL_BWD_MS / r['bwd_ms_median']:.2f}")
    # last: their kernel-time profiles leave the profiler's hooks behind, which slow later launches
    if args.graph_ab:
        print(json.dumps({"depth_graph_ab": env_ab("GSR_DEPTH_GRAPH", args.n, args.width, args.height)}), flush=True)
    if args.order_ab:
        print(json.dumps({"tile_order_ab": env_ab("GSR_TILE_ORDER", args.n, args.width, args.height)}), flush=True)


if __name__ == "__main__":
    main()
