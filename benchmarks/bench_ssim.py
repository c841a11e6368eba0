"""Time the fused SSIM (ga_ssim) against the PyTorch SSIM on one 802x550 RGB image.

Forward+backward of ``1 - ssim(render, gt)`` (the training loss term) and forward alone
(train=False), for the fused kernels and for the conv2d reference (``ga_ssim.reference``, the same
formula as ``utils.loss_utils.ssim``). ``latency_ms``: median of 200 calls, each timed alone with
CUDA events after 20 warm-ups (includes host launch gaps); ``loop_ms``: 200 back-to-back calls
between two events, divided by 200 (steady state, as inside a training loop). The fused kernels
alone (``_C.forward`` with train=True, ``_C.backward``) are timed the loop way too. Also prints
the fused result's error against the float64 reference.
usage: python benchmarks/bench_ssim.py [--height 802 --width 550 --reps 200]. Never asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "submodules", "fused-ssim"))

import ga_ssim  # noqa: E402
from ga_ssim import reference  # noqa: E402
from utils.loss_utils import ssim as project_ssim  # noqa: E402


def median_ms(fn, reps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    times.sort()
    return times[len(times) // 2]


def loop_ms(fn, reps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=802)
    ap.add_argument("--width", type=int, default=550)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    if not (torch.cuda.is_available() and ga_ssim.cuda_available()):
        print("bench_ssim: needs a CUDA GPU and ga_ssim._C")
        return
    torch.manual_seed(0)
    H, W = args.height, args.width
    gt = torch.rand(1, 3, H, W, device="cuda")
    gt = torch.nn.functional.avg_pool2d(gt, 3, 1, 1)[0].contiguous()
    render = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1).requires_grad_(True)

    def train_step(fn):
        def step():
            render.grad = None
            (1.0 - fn(render, gt)).backward()
        return step

    def eval_step(fn):
        def step():
            with torch.no_grad():
                fn(render, gt)
        return step

    fused_eval = lambda a, b: ga_ssim.fused_ssim(a, b, train=False)  # noqa: E731
    cases = [
        ("fused", "fwd+bwd", train_step(ga_ssim.fused_ssim)),
        ("torch_reference", "fwd+bwd", train_step(reference.ssim)),
        ("utils.loss_utils.ssim", "fwd+bwd", train_step(project_ssim)),
        ("fused", "fwd", eval_step(fused_eval)),
        ("torch_reference", "fwd", eval_step(reference.ssim)),
    ]
    rows = [(impl, what, median_ms(fn, args.reps), loop_ms(fn, args.reps)) for impl, what, fn in cases]
    from ga_ssim import _C

    x = render.detach()
    _, dm, d11, d12 = _C.forward(x, gt, True)
    one = torch.ones((), device="cuda")
    kernels = {"forward_kernel(train)": loop_ms(lambda: _C.forward(x, gt, True), args.reps),
               "backward_kernel": loop_ms(lambda: _C.backward(one, x, gt, dm, d11, d12), args.reps)}
    # accuracy at this size against the float64 reference
    render.grad = None
    ga_ssim.fused_ssim(render, gt).backward()
    x64 = render.detach().double().requires_grad_(True)
    ref = reference.ssim(x64, gt.double())
    ref.backward()
    val = ga_ssim.fused_ssim(render.detach(), gt, train=False).item()
    rel = ((render.grad.double() - x64.grad).norm() / x64.grad.norm()).item()
    for impl, what, ms, lms in rows:
        print(json.dumps(dict(impl=impl, pass_=what, H=H, W=W, latency_ms=round(ms, 4), loop_ms=round(lms, 4))))
    print(json.dumps({k: round(v, 4) for k, v in kernels.items()}))
    print(json.dumps(dict(mean_abs_err_vs_f64=abs(val - ref.item()), grad_rel_err_vs_f64=rel,
                          device=torch.cuda.get_device_name(), cudnn_tf32=torch.backends.cudnn.allow_tf32)))
    base = {w: (ms, lms) for i, w, ms, lms in rows if i == "torch_reference"}
    print(f"{'impl':<24}{'pass':<9}{'latency ms':>11}{'x':>7}{'loop ms':>9}{'x':>7}")
    for impl, what, ms, lms in rows:
        print(f"{impl:<24}{what:<9}{ms:>11.4f}{base[what][0] / ms:>6.1f}x{lms:>9.4f}{base[what][1] / lms:>6.1f}x")


if __name__ == "__main__":
    main()
