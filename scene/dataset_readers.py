"""Dataset readers: dynamic multi-view FLAME subjects (NeRSemble layout), COLMAP, Blender.

``read_scene_info`` detects the layout and returns a :class:`SceneInfo` of lightweight
:class:`CameraInfo` records (no pixels are decoded here; :func:`scene.cameras.cameras_from_infos`
decodes them in parallel) plus per-timestep FLAME parameter dicts. Bad input raises
:class:`DatasetError` naming the file and the field.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from scene import colmap_loader
from utils.graphics_utils import BasicPointCloud, focal2fov, fov2focal, getWorld2View2
from utils.image_io import DatasetError, image_size, parallel_map

__all__ = ["CameraInfo", "SceneInfo", "DatasetError", "read_scene_info", "load_flame_param",
           "getNerfppNorm", "fetchPly", "storePly", "detect_layout", "FLAME_PARAM_SHAPES"]

SH_C0 = 0.28209479177387814

# expected trailing shapes of per-timestep FLAME parameters (SPEC 2.1); None = any size
FLAME_PARAM_SHAPES: Dict[str, Tuple[Optional[int], ...]] = {
    "expr": (1, None),
    "rotation": (1, 3),
    "neck_pose": (1, 3),
    "jaw_pose": (1, 3),
    "eyes_pose": (1, 6),
    "translation": (1, 3),
}
OPTIONAL_FLAME_PARAM_SHAPES: Dict[str, Tuple[Optional[int], ...]] = {
    "static_offset": (1, None, 3),
    "dynamic_offset": (1, None, 3),
}


@dataclass
class CameraInfo:
    """One frame: camera pose/intrinsics and where its image is (not decoded)."""

    uid: int
    R: np.ndarray            # camera-to-world rotation (3DGS convention; w2c = [R^T | T])
    T: np.ndarray            # world-to-camera translation
    FovY: float
    FovX: float
    image_path: Optional[str]
    image_name: str
    width: int
    height: int
    bg: np.ndarray = field(default_factory=lambda: np.zeros(3))
    timestep: Optional[int] = None
    camera_id: Optional[int] = None
    cx: Optional[float] = None
    cy: Optional[float] = None
    fl_x: Optional[float] = None
    fl_y: Optional[float] = None


@dataclass
class SceneInfo:
    point_cloud: Optional[BasicPointCloud]
    train_cameras: List[CameraInfo]
    val_cameras: List[CameraInfo]
    test_cameras: List[CameraInfo]
    nerf_normalization: Dict[str, Any]
    ply_path: Optional[str]
    train_meshes: Dict[int, Dict[str, np.ndarray]] = field(default_factory=dict)
    test_meshes: Dict[int, Dict[str, np.ndarray]] = field(default_factory=dict)
    tgt_train_meshes: Dict[int, Dict[str, np.ndarray]] = field(default_factory=dict)
    tgt_test_meshes: Dict[int, Dict[str, np.ndarray]] = field(default_factory=dict)
    layout: str = ""


# ----------------------------------------------------------------------------- geometry helpers

def getNerfppNorm(cam_info: List[CameraInfo]) -> Dict[str, Any]:
    """Scene normalisation of 3DGS: translate = -mean camera centre, radius = 1.1 x max distance."""
    if not cam_info:
        return {"translate": np.zeros(3, dtype=np.float32), "radius": 1.0}
    centers = []
    for cam in cam_info:
        W2C = getWorld2View2(cam.R, cam.T).astype(np.float64)
        C2W = np.linalg.inv(W2C)
        centers.append(C2W[:3, 3])
    centers = np.stack(centers)
    center = centers.mean(0)
    diagonal = float(np.linalg.norm(centers - center[None], axis=1).max())
    radius = diagonal * 1.1
    if radius == 0:
        radius = 1.0
    return {"translate": (-center).astype(np.float32), "radius": radius}


def fetchPly(path: str) -> BasicPointCloud:
    from plyfile import PlyData

    try:
        plydata = PlyData.read(path)
        v = plydata["vertex"]
        positions = np.vstack([v["x"], v["y"], v["z"]]).T
        colors = np.vstack([v["red"], v["green"], v["blue"]]).T / 255.0
        names = v.data.dtype.names
        if "nx" in names:
            normals = np.vstack([v["nx"], v["ny"], v["nz"]]).T
        else:
            normals = np.zeros_like(positions)
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: cannot read point cloud ({e})") from e
    return BasicPointCloud(points=positions, colors=colors, normals=normals)


def storePly(path: str, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Write xyz + uint8 colours as a binary PLY (temp file + rename)."""
    from plyfile import PlyData, PlyElement

    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
             ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    elements = np.zeros(xyz.shape[0], dtype=dtype)
    for i, k in enumerate("xyz"):
        elements[k] = xyz[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        elements[k] = rgb[:, i]
    tmp = f"{path}.tmp{os.getpid()}"
    PlyData([PlyElement.describe(elements, "vertex")]).write(tmp)
    os.replace(tmp, path)


def random_point_cloud(path: str, num_pts: int = 100_000, seed: int = 0) -> Tuple[BasicPointCloud, str]:
    """3DGS's random initialisation: points uniform in [-1.3, 1.3]^3 with random SH-DC colours,
    saved to ``path`` (best effort: a read-only source folder only skips the save)."""
    rng = np.random.default_rng(seed)
    xyz = rng.random((num_pts, 3)) * 2.6 - 1.3
    shs = rng.random((num_pts, 3)) / 255.0
    colors = shs * SH_C0 + 0.5
    pcd = BasicPointCloud(points=xyz, colors=colors, normals=np.zeros((num_pts, 3)))
    try:
        storePly(path, xyz, (colors * 255).astype(np.uint8))
    except OSError:
        pass
    return pcd, path


# ----------------------------------------------------------------------------- FLAME params

def load_flame_param(path: str) -> Dict[str, np.ndarray]:
    """Load and validate one timestep's FLAME parameter npz (SPEC 2.1); float32 arrays."""
    try:
        with np.load(path, allow_pickle=False) as data:
            params = {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: FLAME parameter file not found") from e
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read FLAME parameter npz ({e})") from e
    if "shape" not in params:
        raise DatasetError(f"{path}: missing key 'shape'")
    shape = params["shape"]
    if shape.ndim == 2 and shape.shape[0] == 1:
        shape = shape[0]
    if shape.ndim != 1:
        raise DatasetError(f"{path}: key 'shape' must have shape (S,), got {shape.shape}")
    params["shape"] = shape
    for key, expected in FLAME_PARAM_SHAPES.items():
        if key not in params:
            raise DatasetError(f"{path}: missing key {key!r}")
        _check_shape(path, key, params[key], expected)
    for key, expected in OPTIONAL_FLAME_PARAM_SHAPES.items():
        if key in params:
            _check_shape(path, key, params[key], expected)
    out: Dict[str, np.ndarray] = {}
    for key, arr in params.items():
        if not np.issubdtype(arr.dtype, np.number):
            out[key] = arr
            continue
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise DatasetError(f"{path}: key {key!r} contains NaN or Inf")
        out[key] = arr
    return out


def _check_shape(path: str, key: str, arr: np.ndarray, expected: Tuple[Optional[int], ...]) -> None:
    ok = arr.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        exp = "(" + ",".join("*" if e is None else str(e) for e in expected) + ")"
        raise DatasetError(f"{path}: key {key!r} must have shape {exp}, got {arr.shape}")


# ----------------------------------------------------------------------------- transforms JSON

def _load_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{path}: field 'frames' missing or not a list")
    if len(frames) == 0:
        raise DatasetError(f"{path}: field 'frames' is empty (a split with no frames)")
    return data


def _resolve_image_path(root: str, file_path: str, extension: str = ".png") -> str:
    p = os.path.join(root, file_path)
    if os.path.splitext(file_path)[1] == "":
        p += extension
    return os.path.normpath(p)


def _frame_float(frame: Dict[str, Any], key: str, json_path: str, idx: int) -> Optional[float]:
    if key not in frame or frame[key] is None:
        return None
    try:
        v = float(frame[key])
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{json_path}: frames[{idx}].{key} is not a number") from e
    if not math.isfinite(v):
        raise DatasetError(f"{json_path}: frames[{idx}].{key} is not finite")
    return v


def read_cameras_from_transforms(root: str, transforms_file: str, white_background: bool,
                                 extension: str = ".png", dynamic: bool = False,
                                 uid_offset: int = 0) -> Tuple[List[CameraInfo], Dict[int, str]]:
    """Parse one ``transforms_*.json`` into CameraInfos; for dynamic data also return
    ``{timestep: flame_param_path}``. Frames in OpenGL axes are flipped to OpenCV."""
    json_path = os.path.join(root, transforms_file)
    data = _load_json(json_path)
    file_fovx = data.get("camera_angle_x")
    bg = np.array([1.0, 1.0, 1.0]) if white_background else np.array([0.0, 0.0, 0.0])
    infos: List[CameraInfo] = []
    flame_paths: Dict[int, str] = {}
    need_size: List[int] = []
    for idx, frame in enumerate(data["frames"]):
        where = f"{json_path}: frames[{idx}]"
        if not isinstance(frame, dict):
            raise DatasetError(f"{where} is not an object")
        if "file_path" not in frame:
            raise DatasetError(f"{where}: missing field 'file_path'")
        if "transform_matrix" not in frame:
            raise DatasetError(f"{where}: missing field 'transform_matrix'")
        try:
            c2w = np.array(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{where}.transform_matrix is not a numeric 4x4 matrix") from e
        if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
            raise DatasetError(f"{where}.transform_matrix must be a finite 4x4 matrix, got shape {c2w.shape}")
        c2w[:3, 1:3] *= -1  # OpenGL/Blender (y up, z back) -> OpenCV (y down, z forward)
        try:
            w2c = np.linalg.inv(c2w)
        except np.linalg.LinAlgError as e:
            raise DatasetError(f"{where}.transform_matrix is singular") from e
        R = np.transpose(w2c[:3, :3])
        T = w2c[:3, 3]

        image_path = _resolve_image_path(root, str(frame["file_path"]), extension)
        if not os.path.isfile(image_path):
            raise DatasetError(f"{where}.file_path: image not found: {image_path}")
        # relative path without extension ("images/00000_08", "train/r_0"): unique across splits
        image_name = os.path.splitext(os.path.relpath(image_path, root))[0].replace(os.sep, "/")

        fovx = _frame_float(frame, "camera_angle_x", json_path, idx)
        if fovx is None and file_fovx is not None:
            fovx = float(file_fovx)
        fl_x = _frame_float(frame, "fl_x", json_path, idx)
        fl_y = _frame_float(frame, "fl_y", json_path, idx)
        cx = _frame_float(frame, "cx", json_path, idx)
        cy = _frame_float(frame, "cy", json_path, idx)
        w = _frame_float(frame, "w", json_path, idx)
        h = _frame_float(frame, "h", json_path, idx)
        if fovx is None and fl_x is None:
            raise DatasetError(f"{where}: missing field 'camera_angle_x' (no file-level value, no fl_x)")

        timestep = camera_id = None
        if dynamic:
            for key in ("timestep_index", "flame_param_path"):
                if key not in frame:
                    raise DatasetError(f"{where}: missing field {key!r}")
            try:
                timestep = int(frame["timestep_index"])
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{where}.timestep_index is not an integer") from e
            fp = os.path.normpath(os.path.join(root, str(frame["flame_param_path"])))
            if flame_paths.get(timestep, fp) != fp:
                raise DatasetError(f"{where}.flame_param_path: timestep {timestep} already uses "
                                   f"{flame_paths[timestep]}")
            flame_paths[timestep] = fp
        if "camera_index" in frame and frame["camera_index"] is not None:
            try:
                camera_id = int(frame["camera_index"])
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{where}.camera_index is not an integer") from e

        info = CameraInfo(uid=uid_offset + idx, R=R, T=T, FovY=0.0, FovX=fovx if fovx is not None else 0.0,
                          image_path=image_path, image_name=image_name,
                          width=int(w) if w is not None else 0, height=int(h) if h is not None else 0,
                          bg=bg, timestep=timestep, camera_id=camera_id, cx=cx, cy=cy, fl_x=fl_x, fl_y=fl_y)
        if w is None or h is None:
            need_size.append(len(infos))
        infos.append(info)

    if need_size:
        sizes = parallel_map(lambda i: image_size(infos[i].image_path), need_size, progress=False)
        for i, (w, h) in zip(need_size, sizes):
            infos[i].width, infos[i].height = w, h
    for info in infos:
        if info.fl_x is not None:
            info.FovX = focal2fov(info.fl_x, info.width)
        if info.fl_y is not None:
            info.FovY = focal2fov(info.fl_y, info.height)
        else:
            # square pixels: same focal length vertically
            info.FovY = focal2fov(fov2focal(info.FovX, info.width), info.height)
        if info.fl_x is None and info.fl_y is not None:
            info.FovX = focal2fov(info.fl_y, info.width)
    return infos, flame_paths


def _load_meshes(flame_paths: Dict[int, str]) -> Dict[int, Dict[str, np.ndarray]]:
    items = sorted(flame_paths.items())
    loaded = parallel_map(lambda kv: load_flame_param(kv[1]), items, progress=False)
    return {t: p for (t, _), p in zip(items, loaded)}


def _filter_camera(infos: List[CameraInfo], camera_id: Optional[int], what: str) -> List[CameraInfo]:
    if camera_id is None or camera_id == -1:
        return infos
    kept = [c for c in infos if c.camera_id == camera_id]
    if what and infos and not kept:
        raise DatasetError(f"{what}: no frame with camera_index {camera_id} (select_camera_id)")
    return kept


# ----------------------------------------------------------------------------- layouts

def read_dynamic_nerf_info(path: str, white_background: bool, eval: bool, extension: str = ".png",
                           target_path: Optional[str] = None, select_camera_id: Optional[int] = None,
                           bind_to_mesh: bool = False) -> SceneInfo:
    """The NeRSemble layout (SPEC 2.1)."""
    splits: Dict[str, Tuple[List[CameraInfo], Dict[int, str]]] = {}
    uid = 0
    for split in ("train", "val", "test"):
        fname = f"transforms_{split}.json"
        if split != "train" and not os.path.exists(os.path.join(path, fname)):
            splits[split] = ([], {})
            continue
        infos, fps = read_cameras_from_transforms(path, fname, white_background, extension,
                                                  dynamic=True, uid_offset=uid)
        uid += len(infos)
        splits[split] = (infos, fps)
    train_cams, train_fp = splits["train"]
    val_cams, val_fp = splits["val"]
    test_cams, test_fp = splits["test"]

    if eval:
        n_before = len(val_cams) + len(test_cams)
        val_cams = _filter_camera(val_cams, select_camera_id, "")
        test_cams = _filter_camera(test_cams, select_camera_id, "")
        if n_before and not (val_cams or test_cams) and not target_path:
            raise DatasetError(f"{path}: no val/test frame with camera_index {select_camera_id} (select_camera_id)")
        train_meshes = _load_meshes({**train_fp, **val_fp})
        test_meshes = _load_meshes(test_fp)
    else:
        train_cams = train_cams + val_cams + test_cams
        val_cams, test_cams = [], []
        train_meshes = _load_meshes({**train_fp, **val_fp, **test_fp})
        test_meshes = {}

    tgt_train_meshes: Dict[int, Dict[str, np.ndarray]] = {}
    if target_path:
        tgt_cams: List[CameraInfo] = []
        tgt_fp: Dict[int, str] = {}
        for split in ("train", "val", "test"):
            fname = f"transforms_{split}.json"
            if split != "train" and not os.path.exists(os.path.join(target_path, fname)):
                continue
            infos, fps = read_cameras_from_transforms(target_path, fname, white_background, extension,
                                                      dynamic=True, uid_offset=uid)
            uid += len(infos)
            tgt_cams += infos
            for t, p in fps.items():
                if tgt_fp.get(t, p) != p:
                    raise DatasetError(f"{os.path.join(target_path, fname)}: timestep {t} maps to two "
                                       f"flame_param_path values ({tgt_fp[t]}, {p})")
                tgt_fp[t] = p
        tgt_cams = _filter_camera(tgt_cams, select_camera_id, target_path)
        tgt_train_meshes = _load_meshes(tgt_fp)
        test_cams = tgt_cams
        val_cams = []

    nerf_normalization = getNerfppNorm(train_cams)
    ply_path: Optional[str] = None
    pcd: Optional[BasicPointCloud] = None
    if not bind_to_mesh:
        ply_path = os.path.join(path, "points3d.ply")
        if os.path.exists(ply_path):
            pcd = fetchPly(ply_path)
        else:
            pcd, ply_path = random_point_cloud(ply_path)
    return SceneInfo(point_cloud=pcd, train_cameras=train_cams, val_cameras=val_cams, test_cameras=test_cams,
                     nerf_normalization=nerf_normalization, ply_path=ply_path, train_meshes=train_meshes,
                     test_meshes=test_meshes, tgt_train_meshes=tgt_train_meshes, tgt_test_meshes={},
                     layout="DynamicNerf")


def read_blender_info(path: str, white_background: bool, eval: bool, extension: str = ".png") -> SceneInfo:
    """NeRF-synthetic layout: transforms_train.json / transforms_test.json."""
    train, _ = read_cameras_from_transforms(path, "transforms_train.json", white_background, extension)
    test: List[CameraInfo] = []
    if os.path.exists(os.path.join(path, "transforms_test.json")):
        test, _ = read_cameras_from_transforms(path, "transforms_test.json", white_background, extension,
                                               uid_offset=len(train))
    if not eval:
        train = train + test
        test = []
    ply_path = os.path.join(path, "points3d.ply")
    if os.path.exists(ply_path):
        pcd = fetchPly(ply_path)
    else:
        pcd, ply_path = random_point_cloud(ply_path)
    return SceneInfo(point_cloud=pcd, train_cameras=train, val_cameras=[], test_cameras=test,
                     nerf_normalization=getNerfppNorm(train), ply_path=ply_path, layout="Blender")


def read_colmap_info(path: str, images: Optional[str], eval: bool, white_background: bool = False,
                     llffhold: int = 8) -> SceneInfo:
    """COLMAP layout: sparse/0/{cameras,images,points3D}.{bin,txt} and an image folder."""
    sparse = os.path.join(path, "sparse", "0")
    cams, imgs = colmap_loader.read_model(sparse)
    image_dir = os.path.join(path, images or "images")
    bg = np.array([1.0, 1.0, 1.0]) if white_background else np.array([0.0, 0.0, 0.0])
    infos: List[CameraInfo] = []
    for key in sorted(imgs, key=lambda k: imgs[k].name):
        im = imgs[key]
        if im.camera_id not in cams:
            raise DatasetError(f"{sparse}: image {im.name!r} refers to unknown camera_id {im.camera_id}")
        cam = cams[im.camera_id]
        fx, fy, cx, cy = cam.intrinsics()
        R = np.transpose(im.qvec2rotmat())
        T = np.array(im.tvec)
        image_path = os.path.join(image_dir, im.name)
        if not os.path.isfile(image_path):
            raise DatasetError(f"{sparse}: image {im.name!r} (image_id {im.id}): file not found: {image_path}")
        infos.append(CameraInfo(uid=im.id, R=R, T=T, FovY=focal2fov(fy, cam.height), FovX=focal2fov(fx, cam.width),
                                image_path=image_path, image_name=os.path.splitext(os.path.basename(im.name))[0],
                                width=cam.width, height=cam.height, bg=bg, camera_id=im.camera_id,
                                cx=cx, cy=cy, fl_x=fx, fl_y=fy))
    if not infos:
        raise DatasetError(f"{sparse}: the model has no images")
    if eval:
        train = [c for i, c in enumerate(infos) if i % llffhold != 0]
        test = [c for i, c in enumerate(infos) if i % llffhold == 0]
    else:
        train, test = infos, []

    ply_path = os.path.join(sparse, "points3D.ply")
    if not os.path.exists(ply_path):
        bin_p, txt_p = os.path.join(sparse, "points3D.bin"), os.path.join(sparse, "points3D.txt")
        if os.path.exists(bin_p):
            xyz, rgb, _ = colmap_loader.read_points3D_binary(bin_p)
        elif os.path.exists(txt_p):
            xyz, rgb, _ = colmap_loader.read_points3D_text(txt_p)
        else:
            raise DatasetError(f"{sparse}: neither points3D.bin nor points3D.txt found")
        storePly(ply_path, xyz, rgb)
    pcd = fetchPly(ply_path)
    return SceneInfo(point_cloud=pcd, train_cameras=train, val_cameras=[], test_cameras=test,
                     nerf_normalization=getNerfppNorm(train), ply_path=ply_path, layout="Colmap")


def detect_layout(path: str) -> str:
    """'DynamicNerf', 'Colmap' or 'Blender' (raises DatasetError if none matches)."""
    if os.path.exists(os.path.join(path, "canonical_flame_param.npz")):
        return "DynamicNerf"
    if os.path.exists(os.path.join(path, "sparse", "0")):
        return "Colmap"
    if os.path.exists(os.path.join(path, "transforms_train.json")):
        return "Blender"
    raise DatasetError(f"{path}: could not recognize the scene type (no canonical_flame_param.npz, "
                       f"sparse/0 or transforms_train.json)")


def read_scene_info(path: str, images: str = "images", eval: bool = False, white_background: bool = False,
                    target_path: Optional[str] = None, select_camera_id: Optional[int] = None,
                    bind_to_mesh: bool = False) -> SceneInfo:
    """Read a scene folder of any supported layout (see the module docstring and DESIGN.md).

    Dynamic subjects: with ``eval`` the train/val/test splits are kept (val meshes join
    ``train_meshes``; test meshes are ``test_meshes``), else everything is training data.
    ``target_path`` (reenactment): all splits of the target are merged into ``test_cameras``
    (their timesteps index ``tgt_train_meshes``, which holds every target timestep;
    ``tgt_test_meshes`` stays empty). ``select_camera_id`` keeps only that camera in
    val/test/target. ``bind_to_mesh``: no point cloud is read/created (the mesh seeds the splats).
    """
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: source path is not a directory")
    if target_path and not os.path.isdir(target_path):
        raise DatasetError(f"{target_path}: target path is not a directory")
    layout = detect_layout(path)
    if layout == "DynamicNerf":
        return read_dynamic_nerf_info(path, white_background, eval, target_path=target_path,
                                      select_camera_id=select_camera_id, bind_to_mesh=bind_to_mesh)
    if layout == "Colmap":
        return read_colmap_info(path, images, eval, white_background)
    return read_blender_info(path, white_background, eval)


sceneLoadTypeCallbacks = {
    "DynamicNerf": read_dynamic_nerf_info,
    "Colmap": read_colmap_info,
    "Blender": read_blender_info,
}
