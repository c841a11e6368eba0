"""Tests of the C++ CPU rasterizer ``diff_gaussian_rasterization._cpu`` (via ``_cpu_backend``).

Expectation: the package's pure-PyTorch reference (``diff_gaussian_rasterization.reference``, which
defines the math and is itself tested against a NumPy renderer and finite differences).  Images
must agree to 1e-5, radii exactly, and the gradients of every input (means3D, means2D, SH of
degree 0..3, colors_precomp, opacities, scales, rotations, cov3D_precomp) to 1e-4 of the largest
gradient magnitude of that input, on random scenes with a tilted camera, an off-centre principal
point, a scale modifier, splats behind the camera, EWA-clamped splats, clamped SH channels,
alpha clamped at 0.99 and early-stopped pixels.

When ``_cpu`` is not installed, the extension is compiled with ``csrc/cpu/build_dev.py`` (cached in
the temp dir) and registered as ``diff_gaussian_rasterization._cpu``; the tests skip only when no
C++ compiler exists.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from diff_gaussian_rasterization import GaussianRasterizationSettings, reference
from diff_gaussian_rasterization import _cpu_backend
from diff_gaussian_rasterization._cpu_backend import cpu_available, rasterize_gaussians_cpu

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DEV = os.path.join(REPO_ROOT, "submodules", "diff-gaussian-rasterization", "csrc", "cpu", "build_dev.py")
F32 = torch.float32


@pytest.fixture(autouse=True, scope="module")
def cpu_module():
    """The compiled extension: installed, or built here with build_dev.py (skip only without a compiler)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny workloads; immune to CPU oversubscription on shared runners
    if not cpu_available():
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("diff_gaussian_rasterization._cpu is not built and no C++ compiler (c++) is available")
        spec = importlib.util.spec_from_file_location("dgr_cpu_build_dev", BUILD_DEV)
        build_dev = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build_dev)
        build_dev.install_as_package_module()
    assert cpu_available()
    yield _cpu_backend.load_cpu_module()
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------
def make_settings(width: int, height: int, fx: float = 60.0, fy: float = 55.0, cx: Optional[float] = None,
                  cy: Optional[float] = None, sh_degree: int = 3, scale_modifier: float = 1.0, seed: int = 0,
                  dtype: torch.dtype = F32):
    """Settings of a slightly rotated and shifted camera (principal point as DESIGN.md) and its w2c."""
    rng = np.random.default_rng(seed)
    ccx = (width - 1) / 2 if cx is None else cx
    ccy = (height - 1) / 2 if cy is None else cy
    znear, zfar = 0.01, 100.0
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = 2 * fx / width, 2 * fy / height
    proj[0, 2], proj[1, 2] = (2 * ccx + 1) / width - 1, (2 * ccy + 1) / height - 1
    proj[2, 2], proj[2, 3], proj[3, 2] = zfar / (zfar - znear), -zfar * znear / (zfar - znear), 1.0
    w2c = np.eye(4)
    w2c[:3, :3] = Rotation.from_euler("xyz", rng.normal(scale=0.1, size=3)).as_matrix()
    w2c[:3, 3] = rng.normal(scale=0.1, size=3)
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    settings = GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=width / (2 * fx), tanfovy=height / (2 * fy),
        bg=t([0.1, 0.2, 0.3]), scale_modifier=scale_modifier, viewmatrix=t(w2c.T.copy()),
        projmatrix=t((proj @ w2c).T.copy()), sh_degree=sh_degree, campos=t(np.linalg.inv(w2c)[:3, 3]),
        prefiltered=False, debug=False, cx=cx, cy=cy)
    return settings, w2c


