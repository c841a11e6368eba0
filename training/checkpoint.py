"""Training checkpoints: what they hold, written atomically, read back safely.

A checkpoint (``MODEL/chkpntN.pth``) is a plain dictionary that ``torch.load(weights_only=True)``
can read (tensors, numbers, strings, lists, dicts; no pickled classes):

``format``/``version``
    identify the file;
``iteration``
    the last completed iteration (training resumes at ``iteration + 1``);
``model``
    ``gaussians.capture()``: parameters, optimizer state, SH degree, densification statistics;
``rng``
    the random generator states (torch CPU and CUDA, NumPy, Python ``random``) as tensors;
``camera_stack`` / ``camera_rng``
    the remaining training-camera order and the generator that draws from it, so a resumed run
    picks the same cameras as an uninterrupted one;
``extra``
    anything else the trainer wants to keep (plain values only).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from utils.system_utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "TrainingCheckpoint",
    "capture_rng_state",
    "restore_rng_state",
    "python_rng_state",
    "set_python_rng_state",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "gaussian-avatars-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not hold what training needs."""


# ------------------------------------------------------------------------------------------
# Random generator states as tensors / plain values
# ------------------------------------------------------------------------------------------

def python_rng_state(rng: Any = random) -> Dict[str, Any]:
    """State of a ``random.Random`` (or the ``random`` module) as a tensor + plain values."""
    version, internal, gauss_next = rng.getstate()
    return {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next)}


def set_python_rng_state(state: Dict[str, Any], rng: Any = random) -> None:
    """Inverse of :func:`python_rng_state`."""
    internal = tuple(int(v) for v in state["state"].tolist())
    rng.setstate((int(state["version"]), internal, state["gauss_next"]))


def _numpy_rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    if name != "MT19937":
        raise CheckpointError(f"unsupported NumPy generator {name!r}")
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: Dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]),
                         float(state["cached_gaussian"])))


def capture_rng_state() -> Dict[str, Any]:
    """Torch (CPU and, where initialised, CUDA), NumPy and Python ``random`` global states."""
    cuda_states: List[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {"torch": torch.get_rng_state().clone(), "cuda": cuda_states,
            "numpy": _numpy_rng_state(), "python": python_rng_state(random)}


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are skipped without a GPU)."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].to(torch.uint8).cpu(), device=i)
    _set_numpy_rng_state(state["numpy"])
    set_python_rng_state(state["python"], random)


# ------------------------------------------------------------------------------------------
# The checkpoint file
# ------------------------------------------------------------------------------------------

@dataclass
class TrainingCheckpoint:
    """Everything needed to continue a training run exactly where it stopped."""

    iteration: int
    model: Any
    rng: Dict[str, Any]
    camera_stack: List[int] = field(default_factory=list)
    camera_rng: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "iteration": int(self.iteration),
                "model": self.model, "rng": self.rng, "camera_stack": [int(i) for i in self.camera_stack],
                "camera_rng": self.camera_rng, "extra": dict(self.extra)}


def save_checkpoint(path: str, ckpt: TrainingCheckpoint) -> str:
    """Write ``ckpt`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_write(path, mode="wb") as fh:
        torch.save(ckpt.to_dict(), fh)
    return path


def load_checkpoint(path: str, map_location: Any = "cpu") -> TrainingCheckpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Also accepts the original toolkit's ``(model_params, iteration)`` tuples (then without RNG
    state: the resumed run cannot repeat the uninterrupted one exactly). Raises
    :class:`CheckpointError` naming the file when it is missing, unreadable or of another kind."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / unsafe files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], int):
        return TrainingCheckpoint(iteration=int(data[1]), model=data[0], rng={})
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this toolkit")
    if int(data.get("version", -1)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is newer than this toolkit reads "
                              f"({CHECKPOINT_VERSION})")
    for key in ("iteration", "model"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return TrainingCheckpoint(iteration=int(data["iteration"]), model=data["model"], rng=data.get("rng") or {},
                              camera_stack=list(data.get("camera_stack") or []), camera_rng=data.get("camera_rng"),
                              extra=dict(data.get("extra") or {}))
