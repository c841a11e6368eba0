"""COLMAP sparse model readers (binary and text) for cameras, images and points3D.

Formats follow COLMAP's documented ``cameras/images/points3D .bin|.txt`` layouts. Errors are
:class:`utils.image_io.DatasetError` naming the file (and the record/field where known).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Dict, Tuple

import numpy as np

from utils.graphics_utils import qvec2rotmat
from utils.image_io import DatasetError


@dataclass(frozen=True)
class CameraModel:
    model_id: int
    model_name: str
    num_params: int


CAMERA_MODELS = (
    CameraModel(0, "SIMPLE_PINHOLE", 3),
    CameraModel(1, "PINHOLE", 4),
    CameraModel(2, "SIMPLE_RADIAL", 4),
    CameraModel(3, "RADIAL", 5),
    CameraModel(4, "OPENCV", 8),
    CameraModel(5, "OPENCV_FISHEYE", 8),
    CameraModel(6, "FULL_OPENCV", 12),
    CameraModel(7, "FOV", 5),
    CameraModel(8, "SIMPLE_RADIAL_FISHEYE", 4),
    CameraModel(9, "RADIAL_FISHEYE", 5),
    CameraModel(10, "THIN_PRISM_FISHEYE", 12),
)
MODEL_BY_ID = {m.model_id: m for m in CAMERA_MODELS}
MODEL_BY_NAME = {m.model_name: m for m in CAMERA_MODELS}
# models whose first params are a single focal f then cx, cy
_SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FOV"}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def intrinsics(self) -> Tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels; distortion parameters are ignored."""
        p = self.params
        if self.model in _SINGLE_FOCAL:
            return float(p[0]), float(p[0]), float(p[1]), float(p[2])
        return float(p[0]), float(p[1]), float(p[2]), float(p[3])


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray
    point3D_ids: np.ndarray

    def qvec2rotmat(self) -> np.ndarray:
        return qvec2rotmat(self.qvec)


def _read(fid: BinaryIO, num_bytes: int, fmt: str, path: str, what: str):
    data = fid.read(num_bytes)
    if len(data) != num_bytes:
        raise DatasetError(f"{path}: truncated file while reading {what}")
    return struct.unpack("<" + fmt, data)


def _open(path: str, mode: str):
    try:
        return open(path, mode)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e


def read_cameras_binary(path: str) -> Dict[int, ColmapCamera]:
    cams: Dict[int, ColmapCamera] = {}
    with _open(path, "rb") as f:
        (n,) = _read(f, 8, "Q", path, "num_cameras")
        for i in range(n):
            cam_id, model_id, w, h = _read(f, 24, "iiQQ", path, f"camera {i}")
            if model_id not in MODEL_BY_ID:
                raise DatasetError(f"{path}: camera {cam_id}: unknown model_id {model_id}")
            m = MODEL_BY_ID[model_id]
            params = _read(f, 8 * m.num_params, "d" * m.num_params, path, f"camera {cam_id} params")
            cams[cam_id] = ColmapCamera(cam_id, m.model_name, int(w), int(h), np.array(params))
    return cams


def read_cameras_text(path: str) -> Dict[int, ColmapCamera]:
    cams: Dict[int, ColmapCamera] = {}
    with _open(path, "r") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            el = line.split()
            try:
                cam_id, model, w, h = int(el[0]), el[1], int(el[2]), int(el[3])
                params = np.array([float(x) for x in el[4:]])
            except (ValueError, IndexError) as e:
                raise DatasetError(f"{path}:{lineno}: bad camera line ({e})") from e
            if model not in MODEL_BY_NAME:
                raise DatasetError(f"{path}:{lineno}: unknown camera model {model!r}")
            if len(params) != MODEL_BY_NAME[model].num_params:
                raise DatasetError(f"{path}:{lineno}: model {model} needs {MODEL_BY_NAME[model].num_params} "
                                   f"params, got {len(params)}")
            cams[cam_id] = ColmapCamera(cam_id, model, w, h, params)
    return cams


def read_images_binary(path: str) -> Dict[int, ColmapImage]:
    images: Dict[int, ColmapImage] = {}
    with _open(path, "rb") as f:
        (n,) = _read(f, 8, "Q", path, "num_images")
        for i in range(n):
            props = _read(f, 64, "idddddddi", path, f"image {i}")
            image_id = props[0]
            qvec = np.array(props[1:5])
            tvec = np.array(props[5:8])
            camera_id = props[8]
            name_bytes = bytearray()
            while True:
                c = f.read(1)
                if not c:
                    raise DatasetError(f"{path}: image {image_id}: truncated name")
                if c == b"\x00":
                    break
                name_bytes += c
            (n2d,) = _read(f, 8, "Q", path, f"image {image_id} num_points2D")
            raw = f.read(24 * n2d)
            if len(raw) != 24 * n2d:
                raise DatasetError(f"{path}: image {image_id}: truncated points2D")
            rec = np.frombuffer(raw, dtype=np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]))
            images[image_id] = ColmapImage(image_id, qvec, tvec, camera_id, name_bytes.decode("utf-8"),
                                           np.stack([rec["x"], rec["y"]], 1), rec["id"].copy())
    return images


