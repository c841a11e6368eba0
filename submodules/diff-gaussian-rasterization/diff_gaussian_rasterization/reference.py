"""Pure-PyTorch reference rasterizer for 3D Gaussian splats.

This module *defines* the math of the package (SPEC section 6); the CUDA kernels are held to it.
Everything is differentiable through ordinary autograd, so gradients for every tensor input
(means, screen-space means, SH / colours, opacities, scales, rotations, precomputed covariances)
come from PyTorch.  It runs on CPU and on CUDA tensors, in float32 or float64.

Pipeline (one call of :func:`rasterize_gaussians`):

1. **Preprocess** (per splat, vectorised): view-space depth ``z = ([p, 1] @ viewmatrix)[2]``;
   splats with ``z <= 0.2`` are culled.  Projection ``p_hom = [p, 1] @ projmatrix``,
   ``ndc = p_hom.xyz / (p_hom.w + 1e-7)``, pixel ``u = ((ndc_x + 1) W - 1) / 2`` (same for ``v``
   with ``H``); pixel centres sit at integer coordinates.
   3D covariance ``Sigma = (R S)(R S)^T`` with ``S = diag(scale * scale_modifier)`` and ``R`` the
   rotation of the normalised quaternion ``(w, x, y, z)`` (``q / max(|q|, 1e-12)``), or the
   precomputed upper triangle ``(xx, xy, xz, yy, yz, zz)``.
   EWA: ``t`` = view-space mean, ``fx = W / (2 tanfovx)``, ``fy = H / (2 tanfovy)``; ``t_x / t_z`` is
   clamped to ``[-1.3 (cx + 0.5) / fx, 1.3 (W - 0.5 - cx) / fx]`` (``y`` likewise), ``J = [[fx/tz, 0,
   -fx tx/tz^2], [0, fy/tz, -fy ty/tz^2]]``, ``cov2D = J Rv Sigma Rv^T J^T + 0.3 I`` with ``Rv`` the
   world-to-view rotation.  ``det <= 0`` (or non-finite) culls the splat (the original only tests
   ``det == 0``; the other cases are undefined there).  ``conic = cov2D^-1``;
   ``radius = ceil(3 sqrt(lambda_max))`` with ``lambda = mid +- sqrt(max(0.1, mid^2 - det))``.
   Tile rectangle (16x16 tiles): ``[floor((u - r) / 16), floor((u + r + 15) / 16))`` clamped to the
   grid (``y`` likewise; evaluated as ``((u + r) + 15) / 16``); an empty rectangle culls the splat.
   Culled splats get radius 0; reported radii are clamped to ``2^30``.
   Colour: real SH of degree ``sh_degree`` in direction ``normalize(mean - campos)``, ``+ 0.5``,
   clamped at 0 per channel (or ``colors_precomp``).
2. **Tile lists**: every (tile, splat) pair of the rectangles, ordered by tile, then view depth,
   then splat index (the original's stable radix sort on ``tile << 32 | depth``).
3. **Blend** (per pixel of each tile, front to back over the tile's list):
   ``d = pixel - mean2D``, ``power = -0.5 (a dx^2 + c dy^2) - b dx dy`` (``conic = (a, b, c)``);
   skip if ``power > 0``; ``alpha = min(0.99, opacity exp(power))``; skip ``alpha < 1/255``;
   ``test_T = T (1 - alpha)``; stop when ``test_T < 1e-4`` (that splat and all later ones are
   excluded); ``C += colour alpha T``; ``T = test_T``.  Output ``C + T bg``.

Gradient conventions (identical to the original CUDA rasterizer):

* ``means2D``: its *values* are ignored; it is added to the projected NDC position as
  ``means2D - means2D.detach()`` (value 0, derivative 1), so ``means2D.grad[:, :2]`` is
  ``dL/d ndc = dL/d pixel * (W / 2, H / 2)`` (the unit the densification threshold 2e-4 is
  calibrated to); ``means2D.grad[:, 2:]`` stays 0.
* The ``0.99`` alpha clamp passes the gradient straight through (as ``alpha = opacity G``).
* The EWA clamp: the clamped coordinate ``tx = clamp(tx/tz) tz`` gets gradient 1 w.r.t. ``t_x``
  when not clamped and is a constant when clamped (no path to ``t_z`` through the clamp).
* The SH clamp at 0 zeroes the gradient of a clamped channel.

Speed and memory (implementation details that change neither the image nor the gradients):
the tile lists are refined to ``block x block`` pixel blocks (default 8) by dropping (block, splat)
pairs that provably fail ``alpha >= 1/255`` at every pixel of the block (such splats are skipped
there anyway and leave ``T`` unchanged).  The per-pixel blend works on a chunk of blocks at a time
(blocks sorted by list length, lists padded per chunk, ``chunk_elements`` (pixel, splat) pairs at
most; very long lists are split by pixel rows).  With gradients enabled and more than
``checkpoint_elements`` pairs in total, each chunk keeps only its inputs and is recomputed in
backward (activation checkpointing) instead of keeping every intermediate of the image alive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

TILE = 16
NEAR_CULL = 0.2
COV2D_DILATION = 0.3
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
PROJ_EPS = 1e-7
FRUSTUM_CLAMP = 1.3
EIG_FLOOR = 0.1
QUAT_EPS = 1e-12
MAX_RADIUS = 2 ** 30          # reported radii are clamped here (int32); tiles use the float radius

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

#: (pixel, splat) pairs handled per blend chunk.
DEFAULT_CHUNK_ELEMENTS = 1 << 20
#: pixel block edge of the internal blend lists (divides TILE; results do not depend on it).
DEFAULT_BLOCK = 8
#: with grad enabled, checkpoint the blend chunks when the whole image needs more pairs than this.
DEFAULT_CHECKPOINT_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------
# Per-splat math
# ----------------------------------------------------------------------------------------------
def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices ``(N, 3, 3)`` of quaternions ``(N, 4)`` stored as ``(w, x, y, z)``.

    The quaternion is normalised first (``q / max(|q|, 1e-12)``; a zero quaternion gives ``I``).
    """
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(QUAT_EPS)
    w, x, y, z = q.unbind(-1)
    rows = (
        torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)), -1),
        torch.stack((2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)), -1),
        torch.stack((2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), -1),
    )
    return torch.stack(rows, -2)


