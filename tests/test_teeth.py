"""Teeth: the release's construction (SPEC 3) held to its stated facts on the procedural head and on
the 5023-vertex FLAME topology; the earlier construction still available behind ``teeth_style``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_model.flame import FlameHead
from flame_model.teeth import (FLAME_LIP_RINGS, FLAME_NUM_VERTS, LipRings, N_COLUMNS, build_teeth,
                               original_teeth_faces)

# row blocks of 15 in the release's vertex order (SPEC 3)
BLOCKS = ["upper_root", "lower_root", "upper_edge", "lower_edge",
          "upper_root_back", "upper_edge_back", "lower_root_back", "lower_edge_back"]


# the procedural head and its FLAME model, shared with test_flame.py
from test_flame import assets, flame  # noqa: E402,F401


def zero_params(B=1):
    z = lambda n: torch.zeros(B, n)  # noqa: E731
    return dict(shape=torch.zeros(300), expr=z(100), rotation=z(3), neck=z(3), jaw=z(3), eyes=z(6),
                translation=z(3))


def expected_rows(upper: np.ndarray, lower: np.ndarray) -> dict:
    """The 8 rows of 15 positions, written out from the stated facts one row at a time."""
    d = np.mean([np.linalg.norm(u - l) for u, l in zip(upper, lower)])
    mid = (upper + lower) / 2
    mid[:, 1] = mid[:, 1].mean()
    mid[:, 2] = mid[:, 2] - 1.5 * d
    y, z = np.array([0, d, 0]), np.array([0, 0, d])
    rows = {"upper_edge": mid + 0.1 * y, "lower_edge": mid - 0.1 * y - 0.4 * z}
    rows["upper_root"] = rows["upper_edge"] + 2 * y
    rows["lower_root"] = rows["lower_edge"] - 2 * y
    for name in ("upper_root", "upper_edge", "lower_root", "lower_edge"):
        rows[name + "_back"] = rows[name] - z
    return rows


def test_faces_follow_the_release_layout():
    off = 1000
    f = original_teeth_faces(off)
    assert f.shape == (168, 3) and f.min() == off and f.max() == off + 119
    block, col = (f - off) // N_COLUMNS, (f - off) % N_COLUMNS
    upper = {0, 2, 4, 5}
    assert all(set(b) <= upper for b in block[:84]) and all(not set(b) & upper for b in block[84:])
    strips = [("upper_root", "upper_edge"), ("upper_root_back", "upper_edge_back"),
              ("upper_edge_back", "upper_edge"), ("lower_edge", "lower_root"),
              ("lower_root_back", "lower_edge_back"), ("lower_edge_back", "lower_edge")]
    for s, (a, b) in enumerate(strips):
        tri_blocks = block[28 * s:28 * (s + 1)]
        tri_cols = col[28 * s:28 * (s + 1)]
        assert set(tri_blocks.ravel()) == {BLOCKS.index(a), BLOCKS.index(b)}
        for q in range(14):                       # quad q: two triangles over columns q, q+1
            cols = tri_cols[2 * q:2 * q + 2]
            assert set(cols.ravel()) == {q, q + 1}
            verts = set((tri_blocks[2 * q:2 * q + 2] * 100 + cols).ravel())
            assert len(verts) == 4                # the two triangles cover the quad's 4 corners
        # the split diagonal mirrors about the middle column: the edge both triangles of quad q share
        # is the mirror image (column c -> 14 - c) of the one quad 13 - q shares
        diag = []
        for q in range(14):
            t0 = set(zip(tri_blocks[2 * q], tri_cols[2 * q]))
            t1 = set(zip(tri_blocks[2 * q + 1], tri_cols[2 * q + 1]))
            diag.append(tuple(sorted(t0 & t1)))
        for q in range(7):
            (pa, pb), (ma, mb) = diag[q], diag[13 - q]
            # mirrored columns: c -> 14 - c; the shared edge of quad 13-q is the mirror of quad q's
            assert {(pa[0], 14 - pa[1]), (pb[0], 14 - pb[1])} == {ma, mb}


def test_positions_follow_the_outer_lip_rings(flame):
    td = flame.teeth
    v = flame.v_template.numpy().astype(np.float64)[:flame.num_verts_flame]
    ring_u, ring_l = td.rings.outer_upper, td.rings.outer_lower
    pick = np.round(np.linspace(0, len(ring_u) - 1, N_COLUMNS)).astype(int)   # 15 evenly along the ring
    rows = expected_rows(v[ring_u[pick]], v[ring_l[pick]])
    got = flame.v_template.numpy()[flame.num_verts_flame:].reshape(8, N_COLUMNS, 3)
    for k, name in enumerate(BLOCKS):
        np.testing.assert_allclose(got[k], rows[name], atol=1e-6, err_msg=name)
    # ring order runs from the subject's left (+x) to the right
    assert np.all(np.diff(got[0, :, 0]) < 0)


def test_no_expression_response_and_mean_shape_blend(flame):
    teeth = slice(flame.num_verts_flame, None)
    p = zero_params()
    v0, _ = flame(**p)
    g = torch.Generator().manual_seed(0)
    p["expr"] = torch.randn(1, 100, generator=g) * 2.0
    v1, _ = flame(**p)
    assert (v1[0, :flame.num_verts_flame] - v0[0, :flame.num_verts_flame]).abs().max() > 1e-3  # the face moves
    torch.testing.assert_close(v1[0, teeth], v0[0, teeth], atol=1e-7, rtol=0)               # the teeth do not
    # identity: each column moves by the mean of its two ring vertices' identity displacement
    p = zero_params()
    p["shape"] = torch.randn(300, generator=g)
    v2, _ = flame(**p)
    ring_u, ring_l = flame.teeth.rings.outer_upper, flame.teeth.rings.outer_lower
    pick = np.round(np.linspace(0, len(ring_u) - 1, N_COLUMNS)).astype(int)
    sd = flame.shapedirs[..., :300].double()
    disp = torch.einsum("vck,k->vc", sd, p["shape"].double())
    col = 0.5 * (disp[ring_u[pick]] + disp[ring_l[pick]])
    got = (v2[0, teeth] - v0[0, teeth]).double().reshape(8, N_COLUMNS, 3)
    for k in range(8):
        torch.testing.assert_close(got[k], col, atol=1e-6, rtol=1e-4)


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), x.double())


def test_teeth_move_rigidly_upper_with_neck_lower_with_jaw(flame):
    V = flame.num_verts_flame
    up = torch.as_tensor(flame.teeth.upper)
    lo = torch.as_tensor(flame.teeth.lower)
    p = zero_params()
    p["shape"] = torch.randn(300, generator=torch.Generator().manual_seed(1)) * 0.5
    v0, _ = flame(**p)
    pj = dict(p, jaw=torch.tensor([[0.3, 0.05, 0.02]]))
    vj, _ = flame(**pj)
    torch.testing.assert_close(vj[0, up], v0[0, up], atol=1e-6, rtol=0)           # jaw leaves the upper row
    assert (vj[0, lo] - v0[0, lo]).norm(dim=1).min() > 1e-3                         # and moves the lower one
    torch.testing.assert_close(_pairwise(vj[0, lo]), _pairwise(v0[0, lo]), atol=1e-6, rtol=0)
    pn = dict(pj, neck=torch.tensor([[0.2, -0.3, 0.1]]), rotation=torch.tensor([[0.1, 0.2, -0.1]]))
    vn, _ = flame(**pn)
    for ids in (up, lo):
        torch.testing.assert_close(_pairwise(vn[0, ids]), _pairwise(v0[0, ids]), atol=1e-6, rtol=0)
    assert flame.posedirs.view(-1, flame.num_verts, 3)[:, V:].abs().max() == 0
    assert flame.J_regressor[:, V:].abs().max() == 0


def test_flame_topology_uses_the_published_rings_in_order():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((FLAME_NUM_VERTS, 3)) * 0.05
    shapedirs = rng.standard_normal((FLAME_NUM_VERTS, 3, 8))
    td = build_teeth(v, np.zeros((0, 3), np.int64), shapedirs, np.zeros((FLAME_NUM_VERTS, 3, 36)), 5, {}, 5)
    up = np.asarray(FLAME_LIP_RINGS["lip_outer_ring_upper"])
    lo = np.asarray(FLAME_LIP_RINGS["lip_outer_ring_lower"])
    rows = expected_rows(v[up], v[lo])
    for k, name in enumerate(BLOCKS):
        np.testing.assert_allclose(td.verts.reshape(8, N_COLUMNS, 3)[k], rows[name], atol=1e-12)
    # identity blend shapes: the ring pairs' mean; expression components zero
    np.testing.assert_allclose(td.shapedirs[:N_COLUMNS, :, :5], 0.5 * (shapedirs[up, :, :5] + shapedirs[lo, :, :5]))
    assert np.all(td.shapedirs[:, :, 5:] == 0)
    assert np.array_equal(td.faces, original_teeth_faces(FLAME_NUM_VERTS))
    # FLAME texture-space UVs: one u per column (0.62 -> 0.38), one v per row block
    uv = td.uvs.reshape(8, N_COLUMNS, 2)
    np.testing.assert_allclose(uv[0, :, 0], np.linspace(0.62, 0.38, N_COLUMNS))
    assert np.all(uv[:, :, 1] == uv[:, :1, 1])


def test_ring_fit_teeth_stay_behind_a_flag(assets):
    head = FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl",
                     flame_masks_path=assets / "FLAME_masks.pkl", teeth_style="ring_fit")
    assert head.teeth_style == "ring_fit" and head.num_verts == head.num_verts_flame + 120
    assert head.faces.shape[0] == head.num_faces_flame + 168
    p = zero_params()
    v0, _ = head(**p)
    p["expr"] = torch.randn(1, 100, generator=torch.Generator().manual_seed(0)) * 2.0
    v1, _ = head(**p)
    assert (v1[0, head.num_verts_flame:] - v0[0, head.num_verts_flame:]).abs().max() > 1e-5
    with pytest.raises(ValueError, match="unknown teeth style"):
        FlameHead(300, 100, flame_model_path=assets / "flame2023.pkl", teeth_style="wax")


def test_lip_rings_given_explicitly_are_used_as_columns():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 3))
    rings = LipRings(np.arange(15), np.arange(15, 30), np.arange(15), np.arange(15, 30))
    td = build_teeth(v, np.zeros((0, 3), np.int64), np.zeros((40, 3, 4)), np.zeros((40, 3, 36)), 5, {}, 2,
                     rings=rings)
    rows = expected_rows(v[:15], v[15:30])
    np.testing.assert_allclose(td.verts[:15], rows["upper_root"], atol=1e-12)
