"""The training iteration captured as one CUDA graph (training.step_graph) against the eager iteration.

Expectations are the eager code path of the same trainer: the same loss terms and gradients for
the same camera and state, the same densification statistics, a skipped iteration that leaves
every parameter, Adam moment and step counter untouched, and a full run that trains as well.
"""
from __future__ import annotations

import os
from typing import Dict

import pytest
import torch

pytestmark = pytest.mark.cuda


def _trainer(subject, flame_assets, tmp_path, *extra: str):
    import train
    from training.trainer import Trainer

    argv = ["-s", str(subject), "-m", str(tmp_path / "model"), "--bind_to_mesh", "--eval", "--white_background",
            "--port", "0", "--quiet", "--interval", "0", "--iterations", "200", "--sh_degree", "1",
            "--flame_model_path", os.path.join(str(flame_assets), "flame2023.pkl"), *extra]
    ns = train.build_parser().parse_args(argv)
    return Trainer(train.ModelParams.extract(ns), train.OptimizationParams.extract(ns),
                   train.PipelineParams.extract(ns), train.RunOptions.from_args(ns), ns)


def _named_params(g) -> Dict[str, torch.nn.Parameter]:
    return {f"{group['name']}/{i}": p for group in g.optimizer.param_groups for i, p in enumerate(group["params"])}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.double() - b.double()).norm().item()
    n = b.double().norm().item()
    return d / n if n > 0 else d


