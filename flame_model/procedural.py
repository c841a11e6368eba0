"""Procedural FLAME-like head: a stand-in for the (non-shippable) FLAME model files.

``python -m flame_model.procedural --out DIR [--seed S]`` writes, in the real file layouts:

* ``DIR/flame2023.pkl``: ``v_template`` (V,3), ``f`` (F,3), ``shapedirs`` (V,3,400: 300 identity +
  100 expression), ``posedirs`` (V,3,36), ``J_regressor`` (5,V, scipy csc), ``weights`` (V,5),
  ``kintree_table`` (2,5) (root parent 4294967295 like the real file), ``J``, ``bs_style``, ``bs_type``;
* ``DIR/FLAME_masks.pkl``: FLAME region names -> vertex ids, plus the lip rings
  (``lip_inner_ring_upper/lower``, ``lip_outer_ring_upper/lower``, each sorted left -> right, and
  the closed loops ``lip_inner_ring`` / ``lip_outer_ring``) and ``mouth_interior``;
* ``DIR/head_template.obj`` (+ ``.mtl``) with UVs and ``DIR/texture.png`` (1024 x 1024).

The mesh (metres, y up, face towards +z, ~5.4k vertices / ~10.6k faces): a star-shaped head
(ellipsoid cranium smoothly joined to an elliptic neck cylinder, closed at the neck with a flat
cap) on a latitude/longitude grid that is denser around the face, with a nose, brow ridge,
cheekbones, chin, ears, eye sockets, two separate eyeball spheres (skinned to the eye joints), and
a mouth slit (the lower-lip row duplicated) that opens into a closed mouth pocket when the jaw
(or expression 0) opens. Everything is deterministic from the seed.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import scipy.sparse

from .obj_io import write_obj
from .teeth import TEETH_UV_RECT

# ----------------------------------------------------------------------------- layout constants
N_COLS = 88                  # longitude samples (even: mirror symmetric about x = 0)
N_ROWS = 58                  # latitude rings (plus a top and a bottom pole)
CENTER = np.array([0.0, 0.015, 0.0])
MOUTH_HALF_COLS = 9          # slit spans columns -9..9 around the front (column 0)
EYE_RADIUS = 0.0125
EYE_CENTERS = np.array([[0.031, 0.030, 0.071], [-0.031, 0.030, 0.071]])   # left (+x), right (-x)
EYE_LAT, EYE_LON = 12, 16
JAW_HINGE_TARGET = np.array([0.078, -0.02, 0.0])
HEAD_UV_TOP = 0.75           # head grid uses v in [0, 0.75]; the top strip holds eyes/mouth/teeth
EYE_UV_RECT = (0.0, 0.75, 0.25, 1.0)
MOUTH_UV_RECT = (0.25, 0.75, 0.5, 1.0)
TEX_SIZE = 1024


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def gauss(p: np.ndarray, c, s) -> np.ndarray:
    """Anisotropic Gaussian bump exp(-sum(((p - c) / s)^2) / 2)."""
    d = (p - np.asarray(c)) / np.asarray(s)
    return np.exp(-0.5 * (d * d).sum(-1))


# ----------------------------------------------------------------------------- surface
def base_radius(d: np.ndarray) -> np.ndarray:
    """Radial distance from CENTER of the head+neck surface along unit directions d (..., 3)."""
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    ax = 0.077
    ay = np.where(dy > 0, 0.112, 0.108 - 0.035 * smoothstep(0.0, -0.9, dz))
    az = np.where(dz > 0, 0.097, 0.101)
    r_head = 1.0 / np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2 + (dz / az) ** 2)
    # elliptic neck cylinder (axis vertical through z = zn), capped at y = y_bottom
    rnx, rnz, zn, y_bottom = 0.053, 0.057, -0.014, -0.175
    A = (dx / rnx) ** 2 + (dz / rnz) ** 2
    B = -2.0 * dz * zn / rnz ** 2
    Cq = (zn / rnz) ** 2 - 1.0
    t_wall = (-B + np.sqrt(B * B - 4 * A * Cq)) / (2 * np.maximum(A, 1e-12))
    t_cap = np.where(dy < -1e-6, (y_bottom - CENTER[1]) / np.minimum(dy, -1e-6), np.inf)
    r_neck = np.where(dy < 0, np.minimum(t_wall, t_cap), 0.0)
    p = 10.0
    return (r_head ** p + r_neck ** p) ** (1.0 / p)


def face_features(p: np.ndarray, mouth_y: float, mouth_half_w: float) -> np.ndarray:
    """Radial displacement (metres, + outwards) of facial features at base positions p (..., 3)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    front = smoothstep(0.0, 0.05, z)
    ax = np.abs(x)
    out = np.zeros_like(x)
    # nose: bridge + tip + wings
    out += 0.020 * gauss(p, (0, -0.008, 0.1), (0.008, 0.014, 0.05)) * front
    out += 0.010 * gauss(p, (0, 0.018, 0.1), (0.006, 0.018, 0.05)) * front
    out += 0.005 * (gauss(p, (0.011, -0.016, 0.09), (0.006, 0.005, 0.05))
                    + gauss(p, (-0.011, -0.016, 0.09), (0.006, 0.005, 0.05))) * front
    # brow ridge, cheekbones, chin
    out += 0.006 * gauss(np.stack([ax, y, z], -1), (0.030, 0.050, 0.09), (0.020, 0.007, 0.05)) * front
    out += 0.006 * gauss(np.stack([ax, y, z], -1), (0.045, 0.002, 0.07), (0.015, 0.012, 0.04)) * front
    out += 0.008 * gauss(p, (0, -0.083, 0.08), (0.016, 0.010, 0.05)) * front
    out += 0.007 * gauss(p, (0, mouth_y - 0.016, 0.08), (0.032, 0.011, 0.05)) * front   # below the lower lip
    # eye sockets (the eyeballs show through)
    for c in EYE_CENTERS:
        out -= 0.014 * gauss(p, (c[0], c[1], 0.09), (0.013, 0.0085, 0.05)) * front
    # lips (upper above / lower below the slit) and a slight crease at the slit
    w = np.exp(-0.5 * (x / (0.8 * mouth_half_w)) ** 4)
    out += 0.0045 * w * np.exp(-0.5 * ((y - mouth_y - 0.0045) / 0.0035) ** 2) * front
    out += 0.0050 * w * np.exp(-0.5 * ((y - mouth_y + 0.0055) / 0.0040) ** 2) * front
    out -= 0.0015 * w * np.exp(-0.5 * ((y - mouth_y) / 0.0012) ** 2) * front
    # fullness beside the mouth corners (cheeks cover the teeth seen from the side)
    out += 0.005 * gauss(np.stack([ax, y, z], -1), (mouth_half_w + 0.008, mouth_y, 0.07), (0.010, 0.014, 0.05)) * front
    # ears
    out += 0.013 * gauss(np.stack([ax, y, z], -1), (0.075, 0.0, -0.012), (0.02, 0.022, 0.011))
    return out