def covariance_from_scale_rotation(scales: Tensor, rotations: Tensor, scale_modifier: float = 1.0) -> Tensor:
    """3D covariances ``(N, 3, 3) = (R S)(R S)^T`` with ``S = diag(scales * scale_modifier)``."""
    m = quaternion_to_rotation(rotations) * (scales * scale_modifier).unsqueeze(-2)
    return m @ m.transpose(-1, -2)


def unpack_covariance(cov6: Tensor) -> Tensor:
    """Symmetric ``(N, 3, 3)`` matrices from upper triangles ``(N, 6) = (xx, xy, xz, yy, yz, zz)``."""
    xx, xy, xz, yy, yz, zz = cov6.unbind(-1)
    rows = (torch.stack((xx, xy, xz), -1), torch.stack((xy, yy, yz), -1), torch.stack((xz, yz, zz), -1))
    return torch.stack(rows, -2)


def pack_covariance(cov: Tensor) -> Tensor:
    """Upper triangles ``(N, 6) = (xx, xy, xz, yy, yz, zz)`` of symmetric ``(N, 3, 3)`` matrices."""
    return torch.stack((cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2]), -1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Real spherical harmonics of ``degree`` (0..3): ``sh (N, K, 3)`` coefficients, unit ``dirs (N, 3)``.

    Returns ``(N, 3)`` *without* the ``+ 0.5`` offset.  Basis order and signs are those of 3DGS:
    ``[1 | -y, z, -x | xy, yz, 2zz-xx-yy, xz, xx-yy | y(3xx-yy), xyz, y(4zz-xx-yy), z(2zz-3xx-3yy),
    x(4zz-xx-yy), z(xx-yy), x(xx-3yy)]`` times the constants ``SH_C*``.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    result = SH_C0 * sh[:, 0]
    if degree == 0:
        return result
    x, y, z = (dirs[:, i:i + 1] for i in range(3))
    result = result - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if degree == 1:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (result + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5]
              + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6] + SH_C2[3] * xz * sh[:, 7]
              + SH_C2[4] * (xx - yy) * sh[:, 8])
    if degree == 2:
        return result
    return (result + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
            + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
            + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]
            + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])


