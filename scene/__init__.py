"""The scene: cameras of one subject (or static scene) plus the Gaussian model trained on it.

:class:`Scene` reads the source folder (:func:`scene.dataset_readers.read_scene_info`), builds
the cameras at the requested resolution, hands the FLAME meshes to a mesh-bound model, and either
initialises the Gaussians (fresh run) or loads a saved iteration (``render.py``, viewers).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any, Dict, List, Optional, Sequence

from utils.system_utils import atomic_write, mkdir_p, searchForMaxIteration

__all__ = ["Scene"]


def _is_mesh_bound(gaussians: Any) -> bool:
    """True for models whose splats ride a mesh (they accept FLAME meshes)."""
    return hasattr(gaussians, "load_meshes") and callable(getattr(gaussians, "load_meshes"))


class Scene:
    """Cameras, splits and the Gaussian model of one training run.

    Args:
        args: ``ModelParams`` (source_path, model_path, images, resolution, white_background,
            data_device, eval, bind_to_mesh, select_camera_id, target_path).
        gaussians: a ``GaussianModel`` or ``FlameGaussianModel``.
        load_iteration: None for a fresh run; N to load ``point_cloud/iteration_N``; -1 for the
            latest saved iteration.
        shuffle: shuffle the training (and test) cameras once, with the global ``random``.
        resolution_scales: extra downscales to prepare (1.0 only in normal use).
        progress: show the camera loading bar.
    """

    def __init__(self, args: Any, gaussians: Any, load_iteration: Optional[int] = None, shuffle: bool = True,
                 resolution_scales: Sequence[float] = (1.0,), progress: bool = True):
        from scene.cameras import cameras_from_infos
        from scene.dataset_readers import read_scene_info

        self.model_path: str = args.model_path
        self.gaussians = gaussians
        self.loaded_iter: Optional[int] = None
        if load_iteration is not None:
            point_cloud_dir = os.path.join(self.model_path, "point_cloud")
            if int(load_iteration) == -1:
                self.loaded_iter = searchForMaxIteration(point_cloud_dir)
            else:
                self.loaded_iter = int(load_iteration)
            ply = self._ply_path(self.loaded_iter)
            if not os.path.isfile(ply):
                raise FileNotFoundError(f"no saved model at {ply} (iteration {self.loaded_iter})")

        if not args.source_path or not os.path.isdir(args.source_path):
            raise FileNotFoundError(f"source path is not a folder: {args.source_path!r}")
        select_id = getattr(args, "select_camera_id", -1)
        select = int(select_id) if select_id is not None and int(select_id) >= 0 else None
        scene_info = read_scene_info(
            args.source_path, images=args.images, eval=args.eval, white_background=args.white_background,
            target_path=(args.target_path or None), select_camera_id=select, bind_to_mesh=args.bind_to_mesh,
        )
        self.scene_info = scene_info

        train_infos = list(scene_info.train_cameras)
        val_infos = list(scene_info.val_cameras or [])
        test_infos = list(scene_info.test_cameras or [])

        if self.loaded_iter is None:
            self._write_inputs(scene_info, train_infos + val_infos + test_infos)

        if shuffle:
            random.shuffle(train_infos)  # multi-resolution consistent random order
            random.shuffle(test_infos)

        self.cameras_extent: float = float(scene_info.nerf_normalization["radius"])

        self.train_cameras: Dict[float, List[Any]] = {}
        self.val_cameras: Dict[float, List[Any]] = {}
        self.test_cameras: Dict[float, List[Any]] = {}
        common = dict(resolution=args.resolution, data_device=args.data_device,
                      white_background=args.white_background, progress=progress)
        for scale in resolution_scales:
            self.train_cameras[scale] = cameras_from_infos(train_infos, scale, desc="Loading training cameras", **common)
            self.val_cameras[scale] = cameras_from_infos(val_infos, scale, desc="Loading validation cameras", **common)
            self.test_cameras[scale] = cameras_from_infos(test_infos, scale, desc="Loading test cameras", **common)

        if _is_mesh_bound(gaussians):
            gaussians.load_meshes(scene_info.train_meshes, scene_info.test_meshes,
                                  scene_info.tgt_train_meshes, scene_info.tgt_test_meshes)

        if self.loaded_iter is not None:
            self._load_model(args, self._ply_path(self.loaded_iter))
        else:
            gaussians.create_from_pcd(scene_info.point_cloud, self.cameras_extent)

    # ------------------------------------------------------------------ helpers
    def _ply_path(self, iteration: int) -> str:
        return os.path.join(self.model_path, "point_cloud", f"iteration_{iteration}", "point_cloud.ply")

    def _write_inputs(self, scene_info: Any, infos: List[Any]) -> None:
        """Copy the initial point cloud to ``input.ply`` and write ``cameras.json`` (fresh runs)."""
        mkdir_p(self.model_path)
        ply_path = getattr(scene_info, "ply_path", None)
        if ply_path and os.path.isfile(ply_path):
            with open(ply_path, "rb") as src, atomic_write(os.path.join(self.model_path, "input.ply"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        entries = [self._camera_entry(i, info) for i, info in enumerate(infos)]
        with atomic_write(os.path.join(self.model_path, "cameras.json"), "w") as fh:
            json.dump(entries, fh)

    @staticmethod
    def _camera_entry(idx: int, info: Any) -> Dict[str, Any]:
        """cameras.json entry of a CameraInfo at its native size (SPEC 4 fields)."""
        import numpy as np

        from utils.graphics_utils import fov2focal

        R = np.asarray(info.R, dtype=np.float64)  # camera-to-world rotation
        T = np.asarray(info.T, dtype=np.float64)  # world-to-camera translation
        position = -R @ T
        width, height = int(info.width), int(info.height)
        fl_x = getattr(info, "fl_x", None)
        fl_y = getattr(info, "fl_y", None)
        entry = {
            "id": idx,
            "img_name": info.image_name,
            "width": width,
            "height": height,
            "position": position.tolist(),
            "rotation": R.tolist(),
            "fy": float(fl_y) if fl_y is not None else float(fov2focal(info.FovY, height)),
            "fx": float(fl_x) if fl_x is not None else float(fov2focal(info.FovX, width)),
        }
        for key in ("timestep", "camera_id"):
            value = getattr(info, key, None)
            if value is not None:
                entry[key] = int(value)
        return entry

    def _load_model(self, args: Any, ply: str) -> None:
        """Load a saved iteration (the FLAME model also reads ``flame_param.npz`` beside it)."""
        if _is_mesh_bound(self.gaussians):
            try:
                self.gaussians.load_ply(ply, has_target=bool(getattr(args, "target_path", "")))
                return
            except TypeError:
                pass  # a load_ply without the has_target keyword
        self.gaussians.load_ply(ply)

    # ------------------------------------------------------------------ API
    def save(self, iteration: int) -> str:
        """Write ``point_cloud/iteration_N/point_cloud.ply`` (+ ``flame_param.npz`` for FLAME
        models) atomically; returns the PLY path."""
        path = self._ply_path(iteration)
        mkdir_p(os.path.dirname(path))
        self.gaussians.save_ply(path)
        return path

    def getTrainCameras(self, scale: float = 1.0) -> List[Any]:
        return self.train_cameras[scale]

    def getValCameras(self, scale: float = 1.0) -> List[Any]:
        return self.val_cameras[scale]

    def getTestCameras(self, scale: float = 1.0) -> List[Any]:
        return self.test_cameras[scale]
