"""Mesh-bound Gaussians: per-face frames (SPEC 5), bindings through densification, PLY + npz,
checkpoints, FLAME fine-tuning groups and regularisers.

Most tests drive the model with a tiny differentiable stand-in for FLAME (a few triangles whose
vertices move with the expression, rotation and translation); one test uses the procedural
FLAME head when ``flame_model.procedural`` is available.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from arguments import OptimizationParams
from scene.flame_gaussian_model import FLAME_PARAM_KEYS, FlameGaussianModel, compute_face_orientation
from scene.gaussian_model import SPLAT_PARAM_GROUPS
from utils.general_utils import build_rotation, inverse_sigmoid
from utils.ply_io import ply_attribute_names


def axis_angle(r: torch.Tensor) -> torch.Tensor:
    theta = r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = r / theta
    K = torch.zeros(*r.shape[:-1], 3, 3, dtype=r.dtype, device=r.device)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - K.transpose(-1, -2)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return torch.eye(3, device=r.device) + s * K + (1 - c) * (K @ K)


class TinyFlame(torch.nn.Module):
    """FLAME stand-in: V vertices, F faces, linear shape/expression bases, global rotation and
    translation. Same call signature and outputs as ``flame_model.flame.FlameHead``."""

    def __init__(self, n_shape=4, n_expr=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        V = 9
        self.register_buffer("v_template", torch.randn(V, 3, generator=g))
        self.register_buffer("faces", torch.tensor([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [1, 3, 5]]))
        self.register_buffer("shapedirs", 0.1 * torch.randn(V, 3, n_shape, generator=g))
        self.register_buffer("exprdirs", 0.1 * torch.randn(V, 3, n_expr, generator=g))

    def forward(self, shape, expr, rotation, neck, jaw, eyes, translation, static_offset=None,
                dynamic_offset=None, return_landmarks=False):
        B = rotation.shape[0]
        if shape.dim() == 1:
            shape = shape[None]
        v = self.v_template + torch.einsum("vck,bk->bvc", self.shapedirs, shape.expand(B, -1))
        v = v + torch.einsum("vck,bk->bvc", self.exprdirs, expr)
        if static_offset is not None:
            v = v + static_offset
        if dynamic_offset is not None:
            v = v + dynamic_offset
        cano = v
        R = axis_angle(rotation)  # (B,3,3)
        v = torch.einsum("bij,bvj->bvi", R, v) + translation[:, None] + 0.01 * jaw.sum() + 0.01 * eyes.sum() + 0.01 * neck.sum()
        return v, cano


def make_meshes(T=3, V=9, n_shape=4, n_expr=3, seed=0, teeth_missing=2):
    rng = np.random.default_rng(seed)
    shape = rng.standard_normal(n_shape).astype(np.float32)
    static = 0.01 * rng.standard_normal((1, V - teeth_missing, 3)).astype(np.float32)
    out = {}
    for t in range(T):
        out[t] = {
            "shape": shape,
            "expr": rng.standard_normal((1, n_expr)).astype(np.float32),
            "rotation": 0.3 * rng.standard_normal((1, 3)).astype(np.float32),
            "neck_pose": np.zeros((1, 3), np.float32),
            "jaw_pose": np.zeros((1, 3), np.float32),
            "eyes_pose": np.zeros((1, 6), np.float32),
            "translation": rng.standard_normal((1, 3)).astype(np.float32),
            "static_offset": static,
        }
    return out


def make_model(T=3, device="cpu", **kw) -> FlameGaussianModel:
    g = FlameGaussianModel(3, n_shape=4, n_expr=3, flame_model=TinyFlame(), device=device, **kw)
    meshes = make_meshes(T)
    g.load_meshes({t: meshes[t] for t in range(T - 1)}, {T - 1: meshes[T - 1]}, {}, {})
    g.create_from_pcd(None, spatial_lr_scale=1.5)
    g.select_mesh_by_timestep(1)
    return g


def randomize(g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (g._xyz, g._features_dc, g._features_rest, g._opacity, g._scaling, g._rotation):
            t.copy_(torch.randn(t.shape, generator=gen))


def numpy_frames(verts: np.ndarray, faces: np.ndarray):
    v0, v1, v2 = (verts[faces[:, i]].astype(np.float64) for i in range(3))
    nrm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    a0 = nrm(v1 - v0)
    a1 = nrm(np.cross(a0, v2 - v0))
    a2 = -nrm(np.cross(a1, a0))
    R = np.stack([a0, a1, a2], axis=-1)
    k = (np.linalg.norm(v1 - v0, axis=-1) + np.abs((a2 * (v2 - v0)).sum(-1))) / 2
    return (v0 + v1 + v2) / 3, R, k


def test_face_frames_vs_numpy():
    rng = np.random.default_rng(0)
    verts = rng.standard_normal((30, 3)).astype(np.float32)
    faces = rng.choice(30, size=(40, 3), replace=True)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    c, R, k = compute_face_orientation(torch.from_numpy(verts), torch.from_numpy(faces))
    c_ref, R_ref, k_ref = numpy_frames(verts, faces)
    np.testing.assert_allclose(c.numpy(), c_ref, atol=1e-5)
    np.testing.assert_allclose(R.numpy(), R_ref, atol=1e-4)
    np.testing.assert_allclose(k.squeeze(-1).numpy(), k_ref, rtol=1e-4)
    # proper rotations
    np.testing.assert_allclose(np.linalg.det(R.numpy()), 1.0, atol=1e-4)


def test_world_transform():
    g = make_model()
    randomize(g)
    n_faces = g.num_faces
    with torch.no_grad():
        g._xyz[:n_faces] = 0.0
        g._scaling[:n_faces] = 0.0
    verts = g.verts[0].detach().numpy()
    c_ref, R_ref, k_ref = numpy_frames(verts, g.faces.numpy())
    xyz = g.get_xyz.detach().numpy()
    np.testing.assert_allclose(xyz, c_ref, atol=1e-5)  # mu = 0 sits at the centroid
    np.testing.assert_allclose(g.get_scaling.detach().numpy(), np.repeat(k_ref[:, None], 3, 1), rtol=1e-5)
    # rotation: R(world quat) = R_t R(q)
    Rq = build_rotation(g._rotation.detach()).numpy()
    Rw = build_rotation(g.get_rotation.detach()).numpy()
    np.testing.assert_allclose(Rw, R_ref @ Rq, atol=1e-5)
    # general position: R_t mu k_t + centroid
    with torch.no_grad():
        g._xyz.copy_(torch.randn_like(g._xyz))
    mu = g._xyz.detach().numpy().astype(np.float64)
    expect = np.einsum("nij,nj->ni", R_ref, mu) * k_ref[:, None] + c_ref
    np.testing.assert_allclose(g.get_xyz.detach().numpy(), expect, atol=1e-5)


def test_select_mesh_original_vs_finetuned_and_errors():
    g = make_model()
    with torch.no_grad():
        g.flame_param["translation"][1] += 1.0
    g.select_mesh_by_timestep(1)
    c_ft = g.face_center.clone()
    g.select_mesh_by_timestep(1, original=True)
    np.testing.assert_allclose((c_ft - g.face_center).numpy(), 1.0, atol=1e-5)
    g.select_mesh_by_timestep(torch.tensor(1))  # tensor timesteps work too
    np.testing.assert_allclose(g.face_center.numpy(), c_ft.numpy(), atol=1e-6)
    with pytest.raises(IndexError, match="timestep 3"):
        g.select_mesh_by_timestep(3)
    fresh = FlameGaussianModel(0, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    with pytest.raises(RuntimeError):
        fresh.select_mesh_by_timestep(0)


def test_load_meshes_stacking():
    g = make_model(T=4)
    meshes = make_meshes(4)
    fp = g.flame_param
    assert fp["shape"].shape == (4,) and fp["expr"].shape == (4, 3) and fp["eyes_pose"].shape == (4, 6)
    assert fp["static_offset"].shape == (1, 9, 3) and fp["dynamic_offset"].shape == (4, 9, 3)
    np.testing.assert_array_equal(fp["expr"][2].numpy(), meshes[2]["expr"][0])
    np.testing.assert_array_equal(fp["static_offset"][0, :7].numpy(), meshes[0]["static_offset"][0])
    assert float(fp["static_offset"][0, 7:].abs().max()) == 0.0  # zero-padded (teeth)
    assert g.num_timesteps == 4
    h = FlameGaussianModel(0, disable_flame_static_offset=True, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    h.load_meshes(meshes, {}, {}, {})
    assert float(h.flame_param["static_offset"].abs().max()) == 0.0
    # target meshes drive the motion, identity stays the subject's
    tgt = make_meshes(2, seed=5)
    h.load_meshes(meshes, {}, tgt, {})
    assert h.num_timesteps == 2
    np.testing.assert_array_equal(h.flame_param["expr"][1].numpy(), tgt[1]["expr"][0])
    np.testing.assert_array_equal(h.flame_param["shape"].numpy(), meshes[0]["shape"])
    bad = {0: {k: v for k, v in meshes[0].items() if k != "jaw_pose"}}
    with pytest.raises(ValueError, match="jaw_pose"):
        h.load_meshes(bad, {}, {}, {})


def test_create_from_pcd_one_per_face():
    g = make_model()
    F = g.num_faces
    assert g.num_points == F
    assert torch.equal(g.binding, torch.arange(F)) and torch.equal(g.binding_counter, torch.ones(F, dtype=torch.long))
    assert float(g._xyz.detach().abs().max()) == 0.0 and float(g._scaling.detach().abs().max()) == 0.0
    np.testing.assert_allclose(g.get_opacity.detach().numpy(), 0.1, atol=1e-6)
    np.testing.assert_allclose(g._rotation.detach().numpy(), np.tile([1, 0, 0, 0], (F, 1)))
    assert float(g._features_dc.detach().abs().max()) == 0.0  # mid-grey


def setup_training(g, **opt_kw):
    opt = OptimizationParams()
    for k, v in opt_kw.items():
        setattr(opt, k, v)
    g.training_setup(opt)
    return opt


def step(g):
    g.optimizer.zero_grad()
    g.select_mesh_by_timestep(1)
    loss = (g.get_xyz ** 2).sum() + g.get_scaling.sum() + g.get_rotation[:, 1:].sum() + g.get_opacity.sum()
    loss = loss + g.get_features.sum()
    loss.backward()
    g.optimizer.step()


def test_training_setup_flame_groups():
    g = make_model()
    opt = setup_training(g)
    names = [grp["name"] for grp in g.optimizer.param_groups]
    assert names == ["xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation", "flame_expr", "flame_pose", "flame_translation"]
    lrs = {grp["name"]: grp["lr"] for grp in g.optimizer.param_groups}
    assert lrs["flame_expr"] == opt.flame_expr_lr and lrs["flame_pose"] == opt.flame_pose_lr
    assert lrs["flame_translation"] == opt.flame_trans_lr and lrs["xyz"] == pytest.approx(opt.position_lr_init * 1.5)
    before = g.flame_param["translation"].detach().clone()
    orig = g.flame_param_orig["translation"].clone()
    step(g)
    assert not torch.equal(before[1], g.flame_param["translation"][1].detach())  # fine-tuned
    assert torch.equal(before[0], g.flame_param["translation"][0].detach())  # other frames untouched
    assert torch.equal(orig, g.flame_param_orig["translation"])
    assert not g.flame_param["static_offset"].requires_grad
    h = make_model(not_finetune_flame_params=True)
    setup_training(h)
    assert [grp["name"] for grp in h.optimizer.param_groups][-1] == "rotation"
    assert not h.flame_param["expr"].requires_grad


def test_densify_inherits_bindings_and_keeps_faces():
    torch.manual_seed(0)
    g = make_model()
    setup_training(g)
    step(g)
    F = g.num_faces
    # face-local scale 1 => world scale k_t (~1); choose extent so all are "large" for faces 0,1
    # and "small" otherwise: use separate passes for clone and split.
    g.xyz_gradient_accum[:] = 1.0
    g.denom[:] = 1.0
    g.xyz_gradient_accum[4] = 0.0
    with torch.no_grad():
        g._scaling[2:4] = -8.0  # tiny -> clone
    # world max scale of faces 0,1 must exceed percent_dense * extent
    extent = 1.0
    parent_scale = g._scaling[:2].detach().exp().clone()
    g.densify_and_prune(0.5, 0.0, extent, None)
    # faces 0,1 split (2 children each, parents removed), faces 2,3 cloned, face 4 untouched
    counts = torch.bincount(g.binding, minlength=F)
    assert torch.equal(counts, g.binding_counter)
    assert counts.tolist() == [2, 2, 2, 2, 1]
    for name, attr in SPLAT_PARAM_GROUPS.items():
        param = getattr(g, attr)
        assert param.shape[0] == g.binding.shape[0]
        st = g.optimizer.state[param]
        assert st["exp_avg"].shape == param.shape
    # split children live in the parent's local frame with scale / 1.6 (face units)
    for face in (0, 1):
        rows = (g.binding == face).nonzero().squeeze(-1)
        np.testing.assert_allclose(g._scaling[rows].detach().exp().numpy(),
                                   (parent_scale[face] / 1.6).expand(2, 3).numpy(), rtol=1e-5)
    step(g)  # optimizer intact, FLAME groups untouched by surgery
    assert len(g.optimizer.param_groups) == 9


def test_split_samples_follow_world_gaussian():
    """Children of a split splat are distributed like the parent's world-space Gaussian
    (offsets sampled in the triangle frame, i.e. world offsets divided by k_t)."""
    torch.manual_seed(1)
    g = make_model()
    g.percent_dense = 0.01
    M = 3000
    idx = torch.zeros(M, dtype=torch.long)
    q = torch.tensor([0.8, 0.3, -0.4, 0.2])
    with torch.no_grad():
        g._scaling[0] = torch.log(torch.tensor([0.5, 0.2, 0.1]))
        g._rotation[0] = q
        g._xyz[0] = torch.tensor([0.1, -0.2, 0.3])
    g.densification_postfix({n: getattr(g, a)[idx].detach() for n, a in SPLAT_PARAM_GROUPS.items()}, idx)
    parent_world = g.get_xyz[0].detach().clone()
    k = g.face_scaling[0, 0]
    L = g.face_orien_mat[0] @ build_rotation(q) @ torch.diag(torch.tensor([0.5, 0.2, 0.1]) * k)
    cov_expected = (L @ L.T).numpy()
    grads = torch.zeros(g.num_points, 1)
    grads[g.binding == 0] = 1.0
    n_before = g.num_points
    g.densify_and_split(grads, 0.5, scene_extent=1e-3)
    assert g.num_points == n_before - (M + 1) + 2 * (M + 1)
    children = g.get_xyz[g.binding == 0].detach() - parent_world
    cov = np.cov(children.numpy().T)
    assert np.abs(cov - cov_expected).max() < 0.08 * np.abs(cov_expected).max()
    assert np.abs(children.mean(0).numpy()).max() < 0.05 * float(k) * 0.5
    np.testing.assert_allclose(g.get_scaling[g.binding == 0].detach().numpy(),
                               (torch.tensor([0.5, 0.2, 0.1]) * k / 1.6).expand(2 * (M + 1), 3).numpy(), rtol=1e-5)


def test_prune_never_empties_a_face():
    g = make_model()
    setup_training(g)
    step(g)
    # duplicate every splat twice (3 per face), then make all of face 0 and 2 transparent
    idx = torch.arange(g.num_faces).repeat(2)
    new = {name: getattr(g, attr)[idx].detach().clone() for name, attr in SPLAT_PARAM_GROUPS.items()}
    g.densification_postfix(new, idx)
    assert g.binding_counter.tolist() == [3] * g.num_faces
    with torch.no_grad():
        g._opacity[:] = 5.0
        low = (g.binding == 0) | (g.binding == 2)
        g._opacity[low] = inverse_sigmoid(torch.tensor(1e-4))
        # one splat of face 2 slightly less transparent: it must be the survivor
        face2_rows = (g.binding == 2).nonzero().squeeze(-1)
        g._opacity[face2_rows[1]] = inverse_sigmoid(torch.tensor(2e-4))
    survivor_xyz = g._xyz[face2_rows[1]].detach().clone()
    with torch.no_grad():
        g._xyz[face2_rows[1]] += 0.123
        survivor_xyz += 0.123
    g.prune_points((g.get_opacity < 0.005).squeeze(-1))
    assert g.binding_counter.tolist() == [1, 3, 1, 3, 3]
    assert torch.equal(torch.bincount(g.binding, minlength=g.num_faces), g.binding_counter)
    kept2 = (g.binding == 2).nonzero().squeeze(-1)
    np.testing.assert_array_equal(g._xyz[kept2[0]].detach().numpy(), survivor_xyz.numpy())
    # pruning everything still leaves one per face
    g.prune_points(torch.ones(g.num_points, dtype=torch.bool))
    assert g.num_points == g.num_faces and g.binding_counter.tolist() == [1] * g.num_faces
    assert g.optimizer.state[g._xyz]["exp_avg"].shape == (g.num_faces, 3)


def test_ply_and_npz_roundtrip(tmp_path):
    g = make_model()
    randomize(g)
    idx = torch.tensor([0, 0, 3])
    g.densification_postfix({n: getattr(g, a)[idx].detach() for n, a in SPLAT_PARAM_GROUPS.items()}, idx)
    with torch.no_grad():
        g.flame_param["expr"][2] += 0.5  # "fine-tuned"
    p1 = tmp_path / "point_cloud" / "iteration_7" / "point_cloud.ply"
    g.save_ply(str(p1))
    names = [p.name for p in PlyData.read(str(p1))["vertex"].properties]
    assert names == ply_attribute_names(15, True) and names[-1] == "binding_0"
    npz = np.load(str(p1.parent / "flame_param.npz"))
    assert sorted(npz.files) == sorted(FLAME_PARAM_KEYS)
    assert npz["expr"].shape == (3, 3) and npz["static_offset"].shape == (1, 9, 3) and npz["dynamic_offset"].shape == (3, 9, 3)
    assert npz["expr"].dtype == np.float32
    h = FlameGaussianModel(3, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    h.load_ply(str(p1))
    assert torch.equal(h.binding, g.binding) and torch.equal(h.binding_counter, g.binding_counter)
    for k in FLAME_PARAM_KEYS:
        assert torch.equal(h.flame_param[k], g.flame_param[k].detach()), k
    for attr in SPLAT_PARAM_GROUPS.values():
        assert torch.equal(getattr(h, attr), getattr(g, attr))
    p2 = tmp_path / "again" / "point_cloud.ply"
    h.save_ply(str(p2))
    assert p1.read_bytes() == p2.read_bytes()
    assert (p1.parent / "flame_param.npz").read_bytes() != b""
    np.testing.assert_array_equal(np.load(str(p2.parent / "flame_param.npz"))["expr"], npz["expr"])
    # loaded after load_meshes: fine-tuned params win, tracked ones stay in flame_param_orig
    k = make_model()
    k.load_ply(str(p1))
    assert torch.equal(k.flame_param["expr"], g.flame_param["expr"].detach())
    assert not torch.equal(k.flame_param_orig["expr"], k.flame_param["expr"])
    # ... and before load_meshes (order does not matter)
    m = FlameGaussianModel(3, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    m.load_ply(str(p1))
    m.load_meshes(make_meshes(3), {}, {}, {})
    assert torch.equal(m.flame_param["expr"], g.flame_param["expr"].detach())
    m.select_mesh_by_timestep(2)
    g.select_mesh_by_timestep(2)
    np.testing.assert_allclose(m.get_xyz.detach().numpy(), g.get_xyz.detach().numpy(), atol=1e-6)


def test_load_original_style_avatar_and_motion(tmp_path):
    """A PLY + npz as the original code writes them (plyfile, binding_0 as float, npz with the
    same names, static offset without teeth rows) loads; a motion npz replaces the motion."""
    rng = np.random.default_rng(4)
    n = 8
    names = ply_attribute_names(15, True)
    arr = np.empty(n, dtype=[(name, "f4") for name in names])
    for name in names:
        arr[name] = rng.standard_normal(n).astype(np.float32)
    arr["binding_0"] = np.array([0, 1, 2, 3, 4, 0, 1, 4], dtype=np.float32)
    folder = tmp_path / "iteration_600000"
    folder.mkdir()
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(folder / "point_cloud.ply"))
    T = 5
    np.savez(
        str(folder / "flame_param.npz"),
        shape=rng.standard_normal(4).astype(np.float32),
        expr=rng.standard_normal((T, 3)).astype(np.float32),
        rotation=np.zeros((T, 3), np.float32), neck_pose=np.zeros((T, 3), np.float32),
        jaw_pose=np.zeros((T, 3), np.float32), eyes_pose=np.zeros((T, 6), np.float32),
        translation=rng.standard_normal((T, 3)).astype(np.float32),
        static_offset=np.zeros((1, 7, 3), np.float32), dynamic_offset=np.zeros((T, 7, 3), np.float32),
    )
    g = FlameGaussianModel(3, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    g.load_ply(str(folder / "point_cloud.ply"))
    assert g.num_timesteps == T and g.binding.tolist() == [0, 1, 2, 3, 4, 0, 1, 4]
    assert g.binding_counter.tolist() == [2, 2, 1, 1, 2]
    assert g.flame_param["static_offset"].shape == (1, 9, 3)
    np.testing.assert_array_equal(g._features_rest[:, 14, 2].detach().numpy(), arr["f_rest_44"])
    g.select_mesh_by_timestep(4)
    assert torch.isfinite(g.get_xyz).all()
    motion = tmp_path / "motion.npz"
    np.savez(str(motion), expr=np.ones((2, 3), np.float32), rotation=np.zeros((2, 3), np.float32),
             neck_pose=np.zeros((2, 3), np.float32), jaw_pose=np.zeros((2, 3), np.float32),
             eyes_pose=np.zeros((2, 6), np.float32), translation=np.zeros((2, 3), np.float32))
    shape_before = g.flame_param["shape"].clone()
    g.load_ply(str(folder / "point_cloud.ply"), motion_path=str(motion))
    assert g.num_timesteps == 2 and torch.equal(g.flame_param["shape"], shape_before)
    assert float(g.flame_param["expr"].min()) == 1.0
    # errors name the file and the field
    bad = arr.copy()
    bad["binding_0"][0] = 99
    PlyData([PlyElement.describe(bad, "vertex")]).write(str(folder / "bad.ply"))
    with pytest.raises(ValueError, match="bad.ply.*triangle 99"):
        g.load_ply(str(folder / "bad.ply"))
    plain = np.empty(n, dtype=[(name, "f4") for name in names[:-1]])
    PlyData([PlyElement.describe(plain, "vertex")]).write(str(folder / "plain.ply"))
    with pytest.raises(ValueError, match="binding_0"):
        g.load_ply(str(folder / "plain.ply"))
    np.savez(str(tmp_path / "broken.npz"), expr=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="broken.npz.*rotation"):
        g.load_motion(str(tmp_path / "broken.npz"))


def test_capture_restore_weights_only(tmp_path):
    g = make_model()
    randomize(g)
    opt = setup_training(g)
    step(g)
    idx = torch.tensor([1, 4])
    g.densification_postfix({n: getattr(g, a)[idx].detach() for n, a in SPLAT_PARAM_GROUPS.items()}, idx)
    step(g)
    path = tmp_path / "chkpnt10.pth"
    torch.save((g.capture(), 10), str(path))
    state, it = torch.load(str(path), weights_only=True)
    h = FlameGaussianModel(3, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    h.restore(state, opt)
    assert torch.equal(h.binding, g.binding) and torch.equal(h.binding_counter, g.binding_counter)
    for k in FLAME_PARAM_KEYS:
        assert torch.equal(h.flame_param[k].detach(), g.flame_param[k].detach())
        assert torch.equal(h.flame_param_orig[k], g.flame_param_orig[k])
    step(g)
    step(h)
    for attr in SPLAT_PARAM_GROUPS.values():
        assert torch.equal(getattr(g, attr), getattr(h, attr))
    assert torch.equal(g.flame_param["translation"].detach(), h.flame_param["translation"].detach())
    # a checkpoint from a fine-tuning run does not silently load into a frozen-FLAME setup
    frozen = FlameGaussianModel(3, not_finetune_flame_params=True, n_shape=4, n_expr=3, flame_model=TinyFlame(), device="cpu")
    with pytest.raises(ValueError, match="optimizer"):
        frozen.restore(state, opt)


def test_regularisers():
    g = make_model()
    with torch.no_grad():
        g._xyz.zero_()
        g._xyz[0] = torch.tensor([3.0, 4.0, 0.0])  # |mu| = 5
        g._scaling.fill_(np.log(0.5))
        g._scaling[1] = torch.tensor(np.log([1.6, 0.6, 0.6]), dtype=torch.float32)
    F = g.num_faces
    assert g.compute_xyz_loss(1.0).item() == pytest.approx(4.0 / F)
    mask = torch.zeros(F, dtype=torch.bool)
    mask[:2] = True
    assert g.compute_xyz_loss(1.0, mask=mask).item() == pytest.approx(2.0)
    k0 = g.face_scaling[0, 0].item()
    expect_metric = np.linalg.norm(np.maximum(np.array([3.0, 4.0, 0.0]) * k0 - 1.0, 0.0)) / F
    assert g.compute_xyz_loss(1.0, metric=True).item() == pytest.approx(expect_metric, rel=1e-5)
    assert g.compute_scale_loss(0.6).item() == pytest.approx(1.0 / F, rel=1e-5)
    world = g.get_scaling.detach().numpy()
    assert g.compute_scale_loss(0.6, metric=True).item() == pytest.approx(
        np.linalg.norm(np.maximum(world - 0.6, 0), axis=1).mean(), rel=1e-5)
    # dynamic offsets
    with torch.no_grad():
        g.flame_param["dynamic_offset"][1, 0] = torch.tensor([0.0, 3.0, 4.0])
    assert g.compute_dynamic_offset_loss().item() == pytest.approx(5.0 / 9)
    assert g.compute_dynamic_offset_std_loss().item() > 0
    # Laplacian: TinyFlame has none -> clear error; with one attached, L @ offset
    with pytest.raises(RuntimeError, match="lambda_laplacian"):
        g.compute_laplacian_loss()
    L = torch.eye(9) - torch.full((9, 9), 1 / 9)
    g.flame_model.laplacian_matrix = L
    off = g.flame_param["dynamic_offset"][1]
    assert g.compute_laplacian_loss().item() == pytest.approx(((L @ off) ** 2).sum(-1).mean().item(), rel=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("flame_model.procedural") is None, reason="procedural FLAME head not available")
def test_procedural_flame_head(tmp_path):
    """End to end on the procedural FLAME head: bind, pose, densify, save, load."""
    out = tmp_path / "flame"
    subprocess.run([sys.executable, "-m", "flame_model.procedural", "--out", str(out)], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    g = FlameGaussianModel(1, n_shape=10, n_expr=10, flame_model_path=str(out / "flame2023.pkl"),
                           flame_masks_path=str(out / "FLAME_masks.pkl"), device="cpu")
    V = g.num_verts
    meshes = {t: {"shape": np.zeros(300, np.float32), "expr": 0.3 * np.ones((1, 100), np.float32),
                  "rotation": np.array([[0.0, 0.2 * t, 0.0]], np.float32), "neck_pose": np.zeros((1, 3), np.float32),
                  "jaw_pose": np.array([[0.1, 0, 0]], np.float32), "eyes_pose": np.zeros((1, 6), np.float32),
                  "translation": np.zeros((1, 3), np.float32), "static_offset": np.zeros((1, 5023, 3), np.float32)}
              for t in range(2)}
    g.load_meshes(meshes, {}, {}, {})
    g.create_from_pcd(None, 1.0)
    assert g.num_points == g.num_faces and g.flame_param["static_offset"].shape == (1, V, 3)
    g.select_mesh_by_timestep(1)
    c_ref, R_ref, k_ref = numpy_frames(g.verts[0].detach().numpy(), g.faces.numpy())
    ok = k_ref > 1e-6
    np.testing.assert_allclose(g.get_xyz.detach().numpy()[ok], c_ref[ok], atol=1e-5)
    setup_training(g)
    g.xyz_gradient_accum[:] = 1.0
    g.denom[:] = 1.0
    g.densify_and_prune(0.5, 0.005, 1.0, None)
    assert torch.equal(torch.bincount(g.binding, minlength=g.num_faces), g.binding_counter)
    assert int(g.binding_counter.min()) >= 1
    g.save_ply(str(tmp_path / "m" / "point_cloud.ply"))
    h = FlameGaussianModel(1, n_shape=10, n_expr=10, flame_model_path=str(out / "flame2023.pkl"),
                           flame_masks_path=str(out / "FLAME_masks.pkl"), device="cpu")
    h.load_ply(str(tmp_path / "m" / "point_cloud.ply"))
    h.select_mesh_by_timestep(1)
    np.testing.assert_allclose(h.get_xyz.detach().numpy(), g.get_xyz.detach().numpy(), atol=1e-5)


@pytest.mark.cuda
def test_per_iteration_path_has_no_host_sync():
    """select_mesh_by_timestep, the world getters, the regularisers and the densification
    statistics run without a device-to-host synchronisation."""
    g = make_model(device="cuda")
    setup_training(g)
    vis = torch.ones(g.num_points, dtype=torch.bool, device="cuda")
    radii = torch.full((g.num_points,), 3, dtype=torch.int32, device="cuda")
    means2d = torch.zeros(g.num_points, 3, device="cuda", requires_grad=True)
    (means2d * 2).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        g.select_mesh_by_timestep(1)
        loss = g.get_xyz.sum() + g.get_scaling.sum() + g.get_rotation.sum()
        loss = loss + g.compute_xyz_loss(1.0, mask=vis) + g.compute_scale_loss(0.6, metric=True, mask=vis)
        g.add_densification_stats(means2d, vis)
        g.update_max_radii2D(radii, vis)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


def test_split_offsets_original_adds_world_scale_samples_to_the_local_position():
    """--split_offsets original: child = parent local position + R_local N(0, world scale), so in
    the triangle frame the children spread by the world scale (k_t times the local one)."""
    torch.manual_seed(2)
    g = make_model()
    g.percent_dense = 0.01
    g.split_offsets = "original"
    M = 3000
    idx = torch.zeros(M, dtype=torch.long)
    q = torch.tensor([0.8, 0.3, -0.4, 0.2])
    local_scale = torch.tensor([0.5, 0.2, 0.1])
    with torch.no_grad():
        g._scaling[0] = torch.log(local_scale)
        g._rotation[0] = q
        g._xyz[0] = torch.tensor([0.1, -0.2, 0.3])
    g.densification_postfix({n: getattr(g, a)[idx].detach() for n, a in SPLAT_PARAM_GROUPS.items()}, idx)
    parent_local = g._xyz[0].detach().clone()
    k = float(g.face_scaling[0, 0])
    grads = torch.zeros(g.num_points, 1)
    grads[g.binding == 0] = 1.0
    g.densify_and_split(grads, 0.5, scene_extent=1e-3)
    offsets = (g._xyz[g.binding == 0].detach() - parent_local).double()
    R = build_rotation(q[None])[0].double()
    L = R @ torch.diag(local_scale.double() * k)          # world-scale std in the local frame
    cov_expected = (L @ L.T).numpy()
    cov = np.cov(offsets.numpy().T)
    assert np.abs(cov - cov_expected).max() < 0.08 * np.abs(cov_expected).max()
    # the scale of the children is the same under both rules: local scale / (0.8 N)
    np.testing.assert_allclose(g.scaling_activation(g._scaling[g.binding == 0]).detach().numpy(),
                               (local_scale / 1.6).expand(2 * (M + 1), 3).numpy(), rtol=1e-5)


def test_prune_keep_all_keeps_every_marked_splat_of_a_triangle_that_would_empty():
    g = make_model()
    setup_training(g)
    g.prune_keep = "all"
    idx = torch.arange(g.num_faces).repeat(2)           # 3 splats per face
    new = {name: getattr(g, attr)[idx].detach().clone() for name, attr in SPLAT_PARAM_GROUPS.items()}
    g.densification_postfix(new, idx)
    mask = (g.binding == 0) | (g.binding == 2)            # every splat of faces 0 and 2 ...
    mask |= (g.binding == 1) & (torch.arange(g.num_points) == (g.binding == 1).nonzero()[0, 0])  # ... and one of face 1
    g.prune_points(mask)
    assert g.binding_counter.tolist() == [3, 2, 3, 3, 3]
    assert torch.equal(torch.bincount(g.binding, minlength=g.num_faces), g.binding_counter)


def test_split_and_prune_rules_are_validated():
    from arguments import OptimizationParams

    with pytest.raises(ValueError, match="--split_offsets"):
        OptimizationParams(split_offsets="world").validate()
    with pytest.raises(ValueError, match="--prune_keep"):
        OptimizationParams(prune_keep="none").validate()
    OptimizationParams(split_offsets="original", prune_keep="all").validate()
