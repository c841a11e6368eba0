"""Summarise a Chrome trace written by ``profile_training.py --trace``: host time per Python
function of this repository (inclusive and self, per iteration), host time per torch operator
(self), kernel launches and GPU busy time per iteration. Prints tables; asserts nothing.

    python benchmarks/trace_summary.py trace.json.gz --iterations 20 [--rows 40]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys

# Frames of the interpreter's machinery and of libraries, not of this repository.
_FOREIGN = ("site-packages", "<built-in", "torch/", "threading.py", "tqdm/", "<module>", "contextlib.py",
            "queue.py", "selectors.py", "socket.py", "tensorboard/")


def load_events(path: str) -> list:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        data = json.load(fh)
    return data["traceEvents"] if isinstance(data, dict) else data


def self_times(events: list) -> dict:
    """Exclusive duration of each event (its duration less that of its direct children), per
    thread, for properly nested complete events."""
    by_thread: dict = collections.defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    out = {}
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0.0))))
        stack: list = []
        for e in evs:
            start, dur = float(e["ts"]), float(e.get("dur", 0.0))
            while stack and float(stack[-1]["ts"]) + float(stack[-1].get("dur", 0.0)) <= start:
                stack.pop()
            out[id(e)] = dur
            if stack:
                out[id(stack[-1])] -= dur
            stack.append(e)
    return out


def table(title: str, totals: dict, calls: dict, n: int, rows: int) -> None:
    print(title)
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"  {total / n / 1000:8.3f} ms  {calls[name] / n:7.1f}  {name[:110]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--iterations", type=int, required=True, help="iterations the trace covers")
    p.add_argument("--rows", type=int, default=40)
    args = p.parse_args()

    events = [e for e in load_events(args.trace) if e.get("ph") == "X"]
    n = max(args.iterations, 1)
    host = [e for e in events if e.get("cat") in ("python_function", "cpu_op", "cuda_runtime", "user_annotation")]
    excl = self_times(host)
    py_incl: dict = collections.defaultdict(float)
    py_self: dict = collections.defaultdict(float)
    op_self: dict = collections.defaultdict(float)
    py_calls: dict = collections.Counter()
    op_calls: dict = collections.Counter()
    kernels = launches = 0
    gpu_busy = 0.0
    for e in events:
        cat, name, dur = e.get("cat", ""), e.get("name", ""), float(e.get("dur", 0.0))
        if cat == "python_function":
            if any(f in name for f in _FOREIGN):
                continue
            py_incl[name] += dur
            py_self[name] += excl.get(id(e), 0.0)
            py_calls[name] += 1
        elif cat in ("cpu_op", "cuda_runtime"):
            op_self[name] += excl.get(id(e), 0.0)
            op_calls[name] += 1
            if cat == "cuda_runtime" and "Launch" in name:
                launches += 1
        elif cat == "kernel":
            kernels += 1
            gpu_busy += dur
    print(f"[trace] per iteration: {kernels / n:.0f} kernels, {launches / n:.0f} launch calls, "
          f"GPU busy {gpu_busy / n / 1000:.3f} ms")
    table("[trace] host time by Python function of this repository (inclusive ms per iteration, calls):",
          py_incl, py_calls, n, args.rows)
    table("[trace] host time by Python function of this repository (self ms per iteration, calls):",
          py_self, py_calls, n, args.rows)
    table("[trace] host time by torch operator / CUDA runtime call (self ms per iteration, calls):",
          op_self, op_calls, n, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
