"""training.losses: the one-node training loss against its autograd composition (values and
gradients, float64), finite differences, per-term upstream gradients, edge cases, and on CUDA the
fused-SSIM path against the reference."""
from __future__ import annotations

import pytest
import torch

from training.losses import LossWeights, composed_terms, training_terms

W = LossWeights(l1=0.8, ssim=0.2, xyz=1e-2, xyz_threshold=1.0, scale=1.0, scale_threshold=0.6)


def _inputs(n=40, h=17, w=23, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g, dtype=dtype).to(device).requires_grad_(True)
    gt = torch.rand(3, h, w, generator=g, dtype=dtype).to(device)
    xyz = (torch.randn(n, 3, generator=g, dtype=dtype) * 0.9).to(device).requires_grad_(True)
    scaling = (torch.randn(n, 3, generator=g, dtype=dtype) * 0.6 - 0.3).to(device).requires_grad_(True)
    mask = (torch.rand(n, generator=g) > 0.3).to(device)
    return image, gt, xyz, scaling, mask


def _grads(fn, image, gt, xyz, scaling, mask, weights, upstream):
    terms = fn(image, gt, weights, xyz=xyz, scaling=scaling, mask=mask)
    grads = torch.autograd.grad(terms, [image, xyz, scaling], upstream, allow_unused=True)
    return terms.detach(), grads


