"""Batched posing of many timesteps (scene.pose_batches, FlameGaussianModel.pose_timesteps):
the same meshes, per-face frames and world-space splats as posing each timestep on its own, on
the procedural FLAME head (teeth, 5 joints, dynamic offsets); the sequence poser's batching."""
import numpy as np
import pytest
import torch

from scene.flame_gaussian_model import FlameGaussianModel, compute_face_orientation
from scene.pose_batches import PosedFrames, SequencePoser

T = 7


def make_avatar(flame_assets, device: str, num_timesteps: int, seed: int) -> FlameGaussianModel:
    """A FLAME-bound model on the procedural head whose timesteps all differ (expression, jaw,
    neck, eyes, rotation, translation and dynamic offsets), with random splats."""
    g = FlameGaussianModel(1, n_shape=20, n_expr=10, flame_model_path=str(flame_assets / "flame2023.pkl"),
                           flame_masks_path=str(flame_assets / "FLAME_masks.pkl"), device=device)
    rng = np.random.default_rng(seed)

    def normal(scale, shape):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    meshes = {t: {"shape": normal(0.5, 300), "expr": normal(0.5, (1, 100)), "rotation": normal(0.2, (1, 3)),
                  "neck_pose": normal(0.1, (1, 3)), "jaw_pose": np.abs(normal(0.2, (1, 3))),
                  "eyes_pose": normal(0.1, (1, 6)), "translation": normal(0.05, (1, 3)),
                  "static_offset": normal(0.002, (1, 5023, 3)), "dynamic_offset": normal(0.002, (1, 5023, 3))}
              for t in range(num_timesteps)}
    g.load_meshes(meshes, {}, {}, {})
    g.create_from_pcd(None, 1.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (g._xyz, g._scaling, g._rotation):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen).to(device))
    return g


@pytest.fixture(scope="module")
def avatar(flame_assets):
    return make_avatar(flame_assets, "cpu", T, seed=1)


def _one_by_one(g, t):
    with torch.no_grad():
        g.select_mesh_by_timestep(t)
        return {"verts": g.verts.clone(), "center": g.face_center.clone(), "R": g.face_orien_mat.clone(),
                "quat": g.face_orien_quat.clone(), "k": g.face_scaling.clone(), "xyz": g.get_xyz.clone(),
                "scaling": g.get_scaling.clone(), "rotation": g.get_rotation.clone()}


def test_batched_pose_equals_per_timestep_pose(avatar):
    g = avatar
    order = (5, 0, 3, 6, 1)  # any order, not all timesteps
    frames = g.pose_timesteps(order)
    assert isinstance(frames, PosedFrames) and frames.timesteps == order
    assert frames.verts.shape == (5, g.num_verts, 3) and frames.R.shape == (5, g.num_faces, 3, 3)
    assert not frames.verts.requires_grad and not frames.center.requires_grad
    for t in order:
        ref = _one_by_one(g, t)
        g.use_posed(frames, t)
        assert g.timestep == t
        with torch.no_grad():
            got = {"verts": g.verts, "center": g.face_center, "R": g.face_orien_mat, "quat": g.face_orien_quat,
                   "k": g.face_scaling, "xyz": g.get_xyz, "scaling": g.get_scaling, "rotation": g.get_rotation}
        for name, value in got.items():
            assert value.shape == ref[name].shape, name
            # vertices agree to float32 rounding; the frames of sliver triangles (nearly collinear
            # vertices) amplify that rounding, hence the looser bound on orientations
            atol = {"R": 2e-4, "quat": 2e-4, "rotation": 2e-4}.get(name, 1e-6)
            torch.testing.assert_close(value, ref[name], rtol=1e-4, atol=atol, msg=name)
    # the timesteps really differ (a batch that repeated one pose would pass the loop above only
    # if every timestep posed alike)
    assert (frames.verts[0] - frames.verts[1]).abs().max() > 1e-3


