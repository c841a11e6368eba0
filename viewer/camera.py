"""Orbit camera for the interactive viewers (remote and local).

Conventions (DESIGN.md): OpenCV camera axes (x right, y down, z forward); the 4x4 matrices are
stored transposed (points are row vectors: ``p_view = [p, 1] @ world_view_transform``). The
world "up" is +y (FLAME's head frame: +y up, the face looks along +z). NumPy only; torch is
imported lazily by :meth:`OrbitCamera.minicam`.

Mouse mapping used by the viewers: left drag -> :meth:`orbit`, right/middle drag -> :meth:`pan`,
wheel -> :meth:`zoom`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

MAX_PITCH_DEG = 89.0


def projection_matrix(znear: float, zfar: float, fovx: float, fovy: float,
                      width: Optional[int] = None, height: Optional[int] = None,
                      cx: Optional[float] = None, cy: Optional[float] = None) -> np.ndarray:
    """Perspective matrix (not transposed) mapping view space to clip space (z in [0, 1]).

    The principal point ``(cx, cy)`` (NeRF/COLMAP convention: pixel i covers [i, i + 1), centred
    at ``W / 2``) shifts the frustum: ``P[0,2] = 2 cx / W - 1`` and ``P[1,2] = 2 cy / H - 1``.
    """
    p = np.zeros((4, 4), dtype=np.float64)
    p[0, 0] = 1.0 / math.tan(fovx / 2.0)
    p[1, 1] = 1.0 / math.tan(fovy / 2.0)
    if cx is not None and width:
        p[0, 2] = 2.0 * cx / width - 1.0
    if cy is not None and height:
        p[1, 2] = 2.0 * cy / height - 1.0
    p[2, 2] = zfar / (zfar - znear)
    p[2, 3] = -zfar * znear / (zfar - znear)
    p[3, 2] = 1.0
    return p


def look_at_w2c(eye: Sequence[float], target: Sequence[float],
                up: Sequence[float] = (0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera 4x4 (not transposed) of a camera at ``eye`` looking at ``target``.

    Camera axes: x right, y down, z forward (towards ``target``).
    """
    eye = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye
    n = np.linalg.norm(fwd)
    if n < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    fwd /= n
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:  # looking straight along up: pick any perpendicular
        right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd], axis=0)  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye
    return w2c


