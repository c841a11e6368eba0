"""Reading and writing Gaussian-splat PLY files in the layout of SPEC 4.

Layout (binary little endian, one ``vertex`` element, float32 properties, in this order)::

    x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3 [binding_0]

``f_rest`` is channel-major (K coefficients of R, then G, then B; K = 15 for SH degree 3);
``binding_0`` (the triangle index, stored as float32) is present only for mesh-bound avatars.
Files are written atomically (temporary file + fsync + rename). Reading accepts any PLY that
``plyfile`` parses (ASCII, either endianness, any numeric property type) as long as the
required properties are present; property order does not matter when reading.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from utils.system_utils import atomic_write

__all__ = ["GaussianPlyData", "ply_attribute_names", "write_gaussian_ply", "read_gaussian_ply"]


@dataclass
class GaussianPlyData:
    """Raw per-splat arrays of a Gaussian PLY (float32 unless noted).

    xyz (N,3); f_dc (N,3); f_rest (N,3K) channel-major; opacity (N,1) pre-sigmoid;
    scale (N,3) log-scales; rot (N,4) wxyz unnormalised; binding (N,) int64 or None.
    """

    xyz: np.ndarray
    f_dc: np.ndarray
    f_rest: np.ndarray
    opacity: np.ndarray
    scale: np.ndarray
    rot: np.ndarray
    binding: Optional[np.ndarray] = None

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def num_rest_per_channel(self) -> int:
        return int(self.f_rest.shape[1] // 3)


def ply_attribute_names(num_rest_per_channel: int, with_binding: bool) -> List[str]:
    """Property names in SPEC 4 order (``num_rest_per_channel`` = 15 for SH degree 3)."""
    names = ["x", "y", "z", "nx", "ny", "nz"]
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_per_channel)]
    names.append("opacity")
    names += [f"scale_{i}" for i in range(3)]
    names += [f"rot_{i}" for i in range(4)]
    if with_binding:
        names.append("binding_0")
    return names


def _check_shape(path: str, name: str, arr: np.ndarray, n: int, cols: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 1 and cols == 1:
        arr = arr[:, None]
    if arr.shape != (n, cols):
        raise ValueError(f"{path}: field {name!r} has shape {arr.shape}, expected {(n, cols)}")
    return arr.astype("<f4", copy=False)


def write_gaussian_ply(path: str, data: GaussianPlyData) -> None:
    """Write ``data`` to ``path`` (SPEC 4 layout, atomically)."""
    n = data.num_points
    f_rest = np.asarray(data.f_rest)
    if f_rest.ndim != 2 or f_rest.shape[1] % 3 != 0:
        raise ValueError(f"{path}: field 'f_rest' must be (N, 3K), got {f_rest.shape}")
    columns = [
        _check_shape(path, "xyz", data.xyz, n, 3),
        np.zeros((n, 3), dtype="<f4"),  # normals (unused, kept for viewer compatibility)
        _check_shape(path, "f_dc", data.f_dc, n, 3),
        _check_shape(path, "f_rest", f_rest, n, f_rest.shape[1]),
        _check_shape(path, "opacity", data.opacity, n, 1),
        _check_shape(path, "scale", data.scale, n, 3),
        _check_shape(path, "rot", data.rot, n, 4),
    ]
    if data.binding is not None:
        binding = np.asarray(data.binding)
        if binding.shape != (n,):
            raise ValueError(f"{path}: field 'binding' has shape {binding.shape}, expected {(n,)}")
        if n and (binding.min() < 0 or binding.max() >= 2**24):
            raise ValueError(f"{path}: binding indices must be in [0, 2^24) to be stored as float32")
        columns.append(binding.astype("<f4")[:, None])
    names = ply_attribute_names(f_rest.shape[1] // 3, data.binding is not None)
    table = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    assert table.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(table.tobytes(order="C"))


def _indexed_names(names: List[str], prefix: str) -> List[str]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    found = [(int(m.group(1)), name) for name in names if (m := pattern.match(name))]
    return [name for _, name in sorted(found)]


def read_gaussian_ply(path: str) -> GaussianPlyData:
    """Read a Gaussian PLY; raises ``FileNotFoundError`` / ``ValueError`` naming the file and
    the missing or malformed field."""
    from plyfile import PlyData  # local import: only needed when reading

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Gaussian PLY not found: {path}")
    try:
        plydata = PlyData.read(path)
    except Exception as exc:  # plyfile raises several exception types for corrupt files
        raise ValueError(f"{path}: not a readable PLY file ({exc})") from exc
    if "vertex" not in [el.name for el in plydata.elements]:
        raise ValueError(f"{path}: PLY has no 'vertex' element")
    vertex = plydata["vertex"]
    names = [p.name for p in vertex.properties]
    n = int(vertex.count)

    def column(name: str) -> np.ndarray:
        if name not in names:
            raise ValueError(f"{path}: PLY vertex element lacks property {name!r}")
        return np.asarray(vertex[name], dtype=np.float32)

    def stack(cols: List[str]) -> np.ndarray:
        if not cols:
            return np.zeros((n, 0), dtype=np.float32)
        return np.stack([column(c) for c in cols], axis=1)

    xyz = stack(["x", "y", "z"])
    f_dc = stack([f"f_dc_{i}" for i in range(3)])
    rest_names = _indexed_names(names, "f_rest_")
    if rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise ValueError(f"{path}: f_rest_* properties are not numbered 0..{len(rest_names) - 1}")
    if len(rest_names) % 3 != 0:
        raise ValueError(f"{path}: number of f_rest_* properties ({len(rest_names)}) is not a multiple of 3")
    f_rest = stack(rest_names)
    opacity = column("opacity")[:, None]
    scale = stack(_indexed_names(names, "scale_"))
    if scale.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 scale_* properties, found {scale.shape[1]}")
    rot = stack(_indexed_names(names, "rot_"))
    if rot.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 rot_* properties, found {rot.shape[1]}")
    binding = None
    binding_names = _indexed_names(names, "binding_")
    if binding_names:
        raw = np.asarray(vertex[binding_names[0]], dtype=np.float64)
        if n and (not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)) or raw.min() < 0):
            raise ValueError(f"{path}: property {binding_names[0]!r} must hold non-negative integer triangle indices")
        binding = raw.astype(np.int64)
    return GaussianPlyData(xyz, f_dc, f_rest, opacity, scale, rot, binding)
