"""Render a Gaussian model from one camera through ``diff_gaussian_rasterization``.

:func:`render` is the one entry point used by training, evaluation, ``render.py`` and the
viewers. It works for plain 3DGS models and for FLAME-bound models alike: both expose world-space
``get_xyz``, ``get_scaling``, ``get_rotation``, ``get_opacity`` and ``get_features``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

__all__ = ["render", "build_covariance_3d", "PipelineSettings", "DeviceRasterInputs", "camera_intrinsics"]


@dataclass
class PipelineSettings:
    """The pipeline switches :func:`render` reads, for callers without command-line settings
    (viewers, benchmarks); ``arguments.PipelineParams`` has the same fields."""

    convert_SHs_python: bool = False
    compute_cov3D_python: bool = False
    debug: bool = False
    backend: str = "auto"


@dataclass
class DeviceRasterInputs:
    """Rasterizer settings read on the device, so that a render needs no host synchronisation and
    can be captured in a CUDA graph (see ``diff_gaussian_rasterization``): ``intrinsics`` float64
    ``(tanfovx, tanfovy, cx, cy)`` replaces the camera's host values, the pair buffer has the fixed
    size ``pair_capacity``, and ``pair_count`` (int64 (1,)) receives the number of pairs the frame
    needed (more than ``pair_capacity``: the image is incomplete)."""

    intrinsics: torch.Tensor
    pair_capacity: int
    pair_count: torch.Tensor


def build_covariance_3d(scales: torch.Tensor, rotations: torch.Tensor, scaling_modifier: float = 1.0) -> torch.Tensor:
    """Packed upper triangle ``(N, 6)`` = (xx, xy, xz, yy, yz, zz) of ``R S S^T R^T``.

    ``scales`` are linear (already exponentiated) world scales, ``rotations`` wxyz quaternions
    (normalised here); this is the layout ``cov3D_precomp`` expects."""
    from utils.general_utils import build_scaling_rotation, strip_symmetric

    m = build_scaling_rotation(scales * scaling_modifier, rotations)
    return strip_symmetric(m @ m.transpose(-1, -2))


def _python_colors(viewpoint_camera: Any, pc: Any, means3D: torch.Tensor) -> torch.Tensor:
    """View-dependent RGB from the SH coefficients, evaluated in PyTorch (SPEC 6 colour rule)."""
    from utils.sh_utils import eval_sh

    features = pc.get_features  # (N, (D+1)^2, 3)
    shs_view = features.transpose(1, 2).reshape(features.shape[0], 3, -1)
    campos = viewpoint_camera.camera_center.to(device=means3D.device, dtype=means3D.dtype)
    dirs = means3D - campos.reshape(1, 3)
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rgb = eval_sh(pc.active_sh_degree, shs_view, dirs)
    return torch.clamp_min(rgb + 0.5, 0.0)


def camera_intrinsics(cam: Any) -> tuple:
    """``(tanfovx, tanfovy, cx, cy)`` the rasterizer receives for ``cam``: half-angle tangents of
    its field of view and its principal point (``None`` for a centred camera).

    Cameras hold ``cx, cy`` in the NeRF/COLMAP convention (pixel i covers [i, i + 1)); the
    rasterizer, like the reference 3DGS one, puts pixel centres at integer coordinates, so this is
    the one place the principal point moves by half a pixel."""
    cx = getattr(cam, "cx", None)
    cy = getattr(cam, "cy", None)
    return (math.tan(float(cam.FoVx) * 0.5), math.tan(float(cam.FoVy) * 0.5),
            None if cx is None else float(cx) - 0.5, None if cy is None else float(cy) - 0.5)


def render(viewpoint_camera: Any, pc: Any, pipe: Any, bg_color: torch.Tensor,
           scaling_modifier: float = 1.0, override_color: Optional[torch.Tensor] = None,
           device_inputs: Optional[DeviceRasterInputs] = None) -> Dict[str, torch.Tensor]:
    """Rasterize ``pc`` as seen by ``viewpoint_camera`` (``device_inputs``: see
    :class:`DeviceRasterInputs`; CUDA only).

    Returns ``{"render": (3,H,W), "viewspace_points": means2D, "visibility_filter": radii > 0,
    "radii": radii}``. ``means2D`` is a zero tensor that requires grad while autograd is on; after
    ``backward()`` its ``.grad`` holds the screen-space position gradient used for densification.
    ``bg_color`` must be a tensor of 3 values; it is moved to the model's device.
    """
    from diff_gaussian_rasterization import GaussianRasterizationSettings, rasterize_gaussians

    # Mesh-bound models give position, scale and rotation in one fused call (splat_binding).
    world_transform = getattr(pc, "world_transform", None)
    if world_transform is not None:
        means3D, world_scales, world_rotations = world_transform()
    else:
        means3D, world_scales, world_rotations = pc.get_xyz, None, None
    device = means3D.device
    track_grad = torch.is_grad_enabled()
    screenspace_points = torch.zeros_like(means3D, requires_grad=track_grad)
    if track_grad and not screenspace_points.is_leaf:
        screenspace_points.retain_grad()

    tanfovx, tanfovy, cx, cy = camera_intrinsics(viewpoint_camera)
    to_dev = dict(device=device, dtype=torch.float32)
    settings = GaussianRasterizationSettings(
        image_height=int(viewpoint_camera.image_height),
        image_width=int(viewpoint_camera.image_width),
        tanfovx=tanfovx,
        tanfovy=tanfovy,
        bg=torch.as_tensor(bg_color).to(**to_dev),
        scale_modifier=float(scaling_modifier),
        viewmatrix=viewpoint_camera.world_view_transform.to(**to_dev),
        projmatrix=viewpoint_camera.full_proj_transform.to(**to_dev),
        sh_degree=int(pc.active_sh_degree),
        campos=torch.as_tensor(viewpoint_camera.camera_center).to(**to_dev),
        prefiltered=False,
        debug=bool(getattr(pipe, "debug", False)),
        cx=cx,
        cy=cy,
        backend=getattr(pipe, "backend", "auto"),
        pair_capacity=0 if device_inputs is None else int(device_inputs.pair_capacity),
        pair_count=None if device_inputs is None else device_inputs.pair_count,
        intrinsics=None if device_inputs is None else device_inputs.intrinsics,
    )

    opacity = pc.get_opacity
    scales = rotations = cov3D_precomp = None
    if world_scales is None:
        world_scales, world_rotations = pc.get_scaling, pc.get_rotation
    if getattr(pipe, "compute_cov3D_python", False):
        cov3D_precomp = build_covariance_3d(world_scales, world_rotations, scaling_modifier)
    else:
        scales = world_scales
        rotations = world_rotations

    shs = colors_precomp = None
    if override_color is not None:
        colors_precomp = override_color.to(device)
    elif getattr(pipe, "convert_SHs_python", False):
        colors_precomp = _python_colors(viewpoint_camera, pc, means3D)
    else:
        shs = pc.get_features

    # the function behind GaussianRasterizer.forward, without building an nn.Module per call
    rendered_image, radii = rasterize_gaussians(means3D, screenspace_points, shs, colors_precomp, opacity, scales,
                                                rotations, cov3D_precomp, settings)
    return {
        "render": rendered_image,
        "viewspace_points": screenspace_points,
        "visibility_filter": radii > 0,
        "radii": radii,
    }
