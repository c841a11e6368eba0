"""A FLAME stand-in on FLAME's real topology: the release's template mesh rigged with synthetic bases.

The FLAME model (its blend shapes, pose correctives, joint regressor and skinning weights) cannot
be shipped, but FLAME's template mesh and a painted texture in its UV space are public (the
GaussianAvatars repository ships ``head_template_mesh.obj`` and ``tex_mean_painted.png``). This
module rigs that mesh with smooth synthetic bases in the official files' layout, so that subjects
generated on it (``python -m scene.synthetic --flame_dir DIR``) have users' topology: 5023
vertices, 9976 triangles, the published lip rings (and so the release's teeth), FLAME's eyeballs
(vertices 3931-4476 left, 4477-5022 right), FLAME's UVs and texture. Both this toolkit and the
original code load the files it writes.

    python -m flame_model.template_rig --obj head_template_mesh.obj --texture tex_mean_painted.png --out DIR

writes ``DIR/flame2023.pkl``, ``DIR/FLAME_masks.pkl`` (the 14 FLAME regions, from geometry),
``DIR/head_template_mesh.obj`` and ``DIR/texture.png`` (copies). These are derived from
FLAME-licensed files: keep them out of version control.

The rig (all smooth, deterministic in ``--seed``):

* joints: the global and neck joints on the neck's axis, the jaw hinge on the midline at ear
  level behind the mouth, the eye joints at the eyeball centres; the regressor averages vertex
  rings (neck), a mirror pair (jaw) and the eyeballs;
* skinning: eyeballs to their eye joint; the jaw region (below the mouth line between the inner lip
  rings, in front of the hinge, down to under the chin) to the jaw; the rest blends from the global
  joint at the neck's base to the neck joint;
* identity: 300 smooth random displacement fields with decaying magnitude (eyeballs move rigidly);
* expression: 100 components: mouth opening, smile, brow raise, frown, pucker, cheek puff, mouth
  stretch, squint, then random smooth local deformations of the face (eyeballs fixed);
* pose correctives: small smooth fields on the neck and under the chin.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
import scipy.sparse

from .mesh_utils import boundary_loops
from .obj_io import read_obj
from .procedural import gauss, smooth_basis, smooth_displacement_fields, smoothstep, write_model_pickles
from .teeth import FLAME_LIP_RINGS, FLAME_NUM_VERTS

LEFT_EYEBALL = np.arange(3931, 4477)
RIGHT_EYEBALL = np.arange(4477, 5023)
ROOT, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(5)


@dataclass
class Landmarks:
    """Positions the rig is built around, measured on the template."""
    mouth_y: float          # mean height of the inner lip rings
    mouth_z: float          # mean depth of the outer lip rings
    mouth_half_w: float     # half the mouth width (inner rings)
    eye_centres: np.ndarray  # (2, 3) left, right
    chin_y: float           # lowest point of the face's front
    neck_base_y: float      # height of the neck's boundary loop
    hinge: np.ndarray       # jaw joint (3,)
    centre: np.ndarray      # head centre (3,)


def _inner_rings(v: np.ndarray):
    up = np.asarray(FLAME_LIP_RINGS["lip_inner_ring_upper"])
    lo = np.asarray(FLAME_LIP_RINGS["lip_inner_ring_lower"])
    return up, lo


def measure(v: np.ndarray, faces: np.ndarray) -> Landmarks:
    up, lo = _inner_rings(v)
    outer = np.concatenate([FLAME_LIP_RINGS["lip_outer_ring_upper"], FLAME_LIP_RINGS["lip_outer_ring_lower"]])
    inner = np.concatenate([up, lo])
    eyes = np.stack([v[LEFT_EYEBALL].mean(0), v[RIGHT_EYEBALL].mean(0)])
    head = v[:LEFT_EYEBALL[0]]
    front = head[head[:, 2] > eyes[:, 2].mean()]
    loops = boundary_loops(faces)
    neck_loop = min(loops, key=lambda lp: v[lp, 1].mean())
    mouth_y = float(v[inner, 1].mean())
    eye_y = float(eyes[:, 1].mean())
    hinge = np.array([0.0, 0.5 * (mouth_y + eye_y), float(eyes[:, 2].mean()) - 0.065])
    lo_, hi_ = head.min(0), head.max(0)
    return Landmarks(mouth_y=mouth_y, mouth_z=float(v[outer, 2].mean()),
                     mouth_half_w=float(np.abs(v[inner, 0]).max()), eye_centres=eyes,
                     chin_y=float(front[:, 1].min()), neck_base_y=float(v[neck_loop, 1].mean()),
                     hinge=hinge, centre=0.5 * (lo_ + hi_))


def mouth_line(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Height of the line between the inner lip rings at abscissae ``x`` (clamped to the corners)."""
    up, lo = _inner_rings(v)
    ys = []
    for ring in (up, lo):
        order = np.argsort(v[ring, 0])
        ys.append(np.interp(x, v[ring, 0][order], v[ring, 1][order]))
    return 0.5 * (ys[0] + ys[1])


