"""Tests of diff_gaussian_rasterization's Python API and pure-PyTorch reference rasterizer.

Independent expectations: a literal per-pixel NumPy renderer following SPEC 6 (sequential loops,
SciPy rotations and SciPy spherical harmonics), closed-form single-splat images, and finite
differences (``torch.autograd.gradcheck`` in float64).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from diff_gaussian_rasterization import (GaussianRasterizationSettings, GaussianRasterizer, cuda_available,
                                         rasterize_gaussians, resolve_backend)
from diff_gaussian_rasterization import reference

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# Cameras and scenes
# ----------------------------------------------------------------------------------------------
def camera_matrices(width: int, height: int, fx: float, fy: float, cx: Optional[float] = None,
                    cy: Optional[float] = None, w2c: Optional[np.ndarray] = None):
    """Transposed view and full projection matrices (OpenCV axes, principal point as DESIGN.md)."""
    cx = (width - 1) / 2 if cx is None else cx
    cy = (height - 1) / 2 if cy is None else cy
    znear, zfar = 0.01, 100.0
    proj = np.zeros((4, 4))
    proj[0, 0] = 2 * fx / width
    proj[1, 1] = 2 * fy / height
    proj[0, 2] = (2 * cx + 1) / width - 1
    proj[1, 2] = (2 * cy + 1) / height - 1
    proj[2, 2] = zfar / (zfar - znear)
    proj[2, 3] = -zfar * znear / (zfar - znear)
    proj[3, 2] = 1.0
    view = np.eye(4) if w2c is None else w2c
    return view.T.copy(), (proj @ view).T.copy()


def make_settings(width=32, height=24, fx=30.0, fy=28.0, cx=None, cy=None, w2c=None, bg=(0.1, 0.2, 0.3),
                  sh_degree=0, scale_modifier=1.0, debug=False, dtype=F64, backend="reference"):
    view, full = camera_matrices(width, height, fx, fy, cx, cy, w2c)
    campos = np.linalg.inv(view.T)[:3, 3]
    return GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=width / (2 * fx), tanfovy=height / (2 * fy),
        bg=torch.tensor(bg, dtype=dtype), scale_modifier=scale_modifier,
        viewmatrix=torch.tensor(view, dtype=dtype), projmatrix=torch.tensor(full, dtype=dtype),
        sh_degree=sh_degree, campos=torch.tensor(campos, dtype=dtype), prefiltered=False, debug=debug,
        cx=cx, cy=cy, backend=backend)


def tilted_w2c() -> np.ndarray:
    """A camera slightly rotated and shifted (exercises the view rotation and campos)."""
    w2c = np.eye(4)
    w2c[:3, :3] = Rotation.from_euler("xyz", [0.1, -0.15, 0.05]).as_matrix()
    w2c[:3, 3] = [0.05, -0.03, 0.2]
    return w2c


def random_scene(n, settings, seed=0, depth=(2.0, 4.0), scale=(0.03, 0.12), opacity=(0.2, 0.85),
                 sh_k=16, spread=0.9):
    """Splats inside the frustum of ``settings`` (world coordinates), float64 tensors."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(*depth, n)
    x = rng.uniform(-spread, spread, n) * settings.tanfovx * z
    y = rng.uniform(-spread, spread, n) * settings.tanfovy * z
    view = settings.viewmatrix.numpy().T
    c2w = np.linalg.inv(view)
    pts_cam = np.stack([x, y, z, np.ones(n)], 1)
    means = (pts_cam @ c2w.T)[:, :3]
    return dict(
        means3D=torch.tensor(means, dtype=F64),
        scales=torch.tensor(rng.uniform(*scale, (n, 3)), dtype=F64),
        rotations=torch.tensor(rng.normal(size=(n, 4)), dtype=F64),
        opacities=torch.tensor(rng.uniform(*opacity, (n, 1)), dtype=F64),
        shs=torch.tensor(rng.normal(scale=0.4, size=(n, sh_k, 3)), dtype=F64),
        colors=torch.tensor(rng.uniform(0.0, 1.0, (n, 3)), dtype=F64),
    )


# ----------------------------------------------------------------------------------------------
# Independent NumPy renderer: literal transcription of SPEC 6, loops everywhere.
# ----------------------------------------------------------------------------------------------
def numpy_sh_basis(degree: int, d: np.ndarray) -> np.ndarray:
    """3DGS real SH basis (= (-1)^m times the orthonormal real SH) from SciPy's complex harmonics."""
    theta = math.acos(np.clip(d[2], -1, 1))
    phi = math.atan2(d[1], d[0])
    out = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            y = complex(sph_harm_y(l, abs(m), theta, phi))
            out.append(y.real if m == 0 else math.sqrt(2) * (y.real if m > 0 else y.imag))
    return np.array(out)


