"""Contact sheet of the procedural FLAME head under expressions and jaw / eye / neck poses.

``python scripts/flame_contact_sheet.py [--out docs/flame_contact_sheet.png] [--assets DIR]``

Self-contained numpy + PIL z-buffer rasteriser (perspective camera on +z looking at the face,
textured with the procedural texture, Lambert shading). Without ``--assets`` the procedural head
is generated into a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flame_model.flame import FlameHead  # noqa: E402
from flame_model.procedural import write_assets  # noqa: E402


def look_at(eye: np.ndarray, target: np.ndarray, up=np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """World -> camera rotation (rows: x right, y down, z forward, OpenCV) and the eye position."""
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    return np.stack([r, d, f])


def rasterize(verts: np.ndarray, faces: np.ndarray, uv: np.ndarray, tidx: np.ndarray, tex: np.ndarray,
              eye: np.ndarray, target: np.ndarray, size: int = 256, focal: float = 3.2,
              bg=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Vectorised z-buffer: returns an (size, size, 3) float image."""
    Rw = look_at(eye, target)
    pc = (verts - eye) @ Rw.T                                   # camera coordinates
    fpx = focal * size / 2
    px = pc[:, 0] / pc[:, 2] * fpx + (size - 1) / 2
    py = pc[:, 1] / pc[:, 2] * fpx + (size - 1) / 2
    tri_x, tri_y, tri_z = px[faces], py[faces], pc[faces, 2]
    # face normals (world) for shading, back-face cull
    tw = verts[faces]
    nrm = np.cross(tw[:, 1] - tw[:, 0], tw[:, 2] - tw[:, 0])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-20
    view = eye - tw.mean(1)
    front = (nrm * view).sum(1) > 0
    x0 = np.floor(tri_x.min(1)).astype(int)
    y0 = np.floor(tri_y.min(1)).astype(int)
    w = np.ceil(tri_x.max(1)).astype(int) - x0 + 1
    h = np.ceil(tri_y.max(1)).astype(int) - y0 + 1
    keep = front & (w < 40) & (h < 40) & (tri_z.min(1) > 1e-3)
    fids = np.nonzero(keep)[0]
    K = int(max(w[fids].max(), h[fids].max())) if len(fids) else 1
    oy, ox = np.mgrid[0:K, 0:K]
    cand_x = (x0[fids, None] + ox.reshape(1, -1)).astype(float)
    cand_y = (y0[fids, None] + oy.reshape(1, -1)).astype(float)
    ax, ay = tri_x[fids, 0:1], tri_y[fids, 0:1]
    bx, by = tri_x[fids, 1:2], tri_y[fids, 1:2]
    cx, cy = tri_x[fids, 2:3], tri_y[fids, 2:3]
    den = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l0 = ((by - cy) * (cand_x - cx) + (cx - bx) * (cand_y - cy)) / den
    l1 = ((cy - ay) * (cand_x - cx) + (ax - cx) * (cand_y - cy)) / den
    l2 = 1 - l0 - l1
    inside = (l0 >= -1e-6) & (l1 >= -1e-6) & (l2 >= -1e-6) & (cand_x >= 0) & (cand_x < size) \
        & (cand_y >= 0) & (cand_y < size)
    fi, ci = np.nonzero(inside)
    L = np.stack([l0[fi, ci], l1[fi, ci], l2[fi, ci]], 1)
    face = fids[fi]
    z = (L * tri_z[face]).sum(1)
    pix = cand_y[fi, ci].astype(int) * size + cand_x[fi, ci].astype(int)
    order = np.lexsort((z, pix))
    pix_s = pix[order]
    first = np.ones(len(pix_s), bool)
    first[1:] = pix_s[1:] != pix_s[:-1]
    sel = order[first]
    img = np.ones((size * size, 3)) * np.asarray(bg)
    uvp = (L[sel, :, None] * uv[tidx[face[sel]]]).sum(1)
    th, tw_ = tex.shape[:2]
    tx = np.clip((uvp[:, 0] * tw_).astype(int), 0, tw_ - 1)
    ty = np.clip(((1 - uvp[:, 1]) * th).astype(int), 0, th - 1)
    col = tex[ty, tx, :3] / 255.0
    # head light: from the camera, slightly above and to the right
    light = (eye - target) / np.linalg.norm(eye - target) + 0.3 * Rw[0] - 0.4 * Rw[1]
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(nrm[face[sel]] @ light, 0, 1)
    img[pix[sel]] = col * shade[:, None]
    return img.reshape(size, size, 3)