def make_scene(n: int, settings, w2c: np.ndarray, seed: int = 0, spread: float = 1.6,
               opacity=(0.05, 1.0), scale=(0.01, 0.1), sh_k: int = 16, dtype: torch.dtype = F32) -> Dict[str, torch.Tensor]:
    """Splats in and around the frustum; about 5% lie behind the near plane; ``spread`` > 1.3 gives EWA clamps."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.8, 4.0, n)
    z[rng.random(n) < 0.05] = rng.uniform(-1.0, 0.2, 1)[0]
    x = rng.uniform(-spread, spread, n) * settings.tanfovx * np.abs(z)
    y = rng.uniform(-spread, spread, n) * settings.tanfovy * np.abs(z)
    means = (np.stack([x, y, z, np.ones(n)], 1) @ np.linalg.inv(w2c).T)[:, :3]
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return dict(means3D=t(means), scales=t(rng.uniform(*scale, (n, 3))), rotations=t(rng.normal(size=(n, 4))),
                opacities=t(rng.uniform(*opacity, (n, 1))), shs=t(rng.normal(scale=0.4, size=(n, sh_k, 3))),
                colors=t(rng.uniform(0.0, 1.0, (n, 3))))


def pack_cov(scene: Dict[str, torch.Tensor]) -> torch.Tensor:
    m = reference.quaternion_to_rotation(scene["rotations"]) * scene["scales"].unsqueeze(-2)
    return reference.pack_covariance(m @ m.transpose(1, 2))


def render_with_grads(entry, scene: Dict[str, torch.Tensor], settings, colors: bool, cov: bool,
                      m2_cols: int = 3, seed: int = 5):
    """Render with ``entry``, back-propagate a fixed random image gradient; (image, radii, grads)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    if cov:
        leaves["cov3D"] = pack_cov(scene).requires_grad_(True)
    means2D = torch.zeros(scene["means3D"].shape[0], m2_cols, dtype=scene["means3D"].dtype, requires_grad=True)
    img, radii = entry(leaves["means3D"], means2D, None if colors else leaves["shs"],
                       leaves["colors"] if colors else None, leaves["opacities"],
                       None if cov else leaves["scales"], None if cov else leaves["rotations"],
                       leaves["cov3D"] if cov else None, settings)
    weights = torch.from_numpy(np.random.default_rng(seed).normal(size=tuple(img.shape))).to(img.dtype)
    (img * weights).sum().backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2D"] = means2D.grad
    return img.detach(), radii, grads


def assert_grads_close(ref: Dict[str, Optional[torch.Tensor]], got: Dict[str, Optional[torch.Tensor]],
                       rel: float = 1e-4, atol: float = 1e-6) -> None:
    for name, g_ref in ref.items():
        g = got[name]
        if g_ref is None or not bool(g_ref.abs().sum() > 0):
            assert g is None or not bool(g.abs().sum() > 0), f"{name}: unexpected gradient"
            continue
        assert g is not None, f"{name}: missing gradient"
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, name
        err = (g - g_ref).abs().max().item()
        bound = rel * g_ref.abs().max().item() + atol
        assert err <= bound, f"{name}: max abs error {err:.3e} > {bound:.3e}"


CASES = [
    # width, height, n, cx, cy, scale_modifier, sh_degree, colors_precomp, cov3D_precomp
    pytest.param(64, 48, 300, None, None, 1.0, 3, False, False, id="64x48-sh3"),
    pytest.param(97, 61, 1000, 40.0, 35.0, 0.8, 2, False, False, id="97x61-sh2-principal-point"),
    pytest.param(97, 61, 800, 55.5, 20.0, 1.2, 1, False, False, id="97x61-sh1-modifier"),
    pytest.param(64, 48, 600, None, None, 1.0, 0, False, True, id="64x48-sh0-cov3D"),
    pytest.param(64, 48, 500, 30.0, 30.0, 1.0, 0, True, False, id="64x48-colors"),
    pytest.param(97, 61, 400, None, None, 0.9, 3, True, True, id="97x61-colors-cov3D"),
    pytest.param(1, 1, 60, None, None, 1.0, 1, False, False, id="1x1"),
    pytest.param(48, 40, 3000, None, None, 1.5, 2, False, False, id="48x40-dense-3000"),
]


@pytest.mark.parametrize("width,height,n,cx,cy,modifier,degree,colors,cov", CASES)
def test_matches_reference(width, height, n, cx, cy, modifier, degree, colors, cov):
    settings, w2c = make_settings(width, height, cx=cx, cy=cy, sh_degree=degree, scale_modifier=modifier, seed=n)
    scene = make_scene(n, settings, w2c, seed=n)
    img_ref, radii_ref, g_ref = render_with_grads(reference.rasterize_gaussians, scene, settings, colors, cov)
    img, radii, g = render_with_grads(rasterize_gaussians_cpu, scene, settings, colors, cov)
    assert img.shape == (3, height, width) and img.dtype == F32
    assert radii.dtype == torch.int32
    assert torch.equal(radii, radii_ref)
    assert (img - img_ref).abs().max().item() < 1e-5
    assert_grads_close(g_ref, g)
    # means2D: dL/d ndc in the first two columns, zero in the third; zero for culled splats
    assert torch.all(g["means2D"][:, 2] == 0)
    assert torch.all(g["means2D"][radii == 0] == 0)
    if not colors:
        k = (degree + 1) ** 2
        assert torch.all(g["shs"][:, k:] == 0)