def test_batched_face_frames_match_numpy_per_mesh(avatar):
    """compute_face_orientation on a (B, V, 3) batch is the per-mesh formula of SPEC 5 (NumPy)."""
    g = avatar
    frames = g.pose_timesteps(range(3))
    faces = g.faces.numpy()
    for b in range(3):
        v = frames.verts[b].double().numpy()
        v0, v1, v2 = (v[faces[:, i]] for i in range(3))
        e1, e2 = v1 - v0, v2 - v0
        ok = (np.linalg.norm(e1, axis=-1) > 1e-6) & (np.linalg.norm(np.cross(e1, e2), axis=-1) > 1e-9)
        a0 = e1 / np.linalg.norm(e1, axis=-1, keepdims=True)
        a1 = np.cross(a0, e2)
        a1 /= np.linalg.norm(a1, axis=-1, keepdims=True)
        a2 = -np.cross(a1, a0)
        a2 /= np.linalg.norm(a2, axis=-1, keepdims=True)
        k = (np.linalg.norm(e1, axis=-1) + np.abs((a2 * e2).sum(-1))) / 2
        np.testing.assert_allclose(frames.center[b].numpy(), (v0 + v1 + v2) / 3, atol=1e-6)
        np.testing.assert_allclose(frames.R[b].numpy()[ok], np.stack([a0, a1, a2], -1)[ok], atol=2e-4)
        np.testing.assert_allclose(frames.k[b, :, 0].numpy()[ok], k[ok], rtol=1e-4, atol=1e-7)
    # unbatched input keeps its old shapes
    c, R, k = compute_face_orientation(frames.verts[0], g.faces)
    assert c.shape == (g.num_faces, 3) and R.shape == (g.num_faces, 3, 3) and k.shape == (g.num_faces, 1)
    torch.testing.assert_close(R, frames.R[0], rtol=0, atol=0)


def test_pose_timesteps_errors(avatar):
    g = avatar
    with pytest.raises(IndexError, match="timestep 7 out of range"):
        g.pose_timesteps([0, T])
    with pytest.raises(ValueError, match="no timesteps"):
        g.pose_timesteps([])
    frames = g.pose_timesteps([2, 4])
    assert 2 in frames and 3 not in frames
    with pytest.raises(KeyError, match=r"timestep 3 is not among the posed frames \(held: 2..4\)"):
        g.use_posed(frames, 3)


class _CountingModel:
    """Records pose_timesteps / use_posed calls (stands in for a FlameGaussianModel)."""

    def __init__(self, num_timesteps):
        self.num_timesteps = num_timesteps
        self.batches = []
        self.current = None

    def pose_timesteps(self, ts):
        self.batches.append(tuple(ts))
        z = torch.zeros(len(ts), 1)
        return PosedFrames(tuple(ts), z, z, z, z, z, z)

    def use_posed(self, frames, t):
        assert t in frames
        self.current = t


def test_sequence_poser_batches_in_view_order():
    # camera-major order (each camera walks all timesteps), a view without timestep, a repeat
    views = [0, 1, 2, 3, 4, None, 0, 1, 2, 3, 4, 4]
    m = _CountingModel(num_timesteps=5)
    poser = SequencePoser(m, views, chunk=3)
    seen = []
    for k in range(len(views)):
        poser.select(k)
        seen.append(m.current)
    assert seen == [0, 1, 2, 3, 4, 4, 0, 1, 2, 3, 4, 4]  # the view without timestep keeps the pose
    assert m.batches == [(0, 1, 2), (3, 4, 0), (1, 2, 3), (4,)]  # view 6 (t 0) reuses the 2nd batch
    assert poser.batches == 4
    # one batch when the chunk holds every timestep
    m = _CountingModel(num_timesteps=5)
    poser = SequencePoser(m, views, chunk=64)
    for k in range(len(views)):
        poser.select(k)
    assert m.batches == [(0, 1, 2, 3, 4)]


def test_sequence_poser_rejects_bad_input():
    with pytest.raises(IndexError, match="view 2: timestep 9 out of range"):
        SequencePoser(_CountingModel(5), [0, 1, 9])
    with pytest.raises(ValueError, match="chunk"):
        SequencePoser(_CountingModel(5), [0], chunk=0)


def test_sequence_poser_on_the_model_matches_per_view_posing(avatar):
    g = avatar
    views = [3, 3, 1, 6, 0, 3]
    poser = SequencePoser(g, views, chunk=2)
    for k, t in enumerate(views):
        ref = _one_by_one(g, t)["xyz"]
        poser.select(k)
        with torch.no_grad():
            torch.testing.assert_close(g.get_xyz, ref, rtol=1e-4, atol=1e-6)
    assert poser.batches == 3  # (3, 1), (6, 0), (3,)


@pytest.mark.cuda
def test_batched_pose_on_cuda_equals_inference_graph(flame_assets):
    """On the GPU, the batched pass agrees with the per-timestep path that render.py used before
    (the inference CUDA graph)."""
    g = make_avatar(flame_assets, "cuda", 20, seed=2)
    assert g.enable_inference_graphs()
    frames = g.pose_timesteps(range(20))
    for t in (0, 7, 19):
        with torch.no_grad():
            g.select_mesh_by_timestep(t)
            ref = (g.face_center.clone(), g.face_orien_mat.clone(), g.face_scaling.clone())
        g.use_posed(frames, t)
        for a, b, atol in zip((g.face_center, g.face_orien_mat, g.face_scaling), ref, (1e-6, 2e-4, 1e-6)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)
