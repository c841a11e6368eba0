"""Cameras: one view (optionally at one timestep) with the matrices the rasterizer expects.

``Camera`` holds the image decoded once as uint8 ``(3,H,W)`` (already composited on the
background) on the data device and hands out ``original_image`` as float32 in [0,1].
``MiniCam`` is the image-less camera used by viewers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from utils.graphics_utils import focal2fov, fov2focal, getProjectionMatrix, getWorld2View2
from utils.image_io import DecodedImage, load_image, parallel_map, target_resolution

if TYPE_CHECKING:  # pragma: no cover
    from scene.dataset_readers import CameraInfo

ZNEAR = 0.01
ZFAR = 100.0


def resolve_data_device(requested: str = "cuda") -> torch.device:
    """Where image data lives: CUDA when requested and available, else the CPU."""
    if str(requested).startswith("cuda") and torch.cuda.is_available():
        return torch.device(requested)
    return torch.device("cpu")


def compute_device() -> torch.device:
    """The device the matrices live on: CUDA when available (the rasterizer runs there)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _to_chw_uint8(image: Any) -> torch.Tensor:
    """Accept a (H,W,3) uint8 array or a (3,H,W) uint8 tensor; return a (3,H,W) uint8 tensor."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H,W,3), got {image.dtype} {image.shape}")
        if not image.flags.writeable:
            image = image.copy()
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be uint8 (3,H,W), got {image.dtype} {tuple(image.shape)}")
        return image.contiguous()
    raise TypeError(f"unsupported image type {type(image)}")


def _place(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move to ``device``; CPU tensors are pinned when CUDA exists (fast async uploads)."""
    if device.type == "cpu":
        t = t.cpu()
        if torch.cuda.is_available():
            t = t.pin_memory()
        return t
    return t.to(device, non_blocking=True)


class Camera:
    """One view. ``R`` is camera-to-world (3DGS), ``T`` the world-to-camera translation.

    Attributes: ``uid, colmap_id, R, T, FoVx, FoVy, image_width, image_height, image_name,
    image_path, timestep, camera_id, cx, cy, fl_x, fl_y, znear, zfar, trans, scale,
    world_view_transform, projection_matrix, full_proj_transform`` (4x4 transposed),
    ``camera_center`` (3,), ``data_device``, ``image_uint8`` ((3,H,W) uint8 or None),
    ``alpha_mask`` ((1,H,W) uint8 or None), ``original_image`` (property).
    ``cx, cy`` default to the image centre ``(W-1)/2, (H-1)/2``; ``fl_x, fl_y`` to the focal
    lengths of the fields of view.
    """

    def __init__(self, colmap_id: int, R: np.ndarray, T: np.ndarray, FoVx: float, FoVy: float,
                 image_width: int, image_height: int, image_name: str, uid: int,
                 image: Any = None, alpha_mask: Any = None,
                 trans: Optional[np.ndarray] = None, scale: float = 1.0,
                 data_device: str = "cuda", timestep: Optional[int] = None,
                 camera_id: Optional[int] = None, cx: Optional[float] = None,
                 cy: Optional[float] = None, fl_x: Optional[float] = None,
                 fl_y: Optional[float] = None, image_path: Optional[str] = None,
                 znear: float = ZNEAR, zfar: float = ZFAR):
        self.uid = uid
        self.colmap_id = colmap_id
        self.R = np.asarray(R, dtype=np.float64)
        self.T = np.asarray(T, dtype=np.float64)
        self.FoVx = float(FoVx)
        self.FoVy = float(FoVy)
        self.image_width = int(image_width)
        self.image_height = int(image_height)
        self.image_name = image_name
        self.image_path = image_path
        self.timestep = None if timestep is None else int(timestep)
        self.camera_id = camera_id
        self.fl_x = float(fl_x) if fl_x is not None else fov2focal(self.FoVx, self.image_width)
        self.fl_y = float(fl_y) if fl_y is not None else fov2focal(self.FoVy, self.image_height)
        self.cx = float(cx) if cx is not None else self.image_width / 2.0
        self.cy = float(cy) if cy is not None else self.image_height / 2.0
        self.znear = znear
        self.zfar = zfar
        self.trans = np.zeros(3) if trans is None else np.asarray(trans, dtype=np.float64)
        self.scale = float(scale)
        self.data_device = resolve_data_device(data_device)

        self.image_uint8: Optional[torch.Tensor] = None
        self.alpha_mask: Optional[torch.Tensor] = None
        if image is not None:
            img = _to_chw_uint8(image)
            if img.shape[1:] != (self.image_height, self.image_width):
                raise ValueError(f"{image_name}: image is {img.shape[2]}x{img.shape[1]}, camera says "
                                 f"{self.image_width}x{self.image_height}")
            self.image_uint8 = _place(img, self.data_device)
        if alpha_mask is not None:
            a = torch.from_numpy(np.array(alpha_mask)) if isinstance(alpha_mask, np.ndarray) else alpha_mask
            if a.dtype != torch.uint8:
                raise ValueError(f"{image_name}: alpha mask must be uint8, got {a.dtype}")
            a = a.reshape(1, self.image_height, self.image_width)
            self.alpha_mask = _place(a.contiguous(), self.data_device)

        device = self.data_device if self.data_device.type == "cuda" else compute_device()
        # Matrices are built on the CPU and moved once: cameras are created from worker threads,
        # and the first CUDA linear-algebra call of a process must not run in several threads at
        # once (PyTorch initialises its solver library lazily).
        w2v = getWorld2View2(self.R, self.T, self.trans, self.scale)
        world_view = torch.tensor(w2v, dtype=torch.float32).transpose(0, 1)
        projection = getProjectionMatrix(
            znear=znear, zfar=zfar, fovX=self.FoVx, fovY=self.FoVy, cx=self.cx, cy=self.cy,
            width=self.image_width, height=self.image_height).transpose(0, 1)
        self.world_view_transform = world_view.to(device)
        self.projection_matrix = projection.to(device)
        self.full_proj_transform = (world_view @ projection).to(device)
        self.camera_center = torch.tensor(np.linalg.inv(w2v)[:3, 3], dtype=torch.float32).to(device)

    @property
    def original_image(self) -> Optional[torch.Tensor]:
        """Float32 (3,H,W) in [0,1] on the data device (composited on the background), or None."""
        if self.image_uint8 is None:
            return None
        return self.image_uint8.float() / 255.0

    @property
    def gt_alpha_mask(self) -> Optional[torch.Tensor]:
        """Float32 (1,H,W) alpha in [0,1], or None when the image had no alpha channel."""
        if self.alpha_mask is None:
            return None
        return self.alpha_mask.float() / 255.0

    def __repr__(self) -> str:
        return (f"Camera(uid={self.uid}, name={self.image_name!r}, {self.image_width}x{self.image_height}, "
                f"timestep={self.timestep}, camera_id={self.camera_id})")