def sh_colors(degree: int, sh: Tensor, means: Tensor, campos: Tensor) -> Tensor:
    """``max(SH(normalize(mean - campos)) + 0.5, 0)`` per channel, ``(N, 3)``."""
    d = means - campos
    dirs = d / d.norm(dim=-1, keepdim=True)
    return (eval_sh(degree, sh, dirs) + 0.5).clamp_min(0.0)


def ndc_to_pixel(ndc: Tensor, size: int) -> Tensor:
    """The original's NDC-to-pixel map ``((ndc + 1) size - 1) / 2`` (pixel centres at integers)."""
    return ((ndc + 1.0) * size - 1.0) * 0.5


def _homogeneous(points: Tensor) -> Tensor:
    return torch.cat((points, torch.ones_like(points[:, :1])), dim=1)


def view_depths(points: Tensor, viewmatrix: Tensor) -> Tensor:
    """View-space depth ``([p, 1] @ viewmatrix)[:, 2]`` of ``points (N, 3)``."""
    return points @ viewmatrix[:3, 2] + viewmatrix[3, 2]


def mark_visible(points: Tensor, viewmatrix: Tensor) -> Tensor:
    """Boolean mask of points in front of the near cull plane (view depth > 0.2)."""
    with torch.no_grad():
        return view_depths(points, viewmatrix.to(points)) > NEAR_CULL


def project_covariance(cov3d: Tensor, t_view: Tensor, view_rot: Tensor, fx: float, fy: float,
                       lim_x: Tuple[float, float], lim_y: Tuple[float, float]) -> Tensor:
    """EWA screen-space covariance ``(N, 2, 2) = J Rv Sigma Rv^T J^T`` (without the 0.3 dilation).

    ``t_view (N, 3)`` are view-space means (``t_z > 0``), ``view_rot (3, 3)`` the world-to-view
    rotation.  ``t_x / t_z`` is clamped to ``lim_x`` (likewise ``y``); the clamped coordinate is a
    constant for autograd (see the module doc).
    """
    tx, ty, tz = t_view.unbind(-1)
    tx = _clamp_ratio(tx, tz, *lim_x)
    ty = _clamp_ratio(ty, tz, *lim_y)
    zero = torch.zeros_like(tz)
    inv_z = 1.0 / tz
    inv_z2 = inv_z * inv_z
    jac = torch.stack((torch.stack((fx * inv_z, zero, -fx * tx * inv_z2), -1),
                       torch.stack((zero, fy * inv_z, -fy * ty * inv_z2), -1)), -2)
    m = jac @ view_rot
    return m @ cov3d @ m.transpose(-1, -2)


def _clamp_ratio(t: Tensor, tz: Tensor, low: float, high: float) -> Tensor:
    ratio = (t / tz).detach()
    clamped = (ratio < low) | (ratio > high)
    return torch.where(clamped, (ratio.clamp(low, high) * tz).detach(), t)


def frustum_limits(size: int, focal: float, centre: Optional[float]) -> Tuple[float, float]:
    """``[-1.3 (c + 0.5) / f, 1.3 (size - 0.5 - c) / f]`` with ``c`` defaulting to ``(size - 1) / 2``."""
    c = (size - 1) / 2.0 if centre is None else float(centre)
    return -FRUSTUM_CLAMP * (c + 0.5) / focal, FRUSTUM_CLAMP * (size - 0.5 - c) / focal


