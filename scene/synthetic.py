"""Synthetic multi-view FLAME subject in the exact NeRSemble layout (SPEC 2.1).

``python -m scene.synthetic --out DIR [--flame_dir D] [--width W --height H --num_cameras N
--num_timesteps T --seed S]`` poses the (procedural or real) FLAME head over a smooth motion
(expressions, jaw opening, eye rotations, head rotation: sinusoids of different frequencies,
deterministic from the seed), renders N cameras on a frontal arc ~1 m away with the mesh
renderer (textured, Lambert-shaded, RGBA with alpha = coverage) and writes
``transforms_{train,val,test}.json``, ``images/``, ``flame_param/*.npz`` and
``canonical_flame_param.npz``. Split: the front camera (index N//2, 8 for 16 cameras) on the
training timesteps is ``val``, the other cameras are ``train``, and the later timesteps on all
cameras are ``test``. Ground truth comes from the mesh renderer.

The FLAME parameters only make sense with the FLAME model used to generate them: train on the
subject with ``FLAME_MODEL_PATH=<flame_dir>/flame2023.pkl`` (written to ``synthetic_info.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from utils.graphics_utils import focal2fov, getProjectionMatrix, getWorld2View2, look_at_c2w_opengl
from utils.image_io import save_png

N_SHAPE = 300
N_EXPR = 100
DEFAULT_FLAME_DIR = os.path.join("flame_model", "assets", "flame")


@dataclass
class SyntheticConfig:
    out: str
    flame_dir: Optional[str] = None
    width: int = 160
    height: int = 110
    num_cameras: int = 16
    num_timesteps: int = 12
    test_fraction: float = 0.25
    seed: int = 0
    distance: float = 1.0
    arc_degrees: float = 60.0
    fill: float = 0.6
    device: str = "auto"
    batch_timesteps: int = 0   # 0: automatic
    supersample: int = 1       # render at S x the size and box-filter down (anti-aliased edges)
    principal_jitter: float = 0.02   # principal points drawn within +-this fraction of the size off centre
    focal_jitter: float = 0.01       # fl_y within +-this fraction of fl_x
    teeth: str = "original"          # teeth construction of the FLAME model the subject is posed with
    progress: bool = True


@dataclass
class SynthCamera:
    index: int
    c2w_gl: np.ndarray            # 4x4 OpenGL camera-to-world
    fl_x: float
    fl_y: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, s: int) -> "SynthCamera":
        """The same camera at s x the resolution (pixel i covers [i, i + 1): cx scales with the size)."""
        return SynthCamera(self.index, self.c2w_gl, self.fl_x * s, self.fl_y * s, self.cx * s,
                           self.cy * s, self.width * s, self.height * s)

    def matrices(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Transposed world_view_transform and full_proj_transform (as scene.cameras.Camera)."""
        c2w = self.c2w_gl.copy()
        c2w[:3, 1:3] *= -1
        w2c = np.linalg.inv(c2w)
        R, T = w2c[:3, :3].T, w2c[:3, 3]
        wv = torch.tensor(getWorld2View2(R, T)).t()
        P = getProjectionMatrix(0.01, 100.0, focal2fov(self.fl_x, self.width), focal2fov(self.fl_y, self.height),
                                cx=self.cx, cy=self.cy, width=self.width, height=self.height).t()
        return wv, wv @ P


# ----------------------------------------------------------------------------- FLAME assets

def resolve_flame_dir(cfg: SyntheticConfig) -> str:
    """The folder holding flame2023.pkl (+ FLAME_masks.pkl, head_template.obj, texture.png).

    ``--flame_dir`` if given (generated procedurally there if it has no model), else the default
    asset folder when it holds a model, else a procedural head generated into ``OUT/flame_model``.
    """
    if cfg.flame_dir:
        d = cfg.flame_dir
    elif os.path.isfile(os.path.join(DEFAULT_FLAME_DIR, "flame2023.pkl")):
        return DEFAULT_FLAME_DIR
    else:
        d = os.path.join(cfg.out, "flame_model")
    if not os.path.isfile(os.path.join(d, "flame2023.pkl")):
        os.makedirs(d, exist_ok=True)
        cmd = [sys.executable, "-m", "flame_model.procedural", "--out", d, "--seed", str(cfg.seed)]
        subprocess.run(cmd, check=True)
    return d


def load_flame(flame_dir: str, device: torch.device, teeth: str = "original"):
    from flame_model.flame import FlameHead

    masks = os.path.join(flame_dir, "FLAME_masks.pkl")
    flame = FlameHead(N_SHAPE, N_EXPR, flame_model_path=os.path.join(flame_dir, "flame2023.pkl"),
                      flame_masks_path=masks if os.path.isfile(masks) else None, add_teeth=True,
                      teeth_style=teeth)
    return flame.to(device)