def numpy_render(settings, means3D, opacities, colors=None, shs=None, scales=None, rotations=None, cov6=None,
                 stats=None):
    """Return (image (3,H,W), radii (N,), per-splat dicts) computed pixel by pixel.

    ``stats`` (a dict), when given, receives ``early_stops`` (pixels that hit the T < 1e-4 stop) and
    ``clamped`` (pixel-splat pairs where alpha was clamped to 0.99).
    """
    stats = {} if stats is None else stats
    stats.update(early_stops=0, clamped=0)
    W, H = settings.image_width, settings.image_height
    V = settings.viewmatrix.numpy()
    P = settings.projmatrix.numpy()
    bg = settings.bg.numpy()
    fx = W / (2 * settings.tanfovx)
    fy = H / (2 * settings.tanfovy)
    cx = (W - 1) / 2 if settings.cx is None else settings.cx
    cy = (H - 1) / 2 if settings.cy is None else settings.cy
    n = means3D.shape[0]
    gx, gy = (W + 15) // 16, (H + 15) // 16
    radii = np.zeros(n, dtype=np.int64)
    splats = []
    for i in range(n):
        p = np.append(means3D[i], 1.0)
        t = p @ V
        if t[2] <= 0.2:
            continue
        ph = p @ P
        ndc = ph[:3] / (ph[3] + 1e-7)
        px = ((ndc[0] + 1) * W - 1) / 2
        py = ((ndc[1] + 1) * H - 1) / 2
        if cov6 is not None:
            a6 = cov6[i]
            sigma = np.array([[a6[0], a6[1], a6[2]], [a6[1], a6[3], a6[4]], [a6[2], a6[4], a6[5]]])
        else:
            q = rotations[i]
            rot = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
            m = rot @ np.diag(scales[i] * settings.scale_modifier)
            sigma = m @ m.T
        tx, ty, tz = t[:3]
        tx = min(max(tx / tz, -1.3 * (cx + 0.5) / fx), 1.3 * (W - 0.5 - cx) / fx) * tz
        ty = min(max(ty / tz, -1.3 * (cy + 0.5) / fy), 1.3 * (H - 0.5 - cy) / fy) * tz
        J = np.array([[fx / tz, 0, -fx * tx / tz ** 2], [0, fy / tz, -fy * ty / tz ** 2]])
        Rv = V[:3, :3].T
        cov = J @ Rv @ sigma @ Rv.T @ J.T + 0.3 * np.eye(2)
        det = np.linalg.det(cov)
        if det <= 0:
            continue
        conic = np.linalg.inv(cov)
        mid = 0.5 * (cov[0, 0] + cov[1, 1])
        lam = mid + math.sqrt(max(0.1, mid * mid - det))
        r = math.ceil(3 * math.sqrt(lam))
        x0 = min(gx, max(0, math.floor((px - r) / 16)))
        x1 = min(gx, max(0, math.floor((px + r + 15) / 16)))
        y0 = min(gy, max(0, math.floor((py - r) / 16)))
        y1 = min(gy, max(0, math.floor((py + r + 15) / 16)))
        if (x1 - x0) * (y1 - y0) == 0:
            continue
        radii[i] = r
        if colors is not None:
            col = colors[i]
        else:
            d = means3D[i] - settings.campos.numpy()
            basis = numpy_sh_basis(settings.sh_degree, d / np.linalg.norm(d))
            col = np.maximum(basis @ shs[i][: len(basis)] + 0.5, 0.0)
        splats.append(dict(i=i, depth=t[2], xy=(px, py), conic=conic, op=float(opacities[i].reshape(-1)[0]),
                           col=col, rect=(x0, y0, x1, y1), r=r))
    image = np.zeros((3, H, W))
    for y in range(H):
        for x in range(W):
            tile = (x // 16, y // 16)
            lst = [s for s in splats
                   if s["rect"][0] <= tile[0] < s["rect"][2] and s["rect"][1] <= tile[1] < s["rect"][3]]
            lst.sort(key=lambda s: (s["depth"], s["i"]))
            T = 1.0
            C = np.zeros(3)
            for s in lst:
                d = np.array([s["xy"][0] - x, s["xy"][1] - y])
                con = s["conic"]
                power = -0.5 * (con[0, 0] * d[0] ** 2 + con[1, 1] * d[1] ** 2) - con[0, 1] * d[0] * d[1]
                if power > 0:
                    continue
                alpha = min(0.99, s["op"] * math.exp(power))
                if alpha < 1 / 255:
                    continue
                test_T = T * (1 - alpha)
                if test_T < 1e-4:
                    stats["early_stops"] += 1
                    break
                stats["clamped"] += alpha == 0.99
                C += s["col"] * alpha * T
                T = test_T
            image[:, y, x] = C + T * bg
    return image, radii, splats


def render(settings, scene, use_sh=True, cov=False, means2D=None, **overrides):
    kw = dict(means3D=scene["means3D"], means2D=means2D, opacities=scene["opacities"])
    if use_sh:
        kw["shs"] = scene["shs"]
    else:
        kw["colors_precomp"] = scene["colors"]
    if cov:
        kw["cov3D_precomp"] = scene["cov6"]
    else:
        kw["scales"], kw["rotations"] = scene["scales"], scene["rotations"]
    kw.update(overrides)
    return GaussianRasterizer(settings)(**kw)


# ----------------------------------------------------------------------------------------------
# Forward against the NumPy renderer
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_forward_matches_numpy_sh(degree):
    settings = make_settings(w2c=tilted_w2c(), sh_degree=degree)
    scene = random_scene(12, settings, seed=degree)
    image, radii = render(settings, scene)
    expected, exp_radii, _ = numpy_render(settings, scene["means3D"].numpy(), scene["opacities"].numpy(),
                                          shs=scene["shs"].numpy(), scales=scene["scales"].numpy(),
                                          rotations=scene["rotations"].numpy())
    assert image.shape == (3, 24, 32) and radii.dtype == torch.int32
    np.testing.assert_array_equal(radii.numpy(), exp_radii)
    np.testing.assert_allclose(image.detach().numpy(), expected, atol=1e-10)


def test_forward_matches_numpy_dense_scene_with_early_stop_and_cov():
    """Many overlapping, nearly opaque splats: early stop, alpha clamp, tile lists, precomputed covariances."""
    settings = make_settings(width=40, height=35, fx=25, fy=25, cx=22.0, cy=14.5)
    scene = random_scene(80, settings, seed=5, scale=(0.2, 0.6), opacity=(0.85, 1.0))
    cov = reference.covariance_from_scale_rotation(scene["scales"], scene["rotations"])
    scene["cov6"] = reference.pack_covariance(cov)
    image, radii = render(settings, scene, use_sh=False, cov=True)
    stats = {}
    expected, exp_radii, _ = numpy_render(settings, scene["means3D"].numpy(), scene["opacities"].numpy(),
                                          colors=scene["colors"].numpy(), cov6=scene["cov6"].numpy(), stats=stats)
    assert stats["early_stops"] > 100 and stats["clamped"] > 0
    np.testing.assert_array_equal(radii.numpy(), exp_radii)
    np.testing.assert_allclose(image.detach().numpy(), expected, atol=1e-10)


def test_float32_matches_float64():
    settings = make_settings(sh_degree=3)
    scene = random_scene(30, settings, seed=3)
    image64, radii64 = render(settings, scene)
    settings32 = make_settings(sh_degree=3, dtype=torch.float32)
    scene32 = {k: v.float() for k, v in scene.items()}
    image32, radii32 = render(settings32, scene32)
    assert image32.dtype == torch.float32
    np.testing.assert_array_equal(radii32.numpy(), radii64.numpy())
    np.testing.assert_allclose(image32.detach().numpy(), image64.detach().numpy(), atol=2e-5)


def test_chunking_blocks_and_recompute_do_not_change_results():
    """Chunk size, internal block size and backward recomputation are implementation details."""
    settings = make_settings(width=48, height=40)
    scene = random_scene(60, settings, seed=4, scale=(0.05, 0.3))
    scene["opacities"][:5] = 0.003                    # below 1/255: never contributes
    args = (scene["means3D"], None, scene["shs"], None, scene["opacities"], scene["scales"], scene["rotations"],
            None, settings)
    base = reference.rasterize_gaussians(*args, block=16)[0]
    means = scene["means3D"].clone().requires_grad_(True)
    grads = []
    configs = [dict(block=16), dict(block=8), dict(block=4), dict(block=1),
               dict(chunk_elements=300, checkpoint_elements=0),
               dict(block=16, chunk_elements=16 * 16 * 3, checkpoint_elements=0)]
    for config in configs:
        means.grad = None
        img = reference.rasterize_gaussians(means, *args[1:], **config)[0]
        torch.testing.assert_close(img.detach(), base, atol=1e-12, rtol=0)
        img.sum().backward()
        grads.append(means.grad.clone())
    for grad in grads[1:]:
        torch.testing.assert_close(grad, grads[0], atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="block must divide"):
        reference.rasterize_gaussians(*args, block=6)


# ----------------------------------------------------------------------------------------------
# Analytic cases
# ----------------------------------------------------------------------------------------------
def single_splat(settings, x_pix, y_pix, z, sigma_pix, opacity, color):
    """One isotropic splat whose *unprojected* std is sigma_pix pixels at the image position (x, y)."""
    fx = settings.image_width / (2 * settings.tanfovx)
    fy = settings.image_height / (2 * settings.tanfovy)
    cx = (settings.image_width - 1) / 2 if settings.cx is None else settings.cx
    cy = (settings.image_height - 1) / 2 if settings.cy is None else settings.cy
    means = torch.tensor([[(x_pix - cx) * z / fx, (y_pix - cy) * z / fy, z]], dtype=F64)
    return dict(means3D=means, scales=torch.full((1, 3), sigma_pix * z / fx, dtype=F64),
                rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
                opacities=torch.tensor([[opacity]], dtype=F64),
                colors=torch.tensor([color], dtype=F64), shs=torch.zeros(1, 1, 3, dtype=F64))


def test_single_isotropic_splat_closed_form():
    fx = fy = 30.0
    settings = make_settings(fx=fx, fy=fy)
    sigma_pix, opacity, color = 1.5, 0.7, [0.9, 0.5, 0.2]
    scene = single_splat(settings, 15.5, 11.5, 3.0, sigma_pix, opacity, color)
    image, radii = render(settings, scene, use_sh=False)
    var = sigma_pix ** 2 + 0.3                       # EWA variance plus the 0.3 px^2 dilation
    # The original's eigenvalue floor: lambda = mid + sqrt(max(0.1, mid^2 - det)) = var + sqrt(0.1).
    assert radii.item() == math.ceil(3 * math.sqrt(var + math.sqrt(0.1))) == 6
    ys, xs = np.mgrid[0:24, 0:32].astype(float)      # pixel centres at integer coordinates
    alpha = opacity * np.exp(-0.5 * ((xs - 15.5) ** 2 + (ys - 11.5) ** 2) / var)
    alpha = np.where(alpha < 1 / 255, 0.0, alpha)
    bg = settings.bg.numpy()
    expected = np.array(color)[:, None, None] * alpha + (1 - alpha) * bg[:, None, None]
    np.testing.assert_allclose(image.detach().numpy(), expected, atol=1e-9)
    assert np.any(alpha == 0.0) and np.any(alpha > 0.5)   # both the 1/255 cut and the core are exercised


def test_alpha_clamp_threshold_and_background():
    settings = make_settings(width=1, height=1, fx=1.0, fy=1.0)
    bg = settings.bg.numpy()
    color = np.array([0.9, 0.5, 0.2])
    # Opaque splat centred on the only pixel: alpha = min(0.99, 1.0).
    scene = single_splat(settings, 0.0, 0.0, 2.0, 0.5, 1.0, list(color))
    image, _ = render(settings, scene, use_sh=False)
    np.testing.assert_allclose(image.detach().numpy()[:, 0, 0], 0.99 * color + 0.01 * bg, atol=1e-12)
    # Opacity just below / above 1/255 at the centre.
    for opacity, visible in [(0.99 / 255, False), (1.01 / 255, True)]:
        scene = single_splat(settings, 0.0, 0.0, 2.0, 0.5, opacity, list(color))
        image, _ = render(settings, scene, use_sh=False)
        expected = opacity * color + (1 - opacity) * bg if visible else bg
        np.testing.assert_allclose(image.detach().numpy()[:, 0, 0], expected, atol=1e-12)


def test_alpha_clamp_gradient_is_straight_through():
    """As the original CUDA backward: d alpha / d opacity = G even where alpha is clamped to 0.99."""
    settings = make_settings(width=1, height=1, fx=1.0, fy=1.0)
    scene = single_splat(settings, 0.0, 0.0, 2.0, 0.5, 1.0, [0.9, 0.5, 0.2])
    opac = scene["opacities"].requires_grad_(True)
    image, _ = render(settings, scene, use_sh=False)
    image.sum().backward()
    expected = float((scene["colors"][0] - settings.bg).sum())  # d/dalpha (alpha c + (1 - alpha) bg), G = 1
    assert opac.grad.item() == pytest.approx(expected, abs=1e-12)


def test_early_stop_on_stacked_opaque_splats():
    settings = make_settings(width=1, height=1, fx=1.0, fy=1.0, bg=(0.0, 0.0, 0.0))
    n = 7
    # Splat k sits at depth 1 + k, but the rows are listed back to front to exercise the sort.
    depths = np.arange(n)[::-1] + 1.0
    colors = np.eye(3)[np.arange(n) % 3] * (1.0 + np.arange(n))[:, None]
    scene = dict(means3D=torch.tensor([[0.0, 0.0, z] for z in depths], dtype=F64),
                 scales=torch.full((n, 3), 0.5, dtype=F64), rotations=torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64),
                 opacities=torch.full((n, 1), 0.8, dtype=F64), colors=torch.tensor(colors, dtype=F64))
    image, _ = render(settings, scene, use_sh=False)
    # Front to back alphas 0.8: T = 0.2^k; the 6th splat would give 6.4e-5 < 1e-4 and stops.
    front_to_back = np.argsort(depths)
    expected = np.zeros(3)
    T = 1.0
    for k, row in enumerate(front_to_back[:5]):
        expected += colors[row] * 0.8 * T
        T *= 0.2
    np.testing.assert_allclose(image.detach().numpy()[:, 0, 0], expected, atol=1e-12)
    # Background sees the remaining transmittance 0.2^5 of the five included splats.
    settings_bg = make_settings(width=1, height=1, fx=1.0, fy=1.0, bg=(1.0, 1.0, 1.0))
    image_bg, _ = render(settings_bg, scene, use_sh=False)
    np.testing.assert_allclose(image_bg.detach().numpy()[:, 0, 0], expected + 0.2 ** 5, atol=1e-12)