POSES = [
    ("neutral", {}),
    ("jaw 0.25", {"jaw": [0.25, 0, 0]}),
    ("jaw 0.5", {"jaw": [0.5, 0, 0]}),
    ("smile (e1=3)", {"expr": {1: 3.0}}),
    ("brows up (e2=3)", {"expr": {2: 3.0}}),
    ("mouth open expr (e0=3)", {"expr": {0: 3.0}}),
    ("eyes left 0.4", {"eyes": [0, 0.4, 0, 0, 0.4, 0]}),
    ("eyes up", {"eyes": [-0.35, 0, 0, -0.35, 0, 0]}),
    ("neck turn 0.5", {"neck": [0, 0.5, 0]}),
    ("pucker (e4=3)", {"expr": {4: 3.0}}),
    ("shape +3 / -3", {"shape": {0: 3.0, 1: -3.0}}),
    ("jaw 0.3 side view", {"jaw": [0.3, 0, 0], "view": "side"}),
    ("jaw 0.4, from below (teeth)", {"jaw": [0.4, 0, 0], "view": "below"}),
    ("smile+brows+jaw 0.15", {"expr": {1: 2.5, 2: 2.0}, "jaw": [0.15, 0, 0]}),
    ("global rot (0.2, -0.6, 0)", {"rotation": [0.2, -0.6, 0.0]}),
    ("back view", {"view": "back"}),
]
VIEWS = {"front": [0.0, 0.0, 0.75], "side": [0.55, 0.0, 0.5], "below": [0.0, -0.35, 0.55],
         "back": [0.0, 0.05, -0.75]}


def pose_tensors(spec: dict, flame: FlameHead):
    def vec(key, n):
        return torch.tensor([spec.get(key, [0.0] * n)], dtype=torch.float32)
    expr = torch.zeros(1, flame.n_expr)
    for k, v in spec.get("expr", {}).items():
        expr[0, k] = v
    shape = torch.zeros(flame.n_shape)
    for k, v in spec.get("shape", {}).items():
        shape[k] = v
    return shape, expr, vec("rotation", 3), vec("neck", 3), vec("jaw", 3), vec("eyes", 6), vec("translation", 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs" / "flame_contact_sheet.png"))
    ap.add_argument("--assets", default=None, help="folder with the procedural assets (generated if absent)")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    tmp = None
    assets = Path(args.assets) if args.assets else None
    if assets is None or not (assets / "flame2023.pkl").is_file():
        tmp = tempfile.TemporaryDirectory()
        assets = Path(write_assets(assets or tmp.name, seed=0))
    flame = FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl",
                      flame_masks_path=assets / "FLAME_masks.pkl")
    tex = np.asarray(Image.open(assets / "texture.png").convert("RGB"))
    faces = flame.faces.numpy()
    uv, tidx = flame.verts_uvs.numpy(), flame.textures_idx.numpy()
    tiles = []
    for label, spec in POSES:
        with torch.no_grad():
            verts, _ = flame(*pose_tensors(spec, flame))
        v = verts[0].numpy()
        target = np.array([0.0, -0.01, 0.0])
        eye = np.array(VIEWS[spec.get("view", "front")])
        img = rasterize(v, faces, uv, tidx, tex, eye, target, size=args.size)
        tile = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
        ImageDraw.Draw(tile).text((4, 4), label, fill=(0, 0, 0))
        tiles.append(tile)
    cols = 4
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * args.size, rows * args.size), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * args.size, (i // cols) * args.size))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
