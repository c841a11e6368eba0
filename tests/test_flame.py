"""FLAME head model tests on the procedural stand-in head (CPU, fast).

The reference LBS here is our own float64 NumPy code written differently from flame_model.lbs:
per-joint rigid motions of points relative to the rest joints (``R_g (v - J) + t_g``), blended by
the weights, with scipy's rotation-vector conversion.
"""
from __future__ import annotations

import copy
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from flame_model.flame import FlameHead
from flame_model.lbs import axis_angle_to_matrix
from flame_model.loader import FlameAssetError, UnsafePickleError, load_flame_arrays, load_pickle_dict
from flame_model.mesh_utils import boundary_loops
from flame_model.obj_io import read_obj, write_obj
from flame_model.procedural import generate, write_assets
from flame_model.teeth import find_lip_rings

FLAME_REGIONS = ["face", "neck", "scalp", "boundary", "right_eyeball", "left_eyeball", "right_ear",
                 "left_ear", "forehead", "eye_region", "nose", "lips", "right_eye_region", "left_eye_region"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("proc_head")
    write_assets(out, seed=3, with_texture=False)
    return out


@pytest.fixture(scope="module")
def flame(assets):
    return FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl",
                     flame_masks_path=assets / "FLAME_masks.pkl")


@pytest.fixture(scope="module")
def raw(assets):
    with open(assets / "flame2023.pkl", "rb") as fh:
        return pickle.load(fh)  # our own freshly written file: trusted here


def zero_params(B=1, dtype=torch.float32):
    z = lambda n: torch.zeros(B, n, dtype=dtype)  # noqa: E731
    return dict(shape=torch.zeros(300, dtype=dtype), expr=z(100), rotation=z(3), neck=z(3), jaw=z(3),
                eyes=z(6), translation=z(3))


def numpy_flame(raw, shape, expr, pose, trans, static_offset=None):
    """Reference FLAME in float64 NumPy. pose: (5, 3) axis-angle for joints 0..4."""
    v_t = np.asarray(raw["v_template"], np.float64)
    sd = np.asarray(raw["shapedirs"], np.float64)
    beta = np.zeros(sd.shape[2])
    beta[:len(shape)] = shape
    beta[300:300 + len(expr)] = expr
    v_shaped = v_t + np.einsum("vck,k->vc", sd, beta)
    if static_offset is not None:
        v_shaped = v_shaped + static_offset
    Jreg = raw["J_regressor"].toarray() if scipy.sparse.issparse(raw["J_regressor"]) else raw["J_regressor"]
    J = Jreg @ v_shaped
    Rs = Rotation.from_rotvec(pose).as_matrix()
    feat = np.concatenate([(Rs[j] - np.eye(3)).reshape(-1) for j in range(1, 5)])
    v_posed = v_shaped + np.asarray(raw["posedirs"], np.float64) @ feat
    parents = [int(p) if p < 5 else -1 for p in raw["kintree_table"][0]]
    Rg, tg = [None] * 5, [None] * 5
    for j in range(5):
        p = parents[j]
        if p < 0:
            Rg[j], tg[j] = Rs[j], J[j]
        else:
            Rg[j] = Rg[p] @ Rs[j]
            tg[j] = tg[p] + Rg[p] @ (J[j] - J[p])
    W = np.asarray(raw["weights"], np.float64)
    out = np.zeros_like(v_posed)
    for j in range(5):
        out += W[:, j:j + 1] * ((v_posed - J[j]) @ Rg[j].T + tg[j])
    return out + trans, v_shaped