def test_scene_features_are_exercised():
    """The dense case really hits the early stop, the 0.99 clamp, SH clamps, EWA clamps and culling."""
    settings, w2c = make_settings(48, 40, sh_degree=2, scale_modifier=1.5, seed=3000)
    scene = make_scene(3000, settings, w2c, seed=3000)
    module = _cpu_backend.load_cpu_module()
    inputs = [_cpu_backend._f32(t) for t in (scene["means3D"], scene["opacities"], scene["shs"], None,
                                              scene["scales"], scene["rotations"], None)]
    img, radii, geom, offsets, ids, final_t, n_contrib, _projected = module.rasterize_forward(
        *inputs, *_cpu_backend._camera_args(settings))
    assert bool((radii == 0).any()) and bool((radii > 0).any())
    assert float(final_t.min()) < 1e-3            # stopped pixels (T just above 1e-4)
    assert bool((scene["opacities"] > 0.99).any())
    sp = reference.preprocess(scene["means3D"], None, scene["opacities"], scene["shs"], None, scene["scales"],
                              scene["rotations"], None, settings)
    assert bool((sp.color == 0).any())            # clamped SH channels
    t = scene["means3D"] @ settings.viewmatrix[:3, :3] + settings.viewmatrix[3, :3]
    ratio = (t[:, 0] / t[:, 2])[t[:, 2] > 0.2]
    lim = reference.frustum_limits(48, 48 / (2 * settings.tanfovx), None)
    assert bool((ratio > lim[1]).any() and (ratio < lim[0]).any())   # EWA clamps both sides
    assert int(offsets[-1]) == ids.numel() and torch.equal(geom[radii == 0], torch.zeros_like(geom[radii == 0]))


def test_means2d_two_columns_and_float64():
    """means2D of shape (N, 2); float64 inputs give a float64 image and float64 gradients."""
    settings, w2c = make_settings(40, 30, cx=18.0, cy=16.0, sh_degree=3, seed=11, dtype=torch.float64)
    scene = make_scene(200, settings, w2c, seed=11, dtype=torch.float64)
    img_ref, radii_ref, g_ref = render_with_grads(reference.rasterize_gaussians, scene, settings, False, False,
                                                  m2_cols=2)
    img, radii, g = render_with_grads(rasterize_gaussians_cpu, scene, settings, False, False, m2_cols=2)
    assert img.dtype == torch.float64 and g["means3D"].dtype == torch.float64
    assert g["means2D"].shape == (200, 2)
    assert torch.equal(radii, radii_ref)
    assert (img - img_ref).abs().max().item() < 1e-5
    assert_grads_close(g_ref, g, rel=1e-3)


def test_backward_is_deterministic():
    settings, w2c = make_settings(64, 48, sh_degree=3, seed=7)
    scene = make_scene(800, settings, w2c, seed=7)
    torch.set_num_threads(2)
    try:
        first = render_with_grads(rasterize_gaussians_cpu, scene, settings, False, False)
        second = render_with_grads(rasterize_gaussians_cpu, scene, settings, False, False)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(first[0], second[0])
    for name, grad in first[2].items():
        assert grad is None or torch.equal(grad, second[2][name]), name


def test_no_splats_gives_background():
    settings, _ = make_settings(33, 17, sh_degree=0)
    means = torch.zeros(0, 3, requires_grad=True)
    opac = torch.zeros(0, 1, requires_grad=True)
    img, radii = rasterize_gaussians_cpu(means, torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 1, 3),
                                         None, opac, torch.zeros(0, 3), torch.zeros(0, 4), None, settings)
    assert radii.shape == (0,) and radii.dtype == torch.int32
    assert torch.equal(img, settings.bg.reshape(3, 1, 1).expand(3, 17, 33))
    img.sum().backward()
    assert means.grad.shape == (0, 3)


def test_all_culled_gives_background_and_zero_grads():
    settings, w2c = make_settings(20, 12, sh_degree=1)
    scene = make_scene(50, settings, w2c, seed=2)
    view_z = scene["means3D"] @ settings.viewmatrix[:3, 2] + settings.viewmatrix[3, 2]
    fwd = torch.tensor(np.linalg.inv(w2c)[:3, 2], dtype=F32)
    scene["means3D"] = scene["means3D"] - (view_z + 1.0).unsqueeze(1) * fwd   # every depth = -1
    img, radii, g = render_with_grads(rasterize_gaussians_cpu, scene, settings, False, False)
    assert torch.all(radii == 0)
    assert torch.allclose(img, settings.bg.reshape(3, 1, 1).expand(3, 12, 20))
    for name in ("means3D", "means2D", "shs", "opacities", "scales", "rotations"):
        assert torch.all(g[name] == 0), name