def jaw_taper(p: np.ndarray) -> np.ndarray:
    """Narrow the lower face towards the chin (scales x)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    t = smoothstep(-0.02, -0.095, y) * smoothstep(-0.03, 0.04, z)
    out = p.copy()
    out[..., 0] = x * (1.0 - 0.28 * t)
    return out


@dataclass
class HeadMesh:
    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    tfaces: np.ndarray
    weights: np.ndarray
    regions: Dict[str, np.ndarray]
    eye_ids: List[np.ndarray]
    proxy: np.ndarray                    # positions used to evaluate smooth blend-shape fields
    jaw_w: np.ndarray
    mouth: Dict[str, float] = field(default_factory=dict)
    grid_shape: Tuple[int, int] = (N_ROWS, N_COLS)
    grid_pos: np.ndarray = None          # (R, C, 3) head grid template positions (for texturing)


def _row_thetas() -> np.ndarray:
    """Latitudes (polar angle from +y) of the rings: denser over the face and the neck."""
    th = np.linspace(0.02, np.pi - 0.02, 4000)
    dens = (1.0 + 1.6 * np.exp(-0.5 * ((th - 1.98) / 0.22) ** 2)       # mouth
            + 0.8 * np.exp(-0.5 * ((th - 1.45) / 0.18) ** 2)            # eyes / nose
            + 0.6 * np.exp(-0.5 * ((th - 2.6) / 0.25) ** 2))            # neck
    cdf = np.cumsum(dens)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return np.interp(np.linspace(0.03, 0.985, N_ROWS), cdf, th)


def _col_phis() -> np.ndarray:
    s = 2 * np.pi * np.arange(N_COLS) / N_COLS
    s = np.where(s > np.pi, s - 2 * np.pi, s)
    return s - 0.45 * np.sin(s)          # denser at the front (phi = 0)


def _dirs(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(theta) * np.sin(phi), np.cos(theta), np.sin(theta) * np.cos(phi)], -1)


def build_mesh() -> HeadMesh:
    """The template mesh, skinning weights, UVs and regions (no randomness)."""
    thetas, phis = _row_thetas(), _col_phis()
    T, P = np.meshgrid(thetas, phis, indexing="ij")
    D = _dirs(T, P)
    base = CENTER + base_radius(D)[..., None] * D
    base = jaw_taper(base)
    # mouth slit row: the ring whose front vertex is closest to the mouth height
    mouth_y_target = -0.047
    r_m = int(np.argmin(np.abs(base[:, 0, 1] - mouth_y_target)))
    m = MOUTH_HALF_COLS
    mouth_y = float(base[r_m, 0, 1])
    mouth_half_w = float(abs(base[r_m, m, 0]))
    disp = face_features(base, mouth_y, mouth_half_w)
    Dn = (base - CENTER) / np.linalg.norm(base - CENTER, axis=-1, keepdims=True)
    grid = base + disp[..., None] * Dn
    # level the mouth line (latitude rings rise towards the sides): lift the centre band
    bx, by, bz = base[..., 0], base[..., 1], base[..., 2]
    band = np.exp(-0.5 * ((by - mouth_y) / 0.02) ** 2) * smoothstep(0.0, 0.05, bz)
    lift = (base[r_m, m, 1] - mouth_y) * (1.0 - np.clip((bx / mouth_half_w) ** 2, 0.0, 1.0) ** 1.0)
    lift = lift * np.exp(-0.5 * (bx / (1.6 * mouth_half_w)) ** 4)
    grid[..., 1] += lift * band
    mouth_y = float(grid[r_m, 0, 1])
    mouth_z = float(grid[r_m, 0, 2])
    R, C = grid.shape[:2]

    def gid(r, c):
        return r * C + (c % C)

    verts = [grid.reshape(-1, 3)]
    n = R * C
    top, bottom = n, n + 1
    verts.append(np.array([CENTER + np.array([0, 0.112 + 0.0, 0])]))
    neck_bottom = grid[-1].mean(0)
    verts.append(neck_bottom[None])
    n += 2
    # duplicated lower-lip vertices of the slit (interior columns)
    slit_cols = list(range(-m + 1, m))
    dup = {}
    for c in slit_cols:
        dup[c] = n
        n += 1
    verts.append(np.stack([grid[r_m, c % C] for c in slit_cols]))

    faces, tfaces = [], []
    # UV grid: (R + 2) x (C + 1) nodes: row index 0 = top pole line, R + 1 = bottom pole line
    uv_cols = C + 1

    def uvid(r, c):  # r in 0..R+1 (ring r-1), c in 0..C (c == C is the seam copy of 0)
        return r * uv_cols + c

    def ucol(c):  # grid column (may be negative) -> uv column, front (0) at u = 0.5
        return (c + C // 2) % C

    def uv_pair(c0, c1):
        a, b = ucol(c0), ucol(c1)
        if b == 0 and a == C - 1:
            b = C
        return a, b

    for r in range(R - 1):
        for c in range(C):
            a, b = gid(r, c), gid(r, c + 1)
            d, e = gid(r + 1, c), gid(r + 1, c + 1)
            cc = c if c < C // 2 else c - C
            if r == r_m:   # quads just below the slit use the duplicated lower-lip vertices
                if cc in dup:
                    a = dup[cc]
                if cc + 1 in dup:
                    b = dup[cc + 1]
            ua, ub = uv_pair(cc, cc + 1)
            faces += [[a, d, e], [a, e, b]]
            tfaces += [[uvid(r + 1, ua), uvid(r + 2, ua), uvid(r + 2, ub)],
                       [uvid(r + 1, ua), uvid(r + 2, ub), uvid(r + 1, ub)]]
    for c in range(C):
        cc = c if c < C // 2 else c - C
        ua, ub = uv_pair(cc, cc + 1)
        faces.append([top, gid(0, c), gid(0, c + 1)])
        tfaces.append([uvid(0, ua), uvid(1, ua), uvid(1, ub)])
        faces.append([bottom, gid(R - 1, c + 1), gid(R - 1, c)])
        tfaces.append([uvid(R + 1, ua), uvid(R, ub), uvid(R, ua)])
    uv_rows = np.concatenate([[0.0], np.arange(R) + 0.5, [R]]) / R
    uu, vv = np.meshgrid((np.arange(uv_cols) + 0.0) / C, uv_rows, indexing="xy")
    head_uvs = np.stack([uu.reshape(-1), HEAD_UV_TOP * (1.0 - vv.reshape(-1))], axis=1)
    uvs = [head_uvs]
    n_uv = head_uvs.shape[0]

    # mouth pocket: loops behind the slit ring, closed by a fan
    ring_up = [gid(r_m, c) for c in range(-m, m + 1)]
    ring_lo = [dup[c] for c in range(m - 1, -m, -1)]
    ring = ring_up + ring_lo                                   # closed loop, upper left -> right, lower back
    allv = np.concatenate(verts)
    ring_p = allv[ring]
    xc = mouth_half_w
    is_lower = np.array([0] * len(ring_up) + [1] * len(ring_lo), dtype=bool)
    window = np.clip(1.0 - (ring_p[:, 0] / xc) ** 2, 0.0, 1.0) ** 0.35
    loops_spec = [(0.002, 0.008, 0.008, 1.05), (0.007, 0.014, 0.012, 1.15),
                  (0.014, 0.014, 0.012, 1.1), (0.022, 0.009, 0.008, 0.8)]   # depth, h_up, h_lo, sx
    prev = ring
    pocket_ids = []
    mu0, mv0, mu1, mv1 = MOUTH_UV_RECT
    for k, (depth, h_up, h_lo, sx) in enumerate(loops_spec):
        p = ring_p.copy()
        p[:, 0] = ring_p[:, 0] * sx
        p[:, 1] = mouth_y + np.where(is_lower, -h_lo, h_up) * window
        p[:, 2] = ring_p[:, 2] - depth
        ids = list(range(n, n + len(ring)))
        n += len(ring)
        verts.append(p)
        pocket_ids += ids
        for i in range(len(ring)):
            j = (i + 1) % len(ring)
            faces += [[prev[i], ids[i], ids[j]], [prev[i], ids[j], prev[j]]]
        prev = ids
    cap = n
    n += 1
    verts.append(np.array([[0.0, mouth_y, float(ring_p[:, 2].mean()) - 0.028]]))
    pocket_ids.append(cap)
    for i in range(len(ring)):
        j = (i + 1) % len(ring)
        faces.append([prev[i], cap, prev[j]])
    n_head_faces = len(tfaces)
    # pocket faces: per-vertex UVs inside MOUTH_UV_RECT (uniform dark colour there)
    pocket_faces = np.asarray(faces[n_head_faces:], dtype=np.int64)
    verts_all = np.concatenate(verts)
    pocket_vmap = {}
    pocket_uv = []
    for vid in np.unique(pocket_faces):
        pocket_vmap[int(vid)] = n_uv + len(pocket_uv)
        t = (len(pocket_uv) % 17) / 17.0
        pocket_uv.append([mu0 + (mu1 - mu0) * (0.1 + 0.8 * t), mv0 + (mv1 - mv0) * 0.5])
    tfaces += [[pocket_vmap[int(i)] for i in f] for f in pocket_faces]
    uvs.append(np.asarray(pocket_uv))
    n_uv += len(pocket_uv)

    # eyeballs (UV spheres around +z), azimuthal UV projection into EYE_UV_RECT
    eye_ids = []
    eu0, ev0, eu1, ev1 = EYE_UV_RECT
    ecu, ecv, erad = 0.5 * (eu0 + eu1), 0.5 * (ev0 + ev1), 0.48 * (eu1 - eu0)
    for center in EYE_CENTERS:
        a = np.linspace(0, np.pi, EYE_LAT)[1:-1]               # angle from +z (gaze)
        b = 2 * np.pi * np.arange(EYE_LON) / EYE_LON
        A_, B_ = np.meshgrid(a, b, indexing="ij")
        local = np.stack([np.sin(A_) * np.cos(B_), np.sin(A_) * np.sin(B_), np.cos(A_)], -1).reshape(-1, 3)
        local = np.concatenate([[[0, 0, 1.0]], local, [[0, 0, -1.0]]])
        base_id = n
        ids = np.arange(n, n + local.shape[0])
        n += local.shape[0]
        verts.append(center + EYE_RADIUS * local)
        eye_ids.append(ids)
        nl = EYE_LAT - 2

        def ev(i, j):
            return base_id + 1 + i * EYE_LON + (j % EYE_LON)
        ef = []
        for j in range(EYE_LON):
            ef.append([base_id, ev(0, j), ev(0, j + 1)])
            for i in range(nl - 1):
                ef += [[ev(i, j), ev(i + 1, j), ev(i + 1, j + 1)], [ev(i, j), ev(i + 1, j + 1), ev(i, j + 1)]]
            ef.append([base_id + local.shape[0] - 1, ev(nl - 1, j + 1), ev(nl - 1, j)])
        ang = np.arccos(np.clip(local[:, 2], -1, 1))
        az = np.arctan2(local[:, 1], local[:, 0])
        rad = erad * ang / np.pi
        euv = np.stack([ecu + rad * np.cos(az), ecv + rad * np.sin(az)], 1)
        faces += ef
        tfaces += (np.asarray(ef) - base_id + n_uv).tolist()
        uvs.append(euv)
        n_uv += euv.shape[0]

    verts_all = np.concatenate(verts)
    faces = np.asarray(faces, dtype=np.int64)
    tfaces = np.asarray(tfaces, dtype=np.int64)
    flip = outward_flip(faces, verts_all)
    faces[flip] = faces[flip][:, [0, 2, 1]]
    tfaces[flip] = tfaces[flip][:, [0, 2, 1]]
    uvs = np.concatenate(uvs)
    V = verts_all.shape[0]

    # ----- skinning weights (joints: 0 global, 1 neck, 2 jaw, 3 left eye, 4 right eye)
    pos = verts_all
    x, y, z = pos[:, 0], pos[:, 1], pos[:, 2]
    w_global = smoothstep(-0.10, -0.155, y)
    jaw = (smoothstep(mouth_y + 0.002, mouth_y - 0.012, y) * smoothstep(-0.01, 0.05, z)
           * smoothstep(-0.125, -0.085, y) * (1.0 - smoothstep(0.06, 0.08, np.abs(x))))
    lower_lip = np.array([dup[c] for c in slit_cols])
    jaw[lower_lip] = 1.0
    pocket = np.asarray(pocket_ids[:-1]).reshape(len(loops_spec), len(ring))
    jaw[pocket[:, is_lower]] = 1.0
    jaw[pocket[:, ~is_lower]] = 0.0
    corners = [gid(r_m, -m), gid(r_m, m)]
    jaw[pocket[:, [0, len(ring_up) - 1]]] = jaw[corners]
    jaw[cap] = 0.5
    jaw = np.minimum(jaw, 1.0 - w_global)
    weights = np.zeros((V, 5))
    weights[:, 0] = w_global
    weights[:, 2] = jaw
    weights[:, 1] = 1.0 - w_global - jaw
    for k, ids in enumerate(eye_ids):
        weights[ids] = 0.0
        weights[ids, 3 + k] = 1.0

    proxy = pos.copy()
    for k, ids in enumerate(eye_ids):
        proxy[ids] = EYE_CENTERS[k]

    regions = make_regions(pos, grid, r_m, m, C, gid, dup, eye_ids, pocket_ids, ring_up,
                           [gid(r_m, -m)] + [dup[c] for c in slit_cols] + [gid(r_m, m)], top, bottom)
    return HeadMesh(verts=pos, faces=faces, uvs=uvs, tfaces=tfaces, weights=weights, regions=regions,
                    eye_ids=eye_ids, proxy=proxy, jaw_w=jaw,
                    mouth={"y": mouth_y, "z": mouth_z, "half_w": mouth_half_w},
                    grid_pos=grid)


def outward_flip(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Faces of connected components with negative signed volume (built consistently, so flipping
    whole components orients every closed part outwards)."""
    from scipy.sparse.csgraph import connected_components
    V = verts.shape[0]
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    g = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(V, V))
    _, label = connected_components(g, directed=False)
    tri = verts[faces]
    vol = np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2]))
    comp_vol = np.bincount(label[faces[:, 0]], weights=vol)
    return comp_vol[label[faces[:, 0]]] < 0