class MiniCam:
    """Image-less camera for viewers: matrices are transposed (row-vector convention)."""

    def __init__(self, width: int, height: int, fovy: float, fovx: float, znear: float, zfar: float,
                 world_view_transform: torch.Tensor, full_proj_transform: torch.Tensor,
                 timestep: Optional[int] = None, cx: Optional[float] = None, cy: Optional[float] = None):
        self.image_width = int(width)
        self.image_height = int(height)
        self.FoVy = float(fovy)
        self.FoVx = float(fovx)
        self.znear = znear
        self.zfar = zfar
        self.world_view_transform = world_view_transform
        self.full_proj_transform = full_proj_transform
        self.projection_matrix = torch.linalg.inv(world_view_transform) @ full_proj_transform
        self.camera_center = torch.linalg.inv(world_view_transform)[3, :3]
        self.timestep = timestep
        self.cx = cx
        self.cy = cy
        self.fl_x = fov2focal(self.FoVx, self.image_width)
        self.fl_y = fov2focal(self.FoVy, self.image_height)
        self.original_image = None
        self.image_uint8 = None
        self.alpha_mask = None


def scaled_intrinsics(info_w: int, info_h: int, new_w: int, new_h: int, fovx: float, fovy: float,
                      cx: Optional[float], cy: Optional[float], fl_x: Optional[float],
                      fl_y: Optional[float]) -> Dict[str, Optional[float]]:
    """Intrinsics after resizing ``info_w x info_h`` to ``new_w x new_h`` (NeRF/COLMAP pixel convention:
    pixel i covers [i, i + 1), so the principal point scales with the image)."""
    sx, sy = new_w / info_w, new_h / info_h
    out: Dict[str, Optional[float]] = {}
    out["fl_x"] = fl_x * sx if fl_x is not None else None
    out["fl_y"] = fl_y * sy if fl_y is not None else None
    out["cx"] = cx * sx if cx is not None else None
    out["cy"] = cy * sy if cy is not None else None
    out["FoVx"] = focal2fov(out["fl_x"], new_w) if out["fl_x"] is not None else fovx
    out["FoVy"] = focal2fov(out["fl_y"], new_h) if out["fl_y"] is not None else fovy
    return out


