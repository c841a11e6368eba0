"""Gaussians rigged to the FLAME head mesh (GaussianAvatars, SPEC 5).

Every splat is bound to one triangle (``binding``); its parameters live in that triangle's local
frame. Per posed triangle (v0, v1, v2): origin = centroid, R = [a0 | a1 | a2] with
a0 = normalize(v1 - v0), a1 = normalize(a0 x (v2 - v0)), a2 = -normalize(a1 x a0), and scale
k = (|v1 - v0| + |a2 . (v2 - v0)|) / 2. A splat (mu, s, q) on triangle t is rendered at
``R_t mu k_t + centroid_t`` with scale ``exp(s) k_t`` and rotation ``quat(R_t) * normalize(q)``.

Typical use (train.py / render.py)::

    g = FlameGaussianModel(sh_degree, disable_flame_static_offset, not_finetune_flame_params,
                           flame_model_path=args.flame_model_path or None)
    g.load_meshes(train_meshes, test_meshes, tgt_train_meshes, tgt_test_meshes)
    g.create_from_pcd(None, extent)  or  g.load_ply(ply, has_target=...)
    g.training_setup(opt)
    each iteration: g.select_mesh_by_timestep(cam.timestep); render; losses; step
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from scene.gaussian_model import GaussianModel
from scene.pose_batches import PosedFrames
from utils.general_utils import inverse_sigmoid, quat_multiply, quat_table, rotmat_to_quat
from utils.sh_utils import RGB2SH
from utils.system_utils import atomic_write

try:  # our fused CUDA transform (submodules/splat-binding); the PyTorch getters serve without it
    import splat_binding
except ImportError:  # pragma: no cover - depends on the installation
    splat_binding = None

__all__ = ["FlameGaussianModel", "compute_face_orientation", "FLAME_PARAM_KEYS", "FLAME_POSE_KEYS"]

FLAME_PARAM_KEYS = (
    "shape", "expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation",
    "static_offset", "dynamic_offset",
)
# Per-timestep keys (everything but the identity shape and the static offset), with widths.
FLAME_POSE_KEYS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
FLAME_NPZ_NAME = "flame_param.npz"


def compute_face_orientation(
    verts: torch.Tensor, faces: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-triangle frames of SPEC 5.

    ``verts`` (..., V,3), ``faces`` (F,3) long -> ``center`` (..., F,3), ``R`` (..., F,3,3) with
    columns a0, a1, a2, ``k`` (..., F,1).
    """
    tri = verts[..., faces, :]  # (..., F,3,3)
    v0, v1, v2 = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    e1 = v1 - v0
    e2 = v2 - v0
    a0 = F.normalize(e1, dim=-1)
    a1 = F.normalize(torch.linalg.cross(a0, e2, dim=-1), dim=-1)
    a2 = -F.normalize(torch.linalg.cross(a1, a0, dim=-1), dim=-1)
    R = torch.stack([a0, a1, a2], dim=-1)
    k = (e1.norm(dim=-1, keepdim=True) + (a2 * e2).sum(-1, keepdim=True).abs()) / 2
    center = tri.mean(dim=-2)
    return center, R, k


