"""Teeth for FLAME (GaussianAvatars): 120 vertices and 168 triangles appended after FLAME's.

Two constructions, chosen by ``style``:

``"original"`` (default): the construction of the GaussianAvatars release, so that avatars it
trained (whose splats bind to teeth triangles by index) load and render right.

* Columns: the 15 vertex pairs of the *outer* lip rings, upper and lower, in ring order (from the
  subject's left, +x, to the right). The real 5023-vertex FLAME topology uses the published ids
  below; other topologies take the rings from the masks file and, when a ring has more than 15
  vertices, 15 evenly spaced ones along it.
* With ``d`` the mean distance between paired upper and lower ring vertices of the template: the
  middle line is the pairs' midpoints, flattened to their mean height and set back ``1.5 d`` (-z);
  the front edges sit ``0.1 d`` above (upper) and below (lower) it, the roots ``2 d`` beyond the
  edges, the lower row a further ``0.4 d`` back, and every row has a back copy ``d`` behind it.
* Vertex order: 8 rows of 15: upper root, lower root, upper edge, lower edge, upper root back,
  upper edge back, lower root back, lower edge back.
* Triangles: six strips of 14 quads (upper front, back, biting edge; then lower front, back,
  biting edge), each quad split along the diagonal that points away from the middle column,
  in the release's order and winding (``original_teeth_faces``).
* Each column takes the mean of its two ring vertices' *identity* blend shapes; expression blend
  shapes, pose correctives and joint-regressor columns are zero and skinning is entirely to the
  neck (upper) or the jaw (lower): the teeth move rigidly.

``"ring_fit"``: this project's earlier construction (kept behind ``--teeth ring_fit``): teeth fitted
to the *inner* lip ring over 85% of the mouth width, a dental-arch gap behind it, and every blend
shape (expression included) copied from the nearest inner-ring vertex, so the teeth follow the
lips' expression deformation. Its vertex order is ``((row * 2 + side) * 2 + level) * 15 + column``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .mesh_utils import boundary_loops, edges_from_faces

N_COLUMNS = 15
N_TEETH_VERTS = 120
N_TEETH_FACES = 168
NECK_JOINT = 1
JAW_JOINT = 2

# UV rectangle (u0, v0, u1, v1) the teeth triangles use in the texture atlas (OBJ convention, v up).
TEETH_UV_RECT = (0.5, 0.75, 0.75, 1.0)

# Published lip-ring vertex ids of the 5023-vertex FLAME topology (FLAME 2020 / 2023).
FLAME_LIP_RINGS: Dict[str, Tuple[int, ...]] = {
    "lip_inner_ring_upper": (1595, 1746, 1747, 1742, 1739, 1665, 1666, 3514, 2783, 2782, 2854, 2857, 2862, 2861, 2731),
    "lip_inner_ring_lower": (1572, 1573, 1860, 1862, 1830, 1835, 1852, 3497, 2941, 2933, 2930, 2945, 2943, 2709, 2708),
    "lip_outer_ring_upper": (1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830),
    "lip_outer_ring_lower": (1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712),
}
FLAME_NUM_VERTS = 5023


@dataclass
class LipRings:
    """Vertex ids (int64) of the lip rings, each in ring order: from the subject's left (+x) to the
    right, as FLAME's published rings run."""
    inner_upper: np.ndarray
    inner_lower: np.ndarray
    outer_upper: np.ndarray
    outer_lower: np.ndarray

    def as_masks(self) -> Dict[str, np.ndarray]:
        return {"lip_inner_ring_upper": self.inner_upper, "lip_inner_ring_lower": self.inner_lower,
                "lip_outer_ring_upper": self.outer_upper, "lip_outer_ring_lower": self.outer_lower}


@dataclass
class TeethData:
    """Arrays to append to the FLAME model for the teeth."""
    verts: np.ndarray          # (120, 3)
    faces: np.ndarray          # (168, 3) ids into the full (extended) vertex array
    shapedirs: np.ndarray      # (120, 3, K)
    posedirs: np.ndarray       # (120, 3, P)
    weights: np.ndarray        # (120, J)
    uvs: np.ndarray            # (120, 2)
    upper: np.ndarray          # (60,) vertex ids in the extended model
    lower: np.ndarray          # (60,)
    rings: LipRings