def _load_one(info: "CameraInfo", resolution: int, resolution_scale: float,
              background: Sequence[float], load_images: bool) -> Dict[str, Any]:
    new_w, new_h = target_resolution(info.width, info.height, resolution, resolution_scale)
    decoded: Optional[DecodedImage] = None
    if load_images and info.image_path is not None:
        decoded = load_image(info.image_path, None, background)
        w0, h0 = decoded.size
        if (w0, h0) != (info.width, info.height):
            # the file disagrees with the header/JSON size: trust the file, rescale to the rule
            new_w, new_h = target_resolution(w0, h0, resolution, resolution_scale)
        if decoded.size != (new_w, new_h):
            decoded = _resize_decoded(decoded, (new_w, new_h))
    intr = scaled_intrinsics(info.width, info.height, new_w, new_h, info.FovX, info.FovY,
                             info.cx, info.cy, info.fl_x, info.fl_y)
    return {"size": (new_w, new_h), "decoded": decoded, "intr": intr}


def _resize_decoded(d: DecodedImage, size) -> DecodedImage:
    from PIL import Image

    rgb = np.asarray(Image.fromarray(d.rgb).resize(size, Image.BICUBIC))
    alpha = None if d.alpha is None else np.asarray(Image.fromarray(d.alpha).resize(size, Image.BICUBIC))
    return DecodedImage(rgb=rgb, alpha=alpha)


def cameras_from_infos(cam_infos: Sequence["CameraInfo"], resolution_scale: float = 1.0,
                       resolution: int = -1, data_device: str = "cuda",
                       white_background: Optional[bool] = None, load_images: bool = True,
                       num_workers: Optional[int] = None, desc: str = "Loading cameras",
                       progress: bool = True) -> List[Camera]:
    """Build :class:`Camera` objects, decoding the images in parallel (thread pool, tqdm bar).

    The background used for compositing RGBA images is each info's ``bg`` unless
    ``white_background`` is given (True: white, False: black). Images are resized by the
    resolution rule (:func:`utils.image_io.target_resolution`) and the principal point and focal
    lengths are rescaled to match.
    """
    def job(item) -> Camera:
        idx, info = item
        if white_background is None:
            bg = tuple(np.asarray(info.bg, dtype=np.float64).tolist())
        else:
            bg = (1.0, 1.0, 1.0) if white_background else (0.0, 0.0, 0.0)
        res = _load_one(info, resolution, resolution_scale, bg, load_images)
        w, h = res["size"]
        intr = res["intr"]
        dec: Optional[DecodedImage] = res["decoded"]
        return Camera(
            colmap_id=info.uid, R=info.R, T=info.T, FoVx=intr["FoVx"], FoVy=intr["FoVy"],
            image_width=w, image_height=h, image_name=info.image_name, uid=idx,
            image=None if dec is None else dec.rgb,
            alpha_mask=None if dec is None else dec.alpha,
            data_device=data_device, timestep=info.timestep, camera_id=info.camera_id,
            cx=intr["cx"], cy=intr["cy"], fl_x=intr["fl_x"], fl_y=intr["fl_y"],
            image_path=info.image_path)

    # decoding, resizing, compositing and the upload all run in the pool (PIL/torch release the GIL)
    return parallel_map(job, list(enumerate(cam_infos)), num_workers=num_workers, desc=desc, progress=progress)


def camera_to_json(id: int, camera: Camera) -> Dict[str, Any]:
    """The cameras.json entry of a camera (SPEC 4): id, img_name, width, height, position,
    rotation (camera-to-world), fx, fy (plus cx, cy, timestep, camera_id)."""
    Rt = np.zeros((4, 4))
    Rt[:3, :3] = camera.R.T
    Rt[:3, 3] = camera.T
    Rt[3, 3] = 1.0
    W2C = np.linalg.inv(Rt)
    pos = W2C[:3, 3]
    rot = W2C[:3, :3]
    return {
        "id": id,
        "img_name": camera.image_name,
        "width": camera.image_width,
        "height": camera.image_height,
        "position": pos.tolist(),
        "rotation": [x.tolist() for x in rot],
        "fy": fov2focal(camera.FoVy, camera.image_height),
        "fx": fov2focal(camera.FoVx, camera.image_width),
        "cx": camera.cx,
        "cy": camera.cy,
        "timestep": camera.timestep,
        "camera_id": camera.camera_id,
    }
