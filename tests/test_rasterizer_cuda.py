"""CUDA tile rasterizer (``diff_gaussian_rasterization._C``) against the package's PyTorch reference.

The reference (``diff_gaussian_rasterization.reference``) runs in float64 on the same GPU and is
the independent expectation: pixels within 1e-4 (except at most 0.1% of pixels, within 1e-2,
where a float32 threshold decision may legitimately flip), identical radii, and gradients of a
random linear loss within 1e-3 relative (vector norm per input tensor).
All tests need a GPU and the compiled extension (marker ``cuda``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import pytest
import torch

import diff_gaussian_rasterization as dgr
from diff_gaussian_rasterization import GaussianRasterizationSettings, reference

pytestmark = pytest.mark.cuda

IMG_TOL = 1e-4
GRAD_RTOL = 1e-3
FLIP_FRACTION = 1e-3   # share of pixels allowed past IMG_TOL (threshold decisions, see compare())
FLIP_TOL = 1e-2        # bound of such a pixel's difference


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not dgr.cuda_available():
        pytest.skip("diff_gaussian_rasterization._C is not built")


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------
def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_settings(width: int, height: int, fx: float, fy: float, cx: Optional[float] = None,
                  cy: Optional[float] = None, tilt: bool = True, sh_degree: int = 3, scale_modifier: float = 1.0,
                  bg=(0.2, 0.5, 0.9), dtype=torch.float32, debug: bool = False,
                  backend: str = "cuda") -> GaussianRasterizationSettings:
    """Settings with OpenCV axes and the principal point in the projection (DESIGN.md)."""
    ccx = (width - 1) / 2 if cx is None else cx
    ccy = (height - 1) / 2 if cy is None else cy
    znear, zfar = 0.01, 100.0
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = 2 * fx / width, 2 * fy / height
    proj[0, 2], proj[1, 2] = (2 * ccx + 1) / width - 1, (2 * ccy + 1) / height - 1
    proj[2, 2], proj[2, 3], proj[3, 2] = zfar / (zfar - znear), -zfar * znear / (zfar - znear), 1.0
    w2c = np.eye(4)
    if tilt:
        w2c[:3, :3] = _rot(0.1, -0.2, 0.05)
        w2c[:3, 3] = [0.1, -0.05, 0.3]
    campos = np.linalg.inv(w2c)[:3, 3]
    dev = "cuda"
    t = lambda a: torch.tensor(np.asarray(a), dtype=dtype, device=dev)  # noqa: E731
    return GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=width / (2 * fx), tanfovy=height / (2 * fy), bg=t(bg),
        scale_modifier=scale_modifier, viewmatrix=t(w2c.T.copy()), projmatrix=t((proj @ w2c).T.copy()),
        sh_degree=sh_degree, campos=t(campos), prefiltered=False, debug=debug, cx=cx, cy=cy, backend=backend)


def as_f64(s: GaussianRasterizationSettings) -> GaussianRasterizationSettings:
    return s._replace(bg=s.bg.double(), viewmatrix=s.viewmatrix.double(), projmatrix=s.projmatrix.double(),
                      campos=s.campos.double(), backend="reference")


def make_scene(n: int, s: GaussianRasterizationSettings, seed: int = 0, spread: float = 1.1,
               depth: Tuple[float, float] = (1.5, 5.0), log_scale: Tuple[float, float] = (-4.0, -2.0),
               sh_coeffs: int = 16, precomp_colors: bool = False, precomp_cov: bool = False) -> Dict[str, torch.Tensor]:
    """Random splats around the view frustum (some outside it: exercises culling and the EWA clamp)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.empty(n, dtype=torch.float64).uniform_(*depth, generator=g)
    x = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * spread * s.tanfovx * z
    y = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * spread * s.tanfovy * z
    w2c = s.viewmatrix.double().cpu().T
    c2w = torch.linalg.inv(w2c)
    cam = torch.stack([x, y, z, torch.ones(n, dtype=torch.float64)], 1)
    means = (cam @ c2w.T)[:, :3]
    scales = torch.exp(torch.empty(n, 3, dtype=torch.float64).uniform_(*log_scale, generator=g))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    quats = quats / quats.norm(dim=1, keepdim=True)
    opac = torch.empty(n, 1, dtype=torch.float64).uniform_(0.05, 0.99, generator=g)
    scene = {"means3D": means, "opacities": opac}
    if precomp_colors:
        scene["colors_precomp"] = torch.rand(n, 3, generator=g, dtype=torch.float64)
    else:
        sh = torch.randn(n, sh_coeffs, 3, generator=g, dtype=torch.float64) * 0.3
        sh[:, 0] = torch.rand(n, 3, generator=g, dtype=torch.float64) * 2.0 - 0.6
        scene["shs"] = sh
    if precomp_cov:
        r = reference.quaternion_to_rotation(quats)
        m = r * scales.unsqueeze(-2)
        scene["cov3D_precomp"] = reference.pack_covariance(m @ m.transpose(-1, -2))
    else:
        scene["scales"], scene["rotations"] = scales, quats
    return {k: v.to(device="cuda", dtype=torch.float32).contiguous() for k, v in scene.items()}