def test_tile_rectangle_limits_contributions():
    """A splat whose rectangle stops at tile column 0 leaves pixel x = 16 alone although alpha > 1/255 there."""
    settings = make_settings(fx=30.0, fy=30.0)
    scene = single_splat(settings, 12.9, 7.5, 3.0, 1.0, 1.0, [1.0, 1.0, 1.0])
    image, radii = render(settings, scene, use_sh=False)
    _, _, splats = numpy_render(settings, scene["means3D"].numpy(), scene["opacities"].numpy(),
                                colors=scene["colors"].numpy(), scales=scene["scales"].numpy(),
                                rotations=scene["rotations"].numpy())
    s = splats[0]
    assert s["rect"][2] == 1 and radii.item() == s["r"]          # only tile column 0
    d = np.array([s["xy"][0] - 16.0, s["xy"][1] - 7.0])
    alpha_at_16 = math.exp(-0.5 * d @ s["conic"] @ d)
    assert alpha_at_16 > 1 / 255                                 # the Gaussian still reaches x = 16
    bg = settings.bg.numpy()
    np.testing.assert_allclose(image.detach().numpy()[:, 7, 16], bg, atol=0)
    assert np.all(image.detach().numpy()[:, 7, 15] > bg + 1e-3)


# ----------------------------------------------------------------------------------------------
# Culling and degenerate inputs
# ----------------------------------------------------------------------------------------------
def test_culling_cases():
    settings = make_settings()
    fx = 30.0
    means = torch.tensor([
        [0.0, 0.0, -2.0],        # behind the camera
        [0.0, 0.0, 0.15],        # in front of the camera but at depth <= 0.2
        [0.0, 0.0, 0.2],         # exactly at the cull depth
        [0.0, 0.0, 0.25],        # just past it: visible
        [60.0 * 3 / fx, 0.0, 3.0],   # projects ~60 px right of a 32 px image: no tile
        [0.0, 0.0, 3.0],         # plain visible splat
    ], dtype=F64)
    n = len(means)
    scene = dict(means3D=means, scales=torch.full((n, 3), 0.02, dtype=F64),
                 rotations=torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64), opacities=torch.full((n, 1), 0.5, dtype=F64),
                 colors=torch.rand(n, 3, dtype=F64, generator=torch.Generator().manual_seed(0)))
    image, radii = render(settings, scene, use_sh=False)
    assert radii.tolist()[:3] == [0, 0, 0] and radii[3] > 0 and radii[4] == 0 and radii[5] > 0
    expected, exp_radii, _ = numpy_render(settings, means.numpy(), scene["opacities"].numpy(),
                                          colors=scene["colors"].numpy(), scales=scene["scales"].numpy(),
                                          rotations=scene["rotations"].numpy())
    np.testing.assert_array_equal(radii.numpy(), exp_radii)
    np.testing.assert_allclose(image.detach().numpy(), expected, atol=1e-10)