def _first_step_eagerly(trainer, cam):
    """Anisotropic scales (the initial splats are isotropic, so the rotation gradient would be
    rounding noise), one eager iteration, then learning rates 0: parameters stay put."""
    with torch.no_grad():
        g = trainer.gaussians
        g._scaling.add_(torch.randn(g._scaling.shape, device=g._scaling.device,
                                    generator=torch.Generator(g._scaling.device).manual_seed(0)) * 0.5)
    trainer._eager_forward_backward(cam, trainer.timer)
    trainer.densify(1, None)
    trainer.optimizer_step()
    for group in trainer.gaussians.optimizer.param_groups:
        group["lr"] = 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_iteration_matches_eager(small_subject, flame_assets, tmp_path):
    trainer = _trainer(small_subject, flame_assets, tmp_path)
    sg, g = trainer.step_graph, trainer.gaussians
    assert sg is not None
    cam = trainer.train_cameras[5]
    _first_step_eagerly(trainer, cam)
    accum0, denom0, radii0 = g.xyz_gradient_accum.clone(), g.denom.clone(), g.max_radii2D.clone()

    assert sg.run(2, cam, with_stats=True)
    sg.flush()
    assert sg.captures == 1 and sg.skipped_steps == 0 and sg.enabled
    graph_grads = {k: p.grad.detach().clone() for k, p in _named_params(g).items() if p.grad is not None}
    graph_losses = dict(zip(sg.loss_keys, sg.loss_row.tolist()))
    graph_stats = (g.xyz_gradient_accum - accum0, g.denom - denom0, g.max_radii2D.clone())

    accum1, denom1 = g.xyz_gradient_accum.clone(), g.denom.clone()
    render_pkg, losses = trainer._eager_forward_backward(cam, trainer.timer)
    assert sg.graph is None  # an eager backward drops the graph (and its gradient buffers)
    eager_grads = {k: p.grad.detach().clone() for k, p in _named_params(g).items() if p.grad is not None}
    trainer.densify(3, render_pkg)
    eager_stats = (g.xyz_gradient_accum - accum1, g.denom - denom1)

    assert set(graph_grads) == set(eager_grads) and {"xyz/0", "flame_expr/0", "f_dc/0"} <= set(graph_grads)
    for key in eager_grads:
        assert _rel(graph_grads[key], eager_grads[key]) < 1e-4, key
    assert set(graph_losses) == set(losses)
    for key, value in losses.items():
        assert graph_losses[key] == pytest.approx(float(value.detach()), rel=1e-5, abs=1e-7), key
    assert torch.equal(graph_stats[1], eager_stats[1])
    assert _rel(graph_stats[0], eager_stats[0]) < 1e-4
    expected_radii = torch.maximum(radii0, render_pkg["radii"].float())
    assert torch.equal(graph_stats[2], expected_radii)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_short_pair_buffer_skips_the_step_and_trains_it_again(small_subject, flame_assets, tmp_path, monkeypatch):
    import training.step_graph as step_graph

    trainer = _trainer(small_subject, flame_assets, tmp_path)
    sg, g = trainer.step_graph, trainer.gaussians
    cam = trainer.train_cameras[3]
    trainer._eager_forward_backward(cam, trainer.timer)
    trainer.optimizer_step()
    opt = g.optimizer

    def snapshot():
        out = {}
        for name, p in _named_params(g).items():
            st = opt.state[p]
            out[name] = (p.detach().clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone(), st["step"].clone())
        return out, g.xyz_gradient_accum.clone(), g.denom.clone(), g.max_radii2D.clone()

    before = snapshot()
    real_plan = step_graph._plan_capacity
    monkeypatch.setattr(step_graph, "_plan_capacity", lambda pairs: max(1, pairs // 4))
    assert sg.run(2, cam, with_stats=True)
    monkeypatch.setattr(step_graph, "_plan_capacity", real_plan)
    small = sg.capacity
    sg.flush()
    after = snapshot()
    assert sg.skipped_steps == 1 and list(sg.redo) == [cam]
    assert sg.capacity >= real_plan(sg.max_pairs) > small
    for name, tensors in before[0].items():
        for a, b in zip(tensors, after[0][name]):
            assert torch.equal(a, b), name
    for a, b in zip(before[1:], after[1:]):
        assert torch.equal(a, b)

    assert trainer.next_camera() is cam
    assert sg.run(3, cam, with_stats=True)
    sg.flush()
    assert sg.skipped_steps == 1 and sg.captures == 2
    moved = snapshot()
    assert not torch.equal(moved[0]["xyz/0"][0], before[0]["xyz/0"][0])
    assert float(moved[0]["xyz/0"][3]) == float(before[0]["xyz/0"][3]) + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_training_run_matches_eager_quality(small_subject, flame_assets, tmp_path):
    """200 iterations with densification at 100 and an SH degree step (recaptures), graphs vs
    eager: both raise PSNR, to within 0.5 dB of each other."""
    schedule = ["--densify_from_iter", "50", "--densification_interval", "100", "--densify_until_iter", "200",
                "--opacity_reset_interval", "100000", "--position_lr_max_steps", "200", "--feature_lr", "0.025",
                "--test_iterations", "0", "200"]
    results = {}
    for name, extra in (("graph", []), ("eager", ["--no_cuda_graphs"])):
        trainer = _trainer(small_subject, flame_assets, tmp_path / name, *schedule, *extra)
        result = trainer.train()
        results[name] = result
        if name == "graph":
            assert trainer.step_graph.captures >= 2 and trainer.step_graph.enabled
        else:
            assert trainer.step_graph is None
    for name, result in results.items():
        before, after = result.metrics[0], result.metrics[200]
        assert after["val"]["psnr"] > before["val"]["psnr"] + 1.0, name
    assert abs(results["graph"].metrics[200]["val"]["psnr"] - results["eager"].metrics[200]["val"]["psnr"]) < 0.5
    assert abs(results["graph"].metrics[200]["test"]["psnr"] - results["eager"].metrics[200]["test"]["psnr"]) < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_first_iteration_in_the_graph_is_adams_first_step(small_subject, flame_assets, tmp_path):
    """No eager step before: the graph creates Adam's state itself, and its first update is the
    analytic first Adam step from zero moments: m = (1-b1) g, v = (1-b2) g^2, p -= lr g / (|g| + eps)."""
    trainer = _trainer(small_subject, flame_assets, tmp_path)
    g, sg = trainer.gaussians, trainer.step_graph
    g.update_learning_rate(1)
    before = {k: p.detach().clone() for k, p in _named_params(g).items()}
    assert not g.optimizer.state
    assert sg.run(1, trainer.train_cameras[0], with_stats=True)
    sg.flush()
    opt = g.optimizer
    lrs = {f"{group['name']}/{i}": group["lr"] for group in opt.param_groups for i, _ in enumerate(group["params"])}
    checked = 0
    for key, p in _named_params(g).items():
        if p.grad is None:
            continue
        st = opt.state[p]
        b1, b2 = opt.param_groups[0]["betas"]
        eps = opt.param_groups[0]["eps"]
        grad = p.grad.detach().double()
        m, v = st["exp_avg"].double(), st["exp_avg_sq"].double()
        assert float(st["step"]) == 1.0 and st["step"].device == p.device, key
        torch.testing.assert_close(m, (1 - b1) * grad, rtol=1e-5, atol=1e-30,
                                   msg=lambda text: f"{key} exp_avg: {text}")
        # v = (1 - b2) g^2, checked against m (float32 squares of tiny gradients may flush to zero)
        torch.testing.assert_close(v, (1 - b2) / (1 - b1) ** 2 * m * m, rtol=1e-4, atol=1e-30,
                                   msg=lambda text: f"{key} exp_avg_sq: {text}")
        # the bias-corrected update from zero moments: p -= lr m_hat / (sqrt(v_hat) + eps) = lr g / (|g| + eps)
        step = lrs[key] * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
        torch.testing.assert_close(p.detach().double(), before[key].double() - step, rtol=1e-5,
                                   atol=1e-3 * lrs[key] + 1e-9, msg=lambda text: f"{key} parameter: {text}")
        if grad.abs().max() > 1e-12:
            assert (p.detach() != before[key]).any(), key
        checked += 1
    assert checked >= 6