@dataclass
class OrbitCamera:
    """A camera orbiting ``target`` at distance ``radius``.

    ``yaw`` (around world +y) and ``pitch`` (elevation) are in degrees; yaw = pitch = 0 puts the
    camera on the +z axis of the target, looking at the face. ``fovy`` is the vertical field
    of view in degrees; the horizontal one follows from the aspect ratio.
    """

    width: int = 512
    height: int = 512
    fovy: float = 20.0
    radius: float = 1.0
    yaw: float = 0.0
    pitch: float = 0.0
    target: np.ndarray = field(default_factory=lambda: np.zeros(3))
    znear: float = 0.01
    zfar: float = 100.0
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    min_radius: float = 1e-3
    max_radius: float = 1e4

    def __post_init__(self) -> None:
        self.target = np.asarray(self.target, dtype=np.float64).reshape(3).copy()
        self.up = np.asarray(self.up, dtype=np.float64).reshape(3)
        self.pitch = float(np.clip(self.pitch, -MAX_PITCH_DEG, MAX_PITCH_DEG))

    # ---- intrinsics -------------------------------------------------------------------------
    @property
    def fovy_rad(self) -> float:
        return math.radians(self.fovy)

    @property
    def fovx_rad(self) -> float:
        """Horizontal fov: ``tan(fovx / 2) = tan(fovy / 2) * W / H``."""
        return 2.0 * math.atan(math.tan(self.fovy_rad / 2.0) * self.width / self.height)

    @property
    def focal(self) -> float:
        """Focal length in pixels (square pixels)."""
        return self.height / (2.0 * math.tan(self.fovy_rad / 2.0))

    # ---- extrinsics -------------------------------------------------------------------------
    @property
    def eye(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        y, p = math.radians(self.yaw), math.radians(self.pitch)
        offset = np.array([math.cos(p) * math.sin(y), math.sin(p), math.cos(p) * math.cos(y)])
        return self.target + self.radius * offset

    @property
    def w2c(self) -> np.ndarray:
        """World-to-camera 4x4 (not transposed)."""
        return look_at_w2c(self.eye, self.target, self.up)

    @property
    def c2w(self) -> np.ndarray:
        return np.linalg.inv(self.w2c)

    @property
    def projection(self) -> np.ndarray:
        """Projection 4x4 (not transposed), centred principal point."""
        return projection_matrix(self.znear, self.zfar, self.fovx_rad, self.fovy_rad)

    @property
    def world_view_transform(self) -> np.ndarray:
        """Transposed world-to-view matrix (float32), as the rasterizer takes it."""
        return self.w2c.T.astype(np.float32)

    @property
    def full_proj_transform(self) -> np.ndarray:
        """Transposed world-to-clip matrix ``(P @ W2C)^T`` (float32)."""
        return (self.projection @ self.w2c).T.astype(np.float32)

    # ---- interaction ------------------------------------------------------------------------
    def orbit(self, dx: float, dy: float, degrees_per_pixel: float = 0.3) -> None:
        """Rotate around the target by a mouse drag of ``(dx, dy)`` pixels.

        Dragging right turns the object to the right (the camera moves left around it);
        dragging down tilts it towards the viewer (the camera moves up). Pitch stays within
        +-89 degrees so the view never flips.
        """
        self.yaw -= dx * degrees_per_pixel
        self.yaw = (self.yaw + 180.0) % 360.0 - 180.0
        self.pitch = float(np.clip(self.pitch + dy * degrees_per_pixel, -MAX_PITCH_DEG, MAX_PITCH_DEG))

    def pan(self, dx: float, dy: float) -> None:
        """Move the target so the point under the cursor follows a drag of ``(dx, dy)`` pixels
        (exact at the target's depth)."""
        rot = self.w2c[:3, :3]  # rows: right, down, forward
        metres_per_pixel = self.radius / self.focal
        self.target = self.target - (rot[0] * dx + rot[1] * dy) * metres_per_pixel

    def zoom(self, steps: float, factor: float = 0.9) -> None:
        """Wheel: positive ``steps`` moves closer (radius times ``factor ** steps``)."""
        self.radius = float(np.clip(self.radius * factor ** steps, self.min_radius, self.max_radius))

    def set_fovy(self, degrees: float) -> None:
        self.fovy = float(np.clip(degrees, 1.0, 179.0))

    def resize(self, width: int, height: int) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"viewer size must be positive, got {width}x{height}")
        self.width, self.height = int(width), int(height)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(N, 2)`` of world points (pixel centres at integers), for tests
        and overlays: ``u = ((ndc + 1) W - 1) / 2``."""
        pts = np.concatenate([np.asarray(points, np.float64), np.ones((len(points), 1))], axis=1)
        clip = pts @ (self.projection @ self.w2c).T
        ndc = clip[:, :2] / clip[:, 3:4]
        return np.stack([((ndc[:, 0] + 1) * self.width - 1) / 2, ((ndc[:, 1] + 1) * self.height - 1) / 2], 1)

    # ---- rasterizer camera ------------------------------------------------------------------
    def minicam(self, width: Optional[int] = None, height: Optional[int] = None,
                timestep: Optional[int] = None, device: Any = None) -> Any:
        """A ``scene.cameras.MiniCam`` for ``render()`` (torch tensors on ``device``).

        ``width``/``height`` default to the camera's; other sizes keep the vertical fov.
        """
        import torch

        cam = self if width is None and height is None else OrbitCamera(
            width=width or self.width, height=height or self.height, fovy=self.fovy,
            radius=self.radius, yaw=self.yaw, pitch=self.pitch, target=self.target,
            znear=self.znear, zfar=self.zfar, up=self.up)
        wvt = torch.tensor(cam.world_view_transform, dtype=torch.float32, device=device)
        fpt = torch.tensor(cam.full_proj_transform, dtype=torch.float32, device=device)
        return make_minicam(cam.width, cam.height, cam.fovy_rad, cam.fovx_rad, cam.znear, cam.zfar,
                            wvt, fpt, timestep)


class _FallbackMiniCam:
    """Used only when ``scene.cameras`` cannot be imported: the attributes ``render()`` reads."""

    def __init__(self, width, height, fovy, fovx, znear, zfar, world_view_transform,
                 full_proj_transform, timestep=None, cx=None, cy=None):
        import torch

        self.image_width, self.image_height = int(width), int(height)
        self.FoVy, self.FoVx = float(fovy), float(fovx)
        self.znear, self.zfar = znear, zfar
        self.world_view_transform = world_view_transform
        self.full_proj_transform = full_proj_transform
        self.camera_center = torch.linalg.inv(world_view_transform)[3, :3]
        self.timestep = timestep
        self.cx, self.cy = cx, cy
        self.original_image = None


def make_minicam(width: int, height: int, fovy: float, fovx: float, znear: float, zfar: float,
                 world_view_transform: Any, full_proj_transform: Any,
                 timestep: Optional[int] = None) -> Any:
    """``scene.cameras.MiniCam`` when available, else a minimal stand-in with the same fields."""
    try:
        from scene.cameras import MiniCam
    except ImportError:
        MiniCam = _FallbackMiniCam
    return MiniCam(width, height, fovy, fovx, znear, zfar, world_view_transform,
                   full_proj_transform, timestep=timestep)
