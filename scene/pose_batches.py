"""FLAME frames of many timesteps posed together, for rendering sequences.

Posing one timestep runs FLAME and the per-face frames as a few hundred small kernels (one CUDA
graph replay on a GPU), which costs about as much as rendering a 100k-splat frame. A sequence of
views (``render.py``'s val and test sets, a reenactment) instead poses its timesteps in batches:
one batched FLAME pass for up to ``chunk`` timesteps, then each view only selects its slice.

    poser = SequencePoser(gaussians, [view.timestep for view in views], chunk=64)
    for k, view in enumerate(views):
        poser.select(k)          # poses the next batch when view k's timestep is not in the last one
        render(view, gaussians, ...)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

__all__ = ["PosedFrames", "SequencePoser"]


@dataclass(frozen=True)
class PosedFrames:
    """Posed meshes and per-face frames of ``timesteps`` (leading dimension B, no autograd):
    ``verts``/``verts_cano`` (B, V, 3), ``center`` (B, F, 3), ``R`` (B, F, 3, 3), ``quat``
    (B, F, 4), ``k`` (B, F, 1). Made by ``FlameGaussianModel.pose_timesteps``."""

    timesteps: Tuple[int, ...]
    verts: torch.Tensor
    verts_cano: torch.Tensor
    center: torch.Tensor
    R: torch.Tensor
    quat: torch.Tensor
    k: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "_position", {t: i for i, t in enumerate(self.timesteps)})

    def __contains__(self, timestep: int) -> bool:
        return int(timestep) in self._position  # type: ignore[attr-defined]

    def position(self, timestep: int) -> int:
        """Row of ``timestep``; KeyError (naming the timesteps held) when it was not posed."""
        try:
            return self._position[int(timestep)]  # type: ignore[attr-defined]
        except KeyError:
            held = f"{self.timesteps[0]}..{self.timesteps[-1]}" if self.timesteps else "none"
            raise KeyError(f"timestep {int(timestep)} is not among the posed frames (held: {held})") from None


class SequencePoser:
    """Poses the timesteps of a view sequence in batches, in the order the views need them.

    ``timesteps[k]`` is view k's timestep (None: the view has none and keeps the current pose).
    :meth:`select` makes view k's frame current on ``gaussians``; when that timestep is not in the
    batch posed last, the next batch is the first ``chunk`` distinct timesteps from view k on.
    """

    def __init__(self, gaussians: Any, timesteps: Sequence[Optional[int]], chunk: int = 64):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        n_t = int(gaussians.num_timesteps)
        for k, t in enumerate(timesteps):
            if t is not None and not 0 <= int(t) < n_t:
                raise IndexError(f"view {k}: timestep {int(t)} out of range: the avatar has {n_t} timesteps")
        self.gaussians = gaussians
        self.timesteps = [None if t is None else int(t) for t in timesteps]
        self.chunk = int(chunk)
        self.frames: Optional[PosedFrames] = None
        self.batches = 0  # batched FLAME passes so far
        self._current: Optional[int] = None

    def _next_batch(self, k: int) -> Tuple[int, ...]:
        seen: Dict[int, None] = {}
        for t in self.timesteps[k:]:
            if t is not None and t not in seen:
                seen[t] = None
                if len(seen) == self.chunk:
                    break
        return tuple(seen)

    def select(self, k: int) -> None:
        t = self.timesteps[k]
        if t is None or t == self._current:
            return
        if self.frames is None or t not in self.frames:
            self.frames = self.gaussians.pose_timesteps(self._next_batch(k))
            self.batches += 1
        self.gaussians.use_posed(self.frames, t)
        self._current = t