def test_files_have_the_flame_layout(raw):
    V = raw["v_template"].shape[0]
    assert 3000 <= V <= 6500 and raw["f"].shape[1] == 3
    assert raw["shapedirs"].shape == (V, 3, 400) and raw["posedirs"].shape == (V, 3, 36)
    assert scipy.sparse.issparse(raw["J_regressor"]) and raw["J_regressor"].shape == (5, V)
    assert raw["weights"].shape == (V, 5)
    np.testing.assert_allclose(raw["weights"].sum(1), 1.0, atol=1e-9)
    assert raw["kintree_table"].tolist() == [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]
    v = raw["v_template"]
    assert 0.18 < v[:, 1].max() - v[:, 1].min() < 0.4          # metres, y up
    nose_tip = v[np.argmax(v[:, 2])]
    assert abs(nose_tip[0]) < 1e-3 and nose_tip[2] > 0.08      # face towards +z
    assert boundary_loops(raw["f"]) == []                       # closed


def test_lbs_matches_numpy_reference(assets, raw):
    flame = FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl",
                      flame_masks_path=assets / "FLAME_masks.pkl", add_teeth=False)
    g = torch.Generator().manual_seed(0)
    B = 2
    shape = torch.randn(300, generator=g)
    expr = torch.randn(B, 100, generator=g)
    pose = torch.randn(B, 5, 3, generator=g) * 0.35
    trans = torch.randn(B, 3, generator=g) * 0.05
    static = torch.randn(1, flame.num_verts, 3, generator=g) * 0.002
    verts, cano = flame(shape, expr, pose[:, 0], pose[:, 1], pose[:, 2], pose[:, 3:].reshape(B, 6), trans,
                        static_offset=static)
    for b in range(B):
        ref, ref_cano = numpy_flame(raw, shape.numpy(), expr[b].numpy(), pose[b].numpy(), trans[b].numpy(),
                                    static[0].numpy())
        np.testing.assert_allclose(verts[b].numpy(), ref, atol=1e-5)
        np.testing.assert_allclose(cano[b].numpy(), ref_cano, atol=1e-5)


def test_teeth_do_not_change_the_head(flame, assets):
    plain = FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl",
                      flame_masks_path=assets / "FLAME_masks.pkl", add_teeth=False)
    p = zero_params(1)
    p["jaw"][0, 0] = 0.3
    p["expr"][0, :5] = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5])
    a, _ = flame(**p)
    b, _ = plain(**p)
    assert flame.num_verts == plain.num_verts + 120
    assert flame.faces.shape[0] == plain.faces.shape[0] + 168
    torch.testing.assert_close(a[:, :plain.num_verts], b, atol=1e-6, rtol=0)


def test_rodrigues_matches_scipy_and_is_smooth_at_zero():
    r = torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 3e-6], [0.3, -1.2, 0.5], [3.0, 0.1, -0.2]], dtype=torch.float64)
    np.testing.assert_allclose(axis_angle_to_matrix(r).numpy(), Rotation.from_rotvec(r.numpy()).as_matrix(),
                               atol=1e-12)
    x = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (x,))
    y = torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (y,))


@pytest.mark.parametrize("at_zero", [True, False])
def test_gradients_match_finite_differences(flame, at_zero):
    model = copy.deepcopy(flame).double()
    sel = torch.cat([flame.mask.get_vid("lower_teeth")[:5], flame.mask.get_vid("left_eyeball")[:5],
                     torch.arange(0, flame.num_verts, 400)])
    g = torch.Generator().manual_seed(1)
    scale = 0.0 if at_zero else 0.3
    inputs = [torch.randn(1, 4, generator=g, dtype=torch.float64),         # shape subset
              torch.randn(1, 4, generator=g, dtype=torch.float64),         # expr subset
              scale * torch.randn(1, 3, generator=g, dtype=torch.float64),  # rotation
              scale * torch.randn(1, 3, generator=g, dtype=torch.float64),  # neck
              scale * torch.randn(1, 3, generator=g, dtype=torch.float64),  # jaw
              scale * torch.randn(1, 6, generator=g, dtype=torch.float64),  # eyes
              torch.randn(1, 3, generator=g, dtype=torch.float64) * 0.01,
              torch.randn(1, len(sel), 3, generator=g, dtype=torch.float64) * 0.001]  # dynamic offset rows
    inputs = [t.requires_grad_() for t in inputs]

    def fn(shape, expr, rot, neck, jaw, eyes, trans, dyn_rows):
        dyn = torch.zeros(1, model.num_verts, 3, dtype=torch.float64).index_put((torch.zeros_like(sel), sel),
                                                                                dyn_rows[0])
        v, _ = model(shape[0], expr, rot, neck, jaw, eyes, trans, dynamic_offset=dyn)
        return v[:, sel]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_static_offset_without_teeth_rows_is_zero_padded(flame):
    p = zero_params(1)
    off = torch.zeros(1, flame.num_verts_flame, 3)
    off[0, :, 1] = 0.01
    v_off, cano_off = flame(**p, static_offset=off)
    v0, cano0 = flame(**p)
    d = (cano_off - cano0)[0]
    torch.testing.assert_close(d[:flame.num_verts_flame, 1], torch.full((flame.num_verts_flame,), 0.01))
    assert torch.all(d[flame.num_verts_flame:] == 0)
    with pytest.raises(ValueError, match="static_offset"):
        flame(**p, static_offset=torch.zeros(1, flame.num_verts + 1, 3))


