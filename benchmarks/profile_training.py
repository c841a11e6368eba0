"""Profile the training loop with torch.profiler: the top operators by GPU time and by host
(self CPU) time over a short run on the synthetic subject. Prints tables; asserts nothing.

    python benchmarks/profile_training.py [--iterations 200] [--width 802 --height 550]
        [--trace trace.json.gz --trace_iterations 20]  [--sync_debug]

--trace also records a Chrome trace (with Python stacks) of --trace_iterations steady-state
iterations (after --trace_skip iterations of the same run, so set-up and graph capture are left
out), for benchmarks/trace_summary.py; --sync_debug lists the source lines that make the host wait for
the GPU (torch.cuda sync debug mode) during a short run.
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
    p.add_argument("--trace", default=None, help="write a Chrome trace (.json or .json.gz) of a short run")
    p.add_argument("--trace_iterations", type=int, default=20)
    p.add_argument("--trace_skip", type=int, default=100, help="iterations run before the traced ones")
    p.add_argument("--sync_debug", action="store_true", help="report the host synchronisations of a short run")
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
    if args.trace:
        trace_steady_state(subject, os.path.join(work, "trace"), args, activities)
        print(f"[profile] trace of {args.trace_iterations} iterations: {args.trace}")
    if args.sync_debug and torch.cuda.is_available():
        report_syncs(subject, os.path.join(work, "sync"), args)
    return 0


def trace_steady_state(subject: str, model_dir: str, args: argparse.Namespace, activities: list) -> None:
    """Trace iterations trace_skip+1 .. trace_skip+trace_iterations of one run: the profiler's
    schedule advances once per optimizer step, so set-up and the first iterations are skipped."""
    from training.trainer import Trainer

    schedule = torch.profiler.schedule(wait=args.trace_skip, warmup=5, active=args.trace_iterations, repeat=1)
    prof = torch.profiler.profile(activities=activities, with_stack=True, schedule=schedule,
                                  on_trace_ready=lambda p: p.export_chrome_trace(args.trace))
    original_step = Trainer.optimizer_step

    def stepping(self):  # type: ignore[no-untyped-def]
        original_step(self)
        prof.step()

    Trainer.optimizer_step = stepping
    try:
        with prof:
            run_training(subject, model_dir, args.trace_skip + 5 + args.trace_iterations + 2, args, timed=False)
    finally:
        Trainer.optimizer_step = original_step


def report_syncs(subject: str, model_dir: str, args: argparse.Namespace, iterations: int = 30) -> None:
    """Count, per source line, the operations that synchronise with the GPU in a short run."""
    import collections
    import warnings

    counts: collections.Counter = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_training(subject, model_dir, iterations, args, timed=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            counts[f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}"] += 1
    print(f"[profile] synchronising calls in {iterations} iterations (incl. setup), by source line:")
    for where, n in counts.most_common(40):
        print(f"  {n:6d}  {where}")


if __name__ == "__main__":
    sys.exit(main())
