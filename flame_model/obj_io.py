"""Minimal Wavefront OBJ reader/writer: ``v``, ``vt`` and triangle ``f`` with ``v/vt[/vn]`` indices."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass
class ObjMesh:
    """Vertices (V,3), faces (F,3) int64, and optional UVs (T,2) + per-corner UV ids (F,3)."""
    verts: np.ndarray
    faces: np.ndarray
    verts_uvs: Optional[np.ndarray] = None
    textures_idx: Optional[np.ndarray] = None


def _parse_index(token: str, count: int, path: Path, lineno: int) -> int:
    i = int(token)
    if i < 0:
        i = count + i
    else:
        i -= 1
    if not 0 <= i < max(count, 1) and count > 0:
        raise ValueError(f"{path}:{lineno}: index {token} out of range (have {count})")
    return i


def read_obj(path: os.PathLike | str) -> ObjMesh:
    """Read an OBJ file; polygons are fan-triangulated. Raises ValueError naming the line on bad input."""
    path = Path(path)
    verts, uvs, faces, tfaces = [], [], [], []
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                if parts[0] == "v":
                    verts.append([float(x) for x in parts[1:4]])
                elif parts[0] == "vt":
                    uvs.append([float(x) for x in parts[1:3]])
                elif parts[0] == "f":
                    vi, ti = [], []
                    for tok in parts[1:]:
                        sub = tok.split("/")
                        vi.append(_parse_index(sub[0], len(verts), path, lineno))
                        if len(sub) > 1 and sub[1]:
                            ti.append(_parse_index(sub[1], len(uvs), path, lineno))
                    if len(vi) < 3:
                        raise ValueError("face with fewer than 3 vertices")
                    for k in range(1, len(vi) - 1):
                        faces.append([vi[0], vi[k], vi[k + 1]])
                        if len(ti) == len(vi):
                            tfaces.append([ti[0], ti[k], ti[k + 1]])
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: cannot parse '{line.strip()}' ({err})") from err
    verts_a = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    faces_a = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(tfaces) == len(faces) and len(uvs) > 0 and len(faces) > 0:
        return ObjMesh(verts_a, faces_a, np.asarray(uvs, dtype=np.float64).reshape(-1, 2),
                       np.asarray(tfaces, dtype=np.int64).reshape(-1, 3))
    return ObjMesh(verts_a, faces_a)


def write_obj(path: os.PathLike | str, verts: np.ndarray, faces: np.ndarray,
              verts_uvs: Optional[np.ndarray] = None, textures_idx: Optional[np.ndarray] = None,
              mtl_texture: Optional[str] = None) -> None:
    """Write an OBJ (with UVs when given). ``mtl_texture``: texture file name for a companion .mtl."""
    path = Path(path)
    lines = []
    if mtl_texture is not None:
        mtl = path.with_suffix(".mtl")
        mtl.write_text(f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nmap_Kd {mtl_texture}\n", encoding="utf-8")
        lines += [f"mtllib {mtl.name}", "usemtl material0"]
    lines += [f"v {x:.7f} {y:.7f} {z:.7f}" for x, y, z in np.asarray(verts)]
    if verts_uvs is not None and textures_idx is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in np.asarray(verts_uvs)]
        lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
                  for (a, b, c), (ta, tb, tc) in zip(np.asarray(faces), np.asarray(textures_idx))]
    else:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
