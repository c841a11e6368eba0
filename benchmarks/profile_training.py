"""Profile the training loop with torch.profiler: the top operators by GPU time and by host
(self CPU) time over a short run on the synthetic subject. Prints tables; asserts nothing.

    python benchmarks/profile_training.py [--iterations 200] [--width 802 --height 550]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402

from bench_training import make_subject, run_training  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--subject", default=None)
    p.add_argument("--width", type=int, default=802)
    p.add_argument("--height", type=int, default=550)
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--rows", type=int, default=30)
    args = p.parse_args()
    args.densify_from, args.densify_every, args.densify_until, args.opacity_reset = 10 ** 6, 10 ** 6, 0, 10 ** 6
    args.no_finetune = False
    work = tempfile.mkdtemp(prefix="profile_training_")
    subject = args.subject or make_subject(work, args.width, args.height, args.timesteps)
    run_training(subject, os.path.join(work, "warm"), 50, args, timed=False)   # warm-up (allocator, kernels)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        res = run_training(subject, os.path.join(work, "prof"), args.iterations, args, timed=False)
    print(f"[profile] {args.iterations} iterations, {res['it_per_s']:.1f} it/s under the profiler")
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