def test_degenerate_covariances_and_quaternions():
    """Zero scales (only the 0.3 dilation), zero quaternions (identity) and det <= 0 covariances (culled)."""
    settings, w2c = make_settings(64, 48, sh_degree=1, seed=21)
    scene = make_scene(200, settings, w2c, seed=21)
    scene["scales"][:40] = 0.0
    scene["rotations"][40:60] = 0.0
    img_ref, radii_ref, g_ref = render_with_grads(reference.rasterize_gaussians, scene, settings, False, False)
    img, radii, g = render_with_grads(rasterize_gaussians_cpu, scene, settings, False, False)
    assert torch.equal(radii, radii_ref) and (img - img_ref).abs().max().item() < 1e-5
    assert_grads_close(g_ref, g)
    # det <= 0 after projection: a strongly negative-definite precomputed covariance is culled
    cov = pack_cov(scene)
    cov[:30] = torch.tensor([-5.0, 0.0, 0.0, -5.0, 0.0, -5.0])
    scene_cov = dict(scene)
    ref_img, ref_radii = reference.rasterize_gaussians(scene["means3D"], None, None, scene["colors"],
                                                       scene["opacities"], None, None, cov, settings)
    cpu_img, cpu_radii = rasterize_gaussians_cpu(scene_cov["means3D"], None, None, scene["colors"],
                                                 scene["opacities"], None, None, cov, settings)
    assert torch.all(cpu_radii[:30] == 0)
    assert torch.equal(cpu_radii, ref_radii) and (cpu_img - ref_img).abs().max().item() < 1e-5


def test_bad_inputs_raise_clear_errors():
    settings, w2c = make_settings(16, 16, sh_degree=0)
    scene = make_scene(5, settings, w2c)
    with pytest.raises(ValueError, match="shs or colors_precomp"):
        rasterize_gaussians_cpu(scene["means3D"], None, None, None, scene["opacities"], scene["scales"],
                                scene["rotations"], None, settings)
    with pytest.raises(ValueError, match="scales and rotations"):
        rasterize_gaussians_cpu(scene["means3D"], None, scene["shs"], None, scene["opacities"], None, None, None,
                                settings)
    with pytest.raises(ValueError, match="means2D"):
        rasterize_gaussians_cpu(scene["means3D"], torch.zeros(4, 3), scene["shs"], None, scene["opacities"],
                                scene["scales"], scene["rotations"], None, settings)
    with pytest.raises(RuntimeError, match="coefficients"):
        bad = make_settings(16, 16, sh_degree=3)[0]
        rasterize_gaussians_cpu(scene["means3D"], None, scene["shs"][:, :4], None, scene["opacities"],
                                scene["scales"], scene["rotations"], None, bad)


# ----------------------------------------------------------------------------------------------
# Device-side settings on the host backends
# ----------------------------------------------------------------------------------------------
def test_intrinsics_tensor_replaces_host_values_on_host_backends():
    """``intrinsics`` (float64 tanfovx, tanfovy, cx, cy) wins over stale host values on the CPU and
    reference backends too; NaN cx / cy mean centred."""
    import diff_gaussian_rasterization as dgr

    for cx, cy in ((None, None), (30.5, 19.0)):
        s, w2c = make_settings(64, 48, fx=58.0, fy=52.0, cx=cx, cy=cy, sh_degree=1)
        scene = make_scene(150, s, w2c, seed=3, sh_k=4)
        intr = torch.tensor([s.tanfovx, s.tanfovy, float("nan") if cx is None else cx,
                             float("nan") if cy is None else cy], dtype=torch.float64)
        stale = s._replace(tanfovx=0.9, tanfovy=1.3, cx=5.0, cy=7.0, intrinsics=intr)
        for backend in ("reference", "cpu") if cpu_available() else ("reference",):
            args = (scene["means3D"], None, scene["shs"], None, scene["opacities"], scene["scales"],
                    scene["rotations"], None)
            img, radii = dgr.rasterize_gaussians(*args, s._replace(backend=backend))
            img_d, radii_d = dgr.rasterize_gaussians(*args, stale._replace(backend=backend))
            assert torch.equal(img_d, img) and torch.equal(radii_d, radii), (backend, cx)


def test_pair_buffer_options_need_the_cuda_backend():
    import diff_gaussian_rasterization as dgr

    s, w2c = make_settings(32, 24, sh_degree=0)
    scene = make_scene(20, s, w2c, seed=4, sh_k=1)
    args = (scene["means3D"], None, scene["shs"], None, scene["opacities"], scene["scales"], scene["rotations"], None)
    with pytest.raises(ValueError, match="CUDA backend"):
        dgr.rasterize_gaussians(*args, s._replace(backend="reference", pair_capacity=1000))
    with pytest.raises(ValueError, match="CUDA backend"):
        dgr.rasterize_gaussians(*args, s._replace(backend="reference", pair_count=torch.zeros(1, dtype=torch.int64)))
    with pytest.raises(ValueError, match="intrinsics"):
        dgr.rasterize_gaussians(*args, s._replace(intrinsics=torch.zeros(3, dtype=torch.float64)))
