"""Mesh helpers: Laplacians (sparse torch), vertex normals, boundary loops."""
from __future__ import annotations

from typing import List

import numpy as np
import torch


def edges_from_faces(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E, 2) with i < j."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=0)
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def uniform_laplacian(faces: np.ndarray, num_verts: int, dtype=torch.float32) -> torch.Tensor:
    """Sparse (V, V) uniform Laplacian ``L = I - D^-1 A`` (rows of isolated vertices are zero)."""
    e = edges_from_faces(faces)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    deg = np.bincount(rows, minlength=num_verts).astype(np.float64)
    inv = np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0)
    vals = -inv[rows]
    diag = np.arange(num_verts)
    idx = np.stack([np.concatenate([rows, diag]), np.concatenate([cols, diag])])
    val = np.concatenate([vals, (deg > 0).astype(np.float64)])
    return torch.sparse_coo_tensor(torch.from_numpy(idx), torch.from_numpy(val).to(dtype),
                                   (num_verts, num_verts), check_invariants=True).coalesce()


def cotangent_laplacian(verts: np.ndarray, faces: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """Sparse (V, V) cotangent Laplacian ``L = D - W`` with ``W_ij = (cot a + cot b) / 2``,
    normalised by the vertex degree ``D_ii = sum_j W_ij`` rows (``D^-1 L``) so it is scale free."""
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    V = v.shape[0]
    rows, cols, vals = [], [], []
    for k in range(3):
        i, j, o = f[:, (k + 1) % 3], f[:, (k + 2) % 3], f[:, k]
        a = v[i] - v[o]
        b = v[j] - v[o]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cot = (a * b).sum(1) / np.maximum(cross, 1e-12)
        rows += [i, j]
        cols += [j, i]
        vals += [0.5 * cot, 0.5 * cot]
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    vals = np.concatenate(vals)
    wsum = np.bincount(rows, weights=vals, minlength=V)
    inv = np.where(np.abs(wsum) > 1e-12, 1.0 / np.where(np.abs(wsum) > 1e-12, wsum, 1.0), 0.0)
    diag = np.arange(V)
    idx = np.stack([np.concatenate([rows, diag]), np.concatenate([cols, diag])])
    val = np.concatenate([-vals * inv[rows], (np.abs(wsum) > 1e-12).astype(np.float64)])
    return torch.sparse_coo_tensor(torch.from_numpy(idx), torch.from_numpy(val).to(dtype), (V, V),
                                   check_invariants=True).coalesce()


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals for (B, V, 3) or (V, 3) vertices."""
    squeeze = verts.dim() == 2
    if squeeze:
        verts = verts[None]
    tri = verts[:, faces]                                        # (B, F, 3, 3)
    n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    out = torch.zeros_like(verts)
    for k in range(3):
        out.index_add_(1, faces[:, k], n)
    out = torch.nn.functional.normalize(out, dim=-1, eps=1e-12)
    return out[0] if squeeze else out


def boundary_loops(faces: np.ndarray) -> List[np.ndarray]:
    """Closed loops of boundary edges (edges used by one face), each as an ordered vertex array."""
    f = np.asarray(faces, dtype=np.int64)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=0)
    undirected = np.sort(directed, axis=1)
    _, inv, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    bd = directed[counts[inv.reshape(-1)] == 1]
    nxt = {}
    for a, b in bd:
        nxt.setdefault(int(a), []).append(int(b))
    loops, used = [], set()
    for start in list(nxt):
        if start in used:
            continue
        loop, cur = [], start
        while cur not in used and cur in nxt:
            used.add(cur)
            loop.append(cur)
            cur = nxt[cur][0]
        if len(loop) >= 3:
            loops.append(np.asarray(loop, dtype=np.int64))
    return loops