@dataclass
class ProjectedSplats:
    """Preprocessed, visible splats (``M`` of the ``N`` inputs survive culling).

    ``index`` maps rows to input splats; ``xy`` pixel-space means; ``conic (M, 3) = (a, b, c)`` of the
    inverse 2D covariance; ``rect (M, 4) = (x0, y0, x1, y1)`` tile rectangle (half-open);
    ``radii (N,)`` int32 with 0 for culled splats; ``lam`` the (floored) largest eigenvalue of the
    2D covariance, an upper bound of the true one.
    """

    index: Tensor
    xy: Tensor
    conic: Tensor
    opacity: Tensor
    color: Tensor
    depth: Tensor
    rect: Tensor
    radii: Tensor
    lam: Tensor


def preprocess(means3D: Tensor, means2D: Optional[Tensor], opacities: Tensor, shs: Optional[Tensor],
               colors_precomp: Optional[Tensor], scales: Optional[Tensor], rotations: Optional[Tensor],
               cov3D_precomp: Optional[Tensor], settings: Any) -> ProjectedSplats:
    """Cull, project and colour the splats (step 1 of the module doc)."""
    width, height = int(settings.image_width), int(settings.image_height)
    n = means3D.shape[0]
    dev, dt = means3D.device, means3D.dtype
    view = settings.viewmatrix.to(device=dev, dtype=dt)
    proj = settings.projmatrix.to(device=dev, dtype=dt)

    with torch.no_grad():
        depth_all = view_depths(means3D, view)
        idx = torch.nonzero(depth_all > NEAR_CULL).squeeze(1)
    means = means3D[idx]
    p_view = _homogeneous(means) @ view
    p_hom = _homogeneous(means) @ proj
    ndc = p_hom[:, :2] / (p_hom[:, 3:4] + PROJ_EPS)
    if means2D is not None:
        screen = means2D[:, :2].to(dt)
        ndc = ndc + (screen - screen.detach())[idx]
    xy = torch.stack((ndc_to_pixel(ndc[:, 0], width), ndc_to_pixel(ndc[:, 1], height)), -1)

    if cov3D_precomp is not None:
        cov3d = unpack_covariance(cov3D_precomp[idx].to(dt))
    else:
        cov3d = covariance_from_scale_rotation(scales[idx].to(dt), rotations[idx].to(dt),
                                               float(settings.scale_modifier))
    fx = width / (2.0 * float(settings.tanfovx))
    fy = height / (2.0 * float(settings.tanfovy))
    lim_x = frustum_limits(width, fx, getattr(settings, "cx", None))
    lim_y = frustum_limits(height, fy, getattr(settings, "cy", None))
    cov2d = project_covariance(cov3d, p_view[:, :3], view[:3, :3].t(), fx, fy, lim_x, lim_y)
    a = cov2d[:, 0, 0] + COV2D_DILATION
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + COV2D_DILATION

    with torch.no_grad():
        det = a * c - b * b
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp_min(mid * mid - det, EIG_FLOOR))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        ok = (det > 0) & torch.isfinite(det) & torch.isfinite(radius) & torch.isfinite(xy).all(-1)
        radius = torch.where(ok, radius, torch.zeros_like(radius))
        grid_x, grid_y = _grid(width, height)
        xs, ys = xy[:, 0].detach(), xy[:, 1].detach()
        rect = torch.stack((
            _tile_floor((xs - radius) / TILE, grid_x), _tile_floor((ys - radius) / TILE, grid_y),
            _tile_floor((xs + radius + (TILE - 1)) / TILE, grid_x),
            _tile_floor((ys + radius + (TILE - 1)) / TILE, grid_y),
        ), -1)
        ok &= (rect[:, 2] > rect[:, 0]) & (rect[:, 3] > rect[:, 1])
        keep = torch.nonzero(ok).squeeze(1)
        radii = torch.zeros(n, dtype=torch.int32, device=dev)
        radii[idx[keep]] = radius[keep].clamp_max(MAX_RADIUS).to(torch.int32)

    a, b, c = a[keep], b[keep], c[keep]
    det = a * c - b * b
    conic = torch.stack((c / det, -b / det, a / det), -1)
    index = idx[keep]
    opac = opacities.reshape(n)[index].to(dt)
    if colors_precomp is not None:
        color = colors_precomp[index].to(dt)
    else:
        campos = settings.campos.to(device=dev, dtype=dt).reshape(3)
        color = sh_colors(int(settings.sh_degree), shs[index].to(dt), means[keep], campos)
    return ProjectedSplats(index=index, xy=xy[keep], conic=conic, opacity=opac, color=color,
                           depth=p_view[keep, 2].detach(), rect=rect[keep], radii=radii, lam=lam[keep])