def read_images_text(path: str) -> Dict[int, ColmapImage]:
    images: Dict[int, ColmapImage] = {}
    with _open(path, "r") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        el = line.split()
        try:
            image_id = int(el[0])
            qvec = np.array([float(x) for x in el[1:5]])
            tvec = np.array([float(x) for x in el[5:8]])
            camera_id = int(el[8])
            name = " ".join(el[9:])
            if not name or len(qvec) != 4 or len(tvec) != 3:
                raise ValueError("expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        except (ValueError, IndexError) as e:
            raise DatasetError(f"{path}:{i}: bad image line ({e})") from e
        pts = lines[i].split() if i < len(lines) else []
        i += 1
        try:
            arr = np.array([float(x) for x in pts]).reshape(-1, 3)
        except ValueError as e:
            raise DatasetError(f"{path}:{i}: bad points2D line of image {image_id} ({e})") from e
        images[image_id] = ColmapImage(image_id, qvec, tvec, camera_id, name, arr[:, :2],
                                       arr[:, 2].astype(np.int64))
    return images


def read_points3D_binary(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz (N,3) float64, rgb (N,3) uint8, error (N,))."""
    with _open(path, "rb") as f:
        (n,) = _read(f, 8, "Q", path, "num_points")
        xyz = np.empty((n, 3))
        rgb = np.empty((n, 3), dtype=np.uint8)
        err = np.empty(n)
        for i in range(n):
            props = _read(f, 43, "QdddBBBd", path, f"point {i}")
            xyz[i] = props[1:4]
            rgb[i] = props[4:7]
            err[i] = props[7]
            (track_len,) = _read(f, 8, "Q", path, f"point {props[0]} track_length")
            if len(f.read(8 * track_len)) != 8 * track_len:
                raise DatasetError(f"{path}: point {props[0]}: truncated track")
    return xyz, rgb, err


def read_points3D_text(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz, rgb, err = [], [], []
    with _open(path, "r") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            el = line.split()
            try:
                xyz.append([float(x) for x in el[1:4]])
                rgb.append([int(x) for x in el[4:7]])
                err.append(float(el[7]))
            except (ValueError, IndexError) as e:
                raise DatasetError(f"{path}:{lineno}: bad point line ({e})") from e
    return (np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(rgb, dtype=np.uint8).reshape(-1, 3),
            np.array(err))


def read_model(sparse_dir: str):
    """Read cameras, images and points3D from ``sparse_dir`` preferring ``.bin`` over ``.txt``."""
    def pick(stem: str) -> Tuple[str, bool]:
        b = os.path.join(sparse_dir, stem + ".bin")
        t = os.path.join(sparse_dir, stem + ".txt")
        if os.path.isfile(b):
            return b, True
        if os.path.isfile(t):
            return t, False
        raise DatasetError(f"{sparse_dir}: neither {stem}.bin nor {stem}.txt found")

    cp, cb = pick("cameras")
    ip, ib = pick("images")
    cams = read_cameras_binary(cp) if cb else read_cameras_text(cp)
    imgs = read_images_binary(ip) if ib else read_images_text(ip)
    return cams, imgs


def write_cameras_binary(cams: Dict[int, ColmapCamera], path: str) -> None:
    """Write cameras.bin (used by tests to build fixtures)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for c in cams.values():
            m = MODEL_BY_NAME[c.model]
            f.write(struct.pack("<iiQQ", c.id, m.model_id, c.width, c.height))
            f.write(struct.pack("<" + "d" * m.num_params, *[float(x) for x in c.params]))


def write_images_binary(images: Dict[int, ColmapImage], path: str) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for im in images.values():
            f.write(struct.pack("<idddddddi", im.id, *im.qvec.tolist(), *im.tvec.tolist(), im.camera_id))
            f.write(im.name.encode("utf-8") + b"\x00")
            f.write(struct.pack("<Q", len(im.point3D_ids)))
            for (x, y), pid in zip(im.xys, im.point3D_ids):
                f.write(struct.pack("<ddq", float(x), float(y), int(pid)))


def write_points3D_binary(xyz: np.ndarray, rgb: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(xyz)))
        for i, (p, c) in enumerate(zip(xyz, rgb)):
            f.write(struct.pack("<QdddBBBd", i + 1, *[float(v) for v in p], *[int(v) for v in c], 0.5))
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<ii", 1, i))
