"""Plain 3DGS model: initialisation, optimizer groups, densification surgery, PLY, checkpoints."""
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

import scene.gaussian_model as gm_mod
from arguments import OptimizationParams
from scene.gaussian_model import GaussianModel
from utils.general_utils import inverse_sigmoid
from utils.ply_io import ply_attribute_names
from utils.sh_utils import RGB2SH


@dataclasses.dataclass
class PointCloud:
    points: np.ndarray
    colors: np.ndarray
    normals: np.ndarray


def brute_knn(points: torch.Tensor) -> torch.Tensor:
    p = points.double().numpy()
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return torch.from_numpy(np.sort(d2, axis=1)[:, :3].mean(1)).float()


@pytest.fixture
def knn(monkeypatch):
    monkeypatch.setattr(gm_mod, "_knn_mean_sq_dist", brute_knn)


def make_model(n=12, seed=0, sh_degree=3) -> GaussianModel:
    rng = np.random.default_rng(seed)
    pcd = PointCloud(rng.random((n, 3)).astype(np.float32), rng.random((n, 3)).astype(np.float32), np.zeros((n, 3)))
    g = GaussianModel(sh_degree, device="cpu")
    g.create_from_pcd(pcd, spatial_lr_scale=2.0)
    return g


def randomize(g: GaussianModel, seed=0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (g._xyz, g._features_dc, g._features_rest, g._opacity, g._scaling, g._rotation):
            t.copy_(torch.randn(t.shape, generator=gen))


def test_create_from_pcd(knn):
    rng = np.random.default_rng(0)
    pts = rng.random((15, 3)).astype(np.float32)
    pts[1] = pts[0]  # duplicates: distance clamped at 1e-7 only if all 3 NN coincide
    cols = rng.random((15, 3)).astype(np.float32)
    g = GaussianModel(3, device="cpu")
    g.create_from_pcd(PointCloud(pts, cols, np.zeros_like(pts)), 3.0)
    d2 = np.maximum(brute_knn(torch.from_numpy(pts)).numpy(), 1e-7)
    np.testing.assert_allclose(g._scaling.detach().numpy(), np.log(np.sqrt(d2))[:, None].repeat(3, 1), rtol=1e-5)
    np.testing.assert_allclose(g.get_xyz.detach().numpy(), pts)
    np.testing.assert_allclose(g._features_dc[:, 0].detach().numpy(), RGB2SH(cols), atol=1e-6)
    assert g._features_rest.shape == (15, 15, 3) and float(g._features_rest.detach().abs().max()) == 0.0
    np.testing.assert_allclose(g.get_opacity.detach().numpy(), 0.1, atol=1e-6)
    np.testing.assert_allclose(g.get_rotation.detach().numpy(), np.tile([1, 0, 0, 0], (15, 1)))
    assert g.get_features.shape == (15, 16, 3) and g.spatial_lr_scale == 3.0
    assert g.max_radii2D.shape == (15,)


@pytest.mark.skipif(importlib.util.find_spec("simple_knn") is None, reason="simple_knn not available")
def test_create_from_pcd_with_simple_knn():
    try:
        from simple_knn import distCUDA2  # noqa: F401
    except ImportError:
        pytest.skip("simple_knn has no distCUDA2 yet")
    g = make_model(30)
    assert torch.isfinite(g._scaling).all()


def test_training_setup_and_lr(knn):
    g = make_model()
    opt = OptimizationParams()
    g.training_setup(opt)
    groups = {grp["name"]: grp for grp in g.optimizer.param_groups}
    assert list(groups) == ["xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation"]
    assert groups["xyz"]["lr"] == pytest.approx(opt.position_lr_init * 2.0)
    assert groups["f_rest"]["lr"] == pytest.approx(opt.feature_lr / 20)
    assert groups["scaling"]["lr"] == opt.scaling_lr and groups["opacity"]["lr"] == opt.opacity_lr
    assert g.optimizer.defaults["eps"] == 1e-15
    assert groups["xyz"]["params"][0] is g._xyz
    assert g.update_learning_rate(0) == pytest.approx(opt.position_lr_init * 2.0)
    assert g.update_learning_rate(opt.position_lr_max_steps) == pytest.approx(opt.position_lr_final * 2.0)
    assert groups["xyz"]["lr"] == pytest.approx(opt.position_lr_final * 2.0)
    g.oneupSHdegree()
    assert g.active_sh_degree == 1
    for _ in range(5):
        g.oneupSHdegree()
    assert g.active_sh_degree == 3


def test_ply_roundtrip_bit_exact(knn, tmp_path):
    g = make_model(10)
    randomize(g)
    p1, p2 = tmp_path / "a.ply", tmp_path / "sub" / "b.ply"
    g.save_ply(str(p1))
    ply = PlyData.read(str(p1))
    assert ply.text is False and ply.byte_order == "<"
    names = [p.name for p in ply["vertex"].properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expected += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected == g.construct_list_of_attributes()
    assert all(p.val_dtype == "f4" for p in ply["vertex"].properties)
    # f_rest is channel-major: f_rest_0..14 are the red coefficients
    np.testing.assert_array_equal(ply["vertex"]["f_rest_1"], g._features_rest[:, 1, 0].detach().numpy())
    np.testing.assert_array_equal(ply["vertex"]["f_rest_15"], g._features_rest[:, 0, 1].detach().numpy())
    h = GaussianModel(3, device="cpu")
    h.load_ply(str(p1))
    for a, b in [(g._xyz, h._xyz), (g._features_dc, h._features_dc), (g._features_rest, h._features_rest),
                 (g._opacity, h._opacity), (g._scaling, h._scaling), (g._rotation, h._rotation)]:
        assert torch.equal(a, b)
    assert h.active_sh_degree == 3
    h.save_ply(str(p2))
    assert p1.read_bytes() == p2.read_bytes()
    assert not list(tmp_path.glob("*.tmp")) and not list((tmp_path / "sub").glob(".*"))


def test_ply_from_other_writer_loads(tmp_path):
    """A PLY written with plyfile by other code (property order shuffled, degree-1 SH) loads."""
    n = 7
    rng = np.random.default_rng(3)
    names = ply_attribute_names(3, with_binding=False)
    vals = {name: rng.standard_normal(n).astype(np.float32) for name in names}
    order = names[::-1]
    arr = np.empty(n, dtype=[(name, "f4") for name in order])
    for name in order:
        arr[name] = vals[name]
    path = tmp_path / "other.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    g = GaussianModel(3, device="cpu")
    g.load_ply(str(path))
    np.testing.assert_array_equal(g._xyz.detach().numpy()[:, 2], vals["z"])
    np.testing.assert_array_equal(g._features_rest[:, 2, 1].detach().numpy(), vals["f_rest_5"])  # G, coeff 2
    assert float(g._features_rest[:, 3:].detach().abs().max()) == 0.0  # padded to degree 3
    np.testing.assert_array_equal(g._rotation[:, 3].detach().numpy(), vals["rot_3"])
    # ascii PLY lacking a field: clear error naming file and field
    bad = np.empty(n, dtype=[(name, "f4") for name in names if name != "opacity"])
    PlyData([PlyElement.describe(bad, "vertex")], text=True).write(str(tmp_path / "bad.ply"))
    with pytest.raises(ValueError, match="bad.ply.*opacity"):
        g.load_ply(str(tmp_path / "bad.ply"))
    with pytest.raises(FileNotFoundError):
        g.load_ply(str(tmp_path / "missing.ply"))
    small = GaussianModel(0, device="cpu")
    with pytest.raises(ValueError, match="sh_degree"):
        small.load_ply(str(path))


def adam_step(g: GaussianModel) -> None:
    g.optimizer.zero_grad()
    loss = (g.get_xyz ** 2).sum() + g.get_features.sum() + g.get_opacity.sum() + g.get_scaling.sum() + g.get_rotation.sum()
    loss.backward()
    g.optimizer.step()


def test_densify_clone_split_prune(knn):
    torch.manual_seed(0)
    g = make_model(8)
    opt = OptimizationParams()
    g.training_setup(opt)
    adam_step(g)
    extent = 1.0
    thr = 0.5
    with torch.no_grad():
        # 0,1: small & high grad -> clone; 2,3: large & high grad -> split; 4: low opacity -> prune
        g._scaling[:] = np.log(0.001)
        g._scaling[2:4] = np.log(0.5)
        g._opacity[:] = inverse_sigmoid(torch.tensor(0.5))
        g._opacity[4] = inverse_sigmoid(torch.tensor(0.001))
    g.xyz_gradient_accum[:] = 0.0
    g.xyz_gradient_accum[:4] = 2.0
    g.denom[:] = 2.0
    g.denom[5] = 0.0  # 0/0 -> nan -> treated as 0
    xyz0 = g._xyz.detach().clone()
    exp_avg0 = g.optimizer.state[g._xyz]["exp_avg"].clone()
    g.densify_and_prune(thr, 0.005, extent, None)
    # 8 + 2 clones + 4 split children - 2 split parents - 1 pruned
    assert g.num_points == 11
    for name in ("xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation"):
        grp = next(p for p in g.optimizer.param_groups if p["name"] == name)
        param = grp["params"][0]
        assert param is getattr(g, gm_mod.SPLAT_PARAM_GROUPS[name])
        st = g.optimizer.state[param]
        assert st["exp_avg"].shape == param.shape == st["exp_avg_sq"].shape
    # survivors keep their moments, in order: 0,1,3?,... original rows kept = [0,1,5,6,7]
    kept = [0, 1, 5, 6, 7]
    np.testing.assert_array_equal(g._xyz[:5].detach().numpy(), xyz0[kept].numpy())
    np.testing.assert_array_equal(g.optimizer.state[g._xyz]["exp_avg"][:5].numpy(), exp_avg0[kept].numpy())
    # clones: exact copies with zero moments
    np.testing.assert_array_equal(g._xyz[5:7].detach().numpy(), xyz0[[0, 1]].numpy())
    assert float(g.optimizer.state[g._xyz]["exp_avg"][5:].abs().max()) == 0.0
    # split children: scale / 1.6
    np.testing.assert_allclose(g.get_scaling[7:].detach().numpy(), 0.5 / 1.6, rtol=1e-6)
    assert g.xyz_gradient_accum.shape == (11, 1) and g.denom.shape == (11, 1) and g.max_radii2D.shape == (11,)
    adam_step(g)  # the optimizer still works after surgery


def test_prune_big_points(knn):
    g = make_model(6)
    g.training_setup(OptimizationParams())
    with torch.no_grad():
        g._scaling[:] = np.log(0.01)
        g._scaling[1] = np.log(0.5)  # > 0.1 * extent
        g._opacity[:] = 1.0
    g.max_radii2D[:] = 5
    g.max_radii2D[3] = 30
    g.densify_and_prune(1e9, 0.005, 1.0, 20)
    # Like 3DGS/GaussianAvatars, densification_postfix zeroes max_radii2D before the prune, so
    # only the world-size test removes splat 1 here (the screen-size test sees zeros).
    assert g.num_points == 5
    g.max_radii2D[:] = 5
    g.max_radii2D[3] = 30
    g.prune_points(g.max_radii2D > 20)
    assert g.num_points == 4


def test_add_stats_reset_opacity_max_radii(knn):
    g = make_model(5)
    g.training_setup(OptimizationParams())
    means2d = torch.zeros(5, 3, requires_grad=True)
    (means2d * torch.tensor([3.0, 4.0, 7.0])).sum().backward()
    vis = torch.tensor([True, False, True, True, False])
    g.add_densification_stats(means2d, vis)
    g.add_densification_stats(means2d, vis)
    np.testing.assert_allclose(g.xyz_gradient_accum.squeeze(-1).numpy(), [10, 0, 10, 10, 0])
    np.testing.assert_allclose(g.denom.squeeze(-1).numpy(), [2, 0, 2, 2, 0])
    g.update_max_radii2D(torch.tensor([3, 9, 1, 4, 2], dtype=torch.int32), vis)
    g.update_max_radii2D(torch.tensor([1, 9, 5, 4, 2], dtype=torch.int32), vis)
    np.testing.assert_array_equal(g.max_radii2D.numpy(), [3, 0, 5, 4, 0])
    with torch.no_grad():
        g._opacity[0] = -10.0
    adam_step(g)
    before = g.get_opacity.detach().squeeze(-1).clone()
    g.reset_opacity()
    op = g.get_opacity.detach().squeeze(-1)
    assert float(op[0]) == pytest.approx(float(before[0]), rel=1e-4) and float(before[0]) < 0.01
    np.testing.assert_allclose(op[1:].numpy(), 0.01, rtol=1e-4)
    assert float(g.optimizer.state[g._opacity]["exp_avg"].abs().max()) == 0.0
    assert next(p for p in g.optimizer.param_groups if p["name"] == "opacity")["params"][0] is g._opacity


def test_capture_restore_weights_only(knn, tmp_path):
    g = make_model(9)
    randomize(g)
    opt = OptimizationParams()
    g.training_setup(opt)
    g.oneupSHdegree()
    adam_step(g)
    path = tmp_path / "chkpnt.pth"
    torch.save((g.capture(), 123), str(path))
    state, it = torch.load(str(path), weights_only=True)
    assert it == 123
    h = GaussianModel(3, device="cpu")
    h.restore(state, opt)
    assert h.active_sh_degree == 1 and h.spatial_lr_scale == g.spatial_lr_scale
    for name, attr in gm_mod.SPLAT_PARAM_GROUPS.items():
        assert torch.equal(getattr(g, attr), getattr(h, attr))
    # identical next step
    adam_step(g)
    adam_step(h)
    for attr in gm_mod.SPLAT_PARAM_GROUPS.values():
        assert torch.equal(getattr(g, attr), getattr(h, attr))
    with pytest.raises(ValueError, match="sh_degree"):
        GaussianModel(1, device="cpu").restore(state, opt)
