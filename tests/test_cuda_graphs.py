"""FLAME posing replayed from CUDA graphs gives the same mesh, frames and gradients as eager."""
import numpy as np
import pytest
import torch


def random_meshes(seed: int, timesteps: int = 3) -> dict:
    """Random FLAME parameters for ``timesteps`` frames (the ``load_meshes`` input)."""
    rng = np.random.default_rng(seed)
    return {t: {"shape": rng.normal(size=300).astype(np.float32) * 0.5,
                "expr": rng.normal(size=(1, 100)).astype(np.float32) * 0.5,
                "rotation": rng.normal(size=(1, 3)).astype(np.float32) * 0.1,
                "neck_pose": rng.normal(size=(1, 3)).astype(np.float32) * 0.1,
                "jaw_pose": np.abs(rng.normal(size=(1, 3))).astype(np.float32) * 0.1,
                "eyes_pose": rng.normal(size=(1, 6)).astype(np.float32) * 0.1,
                "translation": rng.normal(size=(1, 3)).astype(np.float32) * 0.01} for t in range(timesteps)}


@pytest.mark.cuda
def test_graphed_posing_matches_eager(flame_assets):
    from arguments import OptimizationParams
    from scene.flame_gaussian_model import FlameGaussianModel

    meshes = random_meshes(seed=0)

    def build():
        g = FlameGaussianModel(3, device="cuda")
        g.load_meshes(meshes, {})
        g.create_from_pcd(None, 1.0)
        with torch.no_grad():
            g._xyz.normal_(0, 0.3, generator=torch.Generator("cuda").manual_seed(1))
        g.training_setup(OptimizationParams())
        return g

    def grads(g, t):
        g.optimizer.zero_grad(set_to_none=True)
        g.select_mesh_by_timestep(t)
        w = torch.linspace(-1, 1, g.get_xyz.numel(), device="cuda").reshape(-1, 3)
        loss = (g.get_xyz * w).sum() + g.get_scaling.sum() + (g.get_rotation[:, 1:] ** 2).sum()
        loss.backward()
        out = {k: v.grad.detach().clone() for k, v in g.flame_param.items() if v.grad is not None}
        out["xyz"] = g._xyz.grad.detach().clone()
        out["verts"] = g.verts.detach().clone()
        return out

    eager, graphed = build(), build()
    assert graphed.enable_cuda_graphs()
    for t in (2, 0, 1, 2):
        a, b = grads(eager, t), grads(graphed, t)
        assert set(a) == set(b) and "expr" in a and "jaw_pose" in a
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key} @ t={t}: {m}")

    # gradients accumulated over two backward passes without zero_grad (the second pass must not
    # reuse the graph's gradient buffers, which the first pass's .grad may share)
    def accumulated(g):
        g.optimizer.zero_grad(set_to_none=True)
        for t in (0, 1):
            g.select_mesh_by_timestep(t)
            (g.get_xyz.square().sum() + g.get_scaling.sum()).backward()
        return {k: v.grad.detach().clone() for k, v in g.flame_param.items() if v.grad is not None}

    a, b = accumulated(eager), accumulated(graphed)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"accumulated {key}: {m}")


@pytest.mark.cuda
def test_inference_graph_posing_matches_eager(flame_assets):
    """Without autograd, select_mesh_by_timestep / pose_frame replay one graph: same frames as
    eager, and frames of an earlier call are not overwritten by a later one."""
    from scene.flame_gaussian_model import FlameGaussianModel

    meshes = random_meshes(seed=1)
    eager, graphed = (FlameGaussianModel(3, device="cuda") for _ in range(2))
    for g in (eager, graphed):
        g.load_meshes(meshes, {})
        g.create_from_pcd(None, 1.0)
    assert graphed.enable_inference_graphs()
    with torch.no_grad():
        kept = None
        for t in (2, 0, 1):
            eager.select_mesh_by_timestep(t)
            graphed.select_mesh_by_timestep(t)
            for name in ("verts", "face_center", "face_orien_mat", "face_orien_quat", "face_scaling"):
                torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), rtol=1e-4, atol=1e-6)
            if kept is None:
                kept = (graphed.verts.clone(), graphed.verts)
        assert torch.equal(kept[0], kept[1])  # the t=2 frames survived later replays
        frame = {k: torch.as_tensor(meshes[1][k], device="cuda") for k in
                 ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")}
        graphed.pose_frame(frame)
        eager.select_mesh_by_timestep(1)
        torch.testing.assert_close(graphed.verts, eager.verts, rtol=1e-4, atol=1e-6)
