"""Time the C++ CPU rasterizer (``diff_gaussian_rasterization._cpu``) against the PyTorch reference.

Workload: the project's head workload (/work/shared/bench/rasterizer_workload.py, docs/PERF_NOTES.md):
N splats on a head-sized ellipsoid shell, SH degree 3, cameras around the head at 1 m, but with the
focal length scaled to the image width (``fx = 1800 W / 802``) so the head fills the same fraction
of the smaller CPU-sized images; loss = mean |img - 0.5|.  Prints forward / backward medians (ms,
through autograd, wall clock) per backend and size, the speed-up, and ``torch.get_num_threads()``.
Never asserts on time.  On a machine whose cores are busy with other work, OpenMP's spin-waiting
makes every multi-threaded torch op (the reference's and ours) many times slower: compare with
``--threads 1`` or set ``OMP_WAIT_POLICY=PASSIVE`` there.

usage: python benchmarks/bench_rasterizer_cpu.py [--n 11000] [--sizes 160x110,400x275]
       [--steps 5] [--ref-steps 2] [--threads T] [--skip-reference]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "submodules", "diff-gaussian-rasterization")
sys.path.insert(0, ROOT)
sys.path.append(PKG)

from diff_gaussian_rasterization import GaussianRasterizationSettings, reference  # noqa: E402
from diff_gaussian_rasterization import _cpu_backend  # noqa: E402


def ensure_cpu_module() -> None:
    """Use the installed ``_cpu`` extension, else build it with csrc/cpu/build_dev.py."""
    if _cpu_backend.cpu_available():
        return
    sys.path.insert(0, os.path.join(PKG, "csrc", "cpu"))
    import build_dev  # noqa: E402  (development build, cached)
    build_dev.install_as_package_module()


def make_workload(n: int, width: int, height: int, seed: int = 0):
    """Head-shell splats (tensors requiring grad), 16 cameras ``(view, full_proj, campos)``, bg, tanfovs."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)
    semi_axes = torch.tensor([0.085, 0.115, 0.10])
    means = d * semi_axes * (1 + 0.02 * torch.randn(n, 1, generator=gen))
    scales = torch.exp(torch.randn(n, 3, generator=gen) * 0.4) * 0.0015
    rots = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=1)
    opac = torch.rand(n, 1, generator=gen) * 0.7 + 0.3
    shs = torch.randn(n, 16, 3, generator=gen) * 0.1
    shs[:, 0] = torch.rand(n, 3, generator=gen) * 1.5 - 0.5
    params = [p.requires_grad_(True) for p in (means, scales, rots, opac, shs)]

    fx = 1800.0 * width / 802.0
    tanx, tany = width / 2 / fx, height / 2 / fx
    znear, zfar = 0.01, 100.0
    proj = torch.zeros(4, 4)
    proj[0, 0], proj[1, 1], proj[3, 2] = 1 / tanx, 1 / tany, 1.0
    proj[2, 2] = zfar / (zfar - znear)
    proj[2, 3] = -(zfar * znear) / (zfar - znear)
    cams = []
    for k in range(16):
        az = (k / 16 - 0.5) * math.pi * 1.2
        el = 0.25 * math.sin(k)
        eye = torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
        fwd = -eye / eye.norm()
        right = torch.cross(fwd, torch.tensor([0.0, 1.0, 0.0]), dim=0)
        right = right / right.norm()
        down = torch.cross(fwd, right, dim=0)
        rot = torch.stack([right, down, fwd])
        w2c = torch.eye(4)
        w2c[:3, :3] = rot
        w2c[:3, 3] = -rot @ eye
        cams.append((w2c.T.contiguous(), (w2c.T @ proj.T).contiguous(), eye))
    return params, cams, torch.ones(3), tanx, tany


def time_backend(entry: Callable, n: int, width: int, height: int, steps: int) -> Dict[str, float]:
    """Median forward and backward wall times (ms) over ``steps`` steps after one warm-up step."""
    (means, scales, rots, opac, shs), cams, bg, tanx, tany = make_workload(n, width, height)
    fw: List[float] = []
    bw: List[float] = []
    visible = 0
    for i in range(steps + 1):
        view, full, campos = cams[i % 16]
        s = GaussianRasterizationSettings(image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany,
                                          bg=bg, scale_modifier=1.0, viewmatrix=view, projmatrix=full,
                                          sh_degree=3, campos=campos, prefiltered=False, debug=False)
        means2d = torch.zeros_like(means, requires_grad=True)
        t0 = time.perf_counter()
        img, radii = entry(means, means2d, shs, None, opac, scales, rots, None, s)
        loss = (img - 0.5).abs().mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if i:  # the first step is a warm-up
            fw.append((t1 - t0) * 1e3)
            bw.append((t2 - t1) * 1e3)
        visible = int((radii > 0).sum())
        for p in (means, scales, rots, opac, shs):
            p.grad = None
    fw.sort()
    bw.sort()
    return dict(fwd_ms=round(fw[len(fw) // 2], 2), bwd_ms=round(bw[len(bw) // 2], 2),
                step_ms=round(fw[len(fw) // 2] + bw[len(bw) // 2], 2), visible=visible)


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        sizes.append((int(w), int(h)))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=11_000)
    ap.add_argument("--sizes", default="160x110,400x275")
    ap.add_argument("--steps", type=int, default=5, help="timed steps of the C++ backend")
    ap.add_argument("--ref-steps", type=int, default=2, help="timed steps of the reference")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_cpu_module()
    rows = []
    for width, height in parse_sizes(args.sizes):
        cpu = time_backend(_cpu_backend.rasterize_gaussians_cpu, args.n, width, height, args.steps)
        row = dict(N=args.n, W=width, H=height, threads=torch.get_num_threads(),
                   cpu_fwd_ms=cpu["fwd_ms"], cpu_bwd_ms=cpu["bwd_ms"], cpu_step_ms=cpu["step_ms"],
                   visible=cpu["visible"])
        if not args.skip_reference:
            ref = time_backend(reference.rasterize_gaussians, args.n, width, height, args.ref_steps)
            row.update(ref_fwd_ms=ref["fwd_ms"], ref_bwd_ms=ref["bwd_ms"], ref_step_ms=ref["step_ms"],
                       speedup=round(ref["step_ms"] / cpu["step_ms"], 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'size':>9} {'threads':>7} {'cpu fwd+bwd ms':>15} {'ref fwd+bwd ms':>15} {'speed-up':>8}")
    for r in rows:
        print(f"{r['W']}x{r['H']:<5} {r['threads']:>7} {r['cpu_step_ms']:>15} {r.get('ref_step_ms', '-'):>15} "
              f"{r.get('speedup', '-'):>8}")


if __name__ == "__main__":
    main()