def make_regions(pos, grid, r_m, m, C, gid, dup, eye_ids, pocket_ids, inner_up, inner_lo, top, bottom):
    """FLAME-named vertex regions for the procedural head."""
    V = pos.shape[0]
    x, y, z = pos[:, 0], pos[:, 1], pos[:, 2]
    is_eye = np.zeros(V, bool)
    for ids in eye_ids:
        is_eye[ids] = True
    is_pocket = np.zeros(V, bool)
    is_pocket[pocket_ids] = True
    head = ~is_eye & ~is_pocket
    frontness = z / np.maximum(np.linalg.norm(pos[:, [0, 2]], axis=1), 1e-9)
    face = head & (frontness > 0.55) & (y < 0.075) & (y > -0.10)
    hairline = 0.075 - 0.11 * np.clip(1.0 - frontness, 0, 2) / 2
    scalp = head & (y > hairline) & ~face
    neck = head & (y < -0.085) & ~face
    boundary = np.zeros(V, bool)
    R = grid.shape[0]
    for r in (R - 2, R - 1):
        boundary[[gid(r, c) for c in range(C)]] = True
    boundary[bottom] = True
    ax = np.abs(x)
    ear = head & (ax > 0.07) & (np.abs(y) < 0.04) & (np.abs(z + 0.012) < 0.03)
    forehead = face & (y > 0.045)
    eye_reg = {}
    for k, c in enumerate(EYE_CENTERS):
        eye_reg[k] = head & (np.abs(x - c[0]) < 0.024) & (np.abs(y - c[1]) < 0.018) & (z > 0.03)
    nose = head & (np.abs(x) < 0.018) & (y > -0.028) & (y < 0.03) & (frontness > 0.8)
    mouth_y = pos[inner_up[0], 1]
    hw = abs(pos[inner_up[0], 0])
    lips = head & (np.abs(x) < hw + 0.004) & (np.abs(y - mouth_y) < 0.012) & (frontness > 0.7)
    outer_up = [gid(r_m - 3, c) for c in range(-m, m + 1)]
    outer_lo = [gid(r_m + 3, c) for c in range(-m, m + 1)]
    reg = {
        "face": face, "neck": neck, "scalp": scalp, "boundary": boundary,
        "left_eyeball": eye_ids[0], "right_eyeball": eye_ids[1],
        "left_ear": ear & (x > 0), "right_ear": ear & (x < 0), "forehead": forehead,
        "eye_region": eye_reg[0] | eye_reg[1], "left_eye_region": eye_reg[0], "right_eye_region": eye_reg[1],
        "nose": nose, "lips": lips, "mouth_interior": is_pocket,
    }
    out = {k: (np.nonzero(v)[0] if v.dtype == bool else np.asarray(v)).astype(np.int64) for k, v in reg.items()}
    lips_set = set(out["lips"].tolist()) | set(inner_up) | set(inner_lo) | set(outer_up) | set(outer_lo)
    out["lips"] = np.asarray(sorted(lips_set), dtype=np.int64)
    out["lip_inner_ring_upper"] = np.asarray(inner_up, dtype=np.int64)
    out["lip_inner_ring_lower"] = np.asarray(inner_lo, dtype=np.int64)
    out["lip_outer_ring_upper"] = np.asarray(outer_up, dtype=np.int64)
    out["lip_outer_ring_lower"] = np.asarray(outer_lo, dtype=np.int64)
    out["lip_inner_ring"] = np.asarray(inner_up + inner_lo[1:-1][::-1], dtype=np.int64)
    out["lip_outer_ring"] = np.asarray(outer_up + outer_lo[1:-1][::-1], dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- blend shapes
def smooth_basis(p: np.ndarray, rng: np.random.Generator, n_rbf: int, center: np.ndarray = CENTER) -> np.ndarray:
    """Smooth scalar functions of position: monomials up to degree 2 plus Gaussian RBFs (positions
    relative to ``center``, in units of 10 cm)."""
    q = (p - center) / 0.1
    feats = []
    for a in range(3):
        for b in range(3 - a):
            for c in range(3 - a - b):
                feats.append(q[:, 0] ** a * q[:, 1] ** b * q[:, 2] ** c)
    centers = q[rng.choice(len(q), size=n_rbf, replace=False)]
    sig = rng.uniform(0.3, 0.6, size=n_rbf)
    d2 = ((q[:, None, :] - centers[None]) ** 2).sum(-1)
    feats += list(np.exp(-0.5 * d2 / sig ** 2).T)
    return np.stack(feats, 1)


def identity_shapedirs(mesh: HeadMesh, rng: np.random.Generator, n: int = 300) -> np.ndarray:
    """``n`` smooth random displacement fields (random mixtures of the smooth basis, each scaled to
    a decaying RMS so the first components matter most; eyeballs move rigidly)."""
    return smooth_displacement_fields(mesh.proxy, rng, n, CENTER)


def smooth_displacement_fields(proxy: np.ndarray, rng: np.random.Generator, n: int, center: np.ndarray) -> np.ndarray:
    """``n`` identity fields evaluated at ``proxy`` positions (V,3): vertices sharing a proxy
    position (an eyeball's, all at its centre) move together."""
    phi = smooth_basis(proxy, rng, 160, center)                # (V, K)
    phi = phi / np.sqrt((phi ** 2).mean(0, keepdims=True))     # unit RMS per function
    K = phi.shape[1]
    comps = np.einsum("vk,kcn->vcn", phi, rng.standard_normal((K, 3, n)))
    rms = np.sqrt((comps ** 2).sum(1).mean(0))                  # (n,) RMS vertex displacement
    sigma = 0.003 * (1.0 + np.arange(n)) ** -0.75              # metres per unit parameter
    return comps * (sigma / rms)


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def expression_shapedirs(mesh: HeadMesh, hinge: np.ndarray, rng: np.random.Generator,
                         n: int = 100) -> np.ndarray:
    p = mesh.verts
    V = p.shape[0]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    my, hw = mesh.mouth["y"], mesh.mouth["half_w"]
    mz = mesh.mouth["z"]
    E = np.zeros((V, 3, n))
    # 0: mouth open (linearised jaw rotation of the jaw-weighted region)
    E[:, :, 0] = mesh.jaw_w[:, None] * ((p - hinge) @ (_rot_x(0.08) - np.eye(3)).T)
    # 1: smile: corners up / out / back, cheeks up
    for s in (1, -1):
        g = gauss(p, (s * hw, my, mz - 0.01), (0.011, 0.010, 0.03))
        E[:, :, 1] += g[:, None] * np.array([s * 0.004, 0.005, -0.002])
        g = gauss(p, (s * 0.035, -0.015, 0.08), (0.014, 0.012, 0.03))
        E[:, :, 1] += g[:, None] * np.array([0.0, 0.002, 0.0015])
    # 2: brow raise
    g = gauss(p, (0, 0.052, 0.09), (0.045, 0.012, 0.04))
    E[:, 1, 2] = 0.005 * g
    # 3: frown (inner brows down and together)
    for s in (1, -1):
        g = gauss(p, (s * 0.016, 0.048, 0.09), (0.012, 0.010, 0.04))
        E[:, :, 3] += g[:, None] * np.array([-s * 0.002, -0.003, 0.001])
    # 4: pucker (lips forward and narrower)
    g = gauss(p, (0, my, mz), (0.022, 0.012, 0.03))
    E[:, 0, 4] = -0.3 * x * g
    E[:, 2, 4] = 0.005 * g
    # 5: cheek puff (outwards)
    for s in (1, -1):
        g = gauss(p, (s * 0.045, -0.035, 0.06), (0.014, 0.016, 0.03))
        E[:, 0, 5] += s * 0.004 * g
        E[:, 2, 5] += 0.001 * g
    # 6: mouth stretch (corners out and down)
    for s in (1, -1):
        g = gauss(p, (s * hw, my, mz - 0.01), (0.011, 0.010, 0.03))
        E[:, :, 6] += g[:, None] * np.array([s * 0.004, -0.003, 0.0])
    # 7: squint (lower eyelids up)
    for c in EYE_CENTERS:
        g = gauss(p, (c[0], c[1] - 0.012, 0.09), (0.012, 0.005, 0.04))
        E[:, 1, 7] += 0.0025 * g
    # 8..: random smooth local deformations of the face
    faceness = smoothstep(0.02, 0.07, z) * smoothstep(-0.11, -0.07, y) * smoothstep(0.09, 0.06, y)
    for k in range(8, n):
        c = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.09, 0.06), 0.09])
        s = rng.uniform(0.012, 0.03)
        g = gauss(p, c, (s, s, 0.04)) * faceness
        E[:, :, k] = g[:, None] * rng.standard_normal(3) * 0.0015 * (1.0 + 4.0 * np.exp(-(k - 8) / 20))
    for ids in mesh.eye_ids:
        E[ids] = 0.0
    return E


