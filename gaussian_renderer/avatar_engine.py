"""The rendering engine behind ``local_viewer.py``: load a trained avatar and render it for any
camera, FLAME parameters and display options, with or without a window.

It loads a model folder (latest ``point_cloud/iteration_N``) or a PLY with ``flame_param.npz``
beside it, including avatars trained by the original code (same PLY layout). A PLY without
``binding_0`` is a plain 3DGS scene: it renders, and the FLAME controls are disabled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from arguments import load_cfg_args
from gaussian_renderer import PipelineSettings
from gaussian_renderer.motion import (KEY_WIDTH, MOTION_KEYS, MotionError, load_motion, motion_frame,
                                      motion_length)
from utils.system_utils import searchForMaxIteration

FLAME_NPZ_NAME = "flame_param.npz"


class AvatarLoadError(ValueError):
    """An avatar path that cannot be loaded; the message names the file."""


@dataclass
class RenderOptions:
    """Display options of one frame."""

    show_splatting: bool = True
    show_mesh: bool = False
    mesh_color: Tuple[float, float, float] = (0.75, 0.75, 0.75)
    mesh_opacity: float = 0.5
    splats_per_face: bool = False
    scaling_modifier: float = 1.0
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class LoadedAvatar:
    ply_path: str
    model_dir: Optional[str]
    iteration: Optional[int]
    bound: bool
    notes: List[str] = field(default_factory=list)


def _ply_has_binding(ply_path: str) -> bool:
    """Read only the PLY header and tell whether it has ``binding_0``."""
    try:
        with open(ply_path, "rb") as fh:
            header = b""
            while b"end_header" not in header:
                line = fh.readline()
                if not line:
                    raise AvatarLoadError(f"{ply_path}: not a PLY file (no end_header)")
                header += line
                if len(header) > 1 << 16:
                    raise AvatarLoadError(f"{ply_path}: PLY header too long")
    except OSError as exc:
        raise AvatarLoadError(f"{ply_path}: cannot read ({exc})") from None
    if not header.startswith(b"ply"):
        raise AvatarLoadError(f"{ply_path}: not a PLY file")
    return b"property float binding_0" in header or b" binding_0" in header


def resolve_point_path(point_path: str, iteration: int = -1) -> Tuple[str, Optional[str], Optional[int]]:
    """``(ply_path, model_dir, iteration)`` for a model folder or a PLY file."""
    if os.path.isdir(point_path):
        pc_dir = os.path.join(point_path, "point_cloud")
        if not os.path.isdir(pc_dir):
            raise AvatarLoadError(f"{point_path}: no point_cloud/ folder: not a trained model folder")
        try:
            it = searchForMaxIteration(pc_dir) if iteration < 0 else iteration
        except FileNotFoundError as exc:
            raise AvatarLoadError(str(exc)) from None
        ply = os.path.join(pc_dir, f"iteration_{it}", "point_cloud.ply")
        if not os.path.isfile(ply):
            raise AvatarLoadError(f"{ply} not found")
        return ply, point_path, it
    if os.path.isfile(point_path):
        if not point_path.lower().endswith(".ply"):
            raise AvatarLoadError(f"{point_path}: expected a model folder or a .ply file")
        model_dir = None
        parent = os.path.dirname(os.path.abspath(point_path))
        grand = os.path.dirname(os.path.dirname(parent))
        if os.path.basename(os.path.dirname(parent)) == "point_cloud":
            model_dir = grand
        return point_path, model_dir, None
    raise AvatarLoadError(f"{point_path}: no such file or folder")


class AvatarEngine:
    """Holds one avatar and renders frames of it."""

    def __init__(self, point_path: str, motion_path: Optional[str] = None, device: Optional[str] = None,
                 backend: str = "auto", flame_model_path: Optional[str] = None,
                 flame_masks_path: Optional[str] = None, iteration: int = -1, sh_degree: Optional[int] = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pipe = PipelineSettings(backend=backend)
        ply_path, model_dir, it = resolve_point_path(point_path, iteration)
        cfg = load_cfg_args(model_dir) if model_dir else {}
        flame_model_path = flame_model_path or cfg.get("flame_model_path") or None
        flame_masks_path = flame_masks_path or cfg.get("flame_masks_path") or None
        self.teeth_style = str(cfg.get("teeth") or "original")
        self.info = LoadedAvatar(ply_path=ply_path, model_dir=model_dir, iteration=it,
                                 bound=_ply_has_binding(ply_path))
        sh_degree = int(sh_degree if sh_degree is not None else cfg.get("sh_degree", 3))
        self.motion: Optional[Dict[str, np.ndarray]] = None
        if self.info.bound:
            self._load_bound(ply_path, sh_degree, flame_model_path, flame_masks_path)
        else:
            from scene.gaussian_model import GaussianModel

            self.gaussians = GaussianModel(sh_degree, device=self.device)
            self.gaussians.load_ply(ply_path)
            self.n_expr = 0
            self.info.notes.append(f"{os.path.basename(ply_path)} has no 'binding_0': plain 3D Gaussians, "
                                   "FLAME controls disabled")
        self.gaussians.active_sh_degree = self.gaussians.max_sh_degree
        if motion_path:
            self.load_motion_file(motion_path)
        self._face_count_colors: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------------------- loading
    def _load_bound(self, ply_path: str, sh_degree: int, flame_model_path, flame_masks_path) -> None:
        from scene.flame_gaussian_model import FlameGaussianModel

        npz = os.path.join(os.path.dirname(os.path.abspath(ply_path)), FLAME_NPZ_NAME)
        n_expr, n_shape = 100, 300
        if os.path.isfile(npz):
            with np.load(npz) as data:
                if "expr" in data.files:
                    n_expr = int(np.asarray(data["expr"]).reshape(-1, np.asarray(data["expr"]).shape[-1]).shape[-1])
                if "shape" in data.files:
                    n_shape = int(np.asarray(data["shape"]).reshape(-1).shape[0])
        self.gaussians = FlameGaussianModel(sh_degree, n_shape=n_shape, n_expr=n_expr,
                                            flame_model_path=flame_model_path,
                                            flame_masks_path=flame_masks_path, teeth_style=self.teeth_style,
                                            device=self.device)
        if not os.path.isfile(npz):
            self.info.notes.append(f"{npz} is missing: showing the avatar on the neutral FLAME head")
            self._load_splats_without_npz(ply_path, n_shape, n_expr)
        else:
            self.gaussians.load_ply(ply_path)
        self.n_expr = n_expr
        self.gaussians.enable_inference_graphs()  # CUDA only: posing a frame is one graph replay

    def _load_splats_without_npz(self, ply_path: str, n_shape: int, n_expr: int) -> None:
        """A bound PLY without its FLAME parameters: pose it with a neutral one-frame motion."""
        neutral = {"shape": np.zeros(n_shape, np.float32), "expr": np.zeros((1, n_expr), np.float32),
                   **{k: np.zeros((1, w), np.float32) for k, w in KEY_WIDTH.items()}}
        self.gaussians.load_meshes({0: neutral}, {})
        self.gaussians.load_ply(ply_path)

    def load_motion_file(self, motion_path: str) -> List[str]:
        """Load a motion npz (the controls then follow it); returns notes for the user."""
        if not self.info.bound:
            raise MotionError(f"{motion_path}: this avatar is not bound to FLAME; motions do not apply")
        motion, report = load_motion(motion_path, self.n_expr)
        self.motion = motion
        self.info.notes.extend(report.notes)
        return report.notes

    # ------------------------------------------------------------------------------- state
    @property
    def bound(self) -> bool:
        return self.info.bound

    @property
    def num_splats(self) -> int:
        return int(self.gaussians.get_opacity.shape[0])

    @property
    def num_timesteps(self) -> int:
        """Frames of the loaded motion, else of the avatar's own FLAME parameters."""
        if not self.bound:
            return 0
        if self.motion is not None:
            return motion_length(self.motion)
        return int(self.gaussians.num_timesteps)

    def params_at(self, timestep: int) -> Dict[str, np.ndarray]:
        """FLAME parameters (no batch axis) of one frame of the current motion."""
        if not self.bound:
            return {}
        t = int(np.clip(timestep, 0, max(0, self.num_timesteps - 1)))
        if self.motion is not None:
            return motion_frame(self.motion, t)
        fp = self.gaussians.flame_param
        return {k: fp[k][t].detach().cpu().numpy().astype(np.float32) for k in MOTION_KEYS}

    def neutral_params(self) -> Dict[str, np.ndarray]:
        return {"expr": np.zeros(self.n_expr, np.float32), **{k: np.zeros(w, np.float32) for k, w in KEY_WIDTH.items()}}

    def head_center(self) -> np.ndarray:
        """World position of the head (mean of the splats), to aim the default camera."""
        with torch.no_grad():
            if self.bound:
                self.pose(self.params_at(0))
            return self.gaussians.get_xyz.mean(0).cpu().numpy().astype(np.float64)

    # ------------------------------------------------------------------------------- posing
    def pose(self, params: Dict[str, np.ndarray]) -> None:
        """Pose the FLAME mesh with one frame of parameters and update the splat frames."""
        keys = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
        arrays = [np.asarray(params[k], np.float32).reshape(-1) for k in keys]
        packed = torch.from_numpy(np.concatenate(arrays)).to(self.device)  # one host-to-device copy
        frame = dict(zip(keys, (v.reshape(1, -1) for v in packed.split([a.size for a in arrays]))))
        self.gaussians.pose_frame(frame)

    # ------------------------------------------------------------------------------- rendering
    def _splat_count_face_colors(self) -> torch.Tensor:
        """Per-face colours by number of bound splats (blue few, red many)."""
        if self._face_count_colors is None or self._face_count_colors.shape[0] != self.gaussians.num_faces:
            counts = self.gaussians.binding_counter.float()
            level = (counts.clamp(min=1).log2() / max(1.0, float(counts.max().clamp(min=2).log2()))).clamp(0, 1)
            self._face_count_colors = torch.stack([level, 0.3 * (1 - (2 * level - 1).abs()), 1 - level], -1)
        return self._face_count_colors

    def render(self, camera, params: Optional[Dict[str, np.ndarray]] = None,
               options: Optional[RenderOptions] = None) -> np.ndarray:
        """One frame ``(H, W, 3)`` float32 in [0, 1] for ``camera`` (a ``MiniCam``-like object)."""
        return self.render_image(camera, params, options).permute(1, 2, 0).contiguous().cpu().numpy()

    def render_image(self, camera, params: Optional[Dict[str, np.ndarray]] = None,
                     options: Optional[RenderOptions] = None) -> torch.Tensor:
        """The frame of :meth:`render` as a ``(3, H, W)`` tensor on the engine's device."""
        from gaussian_renderer import render as render_gaussians

        opts = options or RenderOptions()
        if self.bound:
            self.pose(params if params is not None else self.params_at(0))
        bg = torch.tensor(opts.background, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if opts.show_splatting:
                image = render_gaussians(camera, self.gaussians, self.pipe, bg,
                                         scaling_modifier=opts.scaling_modifier)["render"]
            else:
                image = bg.view(3, 1, 1).expand(3, camera.image_height, camera.image_width).clone()
            if self.bound and (opts.show_mesh or opts.splats_per_face):
                image = self._overlay_mesh(image, camera, opts)
            return image.clamp(0, 1)

    def _overlay_mesh(self, image: torch.Tensor, camera, opts: RenderOptions) -> torch.Tensor:
        from utils.mesh_renderer import render_mesh, render_mesh_overlay

        g = self.gaussians
        if opts.splats_per_face:
            face_colors, opacity = self._splat_count_face_colors(), 1.0 if not opts.show_splatting else max(opts.mesh_opacity, 0.5)
        else:
            face_colors = torch.tensor(opts.mesh_color, device=self.device).expand(g.num_faces, 3)
            opacity = opts.mesh_opacity
        mesh = render_mesh(g.verts[0], g.faces, camera, face_colors=face_colors)
        return render_mesh_overlay(image, mesh.rgba.to(image.device), opacity)