def test_zero_splats_and_all_culled_keep_graph():
    settings = make_settings()
    bg = settings.bg.view(3, 1, 1).expand(3, 24, 32)
    for means in (torch.zeros(0, 3, dtype=F64), torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 0.1]], dtype=F64)):
        n = len(means)
        means = means.clone().requires_grad_(True)
        opac = torch.full((n, 1), 0.5, dtype=F64, requires_grad=True)
        means2D = torch.zeros(n, 3, dtype=F64, requires_grad=True)
        image, radii = GaussianRasterizer(settings)(
            means, means2D, opac, shs=torch.zeros(n, 1, 3, dtype=F64), scales=torch.ones(n, 3, dtype=F64),
            rotations=torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64).reshape(n, 4))
        torch.testing.assert_close(image.detach(), bg)
        assert radii.shape == (n,) and radii.dtype == torch.int32 and int(radii.abs().sum()) == 0
        image.sum().backward()
        assert torch.all(means.grad == 0) and torch.all(opac.grad == 0) and torch.all(means2D.grad == 0)


def test_one_pixel_image_and_degenerate_covariances():
    settings = make_settings(width=1, height=1, fx=1.0, fy=1.0)
    scene = dict(means3D=torch.tensor([[0.0, 0.0, 2.0], [0.1, 0.0, 2.5], [0.0, 0.0, 3.0]], dtype=F64),
                 opacities=torch.tensor([[0.5], [0.5], [0.5]], dtype=F64),
                 colors=torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=F64),
                 cov6=torch.tensor([[0.0] * 6,                                    # zero: 0.3 px^2 dilation only
                                    [-100.0, 0, 0, -100.0, 0, -100.0],            # negative definite: det <= 0
                                    [float("nan")] + [0.0] * 5], dtype=F64))      # NaN: culled
    image, radii = render(settings, scene, use_sh=False, cov=True)
    assert radii[0] > 0 and radii[1] == 0 and radii[2] == 0
    alpha = 0.5                                  # G = 1 at the centre
    expected = alpha * np.array([1.0, 0, 0]) + (1 - alpha) * settings.bg.numpy()
    np.testing.assert_allclose(image.detach().numpy()[:, 0, 0], expected, atol=1e-12)
    # Zero scales and a zero quaternion also stay finite.
    zero = dict(means3D=scene["means3D"][:1], opacities=scene["opacities"][:1], colors=scene["colors"][:1],
                scales=torch.zeros(1, 3, dtype=F64), rotations=torch.zeros(1, 4, dtype=F64))
    image, radii = render(settings, zero, use_sh=False)
    np.testing.assert_allclose(image.detach().numpy()[:, 0, 0], expected, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Principal point
# ----------------------------------------------------------------------------------------------
def test_principal_point_offset_projection_and_clamp():
    width, height, fx, fy, cx, cy = 40, 30, 20.0, 22.0, 30.0, 6.0
    settings = make_settings(width=width, height=height, fx=fx, fy=fy, cx=cx, cy=cy)
    x, y, z = -0.4, 8.0 / 22.0, 2.0
    u, v = fx * x / z + cx, fy * y / z + cy
    assert abs(u - round(u)) < 1e-12 and abs(v - round(v)) < 1e-12
    u, v = round(u), round(v)
    scene = dict(means3D=torch.tensor([[x, y, z]], dtype=F64), scales=torch.full((1, 3), 0.05, dtype=F64),
                 rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=F64), opacities=torch.tensor([[0.6]], dtype=F64),
                 colors=torch.tensor([[1.0, 1.0, 1.0]], dtype=F64))
    image, _ = render(settings, scene, use_sh=False)
    lum = image.detach().numpy()[0]
    assert np.unravel_index(np.argmax(lum), lum.shape) == (int(v), int(u))
    np.testing.assert_allclose(lum[int(v), int(u)], 0.6 + 0.4 * settings.bg[0].item(), atol=1e-12)
    # A splat far left of the centre: inside the asymmetric 1.3x frustum (no clamp), outside the
    # symmetric one.  The image must match the NumPy renderer with the asymmetric limits.
    lo = -1.3 * (cx + 0.5) / fx
    assert 0.9 * lo < -1.3 * width / (2 * fx)
    far = dict(scene, means3D=torch.tensor([[0.9 * lo * 2.0, 0.0, 2.0]], dtype=F64),
               scales=torch.tensor([[0.3, 0.05, 0.4]], dtype=F64))
    image, radii = render(settings, far, use_sh=False)
    expected, exp_radii, _ = numpy_render(settings, far["means3D"].numpy(), far["opacities"].numpy(),
                                          colors=far["colors"].numpy(), scales=far["scales"].numpy(),
                                          rotations=far["rotations"].numpy())
    np.testing.assert_array_equal(radii.numpy(), exp_radii)
    np.testing.assert_allclose(image.detach().numpy(), expected, atol=1e-10)
    centred = make_settings(width=width, height=height, fx=fx, fy=fy, cx=None, cy=cy)._replace(
        projmatrix=settings.projmatrix)
    assert render(centred, far, use_sh=False)[1].item() != radii.item()   # the clamp differs when centred