@pytest.mark.parametrize("upstream", [(1.0, 1.0, 1.0, 1.0), (0.5, -2.0, 3.0, 0.25)])
def test_matches_autograd_composition(upstream):
    image, gt, xyz, scaling, mask = _inputs()
    up = torch.tensor(upstream, dtype=torch.float64)
    t_fused, g_fused = _grads(training_terms, image, gt, xyz, scaling, mask, W, up)
    t_ref, g_ref = _grads(composed_terms, image, gt, xyz, scaling, mask, W, up)
    torch.testing.assert_close(t_fused, t_ref, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    # every term is exercised: some splats above each threshold, some below
    assert 0 < int((xyz.norm(dim=1) > 1.0).sum()) < xyz.shape[0]
    assert 0 < int((scaling.exp() > 0.6).any(dim=1).sum()) < xyz.shape[0]


def test_gradcheck():
    image, gt, xyz, scaling, mask = _inputs(n=9, h=12, w=13, seed=3)

    def fn(i, x, s):
        return training_terms(i, gt, W, xyz=x, scaling=s, mask=mask)

    assert torch.autograd.gradcheck(fn, (image, xyz, scaling), eps=1e-6, atol=1e-7)


def test_values_by_hand():
    image = torch.zeros(3, 4, 5, dtype=torch.float64, requires_grad=True)
    gt = torch.full((3, 4, 5), 0.25, dtype=torch.float64)
    xyz = torch.tensor([[3.0, 0.0, 4.0], [0.1, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    scaling = torch.log(torch.tensor([[1.0, 0.6, 0.6], [0.6, 0.6, 0.6], [0.6, 1.6, 0.6]], dtype=torch.float64))
    mask = torch.tensor([True, True, False])
    terms = training_terms(image, gt, W, xyz=xyz, scaling=scaling, mask=mask)
    from ga_ssim import reference

    ssim = float(reference.ssim(image.detach(), gt))
    # xyz: visible splats 0 and 1: relu(5 - 1) = 4 and 0 -> mean 2; scale: |(0.4, 0, 0)| = 0.4 and 0 -> 0.2
    expect = [0.8 * 0.25, 0.2 * (1 - ssim), 1e-2 * 2.0, 1.0 * 0.2]
    torch.testing.assert_close(terms.detach(), torch.tensor(expect, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_edge_cases_match_composition():
    image, gt, xyz, scaling, mask = _inputs(n=6, seed=5)
    with torch.no_grad():
        xyz[0] = 0.0                       # zero norm (gradient 0, as autograd's norm)
        xyz[1] = torch.tensor([1.0, 0.0, 0.0])  # exactly on the threshold (relu'(0) = 0)
        scaling[2] = torch.log(torch.tensor(0.6, dtype=torch.float64))  # exp(s) on the threshold
    up = torch.ones(4, dtype=torch.float64)
    for m in (mask, torch.zeros_like(mask), None):  # some, none (mean over 0 splats is 0), all
        t_f, g_f = _grads(training_terms, image, gt, xyz, scaling, m, W, up)
        t_r, g_r = _grads(composed_terms, image, gt, xyz, scaling, m, W, up)
        torch.testing.assert_close(t_f, t_r, rtol=1e-12, atol=1e-14)
        for a, b in zip(g_f, g_r):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
            assert torch.isfinite(a).all()


@pytest.mark.parametrize("weights", [
    LossWeights(l1=1.0, ssim=0.0),
    LossWeights(l1=0.0, ssim=1.0),
    LossWeights(l1=0.8, ssim=0.2, xyz=0.0, scale=2.0),
])
def test_zero_weights_drop_terms(weights):
    image, gt, xyz, scaling, mask = _inputs(seed=7)
    up = torch.ones(4, dtype=torch.float64)
    t_f, g_f = _grads(training_terms, image, gt, xyz, scaling, mask, weights, up)
    t_r, g_r = _grads(composed_terms, image, gt, xyz, scaling, mask, weights, up)
    torch.testing.assert_close(t_f, t_r, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_f, g_r):
        if a is None:  # a dropped term gives no gradient; the composition's is zero
            assert b is None or not b.abs().any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_image_terms_only():
    image, gt, _, _, _ = _inputs(seed=9)
    terms = training_terms(image, gt, LossWeights(l1=0.8, ssim=0.2))
    ref = composed_terms(image, gt, LossWeights(l1=0.8, ssim=0.2))
    torch.testing.assert_close(terms, ref, rtol=1e-12, atol=1e-14)
    (gi,) = torch.autograd.grad(terms.sum(), image)
    (gr,) = torch.autograd.grad(ref.sum(), image)
    torch.testing.assert_close(gi, gr, rtol=1e-10, atol=1e-14)


def test_bad_input_names_the_field():
    image, gt, xyz, scaling, mask = _inputs()
    with pytest.raises(ValueError, match="ground truth"):
        training_terms(image, gt[:, :5], W)
    with pytest.raises(ValueError, match="xyz must be"):
        training_terms(image, gt, W, xyz=xyz[:, :2])
    with pytest.raises(ValueError, match="scaling"):
        training_terms(image, gt, W, xyz=xyz, scaling=scaling[:5])
    with pytest.raises(ValueError, match="mask"):
        training_terms(image, gt, W, xyz=xyz, scaling=scaling, mask=mask[:3])
    with pytest.raises(ValueError, match="mask"):
        training_terms(image, gt, W, xyz=xyz, scaling=scaling, mask=mask.float())


@pytest.mark.cuda
def test_cuda_fused_ssim_path_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import ga_ssim

    if not ga_ssim.cuda_available():
        pytest.skip("ga_ssim CUDA extension not built")
    image, gt, xyz, scaling, mask = _inputs(n=5000, h=550, w=802, dtype=torch.float32, device="cuda", seed=11)
    up = torch.tensor([1.0, 1.0, 1.0, 1.0], device="cuda")
    t_f, g_f = _grads(training_terms, image, gt, xyz, scaling, mask, W, up)
    d64 = [t.detach().double().requires_grad_(t.requires_grad) for t in (image, gt, xyz, scaling)]
    t_r, g_r = _grads(composed_terms, d64[0], d64[1], d64[2], d64[3], mask, W, up.double())
    torch.testing.assert_close(t_f.double(), t_r, rtol=1e-4, atol=1e-6)
    for a, b in zip(g_f, g_r):
        scale = float(b.abs().max())
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("metric", [False, True])
def test_train_compute_losses_matches_the_model_regularisers(metric):
    """training.losses.compute_losses (fused node, or autograd for the metric variants) against the loss
    spelt out with the model's own regulariser methods: values and gradients of every parameter."""
    from training import losses as training_losses
    from arguments import OptimizationParams
    from test_flame_gaussian_model import make_model, randomize
    from ga_ssim import reference

    g = make_model()
    randomize(g, seed=2)
    with torch.no_grad():
        g._xyz.mul_(1.5)
    params = [g._xyz, g._scaling, g._rotation]
    for p in params:
        p.requires_grad_(True)
    opt = OptimizationParams()
    opt.metric_xyz = opt.metric_scale = metric
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(3, 9, 11, generator=gen, requires_grad=True)
    gt = torch.rand(3, 9, 11, generator=gen)
    vis = torch.rand(g.num_points, generator=gen) > 0.4

    losses = training_losses.compute_losses(image, gt, g, opt, vis, 1)
    assert list(losses) == ["l1", "ssim", "xyz", "scale", "total"]
    got = torch.autograd.grad(losses["total"], [image, g._xyz, g._scaling])

    expect = {
        "l1": (image - gt).abs().mean() * (1 - opt.lambda_dssim),
        "ssim": (1 - reference.ssim(image, gt)) * opt.lambda_dssim,
        "xyz": g.compute_xyz_loss(opt.threshold_xyz, metric=metric, mask=vis) * opt.lambda_xyz,
        "scale": g.compute_scale_loss(opt.threshold_scale, metric=metric, mask=vis) * opt.lambda_scale,
    }
    for k, v in expect.items():
        torch.testing.assert_close(losses[k].detach(), v.detach(), rtol=1e-5, atol=1e-7)
    assert float(expect["xyz"].detach()) > 0 and float(expect["scale"].detach()) > 0
    want = torch.autograd.grad(sum(expect.values()), [image, g._xyz, g._scaling])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.cuda
def test_cuda_training_terms_do_not_synchronise():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image, gt, xyz, scaling, mask = _inputs(n=1000, h=64, w=80, dtype=torch.float32, device="cuda", seed=13)
    training_terms(image, gt, W, xyz=xyz, scaling=scaling, mask=mask).sum().backward()  # warm caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        terms = training_terms(image, gt, W, xyz=xyz, scaling=scaling, mask=mask)
        terms.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(terms).all().item()


@pytest.mark.cuda
@pytest.mark.parametrize("weights", [W, LossWeights(l1=1.0, ssim=0.0), LossWeights(l1=0.0, ssim=1.0, scale=2.0),
                                     LossWeights(l1=0.8, ssim=0.2)])
def test_cuda_native_path_matches_composition(weights):
    """The C++ path (ga_ssim._C.training_terms_*), float32, against the composition in float64:
    every weight pattern, a zero-norm and an on-threshold splat, some / no / all splats visible."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from training.losses import native_module

    assert native_module() is not None, "ga_ssim._C lacks training_terms_forward (rebuild the package)"
    image, gt, xyz, scaling, mask = _inputs(n=64, h=37, w=41, dtype=torch.float32, device="cuda", seed=17)
    with torch.no_grad():
        xyz[0] = 0.0
        xyz[1] = torch.tensor([1.0, 0.0, 0.0], device="cuda")  # |mu| = 1 exactly in float32 and float64
    up = torch.tensor([1.0, -0.5, 2.0, 0.75], device="cuda")
    for m in (mask, torch.zeros_like(mask), None):
        t_f, g_f = _grads(training_terms, image, gt, xyz, scaling, m, weights, up)
        d64 = [t.detach().double().requires_grad_(t.requires_grad) for t in (image, gt, xyz, scaling)]
        t_r, g_r = _grads(composed_terms, d64[0], d64[1], d64[2], d64[3], m, weights, up.double())
        torch.testing.assert_close(t_f.double(), t_r, rtol=1e-4, atol=1e-6)
        for a, b in zip(g_f, g_r):
            if a is None:
                assert b is None or not b.abs().any()
                continue
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4 * max(float(b.abs().max()), 1e-6))


def test_train_compute_losses_without_ga_ssim_matches(monkeypatch):
    """Where ga_ssim is not importable, compute_losses composes every term from autograd
    operators: same keys, values and gradients as the fused node."""
    from training import losses as training_losses
    from arguments import OptimizationParams
    from test_flame_gaussian_model import make_model, randomize

    g = make_model()
    randomize(g, seed=6)
    for p in (g._xyz, g._scaling):
        p.requires_grad_(True)
    opt = OptimizationParams()
    gen = torch.Generator().manual_seed(8)
    image = torch.rand(3, 9, 11, generator=gen, requires_grad=True)
    gt = torch.rand(3, 9, 11, generator=gen)
    vis = torch.rand(g.num_points, generator=gen) > 0.5

    fused = training_losses.compute_losses(image, gt, g, opt, vis, 1)
    want = torch.autograd.grad(fused["total"], [image, g._xyz, g._scaling])
    monkeypatch.setattr(training_losses, "_fused_terms_available", lambda: False)
    plain = training_losses.compute_losses(image, gt, g, opt, vis, 1)
    assert list(plain) == list(fused)
    for k in fused:
        torch.testing.assert_close(plain[k].detach(), fused[k].detach(), rtol=1e-5, atol=1e-7)
    got = torch.autograd.grad(plain["total"], [image, g._xyz, g._scaling])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_train_compute_losses_adds_the_offset_terms_to_the_total():
    """Offset regularisers (autograd operators) join the fused node's sum: the total is the sum
    of every listed term, and their gradients reach the FLAME offsets."""
    from training import losses as training_losses
    from arguments import OptimizationParams
    from test_flame_gaussian_model import make_model, randomize

    g = make_model()
    randomize(g, seed=9)
    with torch.no_grad():
        g.flame_param["dynamic_offset"].normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
    g.flame_param["dynamic_offset"].requires_grad_(True)
    opt = OptimizationParams()
    opt.lambda_dynamic_offset, opt.lambda_dynamic_offset_std = 0.5, 0.25
    gen = torch.Generator().manual_seed(10)
    image = torch.rand(3, 9, 11, generator=gen, requires_grad=True)
    gt = torch.rand(3, 9, 11, generator=gen)
    vis = torch.ones(g.num_points, dtype=torch.bool)
    losses = training_losses.compute_losses(image, gt, g, opt, vis, 1)
    assert list(losses) == ["l1", "ssim", "xyz", "scale", "dy_off", "dynamic_offset_std", "total"]
    parts = sum(v.detach() for k, v in losses.items() if k != "total")
    torch.testing.assert_close(losses["total"].detach(), parts, rtol=1e-6, atol=1e-8)
    assert float(losses["dy_off"].detach()) > 0
    (grad,) = torch.autograd.grad(losses["total"], g.flame_param["dynamic_offset"])
    assert grad.abs().sum() > 0