def _grid(width: int, height: int) -> Tuple[int, int]:
    return (width + TILE - 1) // TILE, (height + TILE - 1) // TILE


def _tile_floor(values: Tensor, limit: int) -> Tensor:
    """``min(limit, max(0, floor(values)))`` as int64 (non-finite values give 0)."""
    values = torch.nan_to_num(values, nan=0.0, posinf=float(limit), neginf=0.0)
    return torch.floor(values).clamp(0, limit).to(torch.int64)


# ----------------------------------------------------------------------------------------------
# Tile lists
# ----------------------------------------------------------------------------------------------
@dataclass
class BlockLists:
    """Splat rows (into :class:`ProjectedSplats`) per pixel block, front to back.

    Blocks are ``block x block`` pixel squares (``block`` divides the 16 px tile).  A splat is
    listed in a block of one of its tiles unless it provably contributes to no pixel there (see
    :func:`build_block_lists`).  ``splats`` holds all lists back to back; block ``b`` (row-major,
    ``grid_x`` blocks per row) owns ``splats[starts[b] : starts[b] + counts[b]]``.
    """

    splats: Tensor
    starts: Tensor
    counts: Tensor
    block: int
    grid_x: int
    grid_y: int


def block_grid(width: int, height: int, block: int) -> Tuple[int, int]:
    """Blocks per row and per column covering a ``width x height`` image."""
    return (width + block - 1) // block, (height + block - 1) // block


