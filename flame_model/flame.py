"""FLAME head model (FLAME 2020 / 2023) with teeth, as a batched, differentiable torch module."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from . import teeth as teeth_mod
from .lbs import axis_angle_to_matrix, rigid_transforms, skin, topological_order
from .loader import FlameAssetError, load_flame_arrays, load_masks, optional_path, parent_array, safe_load_pickle
from .masks import FlameMask
from .mesh_utils import cotangent_laplacian, uniform_laplacian
from .obj_io import read_obj

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "flame"
DEFAULT_MODEL_PATH = ASSET_DIR / "flame2023.pkl"
DEFAULT_MASKS_PATH = ASSET_DIR / "FLAME_masks.pkl"
TEMPLATE_OBJ_NAMES = ("head_template_mesh.obj", "head_template.obj")
N_SHAPE_TOTAL = 300


class FlameHead(torch.nn.Module):
    """FLAME: shape/expression blend shapes, pose correctives, LBS over 5 joints, translation.

    ``forward(shape, expr, rotation, neck, jaw, eyes, translation, static_offset=None,
    dynamic_offset=None, return_landmarks=False) -> (verts, verts_cano[, landmarks])``.
    """

    def __init__(self, shape_params: int = 300, expr_params: int = 100,
                 flame_model_path: Optional[Union[str, os.PathLike]] = None,
                 flame_masks_path: Optional[Union[str, os.PathLike]] = None,
                 add_teeth: bool = True,
                 teeth_style: str = "original",
                 flame_template_obj_path: Optional[Union[str, os.PathLike]] = None,
                 landmark_embedding_path: Optional[Union[str, os.PathLike]] = None) -> None:
        super().__init__()
        model_path = optional_path(flame_model_path, "FLAME_MODEL_PATH", DEFAULT_MODEL_PATH)
        data = load_flame_arrays(model_path)
        self.model_path = model_path
        n_total = data["shapedirs"].shape[2]
        n_shape_avail = min(N_SHAPE_TOTAL, n_total)
        n_expr_avail = max(n_total - N_SHAPE_TOTAL, 0)
        if not 0 <= shape_params <= n_shape_avail:
            raise ValueError(f"shape_params={shape_params} but {model_path} has {n_shape_avail} shape components")
        if not 0 <= expr_params <= n_expr_avail:
            raise ValueError(f"expr_params={expr_params} but {model_path} has {n_expr_avail} expression components")
        self.n_shape, self.n_expr = shape_params, expr_params

        v = data["v_template"]
        faces = data["f"]
        shapedirs = np.concatenate([data["shapedirs"][:, :, :shape_params],
                                    data["shapedirs"][:, :, N_SHAPE_TOTAL:N_SHAPE_TOTAL + expr_params]], axis=2)
        posedirs, J_reg, weights = data["posedirs"], data["J_regressor"], data["weights"]
        self.num_verts_flame = v.shape[0]
        self.num_faces_flame = faces.shape[0]

        # masks (optional when no teeth are requested and the file is missing)
        beside = model_path.parent / "FLAME_masks.pkl"
        masks_path = optional_path(flame_masks_path, "FLAME_MASKS_PATH",
                                   beside if beside.is_file() else DEFAULT_MASKS_PATH)
        try:
            regions = load_masks(masks_path)
        except FlameAssetError:
            if add_teeth and v.shape[0] != teeth_mod.FLAME_NUM_VERTS:
                raise
            warnings.warn(f"FLAME masks not found at {masks_path}: only teeth regions available")
            regions = {}
        self.masks_path = masks_path

        uv_data = self._load_uvs(flame_template_obj_path, model_path, v.shape[0], faces)
        self.teeth: Optional[teeth_mod.TeethData] = None
        self.teeth_style = teeth_style if add_teeth else None
        if add_teeth:
            td = teeth_mod.build_teeth(v, faces, shapedirs, posedirs, J_reg.shape[0], regions, shape_params,
                                      style=teeth_style)
            self.teeth = td
            v = np.concatenate([v, td.verts])
            faces = np.concatenate([faces, td.faces])
            shapedirs = np.concatenate([shapedirs, td.shapedirs])
            posedirs = np.concatenate([posedirs, td.posedirs])
            weights = np.concatenate([weights, td.weights])
            J_reg = np.concatenate([J_reg, np.zeros((J_reg.shape[0], 120))], axis=1)
            regions.update({"teeth": np.concatenate([td.upper, td.lower]),
                            "upper_teeth": td.upper, "lower_teeth": td.lower})
            regions.update(td.rings.as_masks())
            if uv_data is not None:
                uvs, tidx = uv_data
                tidx = np.concatenate([tidx, td.faces - self.num_verts_flame + uvs.shape[0]])
                uvs = np.concatenate([uvs, td.uvs])
                uv_data = (uvs, tidx)
        V = v.shape[0]
        self.parents = [int(p) for p in parent_array(data["kintree_table"])]
        self._order = topological_order(self.parents)
        J = len(self.parents)
        if J != 5:
            warnings.warn(f"{model_path}: {J} joints (FLAME has 5); pose inputs assume 5")

        f32 = torch.float32
        self.register_buffer("faces", torch.from_numpy(faces.astype(np.int64)))
        self.register_buffer("v_template", torch.from_numpy(v).to(f32))
        self.register_buffer("shapedirs", torch.from_numpy(shapedirs).to(f32))          # (V,3,S+E)
        self.register_buffer("posedirs", torch.from_numpy(
            posedirs.reshape(V * 3, -1).T.copy()).to(f32))                                # (9(J-1), V*3)
        self.register_buffer("J_regressor", torch.from_numpy(J_reg).to(f32))             # (J, V)
        self.register_buffer("lbs_weights", torch.from_numpy(weights).to(f32))           # (V, J)
        # precomputed joint regression of the template and of the blend shapes
        self.register_buffer("J_template", torch.from_numpy(J_reg @ v).to(f32))          # (J, 3)
        self.register_buffer("J_shapedirs", torch.from_numpy(
            np.einsum("jv,vck->jck", J_reg, shapedirs)).to(f32))                         # (J,3,S+E)
        self.mask = FlameMask(regions, faces, V)
        if uv_data is not None:
            self.register_buffer("verts_uvs", torch.from_numpy(uv_data[0]).to(f32))
            self.register_buffer("textures_idx", torch.from_numpy(uv_data[1].astype(np.int64)))
        else:
            self.register_buffer("verts_uvs", None)
            self.register_buffer("textures_idx", None)
        self.register_buffer("lmk_faces_idx", None)
        self.register_buffer("lmk_bary_coords", None)
        if landmark_embedding_path is not None:
            self.set_landmark_embedding(*load_landmark_embedding(landmark_embedding_path))

    # ------------------------------------------------------------------ assets
    @staticmethod
    def _load_uvs(obj_path, model_path: Path, num_verts: int, faces: np.ndarray):
        candidates = [Path(obj_path)] if obj_path else [model_path.parent / n for n in TEMPLATE_OBJ_NAMES]
        for p in candidates:
            if not p.is_file():
                continue
            mesh = read_obj(p)
            if mesh.verts_uvs is None:
                warnings.warn(f"{p}: no UVs; face UVs unavailable")
                return None
            if mesh.verts.shape[0] != num_verts or mesh.faces.shape != faces.shape:
                warnings.warn(f"{p}: {mesh.verts.shape[0]} vertices / {mesh.faces.shape[0]} faces do not match "
                              f"the model ({num_verts} / {faces.shape[0]}); face UVs unavailable")
                return None
            if not np.array_equal(mesh.faces, faces):
                warnings.warn(f"{p}: face order differs from the model; face UVs unavailable")
                return None
            return mesh.verts_uvs, mesh.textures_idx
        if obj_path:
            raise FileNotFoundError(f"FLAME template OBJ not found at '{obj_path}'")
        return None

    def set_landmark_embedding(self, faces_idx, bary_coords) -> None:
        """Landmarks as barycentric points on faces: ``faces_idx`` (L,), ``bary_coords`` (L,3)."""
        fi = torch.as_tensor(np.asarray(faces_idx), dtype=torch.long).reshape(-1)
        bc = torch.as_tensor(np.asarray(bary_coords), dtype=torch.float32).reshape(-1, 3)
        if fi.shape[0] != bc.shape[0] or (fi.numel() and int(fi.max()) >= self.faces.shape[0]):
            raise ValueError("landmark embedding: faces_idx / bary_coords mismatch or out of range")
        dev = self.v_template.device
        self.lmk_faces_idx = fi.to(dev)
        self.lmk_bary_coords = bc.to(dev, self.v_template.dtype)

    @property
    def num_verts(self) -> int:
        return self.v_template.shape[0]

    def laplacian(self, kind: str = "uniform") -> torch.Tensor:
        """Sparse (V, V) mesh Laplacian of the template (``uniform`` or ``cotangent``)."""
        faces = self.faces.cpu().numpy()
        if kind == "uniform":
            L = uniform_laplacian(faces, self.num_verts)
        elif kind == "cotangent":
            L = cotangent_laplacian(self.v_template.detach().cpu().numpy(), faces)
        else:
            raise ValueError(f"unknown Laplacian kind '{kind}' (uniform | cotangent)")
        return L.to(self.v_template.device, self.v_template.dtype)

    # ------------------------------------------------------------------ forward
    def _pad_offset(self, off: torch.Tensor, name: str, B: int) -> torch.Tensor:
        if off.dim() == 2:
            off = off[None]
        if off.dim() != 3 or off.shape[-1] != 3 or off.shape[1] > self.num_verts:
            raise ValueError(f"{name}: expected (B, <= {self.num_verts}, 3), got {tuple(off.shape)}")
        if off.shape[0] not in (1, B):
            raise ValueError(f"{name}: batch {off.shape[0]} does not match {B}")
        if off.shape[1] < self.num_verts:
            off = torch.nn.functional.pad(off, (0, 0, 0, self.num_verts - off.shape[1]))
        return off.to(self.v_template.dtype)

    def _coeffs(self, shape: torch.Tensor, expr: torch.Tensor, B: int) -> torch.Tensor:
        if shape.dim() == 1:
            shape = shape[None]
        shape = shape.expand(B, -1) if shape.shape[0] == 1 else shape
        if shape.shape[1] > self.n_shape or expr.shape[-1] > self.n_expr:
            raise ValueError(f"got {shape.shape[1]} shape / {expr.shape[-1]} expression parameters; "
                             f"model has {self.n_shape} / {self.n_expr}")
        shape = torch.nn.functional.pad(shape, (0, self.n_shape - shape.shape[1]))
        expr = torch.nn.functional.pad(expr.reshape(B, -1), (0, self.n_expr - expr.shape[-1]))
        return torch.cat([shape, expr], dim=1).to(self.v_template.dtype)

    def forward(self, shape: torch.Tensor, expr: torch.Tensor, rotation: torch.Tensor,
                neck: torch.Tensor, jaw: torch.Tensor, eyes: torch.Tensor, translation: torch.Tensor,
                static_offset: Optional[torch.Tensor] = None, dynamic_offset: Optional[torch.Tensor] = None,
                return_landmarks: bool = False
                ) -> Union[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        B = rotation.shape[0]
        beta = self._coeffs(shape, expr, B)                                      # (B, S+E)
        K = beta.shape[1]
        v_shaped = self.v_template + (beta @ self.shapedirs.view(-1, K).T).view(B, -1, 3)
        joints = self.J_template + (beta @ self.J_shapedirs.view(-1, K).T).view(B, -1, 3)
        offsets = None
        if static_offset is not None:
            offsets = self._pad_offset(static_offset, "static_offset", B)
        if dynamic_offset is not None:
            d = self._pad_offset(dynamic_offset, "dynamic_offset", B)
            offsets = d if offsets is None else offsets + d
        if offsets is not None:
            v_shaped = v_shaped + offsets
            joints = joints + torch.einsum("jv,bvc->bjc", self.J_regressor, offsets)
        pose = torch.cat([rotation, neck, jaw, eyes], dim=-1).reshape(B, -1, 3).to(v_shaped.dtype)
        rot = axis_angle_to_matrix(pose)                                          # (B, J, 3, 3)
        eye3 = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye3).reshape(B, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(B, -1, 3)
        _, A = rigid_transforms(rot, joints, self.parents, self._order)
        verts = skin(v_posed, self.lbs_weights, A) + translation.reshape(B, 1, 3).to(v_shaped.dtype)
        if return_landmarks:
            if self.lmk_faces_idx is None:
                raise ValueError("return_landmarks=True needs a landmark embedding "
                                 "(landmark_embedding_path or set_landmark_embedding)")
            tri = verts[:, self.faces[self.lmk_faces_idx]]                       # (B, L, 3, 3)
            lmk = (tri * self.lmk_bary_coords[None, :, :, None]).sum(2)
            return verts, v_shaped, lmk
        return verts, v_shaped


def load_landmark_embedding(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, np.ndarray]:
    """Read a landmark embedding: ``.npz`` with ``lmk_faces_idx``/``lmk_bary_coords`` (or the FLAME
    ``static_``/``full_`` names), or FLAME's ``landmark_embedding.npy`` (a pickled dict, read with the
    restricted unpickler)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark embedding not found at '{path}'")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    else:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(fh)
            if dtype.hasobject:
                d = safe_load_pickle(fh)
                if isinstance(d, np.ndarray):
                    d = d.item()
            else:
                raise ValueError(f"{path}: expected a pickled dict of landmark arrays")
    for prefix in ("", "full_", "static_"):
        fi, bc = d.get(f"{prefix}lmk_faces_idx"), d.get(f"{prefix}lmk_bary_coords")
        if fi is not None and bc is not None:
            return np.asarray(fi).reshape(-1), np.asarray(bc).reshape(-1, 3)
    raise ValueError(f"{path}: no lmk_faces_idx / lmk_bary_coords arrays (keys: {sorted(d)})")