def jaw_weights(v: np.ndarray, lm: Landmarks) -> np.ndarray:
    """Share of each vertex that follows the jaw: 1 below the mouth line in front of the hinge."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    below = mouth_line(v, x) - y                              # > 0 below the line between the lips
    outside = np.maximum(np.abs(x) - lm.mouth_half_w, 0.0)   # the split softens away from the mouth
    width = 0.002 + 0.5 * outside
    w = smoothstep(-width, width, below)
    w *= smoothstep(lm.hinge[2] - 0.005, lm.hinge[2] + 0.04, z)
    w *= smoothstep(lm.chin_y - 0.03, lm.chin_y - 0.005, y)  # under the chin it fades into the neck
    w[LEFT_EYEBALL] = 0.0
    w[RIGHT_EYEBALL] = 0.0
    return w


def skinning(v: np.ndarray, lm: Landmarks) -> np.ndarray:
    V = v.shape[0]
    W = np.zeros((V, 5))
    jaw = jaw_weights(v, lm)
    t = smoothstep(lm.neck_base_y + 0.01, lm.chin_y - 0.01, v[:, 1])   # neck base -> head
    W[:, ROOT] = (1.0 - t) * (1.0 - jaw)
    W[:, NECK] = t * (1.0 - jaw)
    W[:, JAW] = jaw
    for ids, j in ((LEFT_EYEBALL, LEFT_EYE), (RIGHT_EYEBALL, RIGHT_EYE)):
        W[ids] = 0.0
        W[ids, j] = 1.0
    return W


def joint_regressor(v: np.ndarray, lm: Landmarks) -> np.ndarray:
    """(5, V): neck rings for the global and neck joints, a mirror pair for the jaw, the eyeballs."""
    V = v.shape[0]
    Jr = np.zeros((5, V))
    head = np.arange(LEFT_EYEBALL[0])
    for j, y in ((ROOT, lm.neck_base_y + 0.02), (NECK, 0.5 * (lm.neck_base_y + lm.chin_y))):
        ring = head[(np.abs(v[head, 1] - y) < 0.004) & (v[head, 2] < lm.eye_centres[0, 2])]
        # keep the ring mirror symmetric so that the joint lies on the midline
        ring = ring[np.isin(np.round(v[ring, 0], 5), np.round(-v[ring, 0], 5))]
        Jr[j, ring] = 1.0 / len(ring)
    side = lm.hinge + np.array([0.08, 0.0, 0.0])
    a = head[np.argmin(np.linalg.norm(v[head] - side, axis=1))]
    b = head[np.argmin(np.linalg.norm(v[head] - side * np.array([-1, 1, 1]), axis=1))]
    Jr[JAW, [a, b]] = 0.5
    Jr[LEFT_EYE, LEFT_EYEBALL] = 1.0 / len(LEFT_EYEBALL)
    Jr[RIGHT_EYE, RIGHT_EYEBALL] = 1.0 / len(RIGHT_EYEBALL)
    return Jr


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def expression_basis(v: np.ndarray, lm: Landmarks, jaw_hinge: np.ndarray, rng: np.random.Generator,
                     n: int = 100) -> np.ndarray:
    V = v.shape[0]
    E = np.zeros((V, 3, n))
    my, mz, hw = lm.mouth_y, lm.mouth_z, lm.mouth_half_w
    eye_y = float(lm.eye_centres[:, 1].mean())
    front_z = float(v[:, 2].max())
    jaw = jaw_weights(v, lm)
    E[:, :, 0] = jaw[:, None] * ((v - jaw_hinge) @ (_rot_x(0.08) - np.eye(3)).T)      # mouth open
    for s in (1, -1):
        g = gauss(v, (s * hw, my, mz - 0.01), (0.011, 0.010, 0.03))                  # smile
        E[:, :, 1] += g[:, None] * np.array([s * 0.004, 0.005, -0.002])
        g = gauss(v, (s * 0.035, my + 0.03, mz), (0.014, 0.012, 0.03))
        E[:, :, 1] += g[:, None] * np.array([0.0, 0.002, 0.0015])
    E[:, 1, 2] = 0.005 * gauss(v, (0, eye_y + 0.03, front_z), (0.045, 0.012, 0.05))     # brow raise
    for s in (1, -1):                                                                  # frown
        g = gauss(v, (s * 0.016, eye_y + 0.022, front_z), (0.012, 0.010, 0.05))
        E[:, :, 3] += g[:, None] * np.array([-s * 0.002, -0.003, 0.001])
    g = gauss(v, (0, my, mz), (0.022, 0.012, 0.03))                                    # pucker
    E[:, 0, 4] = -0.3 * v[:, 0] * g
    E[:, 2, 4] = 0.005 * g
    for s in (1, -1):                                                                  # cheek puff
        g = gauss(v, (s * 0.045, my + 0.01, mz - 0.02), (0.014, 0.016, 0.03))
        E[:, 0, 5] += s * 0.004 * g
        E[:, 2, 5] += 0.001 * g
        g = gauss(v, (s * hw, my, mz - 0.01), (0.011, 0.010, 0.03))                  # mouth stretch
        E[:, :, 6] += g[:, None] * np.array([s * 0.004, -0.003, 0.0])
    for c in lm.eye_centres:                                                           # squint
        E[:, 1, 7] += 0.0025 * gauss(v, (c[0], c[1] - 0.012, c[2] + 0.02), (0.012, 0.005, 0.03))
    faceness = (smoothstep(lm.eye_centres[0, 2] - 0.03, lm.eye_centres[0, 2], v[:, 2])
                * smoothstep(lm.chin_y - 0.01, lm.chin_y + 0.01, v[:, 1])
                * smoothstep(eye_y + 0.06, eye_y + 0.035, v[:, 1]))
    for k in range(8, n):                                                              # local detail
        c = np.array([rng.uniform(-0.05, 0.05), rng.uniform(lm.chin_y, eye_y + 0.03), front_z])
        s = rng.uniform(0.012, 0.03)
        g = gauss(v, c, (s, s, 0.05)) * faceness
        E[:, :, k] = g[:, None] * rng.standard_normal(3) * 0.0015 * (1.0 + 4.0 * np.exp(-(k - 8) / 20))
    E[LEFT_EYEBALL] = 0.0
    E[RIGHT_EYEBALL] = 0.0
    return E


def pose_correctives(v: np.ndarray, lm: Landmarks, rng: np.random.Generator) -> np.ndarray:
    phi = smooth_basis(v, rng, 20, lm.centre)
    P = np.zeros((v.shape[0], 3, 36))
    neck_w = np.exp(-0.5 * ((v[:, 1] - 0.5 * (lm.neck_base_y + lm.chin_y)) / 0.03) ** 2)
    jaw = jaw_weights(v, lm)
    jaw_w = jaw * (1.0 - jaw) * 4.0
    for k in range(9):
        for col, w in ((k, neck_w), (9 + k, jaw_w)):
            f = phi @ rng.standard_normal((phi.shape[1], 3))
            f /= np.abs(f).max() + 1e-12
            P[:, :, col] = 0.0015 * w[:, None] * f
    P[LEFT_EYEBALL] = 0.0
    P[RIGHT_EYEBALL] = 0.0
    return P


def regions(v: np.ndarray, faces: np.ndarray, lm: Landmarks) -> Dict[str, np.ndarray]:
    """The 14 regions of FLAME's masks file, from geometry (plausible, not FLAME's own)."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    head = np.zeros(len(v), dtype=bool)
    head[:LEFT_EYEBALL[0]] = True
    eye_y = float(lm.eye_centres[:, 1].mean())
    eye_z = float(lm.eye_centres[:, 2].mean())
    lip_ids = np.concatenate([np.asarray(r) for r in FLAME_LIP_RINGS.values()])
    d_lips = np.linalg.norm(v[:, None, :] - v[None, lip_ids, :], axis=-1).min(1)
    face = head & (z > eye_z - 0.03) & (y > lm.chin_y - 0.01) & (y < eye_y + 0.07) & (np.abs(x) < 0.075)
    ears = head & (np.abs(x) > 0.065) & (np.abs(y - eye_y) < 0.035) & (z < eye_z - 0.03)
    neck = head & (y < lm.chin_y) & ~face
    eye_region = face & (np.abs(y - eye_y) < 0.02) & (np.abs(x) > 0.008) & (np.abs(x) < 0.06)
    loops = boundary_loops(faces)
    boundary = min(loops, key=lambda lp: v[lp, 1].mean())
    out = {
        "face": face, "neck": neck, "scalp": head & ~face & ~neck & ~ears & (y > eye_y - 0.02),
        "forehead": face & (y > eye_y + 0.025), "eye_region": eye_region,
        "left_eye_region": eye_region & (x > 0), "right_eye_region": eye_region & (x < 0),
        "nose": face & (np.abs(x) < 0.02) & (y < eye_y + 0.005) & (y > lm.mouth_y + 0.012) & (z > eye_z + 0.02),
        "lips": head & (d_lips < 0.006) & (z > lm.mouth_z - 0.02),
        "left_ear": ears & (x > 0), "right_ear": ears & (x < 0),
    }
    masks = {k: np.nonzero(m)[0].astype(np.int64) for k, m in out.items()}
    masks["boundary"] = np.sort(np.asarray(boundary, dtype=np.int64))
    masks["left_eyeball"] = LEFT_EYEBALL.copy()
    masks["right_eyeball"] = RIGHT_EYEBALL.copy()
    return masks