# ----------------------------------------------------------------------------------------------
# Gradients (float64 finite differences)
# ----------------------------------------------------------------------------------------------
GRAD_SETTINGS = dict(width=32, height=24, fx=30.0, fy=28.0)


def _gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def _grad_scene(seed=0, degree=3, n=5):
    settings = make_settings(w2c=tilted_w2c(), sh_degree=degree, **GRAD_SETTINGS)
    scene = random_scene(n, settings, seed=seed, scale=(0.05, 0.15), opacity=(0.3, 0.8), spread=0.7,
                         sh_k=(degree + 1) ** 2)
    return settings, scene


def _weights(settings, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, settings.image_height, settings.image_width, dtype=F64, generator=g)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_gradients_sh_means_opacity(degree):
    settings, scene = _grad_scene(seed=degree, degree=degree)
    w = _weights(settings)

    def fn(means3D, shs, opacities):
        image, _ = GaussianRasterizer(settings)(means3D, None, opacities, shs=shs, scales=scene["scales"],
                                                rotations=scene["rotations"])
        return (image * w).sum()

    _gradcheck(fn, (scene["means3D"].requires_grad_(True), scene["shs"].requires_grad_(True),
                    scene["opacities"].requires_grad_(True)))


def test_gradients_scales_rotations_colors():
    settings, scene = _grad_scene(seed=7, degree=0)
    w = _weights(settings)

    def fn(scales, rotations, colors):
        image, _ = GaussianRasterizer(settings)(scene["means3D"], None, scene["opacities"], colors_precomp=colors,
                                                scales=scales, rotations=rotations)
        return (image * w).sum()

    _gradcheck(fn, (scene["scales"].requires_grad_(True), scene["rotations"].requires_grad_(True),
                    scene["colors"].requires_grad_(True)))