def render(scene: Dict[str, torch.Tensor], s: GaussianRasterizationSettings, dtype=torch.float32,
           weights: Optional[torch.Tensor] = None, m2_cols: int = 3):
    """Render (CUDA backend for float32 settings, reference for float64) and back-propagate a linear loss."""
    leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in scene.items()}
    n = scene["means3D"].shape[0]
    means2D = torch.zeros(n, m2_cols, dtype=dtype, device="cuda", requires_grad=True)
    args = dict(means3D=leaves["means3D"], means2D=means2D, sh=leaves.get("shs"),
                colors_precomp=leaves.get("colors_precomp"), opacities=leaves["opacities"],
                scales=leaves.get("scales"), rotations=leaves.get("rotations"),
                cov3Ds_precomp=leaves.get("cov3D_precomp"), raster_settings=s)
    if dtype == torch.float64:
        image, radii = reference.rasterize_gaussians(**args)
    else:
        image, radii = dgr.rasterize_gaussians(**args)
    if weights is None:
        weights = torch.ones_like(image)
    loss = (image * weights.to(image.dtype)).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2D"] = means2D.grad
    return image.detach(), radii, grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = b.norm().item()
    diff = (a - b).norm().item()
    return diff / denom if denom > 0 else diff


def compare(scene, s32, *, img_tol: float = IMG_TOL, grad_rtol: float = GRAD_RTOL, seed: int = 1, m2_cols: int = 3):
    _require_cuda()
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.rand(3, s32.image_height, s32.image_width, device="cuda", generator=g) - 0.3
    img, radii, grads = render(scene, s32, torch.float32, w, m2_cols)
    img_r, radii_r, grads_r = render(scene, as_f64(s32), torch.float64, w, m2_cols)
    assert img.dtype == torch.float32 and img.shape == (3, s32.image_height, s32.image_width)
    assert radii.dtype == torch.int32
    assert torch.equal(radii.cpu(), radii_r.cpu()), "radii differ"
    err = (img.double() - img_r).abs()
    # float32 kernels vs float64 reference: a (pixel, splat) pair whose alpha lies within rounding of
    # the 1/255 cut (or whose transmittance lies at the 1e-4 stop) may be decided differently; such a
    # pair moves its pixel by at most 1/255 of a colour. Allow a few such pixels, nothing else.
    n_bad = int((err > img_tol).sum())
    allowed = max(2, int(FLIP_FRACTION * err[0].numel()))
    assert n_bad <= allowed and err.max().item() < FLIP_TOL, (
        f"{n_bad} pixel values differ by more than {img_tol} (allowed {allowed}); max {err.max().item():.3g}")
    for k, gr in grads_r.items():
        gc = grads[k]
        assert gc is not None and gc.shape == gr.shape, k
        assert torch.isfinite(gc).all(), k
        e = rel_err(gc, gr)
        assert e < grad_rtol, f"gradient of {k}: relative error {e:.3g}"
    return img, radii, grads


