"""Summarise a Chrome trace written by ``profile_training.py --trace``: host time per Python
function of this repository (inclusive, per iteration), kernel launches and GPU busy time per
iteration. Prints tables; asserts nothing.

    python benchmarks/trace_summary.py trace.json.gz --iterations 20 [--rows 40]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys


def load_events(path: str) -> list:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        data = json.load(fh)
    return data["traceEvents"] if isinstance(data, dict) else data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--iterations", type=int, required=True, help="iterations the trace covers")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--match", default=None, help="only Python functions whose name contains this")
    args = p.parse_args()

    events = [e for e in load_events(args.trace) if e.get("ph") == "X"]
    n = max(args.iterations, 1)
    py_total: dict = collections.defaultdict(float)
    py_calls: dict = collections.Counter()
    kernels = launches = 0
    gpu_busy = 0.0
    for e in events:
        cat, name, dur = e.get("cat", ""), e.get("name", ""), float(e.get("dur", 0.0))
        if cat == "python_function":
            if args.match and args.match not in name:
                continue
            if "site-packages" in name or name.startswith("<built-in") or "torch/" in name:
                continue
            py_total[name] += dur
            py_calls[name] += 1
        elif cat == "kernel":
            kernels += 1
            gpu_busy += dur
        elif cat == "cuda_runtime" and "Launch" in name:
            launches += 1
    print(f"[trace] per iteration: {kernels / n:.0f} kernels, {launches / n:.0f} launch calls, "
          f"GPU busy {gpu_busy / n / 1000:.3f} ms")
    print(f"[trace] host time by Python function (inclusive ms per iteration, calls per iteration):")
    for name, total in sorted(py_total.items(), key=lambda kv: -kv[1])[: args.rows]:
        print(f"  {total / n / 1000:8.3f} ms  {py_calls[name] / n:7.1f}  {name[:110]}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