def test_gradients_cov3d_precomp_and_scale_modifier():
    settings, scene = _grad_scene(seed=11, degree=1)
    settings = settings._replace(scale_modifier=0.8)
    cov6 = reference.pack_covariance(reference.covariance_from_scale_rotation(scene["scales"], scene["rotations"]))
    w = _weights(settings)

    def fn(cov, means3D):
        image, _ = GaussianRasterizer(settings)(means3D, None, scene["opacities"], shs=scene["shs"], cov3D_precomp=cov)
        return (image * w).sum()

    _gradcheck(fn, (cov6.clone().requires_grad_(True), scene["means3D"].requires_grad_(True)))


def test_gradients_with_early_stop_active():
    """Finite differences still match where many pixels stop early (excluded splats get no gradient)."""
    settings = make_settings(width=24, height=20, fx=15, fy=15)
    scene = random_scene(30, settings, seed=3, scale=(0.3, 0.6), opacity=(0.85, 0.97), spread=0.6)
    stats = {}
    numpy_render(settings, scene["means3D"].numpy(), scene["opacities"].numpy(), colors=scene["colors"].numpy(),
                 scales=scene["scales"].numpy(), rotations=scene["rotations"].numpy(), stats=stats)
    assert stats["early_stops"] > 10 and stats["clamped"] == 0
    w = _weights(settings)

    def fn(means3D, opacities):
        image, _ = GaussianRasterizer(settings)(means3D, None, opacities, colors_precomp=scene["colors"],
                                                scales=scene["scales"], rotations=scene["rotations"])
        return (image * w).sum()

    _gradcheck(fn, (scene["means3D"].requires_grad_(True), scene["opacities"].requires_grad_(True)))