def build_block_lists(splats: ProjectedSplats, width: int, height: int, block: int = DEFAULT_BLOCK) -> BlockLists:
    """(block, splat) pairs inside the splats' tile rectangles, sorted by block, depth, splat row.

    Pairs that cannot pass the ``alpha >= 1/255`` test anywhere in the block are dropped: with
    ``d`` the distance from the mean to the block's nearest pixel centre, every pixel there has
    ``power <= -0.5 |d|^2 / lambda_max``, so ``opacity exp(-0.5 |d|^2 / lambda_max) < 1/255`` (with a
    1% margin in the exponent against rounding) means the splat is skipped at every pixel of the
    block.  Skipped splats leave ``T`` unchanged, so this changes neither the image nor the
    gradients; it only saves work.  ``block = 16`` gives the per-tile lists.
    """
    if TILE % block:
        raise ValueError(f"block must divide the tile size {TILE}, got {block}")
    dev = splats.xy.device
    per = TILE // block
    grid_x, grid_y = block_grid(width, height, block)
    num_blocks = grid_x * grid_y
    m = splats.rect.shape[0]
    rect = splats.rect * per
    rect = torch.stack((rect[:, 0], rect[:, 1], rect[:, 2].clamp_max(grid_x), rect[:, 3].clamp_max(grid_y)), -1)
    widths = rect[:, 2] - rect[:, 0]
    per_splat = widths * (rect[:, 3] - rect[:, 1])
    total = int(per_splat.sum().item()) if m else 0
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    zeros = torch.zeros(num_blocks, dtype=torch.int64, device=dev)
    if total == 0:
        return BlockLists(empty, zeros, zeros.clone(), block, grid_x, grid_y)
    with torch.no_grad():
        splat = torch.repeat_interleave(torch.arange(m, device=dev), per_splat, output_size=total)
        local = torch.arange(total, device=dev) - (torch.cumsum(per_splat, 0) - per_splat)[splat]
        bx = rect[splat, 0] + local % widths[splat]
        by = rect[splat, 1] + local // widths[splat]
        # Distance from the mean to the nearest pixel centre of the block.
        xy = splats.xy.detach()[splat]
        dx = xy[:, 0] - torch.clamp(xy[:, 0], (bx * block).to(xy.dtype), (bx * block + block - 1).to(xy.dtype))
        dy = xy[:, 1] - torch.clamp(xy[:, 1], (by * block).to(xy.dtype), (by * block + block - 1).to(xy.dtype))
        log_reach = torch.log(splats.opacity.detach()[splat] * 255.0)
        reach = log_reach + 0.01 * log_reach.abs() + 1e-5
        live = 0.5 * (dx * dx + dy * dy) / splats.lam[splat] <= reach
        splat, bid = splat[live], (by * grid_x + bx)[live]
        if splat.numel() == 0:
            return BlockLists(empty, zeros, zeros.clone(), block, grid_x, grid_y)
        # Depth rank (stable: ties keep the splat order, as the original's stable radix sort).
        order = torch.sort(splats.depth, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(m, device=dev)
        perm = torch.sort(bid * m + rank[splat]).indices
        counts = torch.bincount(bid, minlength=num_blocks)
    return BlockLists(splats=splat[perm], starts=torch.cumsum(counts, 0) - counts, counts=counts, block=block,
                      grid_x=grid_x, grid_y=grid_y)


# ----------------------------------------------------------------------------------------------
# Blending
# ----------------------------------------------------------------------------------------------
def _plan_chunks(counts: Sequence[int], block_ids: Sequence[int], block: int,
                 budget: int) -> List[Tuple[List[int], int, int, int]]:
    """Group non-empty blocks into chunks of at most ``budget`` (pixel, splat) pairs.

    ``counts`` must be ascending (``block_ids`` in the same order), so a chunk's padded list length
    is the count of its last block.  Returns ``(blocks, row0, rows, length)`` tuples; a block whose
    list alone exceeds the budget is split into groups of pixel rows (at least one row).
    """
    plans: List[Tuple[List[int], int, int, int]] = []
    current: List[int] = []
    current_len = 0
    pixels = block * block
    for bid, count in zip(block_ids, counts):
        if current and (len(current) + 1) * pixels * count > budget:
            plans.append((current, 0, block, current_len))
            current = []
        if pixels * count > budget:
            rows = block
            while rows > 1 and rows * block * count > budget:
                rows //= 2
            plans.extend(([bid], row0, rows, count) for row0 in range(0, block, rows))
            continue
        current.append(bid)
        current_len = count
    if current:
        plans.append((current, 0, block, current_len))
    return plans


def blend_chunk(xs: Tensor, ys: Tensor, xy: Tensor, conic: Tensor, opacity: Tensor, color: Tensor,
                valid: Tensor) -> Tuple[Tensor, Tensor]:
    """Front-to-back blend of padded per-block splat lists for a group of pixel blocks.

    ``xs (Tc, X)`` / ``ys (Tc, Y)`` pixel coordinates (each block is their outer product), ``xy (Tc, L, 2)``,
    ``conic (Tc, L, 3)``, ``opacity (Tc, L)``, ``color (Tc, L, 3)`` splat data in depth order,
    ``valid (Tc, L)`` marks real (non-padding) entries.  Returns the accumulated colour
    ``(Tc, Y * X, 3)`` and final transmittance ``(Tc, Y * X)``; pixels are row-major.
    """
    tc, length = valid.shape
    # power = -0.5 a dx^2 - b dx dy - 0.5 c dy^2, split into per-row / per-column factors.
    dx = xs.unsqueeze(-1) - xy[:, None, :, 0]                         # (Tc, X, L)
    dy = ys.unsqueeze(-1) - xy[:, None, :, 1]                         # (Tc, Y, L)
    qx = (-0.5 * conic[:, None, :, 0]) * dx * dx                      # (Tc, X, L)
    qy = (-0.5 * conic[:, None, :, 2]) * dy * dy                      # (Tc, Y, L)
    by = (-conic[:, None, :, 1]) * dy                                 # (Tc, Y, L)
    power = torch.addcmul(qy.unsqueeze(2) + qx.unsqueeze(1), by.unsqueeze(2), dx.unsqueeze(1))
    power = power.reshape(tc, -1, length)                             # (Tc, P, L)
    alpha_raw = opacity.unsqueeze(1) * torch.exp(power)
    with torch.no_grad():
        mask = (power <= 0) & (alpha_raw >= ALPHA_MIN) & valid.unsqueeze(1)
        excess = (alpha_raw - ALPHA_MAX).clamp_min_(0.0)              # straight-through 0.99 clamp
    alpha = (alpha_raw - excess) * mask
    log_t = torch.log1p(-alpha)
    cum = torch.cumsum(log_t, -1)                                     # log of the inclusive T
    with torch.no_grad():
        # Early stop: the splat whose inclusive transmittance falls below T_MIN and all later ones
        # are excluded (T is non-increasing, so this mask is a prefix of each list).
        keep = cum >= math.log(T_MIN)
    weight = (alpha * keep) * torch.exp(cum - log_t)                  # alpha * T before the splat
    accum = torch.matmul(weight, color)                                # (Tc, P, 3)
    return accum, torch.exp((log_t * keep).sum(-1))


class _RecomputedBlend(torch.autograd.Function):
    """:func:`blend_chunk` that keeps only its inputs and recomputes the chunk in backward.

    The gradients are still autograd's (of the recomputed graph); this only bounds memory, as
    ``torch.utils.checkpoint`` would (which costs a multi-second torch._dynamo import on first use).
    """

    @staticmethod
    def forward(ctx: Any, *args: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.save_for_backward(*args)
        return blend_chunk(*args)

    @staticmethod
    def backward(ctx: Any, grad_accum: Tensor,  # type: ignore[override]
                 grad_trans: Tensor) -> Tuple[Optional[Tensor], ...]:
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) for t, need in zip(saved, ctx.needs_input_grad)]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            accum, trans = blend_chunk(*inputs)
        grads = iter(torch.autograd.grad((accum, trans), wanted, (grad_accum, grad_trans), allow_unused=True))
        return tuple(next(grads) if t.requires_grad else None for t in inputs)


