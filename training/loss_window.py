"""The training loss terms of the last few iterations, kept on the device.

The loop must not wait for the GPU every iteration, yet it reports mean losses every few
iterations and must stop at the first NaN/Inf loss naming its iteration. :class:`LossWindow`
writes each iteration's terms as one row of a preallocated device buffer (one kernel, no host
synchronisation); :meth:`LossWindow.first_non_finite` and :meth:`LossWindow.drain` read the rows
with one copy to the host.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import torch

__all__ = ["LossWindow"]


class LossWindow:
    """Rows of loss terms (one per recorded iteration) on ``device``; ``capacity`` rows before it
    grows. ``total_key`` names the term whose non-finite value marks a bad iteration."""

    def __init__(self, capacity: int, device: torch.device | str, total_key: str = "total"):
        if capacity < 1:
            raise ValueError(f"LossWindow capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.total_key = total_key
        self.keys: Tuple[str, ...] = ()
        self.buffer: Optional[torch.Tensor] = None
        self.iterations: List[int] = []

    def __len__(self) -> int:
        return len(self.iterations)

    def record(self, iteration: int, losses: Mapping[str, torch.Tensor]) -> None:
        """Store the 0-d tensors of ``losses`` as the row of ``iteration`` (no host sync). A
        different set of keys than before starts a new window (the old rows are dropped)."""
        row = self._next_row(iteration, tuple(losses))
        with torch.no_grad():
            torch.stack([v if v.dtype is torch.float32 else v.float() for v in losses.values()], out=row)

    def record_row(self, iteration: int, keys: Tuple[str, ...], row: torch.Tensor) -> None:
        """Store ``row`` (1-D float32 device tensor, one value per name in ``keys``) as the row of
        ``iteration``: one copy, no host sync (for loss terms a CUDA graph left in a buffer)."""
        if row.dim() != 1 or row.shape[0] != len(keys):
            raise ValueError(f"LossWindow.record_row: row has shape {tuple(row.shape)}, expected ({len(keys)},)")
        self._next_row(iteration, tuple(keys)).copy_(row)

    def _next_row(self, iteration: int, keys: Tuple[str, ...]) -> torch.Tensor:
        """The buffer row for ``iteration`` (a new window when ``keys`` changed; grows when full)."""
        if self.total_key not in keys:
            raise KeyError(f"LossWindow: the losses lack the {self.total_key!r} term (got {keys})")
        if keys != self.keys or self.buffer is None:
            self.keys = keys
            self.buffer = torch.empty(self.capacity, len(keys), dtype=torch.float32, device=self.device)
            self.iterations = []
        n = len(self.iterations)
        if n == self.buffer.shape[0]:
            self.buffer = torch.cat([self.buffer, torch.empty_like(self.buffer)])
        self.iterations.append(int(iteration))
        return self.buffer[n]

    def _rows(self) -> List[List[float]]:
        if not self.iterations:
            return []
        return self.buffer[: len(self.iterations)].tolist()

    def _first_bad(self, rows: List[List[float]]) -> Optional[int]:
        col = self.keys.index(self.total_key)
        for it, row in zip(self.iterations, rows):
            if not math.isfinite(row[col]):
                return it
        return None

    def first_non_finite(self) -> Optional[int]:
        """The first recorded iteration whose total is NaN/Inf, or None (one host sync)."""
        return self._first_bad(self._rows())

    def drain(self) -> Tuple[Dict[str, float], Optional[int]]:
        """``(mean of each term over the recorded rows, first non-finite iteration or None)``
        with one host sync; the window is empty afterwards. No rows: ``({}, None)``."""
        rows = self._rows()
        if not rows:
            return {}, None
        bad = self._first_bad(rows)
        means = {k: math.fsum(r[j] for r in rows) / len(rows) for j, k in enumerate(self.keys)}
        self.iterations = []
        return means, bad