def pose_correctives(mesh: HeadMesh, rng: np.random.Generator) -> np.ndarray:
    """Small smooth correctives: neck features act on the neck, jaw features under the chin."""
    p = mesh.verts
    V = p.shape[0]
    phi = smooth_basis(p, rng, 20)
    P = np.zeros((V, 3, 36))
    neck_w = np.exp(-0.5 * ((p[:, 1] + 0.095) / 0.03) ** 2)
    jaw_w = mesh.jaw_w * (1.0 - mesh.jaw_w) * 4.0
    for k in range(9):
        for col, w in ((k, neck_w), (9 + k, jaw_w)):
            f = phi @ rng.standard_normal((phi.shape[1], 3))
            f /= np.abs(f).max() + 1e-12
            P[:, :, col] = 0.0015 * w[:, None] * f
    for ids in mesh.eye_ids:
        P[ids] = 0.0
    return P


def joint_regressor(mesh: HeadMesh) -> Tuple[np.ndarray, np.ndarray]:
    """(5, V) regressor: rings of the neck for the global / neck joints, a symmetric vertex pair
    for the jaw hinge, the eyeball vertices for the eyes. Returns (dense regressor, hinge point)."""
    p = mesh.verts
    V = p.shape[0]
    R, C = mesh.grid_shape
    Jr = np.zeros((5, V))
    grid_y = mesh.grid_pos[..., 1].mean(1)
    for j, ytarget in ((0, -0.150), (1, -0.075)):
        r = int(np.argmin(np.abs(grid_y - ytarget)))
        Jr[j, r * C:(r + 1) * C] = 1.0 / C
    head = np.arange(R * C)
    a = head[np.argmin(np.linalg.norm(p[head] - JAW_HINGE_TARGET, axis=1))]
    mirror = JAW_HINGE_TARGET * np.array([-1, 1, 1])
    b = head[np.argmin(np.linalg.norm(p[head] - mirror, axis=1))]
    Jr[2, [a, b]] = 0.5
    for k, ids in enumerate(mesh.eye_ids):
        Jr[3 + k, ids] = 1.0 / len(ids)
    return Jr, Jr[2] @ p


