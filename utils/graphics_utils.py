"""Camera matrices and small geometry helpers.

Conventions (see docs/DESIGN.md): camera axes are OpenCV/COLMAP (x right, y down, z forward);
``R`` is the camera-to-world rotation as in 3DGS, so world-to-camera is ``[R^T | T]``.
Matrices returned here are *not* transposed; :mod:`scene.cameras` transposes them for the
rasterizer (points are row vectors there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class BasicPointCloud:
    """A coloured point cloud: points (N,3), colors (N,3) in [0,1], normals (N,3)."""

    points: np.ndarray
    colors: np.ndarray
    normals: np.ndarray


def geom_transform_points(points: torch.Tensor, transf_matrix: torch.Tensor) -> torch.Tensor:
    """Apply a transposed 4x4 projective matrix to (N,3) points and divide by w."""
    ones = torch.ones(points.shape[0], 1, dtype=points.dtype, device=points.device)
    points_hom = torch.cat([points, ones], dim=1)
    points_out = points_hom @ transf_matrix
    denom = points_out[:, 3:] + 1e-7
    return points_out[:, :3] / denom


def getWorld2View(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World-to-view 4x4 (not transposed) from camera-to-world rotation ``R`` and translation ``t``."""
    Rt = np.zeros((4, 4), dtype=np.float64)
    Rt[:3, :3] = np.asarray(R).T
    Rt[:3, 3] = t
    Rt[3, 3] = 1.0
    return Rt.astype(np.float32)


def getWorld2View2(R: np.ndarray, t: np.ndarray, translate: Optional[np.ndarray] = None,
                   scale: float = 1.0) -> np.ndarray:
    """World-to-view 4x4 (not transposed) after moving the camera centre by ``translate`` then
    scaling it by ``scale`` (the 3DGS scene normalisation hooks; identity by default)."""
    if translate is None:
        translate = np.zeros(3)
    Rt = np.zeros((4, 4), dtype=np.float64)
    Rt[:3, :3] = np.asarray(R, dtype=np.float64).T
    Rt[:3, 3] = np.asarray(t, dtype=np.float64)
    Rt[3, 3] = 1.0
    C2W = np.linalg.inv(Rt)
    cam_center = (C2W[:3, 3] + np.asarray(translate, dtype=np.float64)) * scale
    C2W[:3, 3] = cam_center
    return np.linalg.inv(C2W).astype(np.float32)


def getProjectionMatrix(znear: float, zfar: float, fovX: float, fovY: float,
                        cx: Optional[float] = None, cy: Optional[float] = None,
                        width: Optional[int] = None, height: Optional[int] = None) -> torch.Tensor:
    """Perspective projection (4x4, not transposed) mapping view space to clip space.

    Depth maps to [0, 1] (``z_ndc = zfar (z - znear) / ((zfar - znear) z)``) and ``w = z``.
    ``cx, cy`` are the principal point in the NeRF/COLMAP pixel convention (pixel i covers
    [i, i + 1), so a centred camera has ``cx = W / 2``); the frustum is shifted so that a point at
    ``u = fx x / z + cx`` in that convention lands there: ``P[0,2] = 2 cx / W - 1``,
    ``P[1,2] = 2 cy / H - 1``. Without them the frustum is centred.
    """
    tan_half_y = math.tan(fovY / 2)
    tan_half_x = math.tan(fovX / 2)
    P = torch.zeros(4, 4)
    P[0, 0] = 1.0 / tan_half_x
    P[1, 1] = 1.0 / tan_half_y
    if cx is not None:
        if width is None:
            raise ValueError("getProjectionMatrix: cx needs width")
        P[0, 2] = 2.0 * cx / width - 1.0
    if cy is not None:
        if height is None:
            raise ValueError("getProjectionMatrix: cy needs height")
        P[1, 2] = 2.0 * cy / height - 1.0
    P[3, 2] = 1.0
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -(zfar * znear) / (zfar - znear)
    return P


def fov2focal(fov: float, pixels: float) -> float:
    """Focal length in pixels of a field of view (radians) spanning ``pixels``."""
    return pixels / (2 * math.tan(fov / 2))


def focal2fov(focal: float, pixels: float) -> float:
    """Field of view (radians) spanning ``pixels`` at focal length ``focal`` (pixels)."""
    return 2 * math.atan(pixels / (2 * focal))


def qvec2rotmat(qvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z) (COLMAP convention)."""
    w, x, y, z = [float(v) for v in qvec]
    return np.array([
        [1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y],
        [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
        [2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y],
    ])


def rotmat2qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with positive w of a rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    K = np.array([
        [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
        [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
        [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
        [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
    ]) / 3.0
    eigvals, eigvecs = np.linalg.eigh(K)
    q = eigvecs[[3, 0, 1, 2], np.argmax(eigvals)]
    if q[0] < 0:
        q = -q
    return q


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: (3,) axis-angle to a 3x3 rotation matrix (NumPy)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa)
    if theta < 1e-12:
        return np.eye(3)
    k = aa / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def look_at_c2w_opengl(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world 4x4 in OpenGL/Blender axes (x right, y up, z backward) looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, dtype=np.float64), back)
    right /= np.linalg.norm(right)
    up_v = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = up_v
    c2w[:3, 2] = back
    c2w[:3, 3] = eye
    return c2w