def _blend_call(recompute: bool, *args: Tensor) -> Tuple[Tensor, Tensor]:
    if recompute:
        return _RecomputedBlend.apply(*args)
    return blend_chunk(*args)


def render_blocks(splats: ProjectedSplats, lists: BlockLists, width: int, height: int, bg: Tensor,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                  checkpoint_elements: int = DEFAULT_CHECKPOINT_ELEMENTS) -> Tensor:
    """Blend every block and assemble the ``(3, H, W)`` image (``C + T bg``)."""
    dev, dt = splats.xy.device, splats.xy.dtype
    block, grid_x, grid_y = lists.block, lists.grid_x, lists.grid_y
    counts_cpu = lists.counts.cpu()
    nonempty = torch.nonzero(counts_cpu).squeeze(1)
    order = torch.sort(counts_cpu[nonempty], stable=True).indices
    block_ids = nonempty[order].tolist()
    counts = counts_cpu[nonempty][order].tolist()
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (splats.xy, splats.conic, splats.opacity, splats.color))
    recompute = needs_grad and block * block * sum(counts) > checkpoint_elements

    bg = bg.to(device=dev, dtype=dt)
    results: List[Tensor] = []
    result_ids: List[int] = []
    partial: List[Tensor] = []
    for ids, row0, rows, length in _plan_chunks(counts, block_ids, block, chunk_elements):
        b_idx = torch.tensor(ids, dtype=torch.int64, device=dev)
        pos = torch.arange(length, device=dev)
        valid = pos.unsqueeze(0) < lists.counts[b_idx].unsqueeze(1)
        entry = torch.where(valid, lists.starts[b_idx].unsqueeze(1) + pos, torch.zeros_like(pos))
        rows_idx = lists.splats[entry]                                    # (Bc, L)
        xs = ((b_idx % grid_x) * block).unsqueeze(1) + torch.arange(block, device=dev)
        ys = ((b_idx // grid_x) * block + row0).unsqueeze(1) + torch.arange(rows, device=dev)
        accum, trans = _blend_call(recompute, xs.to(dt), ys.to(dt), splats.xy[rows_idx],
                                   splats.conic[rows_idx], splats.opacity[rows_idx],
                                   splats.color[rows_idx], valid)
        pixels = accum + trans.unsqueeze(-1) * bg
        if rows == block:
            results.append(pixels)
            result_ids.extend(ids)
        else:
            partial.append(pixels)
            if row0 + rows == block:
                results.append(torch.cat(partial, dim=1))
                result_ids.extend(ids)
                partial = []

    image_blocks = bg.reshape(1, 1, 3).expand(grid_x * grid_y, block * block, 3)
    if results:
        index = torch.tensor(result_ids, dtype=torch.int64, device=dev)
        image_blocks = image_blocks.index_copy(0, index, torch.cat(results, 0))
    image = image_blocks.reshape(grid_y, grid_x, block, block, 3).permute(4, 0, 2, 1, 3)
    return image.reshape(3, grid_y * block, grid_x * block)[:, :height, :width]


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def _absent(t: Optional[Tensor], n: int) -> bool:
    """``None`` or an empty placeholder tensor (the original passes ``torch.Tensor([])``)."""
    return t is None or (t.numel() == 0 and n > 0)


def rasterize_gaussians(means3D: Tensor, means2D: Optional[Tensor], sh: Optional[Tensor],
                        colors_precomp: Optional[Tensor], opacities: Tensor, scales: Optional[Tensor],
                        rotations: Optional[Tensor], cov3Ds_precomp: Optional[Tensor], raster_settings: Any,
                        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                        checkpoint_elements: int = DEFAULT_CHECKPOINT_ELEMENTS,
                        block: int = DEFAULT_BLOCK) -> Tuple[Tensor, Tensor]:
    """Render splats with the reference math; returns ``(color (3, H, W), radii (N,) int32)``.

    Absent optional inputs are ``None`` (empty tensors are accepted too).  Exactly one of
    ``sh`` / ``colors_precomp`` and either ``scales`` + ``rotations`` or ``cov3Ds_precomp`` must be
    given (``colors_precomp`` and ``cov3Ds_precomp`` win when both alternatives are).  The output
    stays attached to the autograd graph of the inputs even when every splat is culled (their
    gradients are then zero).
    """
    n = means3D.shape[0]
    width, height = int(raster_settings.image_width), int(raster_settings.image_height)
    dt = means3D.dtype if means3D.is_floating_point() else torch.float32
    means3D = means3D.to(dt)
    bg = raster_settings.bg.to(device=means3D.device, dtype=dt).reshape(3)
    sh = None if _absent(sh, n) else sh
    colors_precomp = None if _absent(colors_precomp, n) else colors_precomp
    cov3Ds_precomp = None if _absent(cov3Ds_precomp, n) else cov3Ds_precomp
    if n > 0:
        if sh is None and colors_precomp is None:
            raise ValueError("provide exactly one of shs or colors_precomp (got neither)")
        if cov3Ds_precomp is None and (_absent(scales, n) or _absent(rotations, n)):
            raise ValueError("provide either scales and rotations, or cov3D_precomp")

    inputs = (means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp)
    if n == 0:
        image = bg.reshape(3, 1, 1).expand(3, height, width).clone()
        return _attach(image, inputs), torch.zeros(0, dtype=torch.int32, device=bg.device)
    splats = preprocess(means3D, means2D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp,
                        raster_settings)
    lists = build_block_lists(splats, width, height, block)
    image = render_blocks(splats, lists, width, height, bg, chunk_elements, checkpoint_elements)
    return _attach(image, inputs), splats.radii


def _attach(image: Tensor, inputs: Sequence[Optional[Tensor]]) -> Tensor:
    """Connect ``image`` to every differentiable input with a zero-valued, NaN-free term.

    Keeps ``loss.backward()`` valid (with zero gradients) when no splat reached the image.
    """
    if not torch.is_grad_enabled():
        return image
    zeros = [t.reshape(-1)[:0].sum().to(image.dtype) for t in inputs if t is not None and t.requires_grad]
    return image + sum(zeros) if zeros else image