class _MarkerAction:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def test_chumpy_pickle_loads_without_chumpy(assets, raw, tmp_path, monkeypatch):
    class Ch:  # throwaway stand-in for chumpy.ch.Ch: keeps its value in __dict__['x']
        def __init__(self, x):
            self.x = np.asarray(x)
            self._cache = {"junk": 1}
    mod_pkg, mod_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod_ch.Ch = Ch
    mod_pkg.ch = mod_ch
    monkeypatch.setitem(sys.modules, "chumpy", mod_pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod_ch)
    data = dict(raw)
    for key in ("v_template", "shapedirs", "posedirs", "weights"):
        data[key] = Ch(raw[key])
    path = tmp_path / "chumpy_model.pkl"
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    assert b"chumpy" in path.read_bytes()
    arrays = load_flame_arrays(path)
    np.testing.assert_array_equal(arrays["shapedirs"], raw["shapedirs"].astype(np.float64))
    np.testing.assert_array_equal(arrays["J_regressor"], raw["J_regressor"].toarray())
    np.testing.assert_array_equal(arrays["kintree_table"], raw["kintree_table"])
    head = FlameHead(300, 100, flame_model_path=path, flame_masks_path=assets / "FLAME_masks.pkl", add_teeth=False)
    torch.testing.assert_close(head.v_template, torch.from_numpy(raw["v_template"]).float())


def test_pickle_naming_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"v_template": _MarkerAction(marker)}, fh, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        load_pickle_dict(path)
    with pytest.raises(UnsafePickleError):
        FlameHead(flame_model_path=path, add_teeth=False)
    assert not marker.exists()


def test_missing_model_explains_where_to_get_it(tmp_path):
    with pytest.raises(FlameAssetError) as err:
        FlameHead(flame_model_path=tmp_path / "nope" / "flame2023.pkl")
    msg = str(err.value)
    assert "https://flame.is.tue.mpg.de/download.php" in msg
    assert "flame_model/assets/flame" in msg and "python -m flame_model.procedural --out" in msg


def test_env_var_selects_the_model(assets, monkeypatch):
    monkeypatch.setenv("FLAME_MODEL_PATH", str(assets / "flame2023.pkl"))
    monkeypatch.setenv("FLAME_MASKS_PATH", str(assets / "FLAME_masks.pkl"))
    head = FlameHead(10, 5)
    assert head.model_path == assets / "flame2023.pkl" and head.shapedirs.shape[2] == 15


def test_masks_regions(flame):
    names = set(flame.mask.names)
    assert set(FLAME_REGIONS) <= names
    assert {"teeth", "upper_teeth", "lower_teeth", "eyeballs", "lips"} <= names
    assert len(flame.mask.get_vid("teeth")) == 120 and len(flame.mask.get_fid("teeth")) == 168
    faces = flame.faces
    for name in ("lips", "left_eyeball", "face", "teeth"):
        vid, fid = flame.mask.get_vid(name), flame.mask.get_fid(name)
        inside = torch.zeros(flame.num_verts, dtype=torch.bool)
        inside[vid] = True
        expected = torch.nonzero(inside[faces].all(1)).reshape(-1)
        assert torch.equal(fid, expected) and len(fid) > 0
    both = flame.mask.get_vid(["left_eyeball", "right_eyeball"])
    assert torch.equal(both, flame.mask.get_vid("eyeballs"))
    with pytest.raises(KeyError, match="unknown FLAME region"):
        flame.mask.get_vid("tail")