# ----------------------------------------------------------------------------------------------
# Agreement with the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_degrees(degree):
    _require_cuda()
    s = make_settings(96, 72, 80.0, 76.0, sh_degree=degree)
    compare(make_scene(1000, s, seed=degree, sh_coeffs=(degree + 1) ** 2 if degree < 3 else 16), s)


def test_sh_degree_below_stored_coefficients():
    _require_cuda()
    s = make_settings(80, 64, 70.0, 70.0, sh_degree=1)
    compare(make_scene(1000, s, seed=5, sh_coeffs=16), s)


def test_precomputed_colors_and_covariances():
    _require_cuda()
    s = make_settings(90, 70, 75.0, 80.0, sh_degree=0)
    compare(make_scene(1500, s, seed=11, precomp_colors=True, precomp_cov=True), s)


def test_precomputed_colors_only():
    _require_cuda()
    s = make_settings(64, 48, 60.0, 60.0)
    compare(make_scene(1000, s, seed=12, precomp_colors=True), s)


def test_scale_modifier_principal_point_and_clamp():
    _require_cuda()
    s = make_settings(100, 60, 90.0, 85.0, cx=30.5, cy=41.0, scale_modifier=0.7, sh_degree=2)
    compare(make_scene(1500, s, seed=3, spread=1.8), s)


def test_odd_size_and_two_column_means2d():
    _require_cuda()
    s = make_settings(37, 23, 30.0, 30.0, tilt=False, sh_degree=1)
    compare(make_scene(800, s, seed=4), s, m2_cols=2)


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_many_splats(n):
    _require_cuda()
    s = make_settings(256, 192, 220.0, 220.0, sh_degree=3)
    compare(make_scene(n, s, seed=n, log_scale=(-5.0, -3.0)), s)


def test_large_and_tiny_covariances():
    _require_cuda()
    s = make_settings(64, 64, 60.0, 60.0, sh_degree=0)
    scene = make_scene(300, s, seed=21)
    scales = scene["scales"].clone()
    scales[:50] = 3.0            # covers the whole image
    scales[50:100] = 1e-7        # degenerate: the 0.3 px^2 dilation alone
    scales[100:110, 0] = 0.0     # flat
    scene["scales"] = scales
    compare(scene, s)


def test_large_splats_past_the_tile_mask():
    """Splats whose tile rectangle exceeds the 64 tiles of the counting pass's mask are tested tile
    by tile again when their pairs are emitted; mixed with small ones (mask path) they render as
    the reference does."""
    _require_cuda()
    s = make_settings(320, 240, 260.0, 260.0, sh_degree=1)  # 20 x 15 tiles
    scene = make_scene(1500, s, seed=36, log_scale=(-4.0, -3.0), sh_coeffs=4)
    scales = scene["scales"].clone()
    scales[:40] *= 40.0  # radii of several tiles: rectangles of more than 64 tiles
    scene["scales"] = scales
    _, radii, _ = compare(scene, s)
    assert int((radii[:40] > 4.5 * 16).sum()) >= 10  # rectangles of at least 9 x 9 tiles


def test_elongated_opaque_splats():
    """Needle-like, rotated, nearly opaque splats: stresses the tile / warp-row culling margins."""
    _require_cuda()
    s = make_settings(128, 96, 110.0, 110.0, sh_degree=1)
    scene = make_scene(2000, s, seed=22, log_scale=(-3.0, -2.0))
    g = torch.Generator().manual_seed(3)
    squash = torch.ones(2000, 3)
    squash[torch.arange(2000), torch.randint(0, 3, (2000,), generator=g)] = 3.0
    squash[torch.arange(2000), torch.randint(0, 3, (2000,), generator=g)] = 0.01
    scene["scales"] = scene["scales"] * squash.cuda()
    scene["opacities"] = torch.full_like(scene["opacities"], 0.995)
    compare(scene, s)