def _sort_by_x(ids: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Ring order: decreasing template x (FLAME's rings run from +x to -x)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids[np.argsort(-v[ids, 0], kind="stable")]


def _split_closed_ring(ids: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split a closed loop at its extreme-x vertices into the upper and lower halves (corners in both)."""
    ids = np.asarray(ids, dtype=np.int64)
    i0, i1 = int(np.argmin(v[ids, 0])), int(np.argmax(v[ids, 0]))
    n = len(ids)
    a = ids[[(i0 + k) % n for k in range(((i1 - i0) % n) + 1)]]
    b = ids[[(i1 + k) % n for k in range(((i0 - i1) % n) + 1)]]
    if v[a, 1].mean() >= v[b, 1].mean():
        return _sort_by_x(a, v), _sort_by_x(b, v)
    return _sort_by_x(b, v), _sort_by_x(a, v)


def _split_unordered(ids: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split an unordered ring into upper / lower by the line through the extreme-x vertices."""
    ids = np.asarray(ids, dtype=np.int64)
    left, right = ids[np.argmin(v[ids, 0])], ids[np.argmax(v[ids, 0])]
    x0, y0 = v[left, :2]
    x1, y1 = v[right, :2]
    t = (v[ids, 0] - x0) / max(x1 - x0, 1e-12)
    y_line = y0 + t * (y1 - y0)
    up = ids[v[ids, 1] >= y_line]
    lo = ids[v[ids, 1] <= y_line]
    return _sort_by_x(up, v), _sort_by_x(lo, v)


def find_lip_rings(v: np.ndarray, faces: np.ndarray, masks: Dict[str, np.ndarray]) -> LipRings:
    """Lip rings from the masks file keys, the FLAME ids, or geometry (see module docstring)."""
    keys = ("lip_inner_ring_upper", "lip_inner_ring_lower", "lip_outer_ring_upper", "lip_outer_ring_lower")
    V = v.shape[0]
    if all(k in masks for k in keys):
        r = [_sort_by_x(masks[k], v) for k in keys]
        return LipRings(*r)
    if "lip_inner_ring" in masks and "lip_outer_ring" in masks:
        iu, il = _split_closed_ring(masks["lip_inner_ring"], v)
        ou, ol = _split_closed_ring(masks["lip_outer_ring"], v)
        return LipRings(iu, il, ou, ol)
    if V == FLAME_NUM_VERTS:
        return LipRings(*[np.asarray(FLAME_LIP_RINGS[k], dtype=np.int64) for k in keys])
    if "lips" not in masks:
        raise ValueError("cannot place the teeth: the masks have neither lip ring keys "
                         "(lip_inner_ring_upper/... or lip_inner_ring/lip_outer_ring) nor a 'lips' region")
    lips = np.zeros(V, dtype=bool)
    lips[masks["lips"]] = True
    loops = [lp for lp in boundary_loops(faces) if lips[lp].mean() > 0.5]
    if not loops:
        raise ValueError("cannot place the teeth: no mesh boundary loop inside the 'lips' region "
                         "and no lip ring keys in the masks file")
    inner = max(loops, key=len)
    iu, il = _split_closed_ring(inner, v)
    e = edges_from_faces(faces)
    border = np.zeros(V, dtype=bool)
    cross = lips[e[:, 0]] != lips[e[:, 1]]
    border[e[cross].reshape(-1)] = True
    outer = np.nonzero(border & lips)[0]
    ou, ol = _split_unordered(outer, v)
    return LipRings(iu, il, ou, ol)


def _interp_ring(ring: np.ndarray, v: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Linear interpolation of ring vertex positions at abscissae ``xs`` -> (n, 3)."""
    p = v[ring]
    p = p[np.argsort(p[:, 0], kind="stable")]
    return np.stack([xs, np.interp(xs, p[:, 0], p[:, 1]), np.interp(xs, p[:, 0], p[:, 2])], axis=1)


def ring_fit_teeth_faces(offset: int) -> np.ndarray:
    """The 168 teeth triangles (unoriented layout) for teeth vertices starting at ``offset``."""
    def vid(row, side, level, col):
        return offset + ((row * 2 + side) * 2 + level) * N_COLUMNS + col
    faces = []
    for row in range(2):
        for c in range(N_COLUMNS - 1):
            for side in range(2):  # front and back strips (root -> edge)
                a, b = vid(row, side, 0, c), vid(row, side, 0, c + 1)
                d, e = vid(row, side, 1, c), vid(row, side, 1, c + 1)
                faces += [[a, b, e], [a, e, d]]
            a, b = vid(row, 0, 1, c), vid(row, 0, 1, c + 1)  # biting edge strip (front -> back)
            d, e = vid(row, 1, 1, c), vid(row, 1, 1, c + 1)
            faces += [[a, b, e], [a, e, d]]
    return np.asarray(faces, dtype=np.int64)


def build_teeth_ring_fit(v: np.ndarray, faces: np.ndarray, shapedirs: np.ndarray, posedirs: np.ndarray,
                         num_joints: int, rings: LipRings) -> TeethData:
    """The ``ring_fit`` teeth (module docstring) for a template ``v`` (V,3) with ``faces``."""
    V = v.shape[0]
    inner = np.concatenate([rings.inner_upper, rings.inner_lower])
    x_lo, x_hi = v[inner, 0].min(), v[inner, 0].max()
    width = x_hi - x_lo
    if not width > 0:
        raise ValueError("degenerate lip rings: zero mouth width")
    centre = 0.5 * (x_lo + x_hi)
    xs = centre + 0.85 * (np.linspace(x_lo, x_hi, N_COLUMNS) - centre)
    up = _interp_ring(rings.inner_upper, v, xs)
    lo = _interp_ring(rings.inner_lower, v, xs)
    mid = 0.5 * (up + lo)
    gap, thick, height = 0.10 * width, 0.08 * width, 0.18 * width
    eps_y = 0.01 * width
    verts = np.zeros((2, 2, 2, N_COLUMNS, 3))
    for row, sign in ((0, 1.0), (1, -1.0)):
        for side in range(2):
            z = mid[:, 2] - gap - side * thick
            for level in range(2):
                y = mid[:, 1] + sign * (eps_y + (height if level == 0 else 0.0))
                verts[row, side, level] = np.stack([mid[:, 0], y, z], axis=1)
    verts = verts.reshape(-1, 3)
    f = ring_fit_teeth_faces(V)
    # orient: front strips towards +z, back strips towards -z, biting edges towards the mouth line
    allv = np.concatenate([v, verts], axis=0)
    tri = allv[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    desired = np.zeros_like(n)
    per_row = 6 * (N_COLUMNS - 1)
    for k in range(len(f)):
        row, rem = divmod(k, per_row)
        kind = (rem // 2) % 3  # 0 front, 1 back, 2 edge
        desired[k] = [(0, 0, 1), (0, 0, -1), (0, -1 if row == 0 else 1, 0)][kind]
    flip = (n * desired).sum(1) < 0
    f[flip] = f[flip][:, [0, 2, 1]]
    # blend shapes from the nearest inner-ring vertex of the same lip
    upper_ids = np.arange(60)
    lower_ids = np.arange(60, 120)
    src = np.zeros(120, dtype=np.int64)
    for ids, ring in ((upper_ids, rings.inner_upper), (lower_ids, rings.inner_lower)):
        d = np.linalg.norm(verts[ids, None, :] - v[None, ring, :], axis=-1)
        src[ids] = ring[np.argmin(d, axis=1)]
    weights = np.zeros((120, num_joints))
    weights[upper_ids, NECK_JOINT] = 1.0
    weights[lower_ids, JAW_JOINT] = 1.0
    # per-vertex UVs inside TEETH_UV_RECT: columns along u, (row, side, level) along v
    u0, v0, u1, v1 = TEETH_UV_RECT
    idx = np.arange(120)
    col = idx % N_COLUMNS
    band = idx // N_COLUMNS  # 0..7
    uvs = np.stack([u0 + (u1 - u0) * (0.05 + 0.9 * col / (N_COLUMNS - 1)),
                    v0 + (v1 - v0) * (0.05 + 0.9 * band / 7.0)], axis=1)
    return TeethData(verts=verts, faces=f, shapedirs=shapedirs[src].copy(),
                     posedirs=np.zeros((120,) + posedirs.shape[1:]), weights=weights, uvs=uvs,
                     upper=V + upper_ids, lower=V + lower_ids, rings=rings)


# ----------------------------------------------------------------------------- the release's teeth
# Row blocks of 15 vertices, in the release's vertex order.
UPPER_ROOT, LOWER_ROOT, UPPER_EDGE, LOWER_EDGE = 0, 1, 2, 3
UPPER_ROOT_BACK, UPPER_EDGE_BACK, LOWER_ROOT_BACK, LOWER_EDGE_BACK = 4, 5, 6, 7
UPPER_ROWS = (UPPER_ROOT, UPPER_EDGE, UPPER_ROOT_BACK, UPPER_EDGE_BACK)
LOWER_ROWS = (LOWER_ROOT, LOWER_EDGE, LOWER_ROOT_BACK, LOWER_EDGE_BACK)
# The six strips (row a, row b, which half's diagonal comes first, reversed winding), in face order.
_STRIPS = (
    (UPPER_ROOT, UPPER_EDGE, 0, False),          # upper front
    (UPPER_ROOT_BACK, UPPER_EDGE_BACK, 0, True),  # upper back
    (UPPER_EDGE_BACK, UPPER_EDGE, 1, True),       # upper biting edge
    (LOWER_EDGE, LOWER_ROOT, 1, False),           # lower front
    (LOWER_ROOT_BACK, LOWER_EDGE_BACK, 0, False),  # lower back
    (LOWER_EDGE_BACK, LOWER_EDGE, 1, False),      # lower biting edge
)
# FLAME texture-space UVs of the release's teeth: u per column, v per row block.
_FLAME_TEETH_U = np.linspace(0.62, 0.38, N_COLUMNS)
_FLAME_TEETH_V = np.linspace(1 - 0.0083, 1 - 0.0425, 7)[[3, 2, 0, 1, 3, 4, 6, 5]]


def _quad(a: np.ndarray, b: np.ndarray, c: int, diagonal_ab1: bool) -> List[List[int]]:
    """The two triangles of quad ``c`` between rows ``a`` and ``b``: split along a_c-b_{c+1}
    (``diagonal_ab1``) or a_{c+1}-b_c."""
    if diagonal_ab1:
        return [[a[c], b[c + 1], b[c]], [a[c], a[c + 1], b[c + 1]]]
    return [[a[c], a[c + 1], b[c]], [a[c + 1], b[c + 1], b[c]]]


def original_teeth_faces(offset: int) -> np.ndarray:
    """The release's 168 teeth triangles for teeth vertices starting at ``offset``.

    In each strip the quads left of the middle column are split along one diagonal and those right
    of it along the other (a mirror-symmetric strip); ``first`` says which split the left half gets."""
    rows = offset + np.arange(8 * N_COLUMNS).reshape(8, N_COLUMNS)
    half = N_COLUMNS // 2
    faces: List[List[int]] = []
    for ra, rb, first, reverse in _STRIPS:
        a, b = rows[ra], rows[rb]
        for c in range(N_COLUMNS - 1):
            left = c < half
            for tri in _quad(a, b, c, diagonal_ab1=(left == (first == 0))):
                faces.append([tri[0], tri[2], tri[1]] if reverse else tri)
    return np.asarray(faces, dtype=np.int64)


def _pick_columns(ring: np.ndarray) -> np.ndarray:
    """15 ring vertices: the ring itself, or 15 evenly spaced along a longer one."""
    if len(ring) == N_COLUMNS:
        return ring
    if len(ring) < N_COLUMNS:
        raise ValueError(f"the outer lip ring has {len(ring)} vertices; the teeth need {N_COLUMNS}")
    return ring[np.round(np.linspace(0, len(ring) - 1, N_COLUMNS)).astype(np.int64)]


def build_teeth_original(v: np.ndarray, shapedirs: np.ndarray, posedirs: np.ndarray, num_joints: int,
                         rings: LipRings, n_shape: int) -> TeethData:
    """The release's teeth (module docstring) for a template ``v`` (V,3); ``shapedirs`` (V,3,K) holds
    ``n_shape`` identity components first."""
    V = v.shape[0]
    upper, lower = _pick_columns(rings.outer_upper), _pick_columns(rings.outer_lower)
    vu, vl = v[upper].astype(np.float64), v[lower].astype(np.float64)
    d = float(np.linalg.norm(vu - vl, axis=1).mean())
    up_y, back_z = np.array([0.0, d, 0.0]), np.array([0.0, 0.0, d])
    middle = 0.5 * (vu + vl)
    middle[:, 1] = middle[:, 1].mean()
    middle[:, 2] -= 1.5 * d
    rows = np.zeros((8, N_COLUMNS, 3))
    rows[UPPER_EDGE] = middle + 0.1 * up_y
    rows[UPPER_ROOT] = rows[UPPER_EDGE] + 2.0 * up_y
    rows[LOWER_EDGE] = middle - 0.1 * up_y - 0.4 * back_z
    rows[LOWER_ROOT] = rows[LOWER_EDGE] - 2.0 * up_y
    for front, back in ((UPPER_ROOT, UPPER_ROOT_BACK), (UPPER_EDGE, UPPER_EDGE_BACK),
                        (LOWER_ROOT, LOWER_ROOT_BACK), (LOWER_EDGE, LOWER_EDGE_BACK)):
        rows[back] = rows[front] - back_z
    verts = rows.reshape(-1, 3)
    block = np.arange(8 * N_COLUMNS).reshape(8, N_COLUMNS)
    upper_ids = np.concatenate([block[r] for r in UPPER_ROWS])
    lower_ids = np.concatenate([block[r] for r in LOWER_ROWS])
    teeth_dirs = np.zeros((8 * N_COLUMNS,) + shapedirs.shape[1:], dtype=np.float64)
    column_dirs = 0.5 * (shapedirs[upper, :, :n_shape] + shapedirs[lower, :, :n_shape])
    teeth_dirs[:, :, :n_shape] = np.tile(column_dirs, (8, 1, 1))
    weights = np.zeros((8 * N_COLUMNS, num_joints))
    weights[upper_ids, NECK_JOINT] = 1.0
    weights[lower_ids, JAW_JOINT] = 1.0
    if V == FLAME_NUM_VERTS:
        uu, vv = np.meshgrid(_FLAME_TEETH_U, _FLAME_TEETH_V)          # (8, 15): row block x column
        uvs = np.stack([uu, vv], -1).reshape(-1, 2)
    else:
        u0, v0, u1, v1 = TEETH_UV_RECT
        col = np.arange(8 * N_COLUMNS) % N_COLUMNS
        band = np.arange(8 * N_COLUMNS) // N_COLUMNS
        uvs = np.stack([u0 + (u1 - u0) * (0.05 + 0.9 * col / (N_COLUMNS - 1)),
                        v0 + (v1 - v0) * (0.05 + 0.9 * band / 7.0)], axis=1)
    return TeethData(verts=verts, faces=original_teeth_faces(V), shapedirs=teeth_dirs,
                     posedirs=np.zeros((8 * N_COLUMNS,) + posedirs.shape[1:]), weights=weights, uvs=uvs,
                     upper=V + upper_ids, lower=V + lower_ids, rings=rings)


TEETH_STYLES = ("original", "ring_fit")


def build_teeth(v: np.ndarray, faces: np.ndarray, shapedirs: np.ndarray, posedirs: np.ndarray,
                num_joints: int, masks: Dict[str, np.ndarray], n_shape: int, style: str = "original",
                rings: Optional[LipRings] = None) -> TeethData:
    """The teeth arrays of ``style`` (``TEETH_STYLES``) for a template ``v`` (V,3) with ``faces``
    and the model's blend shapes (``n_shape`` identity components, then expression)."""
    if style not in TEETH_STYLES:
        raise ValueError(f"unknown teeth style {style!r}: expected one of {', '.join(TEETH_STYLES)}")
    if num_joints <= JAW_JOINT:
        raise ValueError(f"teeth need the neck ({NECK_JOINT}) and jaw ({JAW_JOINT}) joints; model has {num_joints}")
    rings = rings or find_lip_rings(v, faces, masks)
    if style == "original":
        return build_teeth_original(v, shapedirs, posedirs, num_joints, rings, n_shape)
    return build_teeth_ring_fit(v, faces, shapedirs, posedirs, num_joints, rings)