def _displacement(flame, **pose):
    p = zero_params(1)
    for k, v in pose.items():
        p[k] = torch.tensor([v], dtype=torch.float32)
    v0, _ = flame(**zero_params(1))
    v1, _ = flame(**p)
    return (v1 - v0)[0].norm(dim=-1)


def test_jaw_moves_lower_teeth_and_chin_not_forehead(flame):
    d = _displacement(flame, jaw=[0.3, 0.0, 0.0])
    assert d[flame.mask.get_vid("lower_teeth")].min() > 0.005
    assert d[flame.mask.get_vid("upper_teeth")].max() < 1e-7
    assert d[flame.mask.get_vid("forehead")].max() < 1e-7
    assert d[flame.mask.get_vid("lip_inner_ring_lower")].mean() > 0.01
    v = flame.v_template
    face = flame.mask.get_vid("face")
    chin = face[torch.argmin(v[face, 1])]
    assert d[chin] > 0.005


def test_eye_rotation_moves_only_eyeballs(flame):
    d = _displacement(flame, eyes=[0.0, 0.4, 0.0, 0.1, -0.3, 0.0])
    eyes = flame.mask.vertex_mask("eyeballs")
    assert d[eyes].min() > 0 and d[~eyes].max() < 1e-7
    d_left = _displacement(flame, eyes=[0.0, 0.4, 0.0, 0.0, 0.0, 0.0])
    assert d_left[flame.mask.get_vid("right_eyeball")].max() < 1e-7
    assert d_left[flame.mask.get_vid("left_eyeball")].max() > 1e-3
    assert flame.v_template[flame.mask.get_vid("left_eyeball"), 0].mean() > 0  # left eye at +x (FLAME)


def _covered(points_xy, tri_xy):
    """For each 2-D point, whether it lies in some triangle (vectorised barycentric test)."""
    a, b, c = tri_xy[:, 0], tri_xy[:, 1], tri_xy[:, 2]
    v0, v1 = b - a, c - a
    den = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    den = np.where(np.abs(den) < 1e-18, 1e-18, den)
    out = []
    for p in points_xy:
        w = p - a
        s = (w[:, 0] * v1[:, 1] - w[:, 1] * v1[:, 0]) / den
        t = (v0[:, 0] * w[:, 1] - v0[:, 1] * w[:, 0]) / den
        inside = (s >= 0) & (t >= 0) & (s + t <= 1)
        out.append(inside)
    return np.stack(out)          # (P, F)


@pytest.mark.parametrize("jaw", [0.0, 0.25, 0.5])
def test_teeth_stay_inside_the_mouth(flame, jaw):
    p = zero_params(1)
    p["jaw"][0, 0] = jaw
    v, _ = flame(**p)
    v = v[0].numpy()
    faces = flame.faces.numpy()
    teeth = set(flame.mask.get_vid("teeth").tolist())
    head_faces = faces[~np.isin(faces, list(teeth)).any(1)]
    for part, ring in (("upper_teeth", "lip_inner_ring_upper"), ("lower_teeth", "lip_inner_ring_lower")):
        tid = flame.mask.get_vid(part).numpy()
        rid = flame.mask.get_vid(ring).numpy()
        # behind the lips: behind the lip ring vertex closest in x, and within the mouth corners
        nearest = rid[np.argmin(np.abs(v[tid, None, 0] - v[None, rid, 0]), axis=1)]
        assert np.all(v[tid, 2] < v[nearest, 2] - 1e-3), part
        ring_all = flame.mask.get_vid(["lip_inner_ring_upper", "lip_inner_ring_lower"]).numpy()
        assert np.all(np.abs(v[tid, 0]) < np.abs(v[ring_all, 0]).max())
        # inside the head silhouette seen from the front (x, y) and from the side (y, z)
        assert _covered(v[tid][:, [0, 1]], v[head_faces][:, :, [0, 1]]).any(1).all(), part
        assert _covered(v[tid][:, [2, 1]], v[head_faces][:, :, [2, 1]]).any(1).all(), part
    if jaw == 0.0:
        # mouth closed: every tooth vertex is hidden behind the face seen from the front
        tid = flame.mask.get_vid("teeth").numpy()
        tri = v[head_faces]
        cov = _covered(v[tid][:, [0, 1]], tri[:, :, [0, 1]])
        front = tri[:, :, 2].max(1)[None, :] > v[tid, 2][:, None]
        assert (cov & front).any(1).all()