def test_equal_depths_blend_in_index_order():
    """Overlapping opaque splats at one and the same view depth: the kernels sort splats by depth
    first and then pairs by tile alone, so ties must keep the splats' index order, as in the
    reference (and the original's stable sort). A wrong tie order changes these pixels by far more
    than the tolerance."""
    _require_cuda()
    s = make_settings(64, 48, 60.0, 60.0, tilt=False, sh_degree=0)  # identity view: depth = z exactly
    scene = make_scene(400, s, seed=31, depth=(2.0, 2.0), log_scale=(-2.5, -1.5), sh_coeffs=1)
    assert torch.unique(scene["means3D"][:, 2]).numel() == 1
    scene["opacities"] = torch.full_like(scene["opacities"], 0.9)
    compare(scene, s)


def test_image_with_more_than_65536_tiles():
    """Past 65,535 tiles the pair keys are 32 bits wide instead of 16: same agreement with the
    reference, also in the last tiles (a truncated key would lose or misplace them)."""
    _require_cuda()
    s = make_settings(8192, 2064, 3000.0, 3000.0, sh_degree=1)  # 512 x 129 = 66,048 tiles
    scene = make_scene(3000, s, seed=32, log_scale=(-4.0, -3.0))
    img, _, _ = compare(scene, s)
    assert (img[:, -16:, -1024:] - s.bg.view(3, 1, 1)).abs().amax() > 0.05  # splats reach the last tiles


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------
def test_zero_splats_give_background():
    _require_cuda()
    s = make_settings(40, 30, 40.0, 40.0, sh_degree=0)
    e = torch.empty(0, 3, device="cuda")
    img, radii = dgr.rasterize_gaussians(e.clone(), e.clone(), torch.empty(0, 1, 3, device="cuda"), None,
                                         torch.empty(0, 1, device="cuda"), e.clone(),
                                         torch.empty(0, 4, device="cuda"), None, s)
    assert radii.shape == (0,)
    assert torch.allclose(img, s.bg.view(3, 1, 1).expand(3, 30, 40))


def test_all_culled_behind_camera():
    _require_cuda()
    s = make_settings(48, 32, 40.0, 40.0, tilt=False, sh_degree=0)
    scene = make_scene(200, s, seed=7)
    scene["means3D"] = scene["means3D"] * torch.tensor([1.0, 1.0, -1.0], device="cuda")
    img, radii, grads = render(scene, s)
    assert (radii == 0).all()
    assert torch.allclose(img, s.bg.view(3, 1, 1).expand_as(img))
    for k, gr in grads.items():
        assert gr is not None and (gr == 0).all(), k


def test_partly_behind_camera_and_near_plane():
    _require_cuda()
    s = make_settings(64, 48, 50.0, 50.0, tilt=False, sh_degree=1)
    scene = make_scene(600, s, seed=8, depth=(-1.0, 3.0))
    _, radii, grads = compare(scene, s)
    depth = scene["means3D"][:, 2]
    assert (radii[depth <= 0.2] == 0).all()
    assert (grads["means3D"][depth <= 0.2] == 0).all()


def test_one_pixel_image():
    _require_cuda()
    s = make_settings(1, 1, 2.0, 2.0, tilt=False, sh_degree=0)
    compare(make_scene(50, s, seed=9, log_scale=(-2.0, -1.0)), s)


def test_debug_mode_rejects_nan():
    _require_cuda()
    s = make_settings(32, 32, 30.0, 30.0, sh_degree=0, debug=True)
    scene = make_scene(10, s, seed=10)
    scene["means3D"][3, 1] = float("nan")
    with pytest.raises(ValueError, match="means3D"):
        render(scene, s)