def test_means2d_gradient_is_ndc_gradient():
    """means2D.grad == dL/d ndc, checked by shifting the projection's translation row (ndc += eps / w)."""
    settings, scene = _grad_scene(seed=3, degree=0, n=1)
    w = _weights(settings)
    means2D = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    image, _ = GaussianRasterizer(settings)(scene["means3D"], means2D, scene["opacities"], shs=scene["shs"],
                                            scales=scene["scales"], rotations=scene["rotations"])
    (image * w).sum().backward()
    p_hom = torch.cat((scene["means3D"][0], torch.ones(1, dtype=F64))) @ settings.projmatrix
    w_hom = float(p_hom[3]) + 1e-7
    eps = 1e-6
    for axis in range(2):
        losses = []
        for sign in (1, -1):
            proj = settings.projmatrix.clone()
            proj[3, axis] += sign * eps * w_hom           # shifts ndc[axis] by sign * eps
            img, _ = GaussianRasterizer(settings._replace(projmatrix=proj))(
                scene["means3D"], None, scene["opacities"], shs=scene["shs"], scales=scene["scales"],
                rotations=scene["rotations"])
            losses.append(float((img * w).sum()))
        fd = (losses[0] - losses[1]) / (2 * eps)
        assert abs(fd) > 1e-3
        assert means2D.grad[0, axis].item() == pytest.approx(fd, rel=1e-5, abs=1e-7)
    assert means2D.grad[0, 2].item() == 0.0
    # Values of means2D are ignored (it only carries the gradient), as in the original.
    image2, _ = GaussianRasterizer(settings)(scene["means3D"], torch.ones(1, 3, dtype=F64), scene["opacities"],
                                             shs=scene["shs"], scales=scene["scales"], rotations=scene["rotations"])
    torch.testing.assert_close(image2, image.detach())


def test_gradients_background():
    """The background gradient comes from autograd too (an extra over the original)."""
    settings, scene = _grad_scene(seed=2, degree=1, n=4)
    w = _weights(settings)

    def fn(bg):
        image, _ = GaussianRasterizer(settings._replace(bg=bg))(scene["means3D"], None, scene["opacities"],
                                                                shs=scene["shs"], scales=scene["scales"],
                                                                rotations=scene["rotations"])
        return (image * w).sum()

    _gradcheck(fn, (settings.bg.clone().requires_grad_(True),))


# ----------------------------------------------------------------------------------------------
# API: validation, debug mode, dispatch, markVisible
# ----------------------------------------------------------------------------------------------
def test_input_validation_messages():
    settings, scene = _grad_scene(degree=1)
    r = GaussianRasterizer(settings)
    base = dict(means3D=scene["means3D"], means2D=None, opacities=scene["opacities"], scales=scene["scales"],
                rotations=scene["rotations"])
    with pytest.raises(ValueError, match="exactly one of shs or colors_precomp.*neither"):
        r(**base)
    with pytest.raises(ValueError, match="exactly one of shs or colors_precomp.*both"):
        r(**base, shs=scene["shs"], colors_precomp=scene["colors"])
    with pytest.raises(ValueError, match="scales and rotations, or cov3D_precomp"):
        r(scene["means3D"], None, scene["opacities"], shs=scene["shs"], scales=scene["scales"])
    with pytest.raises(ValueError, match="shs has 1 coefficients.*sh_degree 1 needs at least 4"):
        r(**base, shs=scene["shs"][:, :1])
    with pytest.raises(ValueError, match="rotations must have shape"):
        r(**dict(base, rotations=scene["rotations"][:, :3]), shs=scene["shs"])
    with pytest.raises(ValueError, match="opacities has 4 rows but means3D has N = 5"):
        r(**dict(base, opacities=scene["opacities"][:4]), shs=scene["shs"])
    with pytest.raises(ValueError, match="backend must be one of"):
        GaussianRasterizer(settings._replace(backend="metal"))(**base, shs=scene["shs"])
    # Empty placeholder tensors (the original's style) count as absent.
    image, _ = rasterize_gaussians(scene["means3D"], None, scene["shs"], torch.Tensor([]), scene["opacities"],
                                   scene["scales"], scene["rotations"], torch.Tensor([]), settings)
    assert image.shape == (3, 24, 32)