def test_lip_rings_from_geometry_match_the_masks(raw, assets):
    """Fallback path: rings derived from the 'lips' region and the mouth boundary loop."""
    masks = load_pickle_dict(assets / "FLAME_masks.pkl")
    pocket = np.asarray(masks["mouth_interior"])
    faces = raw["f"].astype(np.int64)
    open_faces = faces[~np.isin(faces, pocket).any(1)]
    lips_only = {"lips": np.asarray(masks["lips"])}
    rings = find_lip_rings(raw["v_template"], open_faces, lips_only)
    v = raw["v_template"]
    for got, key in ((rings.inner_upper, "lip_inner_ring_upper"), (rings.inner_lower, "lip_inner_ring_lower")):
        want = np.asarray(masks[key])
        assert set(got.tolist()) == set(want.tolist())
        assert np.all(np.diff(v[got, 0]) < 0)          # ring order: the subject's left (+x) to right


def test_uvs_and_obj_round_trip(flame, assets, tmp_path):
    assert flame.verts_uvs is not None and flame.textures_idx.shape == flame.faces.shape
    assert int(flame.textures_idx.max()) < flame.verts_uvs.shape[0]
    assert float(flame.verts_uvs.min()) >= 0 and float(flame.verts_uvs.max()) <= 1
    mesh = read_obj(assets / "head_template.obj")
    assert mesh.verts.shape[0] == flame.num_verts_flame
    write_obj(tmp_path / "x.obj", mesh.verts, mesh.faces, mesh.verts_uvs, mesh.textures_idx)
    again = read_obj(tmp_path / "x.obj")
    np.testing.assert_allclose(again.verts, mesh.verts, atol=1e-6)
    assert np.array_equal(again.faces, mesh.faces) and np.array_equal(again.textures_idx, mesh.textures_idx)


def test_laplacians(flame):
    L = flame.laplacian("uniform")
    ones = torch.ones(flame.num_verts, 1)
    assert torch.sparse.mm(L, ones).abs().max() < 1e-5
    # cotangent Laplacian of a flat grid annihilates linear functions at interior vertices
    from flame_model.mesh_utils import cotangent_laplacian
    n = 6
    ys, xs = np.mgrid[0:n, 0:n]
    verts = np.stack([xs.ravel() * 0.1, ys.ravel() * 0.13, np.zeros(n * n)], 1)
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            f += [[a, a + 1, a + n + 1], [a, a + n + 1, a + n]]
    Lc = cotangent_laplacian(verts, np.array(f), dtype=torch.float64).to_dense().numpy()
    lin = 2 * verts[:, 0] - 3 * verts[:, 1]
    interior = [(i * n + j) for i in range(1, n - 1) for j in range(1, n - 1)]
    np.testing.assert_allclose((Lc @ lin)[interior], 0, atol=1e-12)


