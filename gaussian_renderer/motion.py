"""FLAME motion sequences: loading, validating, keyframe interpolation and export.

A motion is a dict of per-frame FLAME parameters with the keys of a ``flame_param.npz``
(SPEC 2.1/4): ``expr (T,E)``, ``rotation``, ``neck_pose``, ``jaw_pose``, ``translation`` ``(T,3)``
and ``eyes_pose (T,6)``. ``shape`` and offsets belong to the avatar, not to the motion.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from utils.system_utils import atomic_write

POSE_KEYS = ("rotation", "neck_pose", "jaw_pose", "translation")
MOTION_KEYS = ("expr",) + POSE_KEYS + ("eyes_pose",)
KEY_WIDTH = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "translation": 3, "eyes_pose": 6}


class MotionError(ValueError):
    """A motion file that cannot be used; the message names the file and the field."""


@dataclass
class MotionLoadReport:
    """What had to be adapted while loading a motion (shown to the user)."""

    notes: List[str] = field(default_factory=list)


def load_motion(path: str, n_expr: int) -> tuple[Dict[str, np.ndarray], MotionLoadReport]:
    """Read a motion npz, check shapes and values, and adapt the number of expression
    components to ``n_expr`` (extra components dropped, missing ones zero), saying so."""
    report = MotionLoadReport()
    if not os.path.isfile(path):
        raise MotionError(f"{path}: motion file not found")
    try:
        with np.load(path) as data:
            raw = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError) as exc:
        raise MotionError(f"{path}: not a readable npz file ({exc})") from None
    if "expr" not in raw:
        raise MotionError(f"{path}: field 'expr' is missing (expected shape (T, E))")
    expr = raw["expr"]
    if expr.ndim == 1:
        expr = expr[None]
    if expr.ndim != 2:
        raise MotionError(f"{path}: field 'expr' must have shape (T, E), got {tuple(raw['expr'].shape)}")
    num_frames = expr.shape[0]
    if num_frames == 0:
        raise MotionError(f"{path}: field 'expr' holds no frames")
    if expr.shape[1] != n_expr:
        report.notes.append(
            f"{os.path.basename(path)}: motion has {expr.shape[1]} expression components, the avatar {n_expr}: "
            + ("extra components ignored" if expr.shape[1] > n_expr else "missing components set to 0"))
        fixed = np.zeros((num_frames, n_expr), np.float32)
        k = min(n_expr, expr.shape[1])
        fixed[:, :k] = expr[:, :k]
        expr = fixed
    motion = {"expr": expr}
    for key, width in KEY_WIDTH.items():
        if key not in raw:
            motion[key] = np.zeros((num_frames, width), np.float32)
            report.notes.append(f"{os.path.basename(path)}: field '{key}' missing, set to 0")
            continue
        value = raw[key].reshape(-1, width) if raw[key].size % width == 0 else None
        if value is None or value.shape[0] not in (1, num_frames):
            raise MotionError(f"{path}: field '{key}' must have shape ({num_frames}, {width}), got {tuple(raw[key].shape)}")
        motion[key] = np.repeat(value, num_frames, axis=0) if value.shape[0] == 1 else value
    for key, value in motion.items():
        if not np.isfinite(value).all():
            raise MotionError(f"{path}: field '{key}' contains NaN or Inf")
    return motion, report


def save_motion(path: str, motion: Dict[str, np.ndarray]) -> None:
    """Write a motion npz atomically (loadable with ``--motion_path``)."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in motion.items()}
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)


@dataclass
class Keyframe:
    """FLAME parameters of one keyframe (single frame, no batch axis)."""

    params: Dict[str, np.ndarray]

    def copy(self) -> "Keyframe":
        return Keyframe({k: np.array(v, copy=True) for k, v in self.params.items()})


def interpolate_keyframes(keyframes: List[Keyframe], interval: int, cycles: int = 1,
                          loop_back: bool = False) -> Dict[str, np.ndarray]:
    """Linear interpolation between consecutive keyframes, ``interval`` frames apart.

    ``cycles`` repeats the whole trajectory; ``loop_back`` also interpolates from the last
    keyframe back to the first. One keyframe gives a single frame."""
    if not keyframes:
        raise ValueError("no keyframes to interpolate")
    if interval < 1:
        raise ValueError(f"keyframe interval must be >= 1, got {interval}")
    keys = keyframes[0].params.keys()
    sequence = list(keyframes) + ([keyframes[0]] if loop_back and len(keyframes) > 1 else [])
    frames: Dict[str, List[np.ndarray]] = {k: [] for k in keys}
    for a, b in zip(sequence[:-1], sequence[1:]):
        for i in range(interval):
            w = i / interval
            for k in keys:
                frames[k].append((1 - w) * a.params[k] + w * b.params[k])
    for k in keys:
        frames[k].append(sequence[-1].params[k])
    one_cycle = {k: np.stack(v).astype(np.float32) for k, v in frames.items()}
    return {k: np.concatenate([v] * max(1, cycles), axis=0) for k, v in one_cycle.items()}


def motion_frame(motion: Dict[str, np.ndarray], index: int) -> Dict[str, np.ndarray]:
    """One frame of a motion as a parameter dict (no batch axis)."""
    return {k: np.array(v[index], dtype=np.float32) for k, v in motion.items() if k in MOTION_KEYS}


def motion_length(motion: Optional[Dict[str, np.ndarray]]) -> int:
    return 0 if not motion else int(motion["expr"].shape[0])