def test_debug_mode_names_non_finite_argument():
    settings, scene = _grad_scene(degree=0)
    debug = GaussianRasterizer(settings._replace(debug=True))
    means = scene["means3D"].clone()
    means[1, 0] = float("nan")
    means[2, :2] = float("nan")
    with pytest.raises(ValueError, match="means3D contains NaN at 3 entries"):
        debug(means, None, scene["opacities"], shs=scene["shs"], scales=scene["scales"], rotations=scene["rotations"])
    scales = scene["scales"].clone()
    scales[0, 0] = float("inf")
    with pytest.raises(ValueError, match="scales contains Inf at 1 entries"):
        debug(scene["means3D"], None, scene["opacities"], shs=scene["shs"], scales=scales, rotations=scene["rotations"])
    with pytest.raises(ValueError, match="viewmatrix contains NaN"):
        bad = settings.viewmatrix.clone()
        bad[0, 0] = float("nan")
        GaussianRasterizer(settings._replace(debug=True, viewmatrix=bad))(
            scene["means3D"], None, scene["opacities"], shs=scene["shs"], scales=scene["scales"],
            rotations=scene["rotations"])
    # Without debug a NaN splat is silently culled.
    _, radii = GaussianRasterizer(settings)(means, None, scene["opacities"], shs=scene["shs"], scales=scene["scales"],
                                            rotations=scene["rotations"])
    assert radii[1] == 0 and radii[2] == 0


def test_backend_dispatch():
    settings, scene = _grad_scene(degree=0)
    assert resolve_backend(settings._replace(backend="auto"), scene["means3D"]) == "reference"  # CPU tensors
    assert resolve_backend(settings._replace(backend="reference"), scene["means3D"]) == "reference"
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        resolve_backend(settings._replace(backend="cuda"), scene["means3D"])
    assert isinstance(cuda_available(), bool)
    # Settings without the extension fields (positional, original 12 fields) default to auto.
    original_style = GaussianRasterizationSettings(*settings[:12])
    assert original_style.backend == "auto" and original_style.cx is None


def test_mark_visible():
    settings = make_settings(w2c=tilted_w2c())
    view = settings.viewmatrix.numpy()
    pts = np.random.default_rng(0).normal(scale=2.0, size=(50, 3))
    mask = GaussianRasterizer(settings).markVisible(torch.tensor(pts, dtype=F64))
    depth = (np.concatenate([pts, np.ones((50, 1))], 1) @ view)[:, 2]
    assert mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.numpy(), depth > 0.2)
    assert 0 < mask.sum() < 50


# ----------------------------------------------------------------------------------------------
# Moderate scene (runs; the timing is printed, never asserted)
# ----------------------------------------------------------------------------------------------
def test_moderate_scene_forward_backward(capsys):
    settings = make_settings(width=160, height=120, fx=130.0, fy=130.0, sh_degree=3, dtype=torch.float32)
    scene = random_scene(2000, settings, seed=0, scale=(0.005, 0.04), sh_k=16)
    scene = {k: v.float().requires_grad_(True) for k, v in scene.items()}
    means2D = torch.zeros(2000, 3, requires_grad=True)
    start = time.perf_counter()
    image, radii = GaussianRasterizer(settings)(scene["means3D"], means2D, torch.sigmoid(scene["opacities"]),
                                                shs=scene["shs"], scales=scene["scales"],
                                                rotations=scene["rotations"])
    image.square().mean().backward()
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[reference rasterizer] 2000 splats 160x120 fwd+bwd: {elapsed:.3f} s")
    assert (radii > 0).sum() > 1900
    for name in ("means3D", "shs", "scales", "rotations", "opacities"):
        assert torch.isfinite(scene[name].grad).all(), name
    assert means2D.grad[:, :2].abs().sum() > 0 and torch.all(means2D.grad[:, 2] == 0)


@pytest.mark.cuda
def test_reference_on_cuda_tensors_matches_cpu():
    settings = make_settings(w2c=tilted_w2c(), sh_degree=3, dtype=torch.float32)
    scene = {k: v.float() for k, v in random_scene(40, settings, seed=9).items()}
    image_cpu, radii_cpu = render(settings, scene)
    cuda_settings = settings._replace(**{k: getattr(settings, k).cuda()
                                         for k in ("bg", "viewmatrix", "projmatrix", "campos")})
    cuda_scene = {k: v.cuda().requires_grad_(True) for k, v in scene.items()}
    image, radii = render(cuda_settings, cuda_scene)
    assert image.is_cuda and radii.is_cuda
    torch.testing.assert_close(radii.cpu(), radii_cpu)
    torch.testing.assert_close(image.detach().cpu(), image_cpu, atol=1e-5, rtol=0)
    image.sum().backward()
    assert torch.isfinite(cuda_scene["means3D"].grad).all()