def test_landmarks(flame):
    fi = torch.tensor([0, 10, 200])
    bc = torch.tensor([[1.0, 0, 0], [0.2, 0.3, 0.5], [0, 0, 1.0]])
    flame.set_landmark_embedding(fi, bc)
    p = zero_params(2)
    p["jaw"][1, 0] = 0.2
    v, _, lmk = flame(**p, return_landmarks=True)
    f = flame.faces
    want = (v[:, f[fi]] * bc[None, :, :, None]).sum(2)
    torch.testing.assert_close(lmk, want)
    assert lmk.shape == (2, 3, 3)


def test_procedural_is_deterministic():
    a = generate(seed=5, with_texture=False).model
    b = generate(seed=5, with_texture=False).model
    c = generate(seed=6, with_texture=False).model
    for k in ("v_template", "shapedirs", "posedirs", "weights"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["shapedirs"], c["shapedirs"])


def test_landmark_embedding_files(tmp_path, assets):
    d = {"static_lmk_faces_idx": np.array([3, 4]), "static_lmk_bary_coords": np.array([[0.5, 0.5, 0.0]] * 2),
         "full_lmk_faces_idx": np.array([[1, 2, 3]]), "full_lmk_bary_coords": np.full((1, 3, 3), 1 / 3)}
    np.save(tmp_path / "landmark_embedding.npy", np.array(d, dtype=object), allow_pickle=True)
    head = FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl", add_teeth=False,
                     landmark_embedding_path=tmp_path / "landmark_embedding.npy")
    assert head.lmk_faces_idx.tolist() == [1, 2, 3]
    z = zero_params(1)
    v, _, lmk = head(**z, return_landmarks=True)
    torch.testing.assert_close(lmk[0, 0], v[0, head.faces[1]].mean(0))


def test_teeth_uvs_lie_in_their_rectangle(flame):
    from flame_model.teeth import TEETH_UV_RECT
    fid = flame.mask.get_fid("teeth")
    uv = flame.verts_uvs[flame.textures_idx[fid]].reshape(-1, 2)
    u0, v0, u1, v1 = TEETH_UV_RECT
    assert bool(((uv[:, 0] >= u0) & (uv[:, 0] <= u1) & (uv[:, 1] >= v0) & (uv[:, 1] <= v1)).all())


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_states_and_old_protocols(tmp_path, monkeypatch, protocol):
    class Ch:
        pass
    mod_pkg, mod_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod_ch.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", mod_pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod_ch)
    a, b, c = Ch(), Ch(), Ch()
    a.x = np.arange(6.0).reshape(2, 3)
    b.value = np.ones(4)                    # no 'x': the single array entry is used
    c.note = "no array here"
    J = scipy.sparse.csc_matrix(np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]))
    path = tmp_path / "m.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"a": a, "b": b, "J_regressor": J, "s": "lbs"}, fh, protocol=protocol)
    with open(tmp_path / "bad.pkl", "wb") as fh:
        pickle.dump({"c": c}, fh, protocol=protocol)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    d = load_pickle_dict(path)
    np.testing.assert_array_equal(d["a"], a.x)
    np.testing.assert_array_equal(d["b"], np.ones(4))
    np.testing.assert_array_equal(d["J_regressor"], J.toarray())
    assert d["s"] == "lbs"
    with pytest.raises(pickle.UnpicklingError, match="no value under state key 'x'"):
        load_pickle_dict(tmp_path / "bad.pkl")


def test_flame_topology_uses_the_published_lip_ring_ids():
    from flame_model.teeth import FLAME_LIP_RINGS
    rng = np.random.default_rng(0)
    v = rng.standard_normal((5023, 3))
    rings = find_lip_rings(v, np.zeros((0, 3), dtype=np.int64), {})
    # the published ring order is kept as it is (the teeth columns, and so binding indices, follow it)
    assert rings.inner_upper.tolist() == list(FLAME_LIP_RINGS["lip_inner_ring_upper"])
    assert rings.outer_lower.tolist() == list(FLAME_LIP_RINGS["lip_outer_ring_lower"])
    with pytest.raises(ValueError, match="lip ring keys"):
        find_lip_rings(rng.standard_normal((100, 3)), np.zeros((0, 3), dtype=np.int64), {})