def rig(v: np.ndarray, faces: np.ndarray, seed: int = 0) -> Dict[str, object]:
    """The FLAME pickle's arrays for template ``v`` (5023,3) with ``faces``."""
    if v.shape[0] != FLAME_NUM_VERTS:
        raise ValueError(f"the template has {v.shape[0]} vertices; FLAME's has {FLAME_NUM_VERTS}")
    rng = np.random.default_rng(seed)
    lm = measure(v, faces)
    Jr = joint_regressor(v, lm)
    joints = Jr @ v
    proxy = v.copy()
    proxy[LEFT_EYEBALL] = lm.eye_centres[0]
    proxy[RIGHT_EYEBALL] = lm.eye_centres[1]
    ident = smooth_displacement_fields(proxy, rng, 300, lm.centre)
    expr = expression_basis(v, lm, joints[JAW], rng)
    return {
        "v_template": v.astype(np.float64),
        "f": faces.astype(np.uint32),
        "shapedirs": np.concatenate([ident, expr], axis=2).astype(np.float32),
        "posedirs": pose_correctives(v, lm, rng).astype(np.float32),
        "J_regressor": scipy.sparse.csc_matrix(Jr),
        "weights": skinning(v, lm),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": joints,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }, regions(v, faces, lm)


def write_rig(obj_path: os.PathLike | str, texture_path: os.PathLike | str | None, out_dir: os.PathLike | str,
              seed: int = 0) -> Path:
    mesh = read_obj(obj_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, masks = rig(mesh.verts.astype(np.float64), mesh.faces.astype(np.int64), seed)
    write_model_pickles(out, model, masks)
    if Path(obj_path).resolve() != (out / "head_template_mesh.obj").resolve():
        shutil.copyfile(obj_path, out / "head_template_mesh.obj")
    if texture_path is not None:
        shutil.copyfile(texture_path, out / "texture.png")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Rig FLAME's template mesh with synthetic bases (a FLAME stand-in "
                                             "on the real topology).")
    ap.add_argument("--obj", required=True, help="FLAME's head_template_mesh.obj (5023 vertices, with UVs)")
    ap.add_argument("--texture", default=None, help="a texture in FLAME's UV space (e.g. tex_mean_painted.png)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for p in (a.obj, a.texture):
        if p is not None and not os.path.isfile(p):
            ap.error(f"not a file: {p}")
    out = write_rig(a.obj, a.texture, a.out, a.seed)
    print(f"wrote {out}/flame2023.pkl, FLAME_masks.pkl, head_template_mesh.obj"
          + (", texture.png" if a.texture else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
