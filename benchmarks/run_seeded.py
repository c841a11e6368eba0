"""Run a training script as ``__main__`` with a chosen seed, and record its wall time and peak memory.

    python benchmarks/run_seeded.py --stats OUT.json [--seed S --reseed_after MODULE:FUNC] SCRIPT [ARGS...]

``--reseed_after utils.general_utils:safe_state`` wraps that function so that, right after it
runs (the original GaussianAvatars seeds Python, NumPy and torch with 0 there), every generator
is seeded again with ``S``: the caller picks the original's seed without editing its code. The
stats file gets ``{"wall_s", "peak_memory_bytes", "exit_code"}`` when the script ends, however it
ends. Used by ``benchmarks/compare_original.py``; the script's folder becomes ``sys.path[0]``, as
for ``python SCRIPT``.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import random
import runpy
import sys
import time


def _reseed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _wrap(target: str, seed: int) -> None:
    module_name, _, func_name = target.partition(":")
    if not func_name:
        raise SystemExit(f"--reseed_after wants MODULE:FUNC, got {target!r}")
    module = importlib.import_module(module_name)
    original = getattr(module, func_name)

    @functools.wraps(original)
    def seeded(*args, **kwargs):
        out = original(*args, **kwargs)
        _reseed(seed)
        return out

    setattr(module, func_name, seeded)


def _peak_memory() -> int:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.max_memory_allocated())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stats", required=True, help="JSON file written when the script ends")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--reseed_after", default=None, help="MODULE:FUNC after which every generator is reseeded")
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    script = os.path.abspath(a.script)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(script))
    sys.argv = [script] + a.args
    if a.reseed_after:
        if a.seed is None:
            raise SystemExit("--reseed_after needs --seed")
        _wrap(a.reseed_after, a.seed)
    t0 = time.perf_counter()
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        code = 1
        raise
    finally:
        stats = {"wall_s": time.perf_counter() - t0, "peak_memory_bytes": _peak_memory(), "exit_code": code}
        tmp = a.stats + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(stats, fh)
        os.replace(tmp, a.stats)
    return code


if __name__ == "__main__":
    sys.exit(main())
