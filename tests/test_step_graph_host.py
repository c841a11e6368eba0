"""Host-side pieces of training.step_graph (no GPU needed): the camera row layout and the views the
captured render reads, the pair-buffer plan, and the graph signature comparison."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from training.step_graph import CAMERA_ROW, GraphStepCamera, _plan_capacity, _same, camera_row


def _camera(cx=None, cy=None, timestep=3):
    view = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 7.0
    proj = torch.arange(16, 32, dtype=torch.float32).reshape(4, 4) / 3.0
    return SimpleNamespace(world_view_transform=view, full_proj_transform=proj,
                           camera_center=torch.tensor([0.1, -0.2, 2.5]), FoVx=0.61, FoVy=0.47, cx=cx, cy=cy,
                           timestep=timestep, image_name="cam")


def test_camera_row_round_trips_through_the_render_views():
    cam = _camera(cx=401.25, cy=270.5)
    row = camera_row(cam, torch.device("cpu"))
    assert row.dtype == torch.float64 and row.shape == (CAMERA_ROW,)
    view = GraphStepCamera(row, 550, 802)
    assert torch.equal(view.world_view_transform, cam.world_view_transform)  # float32 -> float64 -> float32
    assert torch.equal(view.full_proj_transform, cam.full_proj_transform)
    assert torch.equal(view.camera_center, cam.camera_center)
    # the rasterizer's principal point: the camera's (NeRF convention) moved to integer pixel centres
    assert view.intrinsics.tolist() == [math.tan(0.61 * 0.5), math.tan(0.47 * 0.5), 400.75, 270.0]
    assert view.timestep.dtype == torch.long and view.timestep.tolist() == [3]
    assert (view.image_height, view.image_width) == (550, 802)


def test_camera_row_centred_principal_point_and_bad_matrices():
    row = camera_row(_camera(timestep=None), torch.device("cpu"))
    assert math.isnan(row[37]) and math.isnan(row[38]) and row[39] == 0.0
    bad = _camera()
    bad.full_proj_transform = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="full_proj_transform"):
        camera_row(bad, torch.device("cpu"))


def test_pair_capacity_plan():
    assert _plan_capacity(0) == 1 << 16
    for pairs in (1, 40_000, 65_536, 100_000, 427_218, 3_000_000):
        cap = _plan_capacity(pairs)
        assert cap % (1 << 16) == 0 and cap >= 1.5 * pairs and cap - 1.5 * pairs < (1 << 16) + 1
    assert _plan_capacity(200_000) <= _plan_capacity(200_001)


def test_signature_compares_tensors_by_identity():
    a, b = torch.zeros(2), torch.zeros(2)
    assert _same(((a, b), a, 3, (True,)), ((a, b), a, 3, (True,)))
    assert not _same(((a, b), a, 3), ((a, b.clone()), a, 3))  # equal values, other tensor
    assert not _same(((a,), a, 3), ((a,), a, 4))
    assert not _same(((a,), None), ((a,), a))
    assert not _same(None, ((a,),))