def load_texture(flame_dir: str) -> Optional[torch.Tensor]:
    from PIL import Image

    p = os.path.join(flame_dir, "texture.png")
    if not os.path.isfile(p):
        return None
    with Image.open(p) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


# ----------------------------------------------------------------------------- motion

def make_motion(num_timesteps: int, seed: int) -> Dict[str, np.ndarray]:
    """Smooth FLAME motion: per-timestep arrays stacked over T (float32), shape (300,)."""
    rng = np.random.default_rng(seed)
    T = num_timesteps
    s = np.arange(T, dtype=np.float64) / max(T, 1) * 2 * math.pi   # one "period" over the whole run

    def wave(cycles: float, phase: float) -> np.ndarray:
        return np.sin(cycles * s + phase)

    shape = np.zeros(N_SHAPE)
    shape[:20] = rng.normal(0.0, 0.6, 20) / np.sqrt(1 + np.arange(20) / 4)
    expr = np.zeros((T, N_EXPR))
    for k in range(10):
        expr[:, k] = rng.uniform(0.6, 1.4) / (1 + k / 3) * wave(rng.uniform(0.7, 2.6), rng.uniform(0, 2 * math.pi))
    jaw = np.zeros((T, 3))
    jaw[:, 0] = 0.03 + 0.22 * (0.5 - 0.5 * np.cos(2.0 * s + rng.uniform(0, 0.5)))   # opening (rad)
    jaw[:, 1] = 0.03 * wave(1.3, rng.uniform(0, 6.28))
    rotation = np.stack([0.12 * wave(1.1, rng.uniform(0, 6.28)),
                         0.35 * wave(0.9, rng.uniform(0, 6.28)),
                         0.06 * wave(1.7, rng.uniform(0, 6.28))], 1)
    neck = np.stack([0.05 * wave(1.4, rng.uniform(0, 6.28)),
                     0.08 * wave(0.6, rng.uniform(0, 6.28)),
                     np.zeros(T)], 1)
    eye_pitch = 0.12 * wave(2.3, rng.uniform(0, 6.28))
    eye_yaw = 0.25 * wave(1.9, rng.uniform(0, 6.28))
    eyes = np.stack([eye_pitch, eye_yaw, np.zeros(T)] * 2, 1)
    translation = np.stack([0.008 * wave(0.8, rng.uniform(0, 6.28)),
                            0.006 * wave(1.2, rng.uniform(0, 6.28)),
                            0.01 * wave(0.5, rng.uniform(0, 6.28))], 1)
    f = np.float32
    return {"shape": shape.astype(f), "expr": expr.astype(f), "rotation": rotation.astype(f),
            "neck_pose": neck.astype(f), "jaw_pose": jaw.astype(f), "eyes_pose": eyes.astype(f),
            "translation": translation.astype(f)}


def pose_all(flame, motion: Dict[str, np.ndarray], device: torch.device) -> torch.Tensor:
    """Posed vertices (T,V,3) of the motion."""
    t = {k: torch.from_numpy(v).to(device) for k, v in motion.items()}
    with torch.no_grad():
        verts, _ = flame(t["shape"], t["expr"], t["rotation"], t["neck_pose"], t["jaw_pose"], t["eyes_pose"],
                         t["translation"])
    return verts


# ----------------------------------------------------------------------------- cameras

def make_cameras(cfg: SyntheticConfig, head_center: np.ndarray, head_height: float) -> List[SynthCamera]:
    """Cameras on a horizontal arc of +-arc_degrees around the head, small elevation changes;
    the front camera (index N//2) looks straight at the face."""
    rng = np.random.default_rng(cfg.seed + 1)
    N = cfg.num_cameras
    front = N // 2
    step = cfg.arc_degrees / max(front, 1)
    fl = cfg.fill * cfg.height * cfg.distance / max(head_height, 1e-6)
    cams = []
    for i in range(N):
        az = math.radians((i - front) * step)
        el = 0.0 if i == front else math.radians(8.0 if i % 2 else -4.0) + math.radians(rng.uniform(-2, 2))
        eye = head_center + cfg.distance * np.array([math.sin(az) * math.cos(el), math.sin(el),
                                                     math.cos(az) * math.cos(el)])
        c2w = look_at_c2w_opengl(eye, head_center)
        pj, fj = cfg.principal_jitter, cfg.focal_jitter
        # NeRF/COLMAP convention: pixel i covers [i, i + 1), a centred camera has cx = W / 2
        cx = cfg.width / 2 + rng.uniform(-pj, pj) * cfg.width
        cy = cfg.height / 2 + rng.uniform(-pj, pj) * cfg.height
        cams.append(SynthCamera(i, c2w, fl, fl * (1 + rng.uniform(-fj, fj)), cx, cy, cfg.width, cfg.height))
    return cams


