"""Per-stage timing of the training loop, for benchmarks (never for tests' assertions).

``StageTimer`` records CUDA events around named stages without synchronising inside the loop
(the events are read once at the end), or wall-clock time on the CPU. A disabled timer costs one
attribute check per stage, so the training loop can keep its ``with timer("stage"):`` blocks.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator, List, Tuple

import torch


class StageTimer:
    """Accumulate the time of named stages over many iterations."""

    def __init__(self, enabled: bool = False, device: torch.device | str | None = None):
        self.enabled = enabled
        self.cuda = enabled and torch.device(device or "cpu").type == "cuda"
        self._events: Dict[str, List[Tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._cpu: Dict[str, List[float]] = defaultdict(list)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events[name].append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._cpu[name].append(time.perf_counter() - t0)

    def summary_ms(self) -> Dict[str, float]:
        """Mean milliseconds per call of each stage (synchronises once)."""
        out: Dict[str, float] = {}
        if self.cuda and self._events:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                out[name] = sum(s.elapsed_time(e) for s, e in pairs) / len(pairs)
        for name, values in self._cpu.items():
            out[name] = 1000.0 * sum(values) / len(values)
        return out

    def reset(self) -> None:
        self._events.clear()
        self._cpu.clear()