def _vector(arr: Any, size: int, src: str, field: str) -> torch.Tensor:
    """Flatten ``arr`` to ``size`` floats: zero-padded if shorter, truncated if longer (FLAME
    components are ordered, so fewer components is a consistent truncation)."""
    a = np.asarray(arr, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{src}: field {field!r} holds non-finite values")
    out = np.zeros(size, dtype=np.float32)
    n = min(size, a.shape[0])
    out[:n] = a[:n]
    return torch.from_numpy(out)


def _offsets(arr: Any, num_verts: int, src: str, field: str) -> torch.Tensor:
    """(..., V', 3) vertex offsets -> (B, num_verts, 3), zero-padded (files may lack teeth)."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape[1] > num_verts:
        raise ValueError(f"{src}: field {field!r} has shape {a.shape}, expected (B, <= {num_verts}, 3)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{src}: field {field!r} holds non-finite values")
    out = np.zeros((a.shape[0], num_verts, 3), dtype=np.float32)
    out[:, : a.shape[1]] = a
    return torch.from_numpy(out)


def _per_frame(arr: Any, T: int, width: int, src: str, field: str) -> torch.Tensor:
    """(T, width') per-frame parameters -> (T, width), zero-padded / truncated columns."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] != T:
        raise ValueError(f"{src}: field {field!r} has shape {a.shape}, expected ({T}, {width})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{src}: field {field!r} holds non-finite values")
    out = np.zeros((T, width), dtype=np.float32)
    n = min(width, a.shape[1])
    out[:, :n] = a[:, :n]
    return torch.from_numpy(out)


class FlameGaussianModel(GaussianModel):
    """Gaussians bound to the triangles of a FLAME mesh driven per timestep."""

    def __init__(
        self,
        sh_degree: int,
        disable_flame_static_offset: bool = False,
        not_finetune_flame_params: bool = False,
        n_shape: int = 300,
        n_expr: int = 100,
        *,
        flame_model_path: Optional[str] = None,
        flame_masks_path: Optional[str] = None,
        teeth_style: str = "original",
        flame_model: Optional[torch.nn.Module] = None,
        device: Optional[torch.device | str] = None,
    ):
        super().__init__(sh_degree, device=device)
        self.disable_flame_static_offset = bool(disable_flame_static_offset)
        self.not_finetune_flame_params = bool(not_finetune_flame_params)
        self.n_shape = int(n_shape)
        self.n_expr = int(n_expr)
        if flame_model is None:
            from flame_model.flame import FlameHead

            flame_model = FlameHead(
                shape_params=self.n_shape,
                expr_params=self.n_expr,
                flame_model_path=flame_model_path or None,
                flame_masks_path=flame_masks_path or None,
                add_teeth=True,
                teeth_style=teeth_style,
            )
        self.flame_model = flame_model.to(self.device)
        self.faces: torch.Tensor = self.flame_model.faces.to(self.device, torch.long)
        self.num_faces = int(self.faces.shape[0])
        self.num_verts = int(self.flame_model.v_template.shape[0])

        self.flame_param: Optional[Dict[str, torch.Tensor]] = None
        self.flame_param_orig: Optional[Dict[str, torch.Tensor]] = None
        self._flame_param_from_file = False
        self.num_timesteps = 0
        self.timestep: Optional[int | torch.Tensor] = None

        self.binding = torch.arange(self.num_faces, device=self.device)
        self.binding_counter = torch.ones(self.num_faces, dtype=torch.long, device=self.device)

        self.verts: Optional[torch.Tensor] = None
        self.verts_cano: Optional[torch.Tensor] = None
        self.face_center: Optional[torch.Tensor] = None
        self.face_orien_mat: Optional[torch.Tensor] = None
        self.face_orien_quat: Optional[torch.Tensor] = None
        self.face_scaling: Optional[torch.Tensor] = None
        self._laplacian: Optional[torch.Tensor] = None
        self._graphed_pose: Optional[Any] = None
        self._graphed_requires_grad: Tuple[bool, ...] = ()
        self._graphed_inputs: Tuple[torch.Tensor, ...] = ()
        self._graph_t: Optional[torch.Tensor] = None
        self._inference_pose: Optional["_InferencePoseGraph"] = None
        self._quat_table = quat_table(self.device)

    # ------------------------------------------------------------------ FLAME parameters
    def _clone_params(self, params: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone().to(self.device, torch.float32) for k, v in params.items()}

    def _stack_meshes(self, meshes: Mapping[int, Mapping[str, Any]], ref: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """Stack per-timestep FLAME dicts into (T, ...) tensors; identity from ``ref``."""
        T = max(int(t) for t in meshes) + 1
        if min(int(t) for t in meshes) < 0:
            raise ValueError("load_meshes: timesteps must be non-negative")
        V = self.num_verts
        src0 = "flame parameters of the first timestep"
        if "shape" not in ref:
            raise ValueError(f"{src0}: missing field 'shape'")
        if self.disable_flame_static_offset or ref.get("static_offset") is None:
            static_offset = torch.zeros(1, V, 3)
        else:
            static_offset = _offsets(ref["static_offset"], V, src0, "static_offset")[:1]
        param = {
            "shape": _vector(ref["shape"], self.n_shape, src0, "shape"),
            "expr": torch.zeros(T, self.n_expr),
            **{k: torch.zeros(T, w) for k, w in FLAME_POSE_KEYS.items()},
            "static_offset": static_offset,
            "dynamic_offset": torch.zeros(T, V, 3),
        }
        for t, mesh in meshes.items():
            src = f"flame parameters of timestep {t}"
            for key, width in [("expr", self.n_expr), *FLAME_POSE_KEYS.items()]:
                if key not in mesh:
                    raise ValueError(f"{src}: missing field {key!r}")
                param[key][int(t)] = _vector(mesh[key], width, src, key)
            if mesh.get("dynamic_offset") is not None:
                param["dynamic_offset"][int(t)] = _offsets(mesh["dynamic_offset"], V, src, "dynamic_offset")[0]
        return {k: v.to(self.device) for k, v in param.items()}

    def load_meshes(
        self,
        train_meshes: Mapping[int, Mapping[str, Any]],
        test_meshes: Mapping[int, Mapping[str, Any]],
        tgt_train_meshes: Optional[Mapping[int, Mapping[str, Any]]] = None,
        tgt_test_meshes: Optional[Mapping[int, Mapping[str, Any]]] = None,
    ) -> None:
        """Build ``flame_param`` from per-timestep FLAME dicts (SPEC 2.1 keys).

        The motion comes from the target meshes when given (cross-identity reenactment), else
        from the subject's own; the identity (shape, static offset) always from the subject's
        first timestep. ``flame_param_orig`` keeps the tracked values. If fine-tuned parameters
        were already loaded (``load_ply`` / ``restore``) they are kept: all of them without a
        target, only the identity with one.
        """
        meshes = {**(train_meshes or {}), **(test_meshes or {})}
        tgt = {**(tgt_train_meshes or {}), **(tgt_test_meshes or {})}
        pose_meshes = tgt if tgt else meshes
        if not pose_meshes:
            raise ValueError("load_meshes: no FLAME parameters given (empty train/test meshes)")
        ref_dict = meshes if meshes else pose_meshes
        ref = ref_dict[min(ref_dict)]
        tracked = self._stack_meshes(pose_meshes, ref)
        loaded = self.flame_param if self._flame_param_from_file else None
        self.flame_param_orig = self._clone_params(tracked)
        if loaded is None:
            self.flame_param = self._clone_params(tracked)
        elif tgt:
            merged = self._clone_params(tracked)
            merged["shape"] = loaded["shape"].detach().clone()
            merged["static_offset"] = loaded["static_offset"].detach().clone()
            self.flame_param = merged
        else:
            self.flame_param = loaded
        self.num_timesteps = int(self.flame_param["expr"].shape[0])

    def _read_flame_npz(self, path: str, keys=FLAME_PARAM_KEYS) -> Dict[str, torch.Tensor]:
        """Stacked FLAME parameters from an npz (SPEC 4); missing offsets become zeros."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable npz file ({exc})") from exc
        if "expr" not in raw:
            raise ValueError(f"{path}: missing field 'expr'")
        expr = np.asarray(raw["expr"], dtype=np.float32)
        if expr.ndim == 1:
            expr = expr[None]
        T = expr.shape[0]
        V = self.num_verts
        out: Dict[str, torch.Tensor] = {"expr": _per_frame(expr, T, self.n_expr, path, "expr")}
        for k, w in FLAME_POSE_KEYS.items():
            if k not in raw:
                raise ValueError(f"{path}: missing field {k!r}")
            out[k] = _per_frame(raw[k], T, w, path, k)
        if "shape" in keys:
            if "shape" not in raw:
                raise ValueError(f"{path}: missing field 'shape'")
            out["shape"] = _vector(raw["shape"], self.n_shape, path, "shape")
        if "static_offset" in keys:
            so = raw.get("static_offset")
            if so is None or self.disable_flame_static_offset:
                out["static_offset"] = torch.zeros(1, V, 3)
            else:
                out["static_offset"] = _offsets(so, V, path, "static_offset")[:1]
        dyn = raw.get("dynamic_offset")
        if dyn is None:
            out["dynamic_offset"] = torch.zeros(T, V, 3)
        else:
            d = _offsets(dyn, V, path, "dynamic_offset")
            if d.shape[0] != T:
                raise ValueError(f"{path}: field 'dynamic_offset' has {d.shape[0]} frames, 'expr' has {T}")
            out["dynamic_offset"] = d
        return {k: v.to(self.device) for k, v in out.items()}

    def load_motion(self, motion_path: str) -> None:
        """Replace the per-frame parameters (expression, poses, translation) by a motion npz
        (e.g. another subject's ``flame_param.npz``); the identity is kept."""
        if self.flame_param is None:
            raise RuntimeError("load_motion: load the avatar (load_ply or load_meshes) first")
        if not os.path.isfile(motion_path):
            raise FileNotFoundError(f"FLAME motion file not found: {motion_path}")
        motion = self._read_flame_npz(motion_path, keys=("expr", *FLAME_POSE_KEYS))
        for params in (self.flame_param, self.flame_param_orig):
            if params is None:
                continue
            for k, v in motion.items():
                params[k] = v.clone()
        self.num_timesteps = int(self.flame_param["expr"].shape[0])

    # ------------------------------------------------------------------ posed mesh
    def _frame_slice(self, timestep) -> slice | torch.Tensor:
        if isinstance(timestep, torch.Tensor):
            return timestep.reshape(-1)[:1].to(self.device, torch.long)
        t = int(timestep)
        if not 0 <= t < self.num_timesteps:
            raise IndexError(f"timestep {t} out of range: the avatar has {self.num_timesteps} timesteps")
        return slice(t, t + 1)

    def _pose_args(self, fp: Mapping[str, torch.Tensor], sl) -> Tuple[torch.Tensor, ...]:
        return (fp["shape"][None], fp["expr"][sl], fp["rotation"][sl], fp["neck_pose"][sl], fp["jaw_pose"][sl],
                fp["eyes_pose"][sl], fp["translation"][sl], fp["static_offset"], fp["dynamic_offset"][sl])

    def _pose_frames(self, shape, expr, rotation, neck, jaw, eyes, translation, static_offset, dynamic_offset):
        """FLAME for one frame and the per-face frames of the posed mesh (tensors in, tensors out)."""
        verts, verts_cano = self.flame_model(shape, expr, rotation, neck, jaw, eyes, translation,
                                             static_offset=static_offset, dynamic_offset=dynamic_offset)
        center, R, k = compute_face_orientation(verts[0], self.faces)
        return verts, verts_cano, center, R, rotmat_to_quat(R, self._quat_table), k

    def _full_pose_args(self, fp: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        return (fp["shape"], fp["expr"], fp["rotation"], fp["neck_pose"], fp["jaw_pose"], fp["eyes_pose"],
                fp["translation"], fp["static_offset"], fp["dynamic_offset"])

    def _pose_frames_at(self, t_index, shape, expr, rotation, neck, jaw, eyes, translation, static_offset,
                        dynamic_offset):
        """:meth:`_pose_frames` for frame ``t_index`` ((1,) long tensor) of the full per-frame
        parameters, reading them inside the function (so a graph of it reads the live tensors).
        The mesh comes back without autograd history: training needs gradients of the face
        frames only."""
        def pick(x):
            return x.index_select(0, t_index)

        verts, verts_cano, center, R, quat, k = self._pose_frames(
            shape[None], pick(expr), pick(rotation), pick(neck), pick(jaw), pick(eyes), pick(translation),
            static_offset, pick(dynamic_offset))
        return verts.detach(), verts_cano.detach(), center, R, quat, k

    def enable_cuda_graphs(self) -> bool:
        """Capture FLAME posing plus the per-face frames (forward and backward) as CUDA graphs.

        The per-iteration mesh update is a few hundred small kernels whose launch cost, not their
        arithmetic, limits training speed; replaying a graph launches them at once. The graph
        reads the live FLAME parameter tensors (all frames; Adam updates them in place) at a
        frame index held in a device tensor, so a replay needs no input copies, and its backward
        writes the parameters' gradients directly. The captured function is checked against the
        eager one before use; on any problem this returns False and the eager path stays. Only
        the training path (autograd on, the parameters captured) uses the graph."""
        if self.device.type != "cuda" or self.flame_param is None or self.num_timesteps < 1:
            return False
        # The capture warms up on a side stream; autograd's notice about that stream mismatch
        # (harmless here: the graph replays on the current stream) is silenced before it.
        quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
        if quiet is not None:
            quiet(False)
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
        full = self._full_pose_args(self.flame_param)
        t_index = torch.full((1,), self.num_timesteps - 1, dtype=torch.long, device=self.device)
        try:
            graphed = torch.cuda.make_graphed_callables(self._pose_frames_at, (t_index,) + full,
                                                        allow_unused_input=True)
            with torch.no_grad():
                eager = self._pose_frames(*self._pose_args(self.flame_param, slice(self.num_timesteps - 1, None)))
            replay = graphed(t_index, *full)
            torch.cuda.synchronize()
        except (RuntimeError, TypeError, ValueError) as exc:
            print(f"note: CUDA graphs for FLAME posing unavailable ({exc}); using eager kernels")
            return False
        if not all(torch.allclose(a, b.detach(), rtol=1e-4, atol=1e-6) for a, b in zip(eager, replay)):
            print("note: CUDA-graph FLAME posing disagrees with the eager path; using eager kernels")
            return False
        self._graphed_pose = graphed
        self._graphed_inputs = full
        self._graph_t = t_index
        self._graphed_requires_grad = tuple(a.requires_grad for a in full)
        return True

    def _graph_usable(self, fp: Mapping[str, torch.Tensor]) -> bool:
        """The training graph serves when it was captured on exactly these parameter tensors,
        autograd is on, and no gradient is pending: its backward hands out its own gradient
        buffers, which a second backward before ``zero_grad`` would overwrite."""
        if self._graphed_pose is None or not torch.is_grad_enabled():
            return False
        full = self._full_pose_args(fp)
        return all(a is b and a.grad is None for a, b in zip(full, self._graphed_inputs)) \
            and tuple(a.requires_grad for a in full) == self._graphed_requires_grad

    def enable_inference_graphs(self) -> bool:
        """Capture FLAME posing plus the per-face frames without autograd as one CUDA graph, for
        rendering and evaluation (render.py, the viewers, evaluation during training): one replay
        instead of a few hundred kernel launches per new frame. Checked against the eager path;
        False (eager stays) when unavailable."""
        if self.device.type != "cuda" or self.flame_param is None or self.num_timesteps < 1:
            return False
        try:
            graph = _InferencePoseGraph(self._pose_frames, self._pose_args(self.flame_param, slice(0, 1)))
            args = self._pose_args(self.flame_param, slice(self.num_timesteps - 1, self.num_timesteps))
            with torch.no_grad():
                eager = self._pose_frames(*args)
                replay = graph(*args)
            torch.cuda.synchronize()
        except (RuntimeError, TypeError, ValueError) as exc:
            print(f"note: CUDA graph for FLAME posing (inference) unavailable ({exc}); using eager kernels")
            return False
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(eager, replay)):
            print("note: CUDA-graph FLAME posing (inference) disagrees with the eager path; using eager kernels")
            return False
        self._inference_pose = graph
        return True

    def pose_frame(self, frame: Mapping[str, torch.Tensor]) -> None:
        """Pose FLAME with one frame of parameters given as tensors (``expr``, ``rotation``,
        ``neck_pose``, ``jaw_pose``, ``eyes_pose``, ``translation``, each (1, width) on the
        model's device; identity and static offset from the avatar, no dynamic offset) and update
        the per-face frames, without autograd (viewers, reenactment)."""
        if self.flame_param is None:
            raise RuntimeError("pose_frame: no FLAME parameters (call load_meshes or load_ply)")
        fp = self.flame_param
        V = fp["static_offset"].shape[-2]
        dyn = frame.get("dynamic_offset")
        if dyn is None:
            dyn = torch.zeros(1, V, 3, device=self.device)
        args = (fp["shape"][None], frame["expr"], frame["rotation"], frame["neck_pose"], frame["jaw_pose"],
                frame["eyes_pose"], frame["translation"], fp["static_offset"], dyn)
        with torch.no_grad():
            if self._inference_pose is not None and self._inference_pose.accepts(args):
                self._set_frames(*self._inference_pose(*args))
            else:
                self._set_frames(*self._pose_frames(*args))

    def select_mesh_by_timestep(self, timestep, original: bool = False) -> None:
        """Pose FLAME for ``timestep`` (int or 0-d/1-element long tensor; tensors avoid any host
        sync) with the fine-tuned (or, with ``original``, the tracked) parameters, and cache the
        per-face frames used by the getters."""
        if self.flame_param is None:
            raise RuntimeError("select_mesh_by_timestep: no FLAME parameters (call load_meshes or load_ply)")
        fp = self.flame_param_orig if original and self.flame_param_orig is not None else self.flame_param
        sl = self._frame_slice(timestep)
        self.timestep = timestep
        if not original and self._graph_usable(fp):
            if isinstance(sl, torch.Tensor):
                self._graph_t.copy_(sl, non_blocking=True)
            else:
                self._graph_t.fill_(sl.start)
            self._set_frames(*self._graphed_pose(self._graph_t, *self._graphed_inputs))
            return
        args = self._pose_args(fp, sl)
        if self._inference_pose is not None and not torch.is_grad_enabled() and self._inference_pose.accepts(args):
            self._set_frames(*self._inference_pose(*args))
            return
        verts, verts_cano, center, R, quat, k = self._pose_frames(*args)
        self._set_frames(verts, verts_cano, center, R, quat, k)

    def pose_timesteps(self, timesteps: Sequence[int]) -> PosedFrames:
        """Pose FLAME for several timesteps (fine-tuned parameters) in one batched pass without
        autograd and return their meshes and per-face frames; :meth:`use_posed` makes one of them
        current. Rendering a sequence this way (``scene.pose_batches.SequencePoser``) costs one
        FLAME pass per batch instead of one per timestep. The values equal
        :meth:`select_mesh_by_timestep`'s up to float32 rounding (batched matrix products)."""
        if self.flame_param is None:
            raise RuntimeError("pose_timesteps: no FLAME parameters (call load_meshes or load_ply)")
        ts = tuple(int(t) for t in timesteps)
        if not ts:
            raise ValueError("pose_timesteps: no timesteps given")
        for t in ts:
            if not 0 <= t < self.num_timesteps:
                raise IndexError(f"timestep {t} out of range: the avatar has {self.num_timesteps} timesteps")
        idx = torch.tensor(ts, dtype=torch.long, device=self.device)
        fp = self.flame_param
        with torch.no_grad():
            verts, verts_cano = self.flame_model(
                fp["shape"][None], fp["expr"][idx], fp["rotation"][idx], fp["neck_pose"][idx], fp["jaw_pose"][idx],
                fp["eyes_pose"][idx], fp["translation"][idx], static_offset=fp["static_offset"],
                dynamic_offset=fp["dynamic_offset"][idx])
            center, R, k = compute_face_orientation(verts, self.faces)
            quat = rotmat_to_quat(R, self._quat_table)
        return PosedFrames(ts, verts, verts_cano, center, R, quat, k)

    def use_posed(self, frames: PosedFrames, timestep: int) -> None:
        """Make ``timestep``'s frame of ``frames`` (from :meth:`pose_timesteps`) the current pose,
        as :meth:`select_mesh_by_timestep` would (views into ``frames``, no kernels)."""
        i = frames.position(timestep)
        self.timestep = int(timestep)
        self._set_frames(frames.verts[i:i + 1], frames.verts_cano[i:i + 1], frames.center[i], frames.R[i],
                         frames.quat[i], frames.k[i])

    def select_mesh_by_index(self, t_index: torch.Tensor) -> None:
        """Pose FLAME for the frame in ``t_index`` ((1,) long tensor on the model's device) with
        the fine-tuned parameters and autograd on the face frames, with eager kernels and no
        host synchronisation: the posing step of a training iteration captured as one CUDA graph
        (the FLAME graphs of :meth:`enable_cuda_graphs` cannot be replayed inside a capture)."""
        if self.flame_param is None:
            raise RuntimeError("select_mesh_by_index: no FLAME parameters (call load_meshes or load_ply)")
        self.timestep = t_index
        self._set_frames(*self._pose_frames_at(t_index, *self._full_pose_args(self.flame_param)))

    def _set_frames(self, verts, verts_cano, center, R, quat, k) -> None:
        self.face_center, self.face_orien_mat, self.face_orien_quat, self.face_scaling = center, R, quat, k
        self.verts = verts.reshape(-1, verts.shape[-2], 3)[:1]
        self.verts_cano = verts_cano

    def update_mesh_properties(self, verts: torch.Tensor, verts_cano: Optional[torch.Tensor] = None) -> None:
        """Set the posed mesh ``verts`` ((1,V,3) or (V,3)) and its per-face frames."""
        v = verts.reshape(-1, verts.shape[-2], 3)[0]
        center, R, k = compute_face_orientation(v, self.faces)
        self.face_center = center
        self.face_orien_mat = R
        self.face_orien_quat = rotmat_to_quat(R, self._quat_table)
        self.face_scaling = k
        self.verts = v[None]
        self.verts_cano = verts_cano

    def _require_frames(self) -> None:
        if self.face_center is None:
            raise RuntimeError("the mesh is not posed yet: call select_mesh_by_timestep(t) first")

    # ------------------------------------------------------------------ world-space getters
    @property
    def get_xyz(self) -> torch.Tensor:
        self._require_frames()
        b = self.binding
        local = torch.einsum("nij,nj->ni", self.face_orien_mat[b], self._xyz)
        return local * self.face_scaling[b] + self.face_center[b]

    @property
    def get_scaling(self) -> torch.Tensor:
        self._require_frames()
        return self.scaling_activation(self._scaling) * self.face_scaling[self.binding]

    def world_transform(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(get_xyz, get_scaling, get_rotation)`` in one call: on CUDA one fused kernel forward
        and one backward (``splat_binding``) instead of dozens of small ones; the same values."""
        self._require_frames()
        if splat_binding is None:
            return self.get_xyz, self.get_scaling, self.get_rotation
        return splat_binding.bound_transform(self._xyz, self._scaling, self._rotation, self.binding,
                                             self.face_center, self.face_orien_mat, self.face_orien_quat,
                                             self.face_scaling)

    @property
    def get_rotation(self) -> torch.Tensor:
        self._require_frames()
        return quat_multiply(self.face_orien_quat[self.binding], self.rotation_activation(self._rotation))

    # ------------------------------------------------------------------ initialisation
    def create_from_pcd(self, pcd, spatial_lr_scale: float) -> None:
        """One splat per triangle (the point cloud is ignored): local position 0, scale 1 in
        triangle units, identity rotation, opacity 0.1, mid-grey colour."""
        self.spatial_lr_scale = float(spatial_lr_scale)
        n = self.num_faces
        self.binding = torch.arange(n, device=self.device)
        self.binding_counter = torch.ones(n, dtype=torch.long, device=self.device)
        k = (self.max_sh_degree + 1) ** 2
        features = torch.zeros((n, 3, k), device=self.device)
        features[:, :, 0] = RGB2SH(torch.full((n, 3), 0.5, device=self.device))
        rots = torch.zeros((n, 4), device=self.device)
        rots[:, 0] = 1
        self._set_params(
            torch.zeros((n, 3), device=self.device),
            features[:, :, 0:1].transpose(1, 2),
            features[:, :, 1:].transpose(1, 2),
            torch.zeros((n, 3), device=self.device),
            rots,
            inverse_sigmoid(0.1 * torch.ones((n, 1), device=self.device)),
        )

    # ------------------------------------------------------------------ optimisation
    def _extra_param_groups(self, training_args) -> List[Dict[str, Any]]:
        """FLAME fine-tuning groups ``flame_expr``, ``flame_pose`` (rotation, neck, jaw, eyes)
        and ``flame_translation``, unless ``not_finetune_flame_params``. Offsets are optimised
        only when ``training_args`` has ``train_static_offset`` / ``train_dynamic_offset`` True
        (groups ``flame_static_offset`` / ``flame_dynamic_offset``, lr ``flame_offset_lr``,
        default 1e-6)."""
        if self.flame_param is None:
            raise RuntimeError("training_setup: load the FLAME parameters (load_meshes) first")
        groups: List[Dict[str, Any]] = []
        fp = self.flame_param
        for t in fp.values():
            t.requires_grad_(False)
        if not self.not_finetune_flame_params:
            pose = [fp["rotation"], fp["neck_pose"], fp["jaw_pose"], fp["eyes_pose"]]
            for t in [fp["expr"], fp["translation"], *pose]:
                t.requires_grad_(True)
            groups += [
                {"params": [fp["expr"]], "lr": training_args.flame_expr_lr, "name": "flame_expr"},
                {"params": pose, "lr": training_args.flame_pose_lr, "name": "flame_pose"},
                {"params": [fp["translation"]], "lr": training_args.flame_trans_lr, "name": "flame_translation"},
            ]
        offset_lr = float(getattr(training_args, "flame_offset_lr", 1e-6))
        if getattr(training_args, "train_static_offset", False) and not self.disable_flame_static_offset:
            fp["static_offset"].requires_grad_(True)
            groups.append({"params": [fp["static_offset"]], "lr": offset_lr, "name": "flame_static_offset"})
        if getattr(training_args, "train_dynamic_offset", False):
            fp["dynamic_offset"].requires_grad_(True)
            groups.append({"params": [fp["dynamic_offset"]], "lr": offset_lr, "name": "flame_dynamic_offset"})
        return groups

    # ------------------------------------------------------------------ densification hooks
    def _count_bindings(self, binding: torch.Tensor) -> torch.Tensor:
        counter = torch.zeros(self.num_faces, dtype=torch.long, device=self.device)
        return counter.scatter_add_(0, binding, torch.ones_like(binding))

    def _on_points_added(self, parent_idx: torch.Tensor) -> None:
        new_binding = self.binding[parent_idx]
        self.binding = torch.cat((self.binding, new_binding))
        self.binding_counter = self.binding_counter.scatter_add(0, new_binding, torch.ones_like(new_binding))

    def _adjust_prune_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Never empty a triangle: of a triangle whose splats are all marked, keep the one with
        the highest opacity (lowest index on ties), or, with ``prune_keep == "all"`` (the
        original's rule), all of them."""
        b = self.binding
        n = b.shape[0]
        pruned_per_face = self._count_bindings(b[mask])
        emptied = (self.binding_counter - pruned_per_face) <= 0  # (F,)
        candidate = mask & emptied[b]
        if self.prune_keep == "all":
            return mask & ~candidate
        opacity = self._opacity.detach().squeeze(-1)
        score = torch.where(candidate, opacity, torch.full_like(opacity, -torch.inf))
        best = torch.full((self.num_faces,), -torch.inf, device=self.device, dtype=score.dtype)
        best = best.scatter_reduce(0, b, score, reduce="amax")
        top = candidate & (score == best[b])
        idx = torch.arange(n, device=self.device)
        first = torch.full((self.num_faces,), n, device=self.device, dtype=torch.long)
        first = first.scatter_reduce(0, b, torch.where(top, idx, torch.full_like(idx, n)), reduce="amin")
        keep_one = top & (idx == first[b])
        return mask & ~keep_one

    def _on_points_pruned(self, keep: torch.Tensor) -> None:
        self.binding = self.binding[keep]
        self.binding_counter = self._count_bindings(self.binding)

    # ------------------------------------------------------------------ regularisers
    @staticmethod
    def _masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean of ``values`` (N,) over ``mask`` (bool (N,)) without a host sync."""
        if mask is None:
            return values.mean()
        w = mask.to(values.dtype)
        return (values * w).sum() / w.sum().clamp_min(1.0)

    def compute_xyz_loss(self, threshold: float, metric: bool = False, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Position regulariser (unweighted) as in GaussianAvatars' train.py:
        local: ``relu(|mu| - thr)``; metric: ``|relu(mu k - thr)|`` (world units); averaged over
        ``mask`` (the visibility filter) when given."""
        if metric:
            self._require_frames()
            per = F.relu(self._xyz * self.face_scaling[self.binding] - threshold).norm(dim=1)
        else:
            per = F.relu(self._xyz.norm(dim=1) - threshold)
        return self._masked_mean(per, mask)

    def compute_scale_loss(self, threshold: float, metric: bool = False, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scale regulariser (unweighted): ``|relu(exp(s) [* k] - thr)|`` averaged over ``mask``."""
        scale = self.get_scaling if metric else self.scaling_activation(self._scaling)
        return self._masked_mean(F.relu(scale - threshold).norm(dim=1), mask)

    def _current_frame(self) -> slice | torch.Tensor:
        if self.timestep is None:
            raise RuntimeError("call select_mesh_by_timestep(t) before the offset losses")
        return self._frame_slice(self.timestep)

    def compute_dynamic_offset_loss(self) -> torch.Tensor:
        """Mean distance of the current frame's dynamic offsets from their tracked values."""
        sl = self._current_frame()
        diff = self.flame_param["dynamic_offset"][sl] - self.flame_param_orig["dynamic_offset"][sl]
        return diff.norm(dim=-1).mean()

    def compute_dynamic_offset_std_loss(self) -> torch.Tensor:
        """Mean standard deviation of the dynamic offsets over time."""
        return self.flame_param["dynamic_offset"].std(dim=0).mean()

    def laplacian_matrix(self) -> torch.Tensor:
        """Sparse (V,V) uniform Laplacian of the FLAME mesh (``flame_model.laplacian`` or its
        ``laplacian_matrix`` attribute); cached."""
        if self._laplacian is None:
            if hasattr(self.flame_model, "laplacian_matrix"):
                L = self.flame_model.laplacian_matrix
            elif callable(getattr(self.flame_model, "laplacian", None)):
                L = self.flame_model.laplacian("uniform")
            else:
                raise RuntimeError(
                    "compute_laplacian_loss: the FLAME model offers no Laplacian "
                    "(neither laplacian_matrix nor laplacian()); set --lambda_laplacian 0"
                )
            self._laplacian = L.to(self.device, torch.float32)
        return self._laplacian

    def compute_laplacian_loss(self) -> torch.Tensor:
        """Mean squared Laplacian of the current frame's dynamic offsets (the change of the
        canonical mesh's Laplacian coordinates caused by the offsets)."""
        off = self.flame_param["dynamic_offset"][self._current_frame()][0]  # (V,3)
        L = self.laplacian_matrix()
        lap = torch.sparse.mm(L, off) if L.is_sparse else L @ off
        return (lap**2).sum(dim=-1).mean()

    # ------------------------------------------------------------------ files
    def flame_param_arrays(self) -> Dict[str, np.ndarray]:
        """The fine-tuned FLAME parameters as float32 NumPy arrays (SPEC 4 keys)."""
        if self.flame_param is None:
            raise RuntimeError("no FLAME parameters to save (call load_meshes first)")
        return {k: self.flame_param[k].detach().float().cpu().numpy() for k in FLAME_PARAM_KEYS}

    def save_ply(self, path: str) -> None:
        """Write the PLY (with ``binding_0``) and ``flame_param.npz`` beside it, atomically."""
        arrays = self.flame_param_arrays() if self.flame_param is not None else None
        super().save_ply(path)
        if arrays is not None:
            npz_path = os.path.join(os.path.dirname(os.path.abspath(path)), FLAME_NPZ_NAME)
            with atomic_write(npz_path, "wb") as fh:
                np.savez(fh, **arrays)

    def load_ply(self, path: str, has_target: bool = False, motion_path: Optional[str] = None) -> None:
        """Load a bound avatar: splats + bindings from the PLY, fine-tuned FLAME parameters from
        ``flame_param.npz`` beside it (if present). With ``has_target`` only the identity (shape,
        static offset) is taken from the npz and the motion stays the target's (from
        ``load_meshes``, before or after this call). ``motion_path`` then replaces the motion."""
        data = self._load_ply_params(path)
        if data.binding is None:
            raise ValueError(
                f"{path}: no 'binding_0' property: not a mesh-bound avatar (load it with GaussianModel)"
            )
        if data.num_points and int(data.binding.max()) >= self.num_faces:
            raise ValueError(
                f"{path}: binding_0 refers to triangle {int(data.binding.max())} but the FLAME mesh has "
                f"{self.num_faces} triangles (teeth included); wrong FLAME model?"
            )
        self.binding = torch.from_numpy(data.binding).to(self.device)
        self.binding_counter = self._count_bindings(self.binding)
        npz_path = os.path.join(os.path.dirname(os.path.abspath(path)), FLAME_NPZ_NAME)
        if os.path.isfile(npz_path):
            loaded = self._read_flame_npz(npz_path)
            if self.flame_param_orig is not None and has_target:
                self.flame_param["shape"] = loaded["shape"]
                self.flame_param["static_offset"] = loaded["static_offset"]
            else:
                self.flame_param = loaded
                if self.flame_param_orig is None:
                    self.flame_param_orig = self._clone_params(loaded)
            self._flame_param_from_file = True
            self.num_timesteps = int(self.flame_param["expr"].shape[0])
        elif self.flame_param is None and motion_path is None:
            raise FileNotFoundError(
                f"{npz_path} not found beside {path}, and no FLAME meshes are loaded: cannot pose the avatar"
            )
        if motion_path is not None:
            self.load_motion(motion_path)

    # ------------------------------------------------------------------ checkpoints
    def capture(self) -> Dict[str, Any]:
        state = super().capture()
        state["format"] = "flame_gaussian_model/1"
        state["binding"] = self.binding.detach()
        state["flame_param"] = None if self.flame_param is None else {k: v.detach() for k, v in self.flame_param.items()}
        state["flame_param_orig"] = (
            None if self.flame_param_orig is None else {k: v.detach() for k, v in self.flame_param_orig.items()}
        )
        return state

    def restore(self, model_args: Dict[str, Any], training_args) -> None:
        binding = self._require(model_args, "binding")
        if binding.numel() and int(binding.max()) >= self.num_faces:
            raise ValueError(f"checkpoint binding refers to triangle {int(binding.max())}, mesh has {self.num_faces}")
        fp = self._require(model_args, "flame_param")
        if fp is None:
            raise ValueError("checkpoint lacks FLAME parameters")
        self.flame_param = self._clone_params(fp)
        orig = model_args.get("flame_param_orig")
        self.flame_param_orig = self._clone_params(orig if orig is not None else fp)
        self._flame_param_from_file = True
        self.num_timesteps = int(self.flame_param["expr"].shape[0])
        self._restore_splats(model_args)
        self.binding = binding.to(self.device, torch.long)
        self.binding_counter = self._count_bindings(self.binding)
        if self.binding.shape[0] != self.num_points:
            raise ValueError(f"checkpoint has {self.num_points} splats but {self.binding.shape[0]} bindings")
        self._restore_optimizer(model_args, training_args)


class _InferencePoseGraph:
    """``fn(*args)`` without autograd, captured once as a CUDA graph over static input buffers;
    calls copy the inputs in, replay, and return copies of the outputs (callers may keep them)."""

    def __init__(self, fn, sample_args: Tuple[torch.Tensor, ...]):
        self.static_in = tuple(a.detach().clone() for a in sample_args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up: allocator and lazy initialisation outside the capture
                fn(*self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_out = fn(*self.static_in)

    def accepts(self, args: Tuple[torch.Tensor, ...]) -> bool:
        return len(args) == len(self.static_in) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device for a, b in zip(args, self.static_in))

    def __call__(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with torch.no_grad():
            for dst, src in zip(self.static_in, args):
                dst.copy_(src)
            self.graph.replay()
            return tuple(out.clone() for out in self.static_out)