# ----------------------------------------------------------------------------- texture
def paint_texture(mesh: HeadMesh, rng: np.random.Generator, size: int = TEX_SIZE) -> np.ndarray:
    """RGB uint8 texture: skin, hair, brows, lips, eyes, mouth interior, teeth."""
    from scipy.ndimage import gaussian_filter, map_coordinates
    R, C = mesh.grid_shape
    H = W = size
    img = np.zeros((H, W, 3))
    # head region: texel -> grid coordinates -> template position
    rows_px = int(round(H * HEAD_UV_TOP))
    py, px = np.mgrid[H - rows_px:H, 0:W]
    v = 1.0 - (py + 0.5) / H
    u = (px + 0.5) / W
    gr = (1.0 - v / HEAD_UV_TOP) * R - 0.5                       # fractional ring index
    gc = (u * C - C // 2) % C                                     # fractional grid column
    grid = np.concatenate([mesh.grid_pos, mesh.grid_pos[:, :1]], axis=1)
    pos = np.stack([map_coordinates(grid[..., k], [np.clip(gr, 0, R - 1), gc], order=1, mode="nearest")
                    for k in range(3)], -1)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    frontness = z / np.maximum(np.hypot(x, z), 1e-9)
    skin = np.array([0.87, 0.68, 0.56])
    col = np.broadcast_to(skin, pos.shape).copy()
    noise = gaussian_filter(rng.standard_normal(x.shape), 3.0)
    col *= (1.0 + 0.06 * noise / (np.abs(noise).max() + 1e-9))[..., None]
    # cheeks blush
    for s in (1, -1):
        g = gauss(pos, (s * 0.045, -0.01, 0.07), (0.015, 0.015, 0.04))
        col = col * (1 - 0.25 * g[..., None]) + 0.25 * g[..., None] * np.array([0.9, 0.5, 0.45])
    # lips
    my, hw = mesh.mouth["y"], mesh.mouth["half_w"]
    lip = (np.abs(x) < hw * (1.0 - 0.25 * ((y - my) / 0.01) ** 2)) & (np.abs(y - my) < 0.0105) & (frontness > 0.6)
    lip = gaussian_filter(lip.astype(float), 1.5)
    col = col * (1 - lip[..., None]) + lip[..., None] * np.array([0.72, 0.28, 0.30])
    # eyebrows
    for c in EYE_CENTERS:
        t = (x - c[0]) * np.sign(c[0])
        brow_y = c[1] + 0.016 + 0.004 * np.cos(np.clip(t / 0.02, -1.5, 1.5))
        b = (np.abs(y - brow_y) < 0.0035) & (t > -0.014) & (t < 0.02) & (frontness > 0.5)
        b = gaussian_filter(b.astype(float), 1.0)
        col = col * (1 - 0.9 * b[..., None]) + 0.9 * b[..., None] * np.array([0.22, 0.14, 0.09])
        # darker eyelid ring
        g = gauss(pos, (c[0], c[1], 0.08), (0.016, 0.011, 0.05))
        col *= (1.0 - 0.18 * g)[..., None]
    # hair: scalp and back of the head
    hairline = 0.072 - 0.10 * np.clip(1.0 - frontness, 0.0, 1.6)
    hair_mask = (y > hairline) & ~((np.abs(x) > 0.065) & (np.abs(y) < 0.03) & (z > -0.035) & (z < 0.01))
    hair = gaussian_filter(hair_mask.astype(float), 2.0)
    strand = 0.85 + 0.15 * np.sin(px * 0.9 + 3 * noise)
    hair_col = np.array([0.20, 0.12, 0.07])[None, None] * strand[..., None]
    col = col * (1 - hair[..., None]) + hair[..., None] * hair_col
    # nostrils
    for s in (1, -1):
        g = gauss(pos, (s * 0.008, -0.021, 0.1), (0.003, 0.002, 0.05))
        col *= (1 - 0.6 * g)[..., None]
    img[H - rows_px:] = col
    # eye disc (azimuthal projection around the gaze): pupil, iris, sclera, dark back
    eu0, ev0, eu1, ev1 = EYE_UV_RECT
    ecu, ecv, erad = 0.5 * (eu0 + eu1), 0.5 * (ev0 + ev1), 0.48 * (eu1 - eu0)
    py, px = np.mgrid[0:H, 0:W]
    U, Vv = (px + 0.5) / W, 1.0 - (py + 0.5) / H
    ang = np.hypot(U - ecu, Vv - ecv) / erad * np.pi
    in_eye = (U >= eu0) & (U < eu1) & (Vv >= ev0)
    eye = np.where((ang < 0.20)[..., None], [0.03, 0.03, 0.03],
                   np.where((ang < 0.45)[..., None], [0.25, 0.38, 0.55],
                            np.where((ang < 2.2)[..., None], [0.95, 0.93, 0.90], [0.5, 0.2, 0.2])))
    img[in_eye] = eye[in_eye]
    mu0, mv0, mu1, mv1 = MOUTH_UV_RECT
    in_mouth = (U >= mu0) & (U < mu1) & (Vv >= mv0)
    img[in_mouth] = [0.22, 0.04, 0.06]
    tu0, tv0, tu1, tv1 = TEETH_UV_RECT
    in_teeth = (U >= tu0) & (U < tu1) & (Vv >= tv0)
    img[in_teeth] = [0.95, 0.93, 0.86]
    rest = (U >= tu1) & (Vv >= tv0)
    img[rest] = skin
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- assembly
@dataclass
class ProceduralAssets:
    model: Dict[str, object]
    masks: Dict[str, np.ndarray]
    mesh: HeadMesh
    texture: np.ndarray


def generate(seed: int = 0, with_texture: bool = True) -> ProceduralAssets:
    """Build every array of the procedural FLAME stand-in (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    mesh = build_mesh()
    Jr, hinge = joint_regressor(mesh)
    ident = identity_shapedirs(mesh, rng)
    expr = expression_shapedirs(mesh, hinge, rng)
    posedirs = pose_correctives(mesh, rng)
    shapedirs = np.concatenate([ident, expr], axis=2)
    model = {
        "v_template": mesh.verts.astype(np.float64),
        "f": mesh.faces.astype(np.uint32),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": posedirs.astype(np.float32),
        "J_regressor": scipy.sparse.csc_matrix(Jr),
        "weights": mesh.weights.astype(np.float64),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": Jr @ mesh.verts,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    texture = paint_texture(mesh, rng) if with_texture else None
    return ProceduralAssets(model=model, masks=dict(mesh.regions), mesh=mesh, texture=texture)


def write_model_pickles(out: Path, model: Dict[str, object], masks: Dict[str, np.ndarray]) -> None:
    """``out/flame2023.pkl`` and ``out/FLAME_masks.pkl`` in the official files' layout (atomically)."""
    for name, obj in (("flame2023.pkl", model), ("FLAME_masks.pkl", masks)):
        tmp = out / (name + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
        os.replace(tmp, out / name)


def write_assets(out_dir: os.PathLike | str, seed: int = 0, with_texture: bool = True) -> Path:
    """Write flame2023.pkl, FLAME_masks.pkl, head_template.obj (+ .mtl) and texture.png to out_dir
    (``with_texture=False``: the two pickles and the OBJ only, faster for tests)."""
    from PIL import Image
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    assets = generate(seed, with_texture=with_texture)
    write_model_pickles(out, assets.model, assets.masks)
    m = assets.mesh
    write_obj(out / "head_template.obj", m.verts, m.faces, m.uvs, m.tfaces, mtl_texture="texture.png")
    if assets.texture is not None:
        Image.fromarray(assets.texture).save(out / "texture.png")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write a procedural FLAME-like head (stand-in for FLAME).")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = write_assets(args.out, args.seed)
    print(f"wrote {out}/flame2023.pkl, FLAME_masks.pkl, head_template.obj, texture.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