def test_debug_mode_renders_like_normal_mode():
    _require_cuda()
    s = make_settings(48, 40, 40.0, 40.0, sh_degree=2)
    scene = make_scene(300, s, seed=13)
    img, radii, _ = render(scene, s)
    img_d, radii_d, _ = render(scene, s._replace(debug=True))
    assert torch.equal(img, img_d) and torch.equal(radii, radii_d)


# ----------------------------------------------------------------------------------------------
# The C++ autograd function (_C.rasterize): shapes, dtypes, retained graphs
# ----------------------------------------------------------------------------------------------
def test_gradients_return_in_the_inputs_shapes_and_dtypes():
    """float64 leaves and flat (N,) opacities are converted inside the C++ autograd function;
    gradients come back in the leaves' own shapes and dtypes and equal those of the float32
    (N, 1)-opacity call."""
    _require_cuda()
    s = make_settings(72, 56, 70.0, 70.0, sh_degree=2)
    scene = make_scene(900, s, seed=33, sh_coeffs=9)
    w = torch.rand(3, 56, 72, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    img, radii, grads = render(scene, s, weights=w)
    leaves = {"means3D": scene["means3D"].double(), "shs": scene["shs"].double(),
              "opacities": scene["opacities"].reshape(900).double(), "scales": scene["scales"].double(),
              "rotations": scene["rotations"].double()}
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    img64, radii64 = dgr.rasterize_gaussians(leaves["means3D"], None, leaves["shs"], None, leaves["opacities"],
                                             leaves["scales"], leaves["rotations"], None, s)
    assert img64.dtype == torch.float32 and torch.equal(img64, img) and torch.equal(radii64, radii)
    (img64 * w).sum().backward()
    for key, leaf in leaves.items():
        assert leaf.grad.dtype == torch.float64 and leaf.grad.shape == leaf.shape, key
        assert rel_err(leaf.grad.reshape(grads[key].shape), grads[key]) < 1e-6, key


def test_backward_twice_with_a_retained_graph():
    _require_cuda()
    s = make_settings(48, 40, 45.0, 45.0, sh_degree=1)
    scene = make_scene(400, s, seed=34, sh_coeffs=4)
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    img, _ = dgr.rasterize_gaussians(leaves["means3D"], None, leaves["shs"], None, leaves["opacities"],
                                     leaves["scales"], leaves["rotations"], None, s)
    loss = img.square().sum()
    loss.backward(retain_graph=True)
    first = {k: v.grad.clone() for k, v in leaves.items()}
    loss.backward()
    for key, leaf in leaves.items():
        assert torch.allclose(leaf.grad, 2 * first[key], rtol=1e-5, atol=1e-7), key


def test_debug_mode_rejects_a_nan_image_gradient():
    _require_cuda()
    s = make_settings(32, 24, 30.0, 30.0, sh_degree=0, debug=True)
    scene = make_scene(50, s, seed=35, sh_coeffs=1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    img, _ = dgr.rasterize_gaussians(leaves["means3D"], None, leaves["shs"], None, leaves["opacities"],
                                     leaves["scales"], leaves["rotations"], None, s)
    weights = torch.ones_like(img)
    weights[1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="grad of the rendered image"):
        (img * weights).sum().backward()


# ----------------------------------------------------------------------------------------------
# Sync-free settings: fixed-size pair buffer, pair count and device intrinsics
# ----------------------------------------------------------------------------------------------
def _exact_pairs(scene, s) -> int:
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    render(scene, s._replace(pair_count=count))
    return int(count.item())


def test_fixed_pair_buffer_matches_exact_size():
    """A pair buffer larger than needed (padded and sorted) gives the exact-size pass's image bit
    for bit and its gradients (up to the order of the backward's atomic sums); the pair count is
    the one the exact pass reports."""
    _require_cuda()
    s = make_settings(160, 120, 150.0, 140.0, cx=70.0, cy=65.0)
    scene = make_scene(3000, s, seed=21)
    w = torch.rand(3, s.image_height, s.image_width, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    img, radii, grads = render(scene, s, weights=w)
    pairs = _exact_pairs(scene, s)
    assert pairs > 1000
    for capacity in (pairs, pairs + 1, 3 * pairs + 77):
        count = torch.full((1,), -1, dtype=torch.int64, device="cuda")
        img_f, radii_f, grads_f = render(scene, s._replace(pair_capacity=capacity, pair_count=count), weights=w)
        assert int(count.item()) == pairs
        assert torch.equal(img_f, img) and torch.equal(radii_f, radii), capacity
        for key in grads:
            assert rel_err(grads_f[key], grads[key]) < 1e-5, (capacity, key)


def test_short_pair_buffer_reports_the_count_and_stays_in_bounds():
    """Fewer slots than pairs: the call completes without memory errors, the count tells the
    caller, and the image differs (pairs were dropped) only where splats were left out."""
    _require_cuda()
    s = make_settings(96, 80, 90.0, 90.0)
    scene = make_scene(2000, s, seed=22)
    img, _, _ = render(scene, s)
    pairs = _exact_pairs(scene, s)
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    img_short, _, grads = render(scene, s._replace(pair_capacity=pairs // 3, pair_count=count))
    torch.cuda.synchronize()
    assert int(count.item()) == pairs
    assert not torch.equal(img_short, img)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_device_intrinsics_equal_host_intrinsics():
    """The float64 (tanfovx, tanfovy, cx, cy) tensor replaces the host values: one settings object
    whose intrinsics change between calls renders each camera as its own host settings do."""
    _require_cuda()
    base = make_settings(120, 90, 100.0, 100.0)
    intr = torch.zeros(4, dtype=torch.float64, device="cuda")
    stale = base._replace(tanfovx=0.9, tanfovy=0.7, cx=3.0, cy=4.0, intrinsics=intr)
    for fx, fy, cx, cy in ((100.0, 100.0, None, None), (130.0, 110.0, 50.0, 48.0), (80.0, 95.0, 66.5, 40.0)):
        s = make_settings(120, 90, fx, fy, cx=cx, cy=cy)
        scene = make_scene(1500, s, seed=23)
        intr.copy_(torch.tensor([s.tanfovx, s.tanfovy, math.nan if cx is None else cx, math.nan if cy is None else cy],
                                dtype=torch.float64))
        img, radii, grads = render(scene, s)
        img_d, radii_d, grads_d = render(scene, stale._replace(viewmatrix=s.viewmatrix, projmatrix=s.projmatrix,
                                                               campos=s.campos))
        assert torch.equal(img_d, img) and torch.equal(radii_d, radii)
        for key in grads:
            assert rel_err(grads_d[key], grads[key]) < 1e-5, key


def test_fixed_pair_buffer_renders_inside_a_cuda_graph():
    """With a fixed pair buffer and device intrinsics the forward and backward pass capture as a
    CUDA graph; replays after changing the splats and the intrinsics match eager calls."""
    _require_cuda()
    s = make_settings(128, 96, 110.0, 100.0)
    scene = make_scene(2500, s, seed=24)
    intr = torch.tensor([s.tanfovx, s.tanfovy, math.nan, math.nan], dtype=torch.float64, device="cuda")
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    static = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    gs = s._replace(pair_capacity=4 * _exact_pairs(scene, s), pair_count=count, intrinsics=intr)

    def step():
        for v in static.values():
            v.grad = None
        image, _ = dgr.rasterize_gaussians(static["means3D"], None, static["shs"], None, static["opacities"],
                                           static["scales"], static["rotations"], None, gs)
        image.square().sum().backward()
        return image

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    for v in static.values():
        v.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        image_out = step()
    grads_out = {k: v.grad for k, v in static.items()}
    for seed, fx in ((25, 110.0), (26, 125.0)):
        s2 = make_settings(128, 96, fx, fx * 0.95)
        new = make_scene(2500, s2, seed=seed)
        with torch.no_grad():
            for k in static:
                static[k].copy_(new[k])
            intr.copy_(torch.tensor([s2.tanfovx, s2.tanfovy, math.nan, math.nan], dtype=torch.float64))
            s.viewmatrix.copy_(s2.viewmatrix)
            s.projmatrix.copy_(s2.projmatrix)
            s.campos.copy_(s2.campos)
        graph.replay()
        torch.cuda.synchronize()
        img, _, _ = render(new, s2, weights=None)
        assert torch.equal(image_out, img), seed
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in new.items()}
        ref, _ = dgr.rasterize_gaussians(leaves["means3D"], None, leaves["shs"], None, leaves["opacities"],
                                         leaves["scales"], leaves["rotations"], None, s2)
        ref.square().sum().backward()
        for key in leaves:
            assert rel_err(grads_out[key], leaves[key].grad) < 1e-5, (seed, key)
        assert int(count.item()) <= gs.pair_capacity


def test_sync_free_settings_are_checked():
    _require_cuda()
    s = make_settings(40, 30, 40.0, 40.0)
    scene = make_scene(50, s, seed=27)
    with pytest.raises(ValueError, match="pair_capacity"):
        render(scene, s._replace(pair_capacity=-1))
    with pytest.raises(ValueError, match="pair_count"):
        render(scene, s._replace(pair_count=torch.zeros(1, device="cuda")))
    with pytest.raises(ValueError, match="intrinsics"):
        render(scene, s._replace(intrinsics=torch.zeros(4, device="cuda")))


# ----------------------------------------------------------------------------------------------
# Depth-order workspaces (csrc/workspace.h): per thread and stream, graph replay per splat count
# ----------------------------------------------------------------------------------------------
def _forward(scene, s):
    with torch.no_grad():
        return dgr.rasterize_gaussians(scene["means3D"], None, scene["shs"], None, scene["opacities"],
                                       scene["scales"], scene["rotations"], None, s)


def test_workspace_serves_changing_splat_counts():
    """More splat counts than graphs kept, growing and shrinking: every call renders as a fresh
    workspace does (bit for bit), the first one as the reference does; the workspace's memory is
    counted by the caching allocator and released on request."""
    _require_cuda()
    s = make_settings(96, 72, 90.0, 90.0)
    full = make_scene(9000, s, seed=31)
    counts = (3000, 500, 9000, 1, 3000, 7000, 2500, 500, 9000, 40, 3000)
    subset = lambda k: {key: v[:k].contiguous() for key, v in full.items()}  # noqa: E731
    dgr.release_cuda_workspaces()
    assert dgr.cuda_workspace_bytes() == 0
    fresh = {}
    for k in sorted(set(counts)):
        dgr.release_cuda_workspaces()
        fresh[k] = _forward(subset(k), s)
    compare(subset(3000), s)
    dgr.release_cuda_workspaces()
    sizes = []
    for k in counts:
        img, radii = _forward(subset(k), s)
        assert torch.equal(img, fresh[k][0]) and torch.equal(radii, fresh[k][1]), k
        sizes.append(dgr.cuda_workspace_bytes())
    assert 0 < sizes[0] == sizes[1] < sizes[2] == max(sizes) == sizes[-1]  # grows, never shrinks
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    held = dgr.cuda_workspace_bytes()
    dgr.release_cuda_workspaces()
    assert dgr.cuda_workspace_bytes() == 0
    assert before - torch.cuda.memory_allocated() >= held
    img, _ = _forward(subset(3000), s)
    assert torch.equal(img, fresh[3000][0])


def test_workspaces_of_concurrent_streams_and_threads():
    """Calls queued on two streams without synchronising between them, and calls from another
    thread, use their own workspaces: each image equals the one rendered alone."""
    import threading

    _require_cuda()
    s = make_settings(120, 90, 100.0, 100.0)
    scenes = [make_scene(n, s, seed=40 + i) for i, n in enumerate((6000, 4000, 6000))]
    alone = [_forward(sc, s)[0] for sc in scenes]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for st in streams:
        st.wait_stream(torch.cuda.current_stream())
    queued = []  # (scene index, image)
    for rep in range(4):
        for i, st in enumerate(streams):
            k = (rep * 2 + i) % 3
            with torch.cuda.stream(st):
                queued.append((k, _forward(scenes[k], s)[0]))
    torch.cuda.synchronize()
    for k, img in queued:
        assert torch.equal(img, alone[k]), k
    results = {}

    def work(idx):
        results[idx] = [_forward(scenes[(idx + j) % 3], s)[0] for j in range(3)]
        torch.cuda.synchronize()
        dgr.release_cuda_workspaces()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for idx, imgs in results.items():
        for j, img in enumerate(imgs):
            assert torch.equal(img, alone[(idx + j) % 3]), (idx, j)


def test_exact_pair_count_under_graph_capture_is_refused():
    """An exact-size pass needs a host read-back, which a stream under capture cannot do: the
    call says so (pair_capacity) instead of failing inside the CUDA runtime."""
    _require_cuda()
    s = make_settings(64, 48, 60.0, 60.0)
    scene = make_scene(500, s, seed=45)
    _forward(scene, s)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises((ValueError, RuntimeError), match="pair_capacity"):
        with torch.cuda.graph(graph):
            _forward(scene, s)
    torch.cuda.synchronize()
    img, _ = _forward(scene, s)
    assert torch.isfinite(img).all()


def test_depth_order_graph_replay_equals_plain_launches(monkeypatch):
    """The depth sort and scan replayed from the workspace's graph give the images and gradients
    of the same pass launched call by call (GSR_DEPTH_GRAPH=0), bit for bit."""
    _require_cuda()
    s = make_settings(128, 96, 110.0, 100.0)
    scene = make_scene(4000, s, seed=47)
    w = torch.rand(3, s.image_height, s.image_width, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    results = {}
    for mode in ("0", "1", "0"):
        monkeypatch.setenv("GSR_DEPTH_GRAPH", mode)
        results.setdefault(mode, []).append(render(scene, s, weights=w))
    for img, radii, grads in results["1"] + results["0"][1:]:
        img0, radii0, grads0 = results["0"][0]
        assert torch.equal(img, img0) and torch.equal(radii, radii0)
        for key in grads0:
            assert rel_err(grads[key], grads0[key]) < 1e-5, key


@pytest.mark.parametrize("size", [(128, 96), (803, 551), (33, 17)])
def test_tile_order_by_list_length_equals_raster_order(monkeypatch, size):
    """The blending passes launched by decreasing tile-list length (default) and in raster order
    (GSR_TILE_ORDER=0) give the same image bit for bit (each tile is blended by one block either
    way) and the same gradients up to the order of the float atomics. A tile left out of the
    launch order would keep the uninitialised colour memory and fail the comparison with the
    float64 reference, which runs first."""
    _require_cuda()
    width, height = size
    s = make_settings(width, height, 0.9 * width, 0.9 * width)
    scene = make_scene(6000, s, seed=49)
    monkeypatch.setenv("GSR_TILE_ORDER", "1")
    compare(scene, s)
    w = torch.rand(3, height, width, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    results = {}
    for mode in ("1", "0", "1"):
        monkeypatch.setenv("GSR_TILE_ORDER", mode)
        results.setdefault(mode, []).append(render(scene, s, weights=w))
    img1, radii1, grads1 = results["1"][0]
    for img, radii, grads in results["0"] + results["1"][1:]:
        assert torch.equal(img, img1) and torch.equal(radii, radii1)
        for key in grads1:
            assert rel_err(grads[key], grads1[key]) < 1e-5, key