# ----------------------------------------------------------------------------- writing

def _npz_params(motion: Dict[str, np.ndarray], t: int, static_offset: np.ndarray) -> Dict[str, np.ndarray]:
    d = {"shape": motion["shape"]}
    for k in ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation"):
        d[k] = motion[k][t:t + 1]
    d["static_offset"] = static_offset
    return d


def _save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    os.replace(tmp, path)


def _frame(cam: SynthCamera, t: int) -> Dict:
    return {
        "file_path": f"images/{t:05d}_{cam.index:02d}.png",
        "transform_matrix": cam.c2w_gl.tolist(),
        "camera_angle_x": focal2fov(cam.fl_x, cam.width),
        "fl_x": cam.fl_x, "fl_y": cam.fl_y, "cx": cam.cx, "cy": cam.cy, "w": cam.width, "h": cam.height,
        "timestep_index": t,
        "camera_index": cam.index,
        "flame_param_path": f"flame_param/{t:05d}.npz",
    }


def _write_json(path: str, data: Dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def split_timesteps(num_timesteps: int, test_fraction: float) -> Tuple[List[int], List[int]]:
    n_test = max(1, int(round(num_timesteps * test_fraction))) if num_timesteps > 1 else 0
    n_train = num_timesteps - n_test
    return list(range(n_train)), list(range(n_train, num_timesteps))


def generate(cfg: SyntheticConfig) -> Dict:
    """Generate the subject; returns a summary dict (also written to synthetic_info.json)."""
    from tqdm import tqdm
    from utils.mesh_renderer import render_mesh

    t0 = time.time()
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    os.makedirs(os.path.join(cfg.out, "images"), exist_ok=True)
    os.makedirs(os.path.join(cfg.out, "flame_param"), exist_ok=True)
    flame_dir = resolve_flame_dir(cfg)
    flame = load_flame(flame_dir, device, cfg.teeth)
    texture = load_texture(flame_dir)
    faces = flame.faces

    motion = make_motion(cfg.num_timesteps, cfg.seed)
    verts_all = pose_all(flame, motion, device)                  # (T,V,3)
    # head centre / size from the canonical (neutral) shaped mesh
    neutral = {k: (np.zeros_like(v[:1]) if k != "shape" else v) for k, v in motion.items()}
    v0 = pose_all(flame, neutral, device)[0].cpu().numpy()
    lo, hi = v0.min(0), v0.max(0)
    head_center = (lo + hi) / 2
    head_height = float(hi[1] - lo[1])
    cams = make_cameras(cfg, head_center, head_height)
    S = max(1, int(cfg.supersample))
    mats = [c.scaled(S).matrices() for c in cams]
    wv = torch.stack([m[0] for m in mats]).to(device)
    fp = torch.stack([m[1] for m in mats]).to(device)

    static_offset = np.zeros((1, flame.num_verts_flame, 3), dtype=np.float32)
    for t in range(cfg.num_timesteps):
        _save_npz(os.path.join(cfg.out, "flame_param", f"{t:05d}.npz"), _npz_params(motion, t, static_offset))
    canon = {"shape": motion["shape"]}
    for k in ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation"):
        canon[k] = np.zeros_like(motion[k][:1])
    canon["static_offset"] = static_offset
    _save_npz(os.path.join(cfg.out, "canonical_flame_param.npz"), canon)

    uv_kw = {}
    if texture is not None and flame.verts_uvs is not None:
        uv_kw = dict(verts_uvs=flame.verts_uvs, faces_uvs=flame.textures_idx, texture=texture.to(device))
    N = len(cams)
    n_workers = max(1, min(16, os.cpu_count() or 1))
    if device.type == "cuda":
        per_batch = cfg.batch_timesteps or max(1, int(8_000_000 // max(1, N * cfg.width * cfg.height * S * S)))
    else:
        per_batch = cfg.batch_timesteps or 1

    def render_batch(ts: List[int]) -> np.ndarray:
        verts = verts_all[ts].repeat_interleave(N, 0)            # (len(ts)*N, V, 3)
        with torch.no_grad():
            out = render_mesh(verts, faces, world_view_transform=wv.repeat(len(ts), 1, 1),
                              full_proj_transform=fp.repeat(len(ts), 1, 1), width=cfg.width * S,
                              height=cfg.height * S, channels_last=False, **uv_kw)
            rgba = out.rgba
            if S > 1:
                # box filter of premultiplied colour (background pixels are 0), then un-premultiply
                rgba = torch.nn.functional.avg_pool2d(rgba, S)
                a = rgba[:, 3:4]
                rgba = torch.cat([torch.where(a > 0, rgba[:, :3] / a.clamp(min=1e-6), rgba[:, :3]), a], 1)
            rgba = rgba.permute(0, 2, 3, 1)
        return (rgba.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    def write_batch(ts: List[int], rgba: np.ndarray) -> None:
        for j, t in enumerate(ts):
            for c in cams:
                save_png(os.path.join(cfg.out, "images", f"{t:05d}_{c.index:02d}.png"), rgba[j * N + c.index])

    batches = [list(range(a, min(cfg.num_timesteps, a + per_batch)))
               for a in range(0, cfg.num_timesteps, per_batch)]
    bar = tqdm(total=cfg.num_timesteps * N, desc="Rendering synthetic subject", disable=not cfg.progress)
    prev_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            if device.type == "cuda":
                # render on the GPU in this thread, encode PNGs on the pool
                futures = [pool.submit(write_batch, ts, render_batch(ts)) for ts in batches]
            else:
                # CPU: one intra-op thread per worker, timesteps rendered concurrently
                torch.set_num_threads(1)
                futures = [pool.submit(lambda ts=ts: write_batch(ts, render_batch(ts))) for ts in batches]
            for f, ts in zip(futures, batches):
                f.result()
                bar.update(len(ts) * N)
    finally:
        torch.set_num_threads(prev_threads)
        bar.close()

    train_t, test_t = split_timesteps(cfg.num_timesteps, cfg.test_fraction)
    front = N // 2
    splits = {
        "train": [_frame(c, t) for t in train_t for c in cams if c.index != front],
        "val": [_frame(c, t) for t in train_t for c in cams if c.index == front],
        "test": [_frame(c, t) for t in test_t for c in cams],
    }
    for name, frames in splits.items():
        _write_json(os.path.join(cfg.out, f"transforms_{name}.json"),
                    {"camera_angle_x": frames[0]["camera_angle_x"] if frames else None, "frames": frames})
    info = {"flame_dir": os.path.abspath(flame_dir),
            "flame_model_path": os.path.abspath(os.path.join(flame_dir, "flame2023.pkl")),
            "width": cfg.width, "height": cfg.height, "num_cameras": N, "num_timesteps": cfg.num_timesteps,
            "train_timesteps": train_t, "test_timesteps": test_t, "front_camera": front, "seed": cfg.seed,
            "supersample": S, "teeth": cfg.teeth, "principal_jitter": cfg.principal_jitter,
            "focal_jitter": cfg.focal_jitter, "device": str(device), "seconds": round(time.time() - t0, 2)}
    _write_json(os.path.join(cfg.out, "synthetic_info.json"), info)
    return info


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--flame_dir", default=None)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=110)
    p.add_argument("--num_cameras", type=int, default=16)
    p.add_argument("--num_timesteps", type=int, default=12)
    p.add_argument("--test_fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_timesteps", type=int, default=0)
    p.add_argument("--supersample", type=int, default=1,
                   help="render at S x the resolution and average down (anti-aliased silhouettes)")
    p.add_argument("--fill", type=float, default=0.6, help="head height as a fraction of the image height")
    p.add_argument("--principal_jitter", type=float, default=0.02,
                   help="principal points off centre by up to this fraction of the size (0: centred, cx = W/2)")
    p.add_argument("--focal_jitter", type=float, default=0.01,
                   help="fl_y differs from fl_x by up to this fraction (0: square pixels, as the original assumes)")
    p.add_argument("--teeth", default="original", help="teeth construction of the FLAME model (original, ring_fit)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.num_cameras < 2 or a.num_timesteps < 2 or a.width < 8 or a.height < 8:
        p.error("need at least 2 cameras, 2 timesteps and 8x8 pixels")
    cfg = SyntheticConfig(out=a.out, flame_dir=a.flame_dir, width=a.width, height=a.height,
                          num_cameras=a.num_cameras, num_timesteps=a.num_timesteps, test_fraction=a.test_fraction,
                          seed=a.seed, device=a.device, batch_timesteps=a.batch_timesteps, supersample=a.supersample,
                          fill=a.fill, principal_jitter=a.principal_jitter, focal_jitter=a.focal_jitter, teeth=a.teeth,
                          progress=not a.quiet)
    info = generate(cfg)
    print(f"wrote {a.out}: {info['num_cameras']} cameras x {info['num_timesteps']} timesteps at "
          f"{info['width']}x{info['height']} in {info['seconds']} s on {info['device']}")
    print(f"train with FLAME_MODEL_PATH={info['flame_model_path']}")


if __name__ == "__main__":
    main()
