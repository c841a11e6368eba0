"""Plain 3D Gaussian Splatting model: parameters, activations, Adam setup, adaptive density
control (clone / split / prune) with optimizer-state surgery, PLY I/O and checkpoints.

Per-splat parameters (leaf ``nn.Parameter`` tensors on ``self.device``):

* ``_xyz`` (N,3) position, ``_scaling`` (N,3) log-scale, ``_rotation`` (N,4) wxyz quaternion
  (unnormalised), ``_opacity`` (N,1) pre-sigmoid,
* ``_features_dc`` (N,1,3) and ``_features_rest`` (N,K,3) SH coefficients (K = (D+1)^2 - 1).

Subclasses (the mesh-bound :class:`scene.flame_gaussian_model.FlameGaussianModel`) override the
getters to map these local values to world space and the ``_on_points_*`` hooks to keep their
per-splat bookkeeping (bindings) in step with densification.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from utils.general_utils import (
    build_rotation,
    build_scaling_rotation,
    get_expon_lr_func,
    inverse_sigmoid,
    strip_symmetric,
)
from utils.ply_io import GaussianPlyData, ply_attribute_names, read_gaussian_ply, write_gaussian_ply
from utils.sh_utils import RGB2SH

__all__ = ["GaussianModel", "SPLAT_PARAM_GROUPS", "default_device"]

# Optimizer param-group name -> attribute holding the per-splat tensor.
SPLAT_PARAM_GROUPS: Dict[str, str] = {
    "xyz": "_xyz",
    "f_dc": "_features_dc",
    "f_rest": "_features_rest",
    "opacity": "_opacity",
    "scaling": "_scaling",
    "rotation": "_rotation",
}


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _knn_mean_sq_dist(points: torch.Tensor) -> torch.Tensor:
    """Mean squared distance to the 3 nearest neighbours (``simple_knn.distCUDA2``)."""
    from simple_knn import distCUDA2

    return distCUDA2(points)


class GaussianModel:
    """A set of 3D Gaussians with SH colours (3DGS)."""

    def __init__(self, sh_degree: int, device: Optional[torch.device | str] = None):
        if not 0 <= int(sh_degree) <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        self.device = torch.device(device) if device is not None else default_device()
        self.active_sh_degree = 0
        self.max_sh_degree = int(sh_degree)
        empty = lambda *shape: torch.empty(*shape, device=self.device)  # noqa: E731
        self._xyz = empty(0, 3)
        self._features_dc = empty(0, 1, 3)
        self._features_rest = empty(0, (self.max_sh_degree + 1) ** 2 - 1, 3)
        self._scaling = empty(0, 3)
        self._rotation = empty(0, 4)
        self._opacity = empty(0, 1)
        self.max_radii2D = empty(0)
        self.xyz_gradient_accum = empty(0, 1)
        self.denom = empty(0, 1)
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.percent_dense = 0.0
        self.split_offsets = "local"        # OptimizationParams.split_offsets
        self.prune_keep = "most_opaque"     # OptimizationParams.prune_keep (bound splats)
        self.spatial_lr_scale = 0.0
        self.xyz_scheduler_args = None
        self.binding: Optional[torch.Tensor] = None  # set by mesh-bound subclasses

    # ------------------------------------------------------------------ activations
    @staticmethod
    def scaling_activation(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)

    @staticmethod
    def scaling_inverse_activation(x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)

    @staticmethod
    def opacity_activation(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    @staticmethod
    def inverse_opacity_activation(x: torch.Tensor) -> torch.Tensor:
        return inverse_sigmoid(x)

    @staticmethod
    def rotation_activation(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)

    # ------------------------------------------------------------------ getters
    @property
    def num_points(self) -> int:
        return int(self._xyz.shape[0])

    @property
    def get_scaling(self) -> torch.Tensor:
        return self.scaling_activation(self._scaling)

    @property
    def get_rotation(self) -> torch.Tensor:
        return self.rotation_activation(self._rotation)

    @property
    def get_xyz(self) -> torch.Tensor:
        return self._xyz

    @property
    def get_features(self) -> torch.Tensor:
        return torch.cat((self._features_dc, self._features_rest), dim=1)

    @property
    def get_opacity(self) -> torch.Tensor:
        return self.opacity_activation(self._opacity)

    def get_covariance(self, scaling_modifier: float = 1.0) -> torch.Tensor:
        """World covariances as 6 upper-triangle entries ``(N,6)``."""
        L = build_scaling_rotation(scaling_modifier * self.get_scaling, self.get_rotation)
        return strip_symmetric(L @ L.transpose(1, 2))

    def oneupSHdegree(self) -> None:
        if self.active_sh_degree < self.max_sh_degree:
            self.active_sh_degree += 1

    # ------------------------------------------------------------------ initialisation
    def _set_params(
        self,
        xyz: torch.Tensor,
        features_dc: torch.Tensor,
        features_rest: torch.Tensor,
        scaling: torch.Tensor,
        rotation: torch.Tensor,
        opacity: torch.Tensor,
    ) -> None:
        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.detach().to(self.device, torch.float32).contiguous().requires_grad_(True))

        self._xyz = param(xyz)
        self._features_dc = param(features_dc)
        self._features_rest = param(features_rest)
        self._scaling = param(scaling)
        self._rotation = param(rotation)
        self._opacity = param(opacity)
        n = self._xyz.shape[0]
        self.max_radii2D = torch.zeros(n, device=self.device)
        self.xyz_gradient_accum = torch.zeros((n, 1), device=self.device)
        self.denom = torch.zeros((n, 1), device=self.device)

    def create_from_pcd(self, pcd, spatial_lr_scale: float) -> None:
        """Initialise from a ``BasicPointCloud`` (points (N,3), colors (N,3) in [0,1]):
        SH DC from the colours, isotropic scales from the 3-NN distances, identity rotations,
        opacity 0.1."""
        self.spatial_lr_scale = float(spatial_lr_scale)
        points = torch.as_tensor(np.asarray(pcd.points), dtype=torch.float32, device=self.device)
        colors = torch.as_tensor(np.asarray(pcd.colors), dtype=torch.float32, device=self.device)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise ValueError(f"create_from_pcd: points must be a non-empty (N,3) array, got {tuple(points.shape)}")
        if colors.shape != points.shape:
            raise ValueError(f"create_from_pcd: colors shape {tuple(colors.shape)} != points shape {tuple(points.shape)}")
        n = points.shape[0]
        k = (self.max_sh_degree + 1) ** 2
        features = torch.zeros((n, 3, k), device=self.device)
        features[:, :3, 0] = RGB2SH(colors)
        dist2 = torch.clamp_min(_knn_mean_sq_dist(points).to(self.device, torch.float32), 1e-7)
        scales = torch.log(torch.sqrt(dist2))[..., None].repeat(1, 3)
        rots = torch.zeros((n, 4), device=self.device)
        rots[:, 0] = 1
        opacities = inverse_sigmoid(0.1 * torch.ones((n, 1), device=self.device))
        self._set_params(
            points,
            features[:, :, 0:1].transpose(1, 2),
            features[:, :, 1:].transpose(1, 2),
            scales,
            rots,
            opacities,
        )

    # ------------------------------------------------------------------ optimisation
    def _splat_param_groups(self, training_args) -> List[Dict[str, Any]]:
        return [
            {"params": [self._xyz], "lr": training_args.position_lr_init * self.spatial_lr_scale, "name": "xyz"},
            {"params": [self._features_dc], "lr": training_args.feature_lr, "name": "f_dc"},
            {"params": [self._features_rest], "lr": training_args.feature_lr / 20.0, "name": "f_rest"},
            {"params": [self._opacity], "lr": training_args.opacity_lr, "name": "opacity"},
            {"params": [self._scaling], "lr": training_args.scaling_lr, "name": "scaling"},
            {"params": [self._rotation], "lr": training_args.rotation_lr, "name": "rotation"},
        ]

    def _extra_param_groups(self, training_args) -> List[Dict[str, Any]]:
        """Further optimizer groups (FLAME parameters in the subclass)."""
        return []

    def training_setup(self, training_args) -> None:
        """Create the Adam optimizer (eps 1e-15) and the position lr schedule from
        ``OptimizationParams``; resets the densification statistics."""
        self.percent_dense = float(training_args.percent_dense)
        self.split_offsets = str(getattr(training_args, "split_offsets", "local"))
        self.prune_keep = str(getattr(training_args, "prune_keep", "most_opaque"))
        n = self.num_points
        self.xyz_gradient_accum = torch.zeros((n, 1), device=self.device)
        self.denom = torch.zeros((n, 1), device=self.device)
        if self.max_radii2D.shape[0] != n:
            self.max_radii2D = torch.zeros(n, device=self.device)
        groups = self._splat_param_groups(training_args) + self._extra_param_groups(training_args)
        # On the GPU one fused kernel updates every parameter of a group (same maths as Adam).
        self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=self.device.type == "cuda")
        self.xyz_scheduler_args = get_expon_lr_func(
            lr_init=training_args.position_lr_init * self.spatial_lr_scale,
            lr_final=training_args.position_lr_final * self.spatial_lr_scale,
            lr_delay_mult=training_args.position_lr_delay_mult,
            max_steps=training_args.position_lr_max_steps,
        )

    def update_learning_rate(self, iteration: int) -> Optional[float]:
        """Set the position lr for ``iteration``; returns it (None before ``training_setup``)."""
        if self.optimizer is None or self.xyz_scheduler_args is None:
            return None
        lr = self.xyz_scheduler_args(iteration)
        for group in self.optimizer.param_groups:
            if group["name"] == "xyz":
                group["lr"] = lr
        return lr

    # ------------------------------------------------------------------ optimizer surgery
    def _splat_groups(self):
        if self.optimizer is None:
            return []
        return [g for g in self.optimizer.param_groups if g["name"] in SPLAT_PARAM_GROUPS]

    def replace_tensor_to_optimizer(self, tensor: torch.Tensor, name: str) -> nn.Parameter:
        """Swap the parameter of group ``name`` for ``tensor`` (same shape); its Adam moments
        are reset to zero. Returns the new parameter (also stored on the model)."""
        new_param = nn.Parameter(tensor.detach().contiguous().requires_grad_(True))
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                if group["name"] != name:
                    continue
                old = group["params"][0]
                state = self.optimizer.state.pop(old, None)
                if state:
                    state["exp_avg"] = torch.zeros_like(tensor)
                    state["exp_avg_sq"] = torch.zeros_like(tensor)
                    self.optimizer.state[new_param] = state
                group["params"][0] = new_param
        setattr(self, SPLAT_PARAM_GROUPS[name], new_param)
        return new_param

    def _prune_optimizer(self, keep: torch.Tensor) -> Dict[str, nn.Parameter]:
        """Keep rows ``keep`` (bool (N,)) of every splat tensor and of its Adam moments."""
        out: Dict[str, nn.Parameter] = {}
        groups = {g["name"]: g for g in self._splat_groups()}
        for name, attr in SPLAT_PARAM_GROUPS.items():
            old = getattr(self, attr)
            new_param = nn.Parameter(old.detach()[keep].contiguous().requires_grad_(True))
            group = groups.get(name)
            if group is not None:
                state = self.optimizer.state.pop(group["params"][0], None)
                if state:
                    state["exp_avg"] = state["exp_avg"][keep]
                    state["exp_avg_sq"] = state["exp_avg_sq"][keep]
                    self.optimizer.state[new_param] = state
                group["params"][0] = new_param
            out[name] = new_param
        return out

    def cat_tensors_to_optimizer(self, tensors_dict: Dict[str, torch.Tensor]) -> Dict[str, nn.Parameter]:
        """Append rows to every splat tensor (zero Adam moments for the new rows)."""
        out: Dict[str, nn.Parameter] = {}
        groups = {g["name"]: g for g in self._splat_groups()}
        for name, attr in SPLAT_PARAM_GROUPS.items():
            old = getattr(self, attr)
            ext = tensors_dict[name].detach().to(old.device, old.dtype)
            new_param = nn.Parameter(torch.cat((old.detach(), ext), dim=0).contiguous().requires_grad_(True))
            group = groups.get(name)
            if group is not None:
                state = self.optimizer.state.pop(group["params"][0], None)
                if state:
                    state["exp_avg"] = torch.cat((state["exp_avg"], torch.zeros_like(ext)), dim=0)
                    state["exp_avg_sq"] = torch.cat((state["exp_avg_sq"], torch.zeros_like(ext)), dim=0)
                    self.optimizer.state[new_param] = state
                group["params"][0] = new_param
            out[name] = new_param
        return out

    def _assign_splat_params(self, params: Dict[str, nn.Parameter]) -> None:
        for name, attr in SPLAT_PARAM_GROUPS.items():
            setattr(self, attr, params[name])

    # ------------------------------------------------------------------ densification
    def _on_points_added(self, parent_idx: torch.Tensor) -> None:
        """Hook: rows appended at the end were copied/split from rows ``parent_idx``."""

    def _adjust_prune_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Hook: may veto pruning of some rows (returns the mask actually applied)."""
        return mask

    def _on_points_pruned(self, keep: torch.Tensor) -> None:
        """Hook: only rows ``keep`` (bool) survived."""

    def prune_points(self, mask: torch.Tensor) -> None:
        """Remove the splats where ``mask`` (bool (N,)) is True (subject to the hook's veto)."""
        mask = self._adjust_prune_mask(mask.to(self.device).bool())
        keep = ~mask
        self._assign_splat_params(self._prune_optimizer(keep))
        self.xyz_gradient_accum = self.xyz_gradient_accum[keep]
        self.denom = self.denom[keep]
        self.max_radii2D = self.max_radii2D[keep]
        self._on_points_pruned(keep)

    def densification_postfix(self, new_params: Dict[str, torch.Tensor], parent_idx: torch.Tensor) -> None:
        """Append new splats (dict keyed by group name) descended from ``parent_idx``."""
        self._assign_splat_params(self.cat_tensors_to_optimizer(new_params))
        n = self.num_points
        self.xyz_gradient_accum = torch.zeros((n, 1), device=self.device)
        self.denom = torch.zeros((n, 1), device=self.device)
        self.max_radii2D = torch.zeros(n, device=self.device)
        self._on_points_added(parent_idx.to(self.device))

    def densify_and_split(self, grads: torch.Tensor, grad_threshold: float, scene_extent: float, N: int = 2) -> None:
        """Replace large, high-gradient splats by ``N`` samples drawn from themselves, each
        scaled by ``1 / (0.8 N)``. Sampling happens in parameter space (the local triangle frame
        for bound splats), where the splat's own scale and rotation define the Gaussian; with
        ``split_offsets == "original"`` the sample's standard deviation is the world-space scale
        (``get_scaling``) while it is still added to the parameter-space position, as the original
        code does (for bound splats the children then sit almost on the parent)."""
        n_init = self.num_points
        padded = torch.zeros(n_init, device=self.device)
        padded[: grads.shape[0]] = grads.squeeze(-1)
        selected = (padded >= grad_threshold) & (
            self.get_scaling.max(dim=1).values > self.percent_dense * scene_extent
        )
        idx = selected.nonzero(as_tuple=True)[0]
        with torch.no_grad():
            scale_of_samples = self.get_scaling[idx] if self.split_offsets == "original" else \
                self.scaling_activation(self._scaling[idx])
            stds = scale_of_samples.repeat(N, 1)
            samples = torch.normal(mean=torch.zeros_like(stds), std=stds)
            rots = build_rotation(self._rotation[idx]).repeat(N, 1, 1)
            new_xyz = torch.bmm(rots, samples.unsqueeze(-1)).squeeze(-1) + self._xyz[idx].repeat(N, 1)
            new_scaling = self.scaling_inverse_activation(
                self.scaling_activation(self._scaling[idx]).repeat(N, 1) / (0.8 * N)
            )
            new_params = {
                "xyz": new_xyz,
                "f_dc": self._features_dc[idx].repeat(N, 1, 1),
                "f_rest": self._features_rest[idx].repeat(N, 1, 1),
                "opacity": self._opacity[idx].repeat(N, 1),
                "scaling": new_scaling,
                "rotation": self._rotation[idx].repeat(N, 1),
            }
        self.densification_postfix(new_params, idx.repeat(N))
        prune_filter = torch.cat((selected, torch.zeros(N * idx.shape[0], device=self.device, dtype=torch.bool)))
        self.prune_points(prune_filter)

    def densify_and_clone(self, grads: torch.Tensor, grad_threshold: float, scene_extent: float) -> None:
        """Duplicate small, high-gradient splats in place."""
        selected = (torch.norm(grads, dim=-1) >= grad_threshold) & (
            self.get_scaling.max(dim=1).values <= self.percent_dense * scene_extent
        )
        idx = selected.nonzero(as_tuple=True)[0]
        with torch.no_grad():
            new_params = {
                name: getattr(self, attr)[idx].detach().clone() for name, attr in SPLAT_PARAM_GROUPS.items()
            }
        self.densification_postfix(new_params, idx)

    def densify_and_prune(self, max_grad: float, min_opacity: float, extent: float, max_screen_size) -> None:
        """Clone, split, then prune transparent splats (and, when ``max_screen_size`` is set,
        splats larger than that many pixels on screen or than 0.1 x ``extent`` in the world).

        As in 3DGS / GaussianAvatars, ``densification_postfix`` zeroes ``max_radii2D`` before the
        prune, so the screen-size test only matters for callers that prune with fresh radii;
        kept for faithful training behaviour."""
        grads = self.xyz_gradient_accum / self.denom
        grads[grads.isnan()] = 0.0
        self.densify_and_clone(grads, max_grad, extent)
        self.densify_and_split(grads, max_grad, extent)
        prune_mask = (self.get_opacity < min_opacity).squeeze(-1)
        if max_screen_size:
            big_points_vs = self.max_radii2D > max_screen_size
            big_points_ws = self.get_scaling.max(dim=1).values > 0.1 * extent
            prune_mask = prune_mask | big_points_vs | big_points_ws
        self.prune_points(prune_mask)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def add_densification_stats(self, viewspace_point_tensor: torch.Tensor, update_filter: torch.Tensor) -> None:
        """Accumulate the norm of the screen-space (x, y) position gradient of visible splats.

        ``update_filter`` is a bool (N,) mask (the renderer's ``radii > 0``) or an index tensor;
        bool masks are applied arithmetically (no host synchronisation)."""
        grad = viewspace_point_tensor.grad
        if grad is None:
            raise RuntimeError("add_densification_stats: viewspace points have no gradient (call backward first)")
        norm = torch.linalg.vector_norm(grad[:, :2], dim=-1, keepdim=True)
        if update_filter.dtype == torch.bool:
            w = update_filter.reshape(-1, 1).to(norm.dtype)
            self.xyz_gradient_accum.addcmul_(norm, w)
            self.denom += w
        else:
            self.xyz_gradient_accum[update_filter] += norm[update_filter]
            self.denom[update_filter] += 1

    def update_max_radii2D(self, radii: torch.Tensor, visibility_filter: torch.Tensor) -> None:
        """``max_radii2D = max(max_radii2D, radii)`` on visible splats (bool mask, no host sync), in
        place (a captured training step keeps writing into the same buffer)."""
        r = radii.to(self.max_radii2D.dtype)
        self.max_radii2D.copy_(torch.where(visibility_filter, torch.maximum(self.max_radii2D, r), self.max_radii2D))

    def reset_opacity(self) -> None:
        """Clamp every opacity to at most 0.01 (and reset its Adam moments)."""
        new = self.inverse_opacity_activation(torch.min(self.get_opacity, torch.ones_like(self.get_opacity) * 0.01))
        self.replace_tensor_to_optimizer(new, "opacity")

    # ------------------------------------------------------------------ PLY
    def construct_list_of_attributes(self) -> List[str]:
        """PLY property names in SPEC 4 order for this model."""
        return ply_attribute_names(self._features_rest.shape[1], self.binding is not None)

    def _to_ply_data(self) -> GaussianPlyData:
        def np32(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        n = self.num_points
        return GaussianPlyData(
            xyz=np32(self._xyz),
            f_dc=np32(self._features_dc.transpose(1, 2).reshape(n, -1)),
            f_rest=np32(self._features_rest.transpose(1, 2).reshape(n, -1)),
            opacity=np32(self._opacity),
            scale=np32(self._scaling),
            rot=np32(self._rotation),
            binding=None if self.binding is None else self.binding.detach().cpu().numpy(),
        )

    def save_ply(self, path: str) -> None:
        """Write the splats to ``path`` (SPEC 4 layout, atomically)."""
        write_gaussian_ply(path, self._to_ply_data())

    def _load_ply_params(self, path: str) -> GaussianPlyData:
        data = read_gaussian_ply(path)
        k_model = (self.max_sh_degree + 1) ** 2 - 1
        k_file = data.num_rest_per_channel
        if k_file > k_model:
            raise ValueError(
                f"{path}: holds SH of {k_file} rest coefficients per channel, more than sh_degree "
                f"{self.max_sh_degree} supports ({k_model})"
            )
        n = data.num_points
        f_rest = torch.zeros((n, 3, k_model))
        f_rest[:, :, :k_file] = torch.from_numpy(data.f_rest).reshape(n, 3, k_file)
        self._set_params(
            torch.from_numpy(data.xyz),
            torch.from_numpy(data.f_dc).reshape(n, 3, 1).transpose(1, 2),
            f_rest.transpose(1, 2),
            torch.from_numpy(data.scale),
            torch.from_numpy(data.rot),
            torch.from_numpy(data.opacity),
        )
        self.active_sh_degree = self.max_sh_degree
        return data

    def load_ply(self, path: str) -> None:
        """Load splats from a PLY (ours or one written by 3DGS / GaussianAvatars)."""
        self._load_ply_params(path)

    # ------------------------------------------------------------------ checkpoints
    def capture(self) -> Dict[str, Any]:
        """Checkpoint state made only of tensors, numbers, strings, lists and dicts (loadable
        with ``torch.load(weights_only=True)``)."""
        return {
            "format": "gaussian_model/1",
            "active_sh_degree": int(self.active_sh_degree),
            "max_sh_degree": int(self.max_sh_degree),
            "xyz": self._xyz.detach(),
            "features_dc": self._features_dc.detach(),
            "features_rest": self._features_rest.detach(),
            "scaling": self._scaling.detach(),
            "rotation": self._rotation.detach(),
            "opacity": self._opacity.detach(),
            "max_radii2D": self.max_radii2D.detach(),
            "xyz_gradient_accum": self.xyz_gradient_accum.detach(),
            "denom": self.denom.detach(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "spatial_lr_scale": float(self.spatial_lr_scale),
        }

    @staticmethod
    def _require(model_args: Dict[str, Any], key: str) -> Any:
        if not isinstance(model_args, dict):
            raise ValueError(f"checkpoint model state must be a dict, got {type(model_args).__name__}")
        if key not in model_args:
            raise ValueError(f"checkpoint model state lacks {key!r}")
        return model_args[key]

    def _restore_splats(self, model_args: Dict[str, Any]) -> None:
        req = lambda k: self._require(model_args, k)  # noqa: E731
        if int(req("max_sh_degree")) != self.max_sh_degree:
            raise ValueError(
                f"checkpoint has sh_degree {req('max_sh_degree')}, the model was built with {self.max_sh_degree}"
            )
        self.active_sh_degree = int(req("active_sh_degree"))
        self.spatial_lr_scale = float(req("spatial_lr_scale"))
        self._set_params(
            req("xyz"), req("features_dc"), req("features_rest"), req("scaling"), req("rotation"), req("opacity")
        )
        self.max_radii2D = req("max_radii2D").to(self.device)

    def _restore_optimizer(self, model_args: Dict[str, Any], training_args) -> None:
        self.training_setup(training_args)
        self.xyz_gradient_accum = self._require(model_args, "xyz_gradient_accum").to(self.device)
        self.denom = self._require(model_args, "denom").to(self.device)
        opt_state = self._require(model_args, "optimizer")
        if opt_state is not None:
            try:
                self.optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError) as exc:
                raise ValueError(
                    f"checkpoint optimizer state does not match this model's parameter groups ({exc})"
                ) from exc

    def restore(self, model_args: Dict[str, Any], training_args) -> None:
        """Inverse of :meth:`capture`; builds the optimizer with ``training_args`` first."""
        self._restore_splats(model_args)
        self._restore_optimizer(model_args, training_args)
