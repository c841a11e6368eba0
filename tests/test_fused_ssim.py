"""Fused SSIM (`ga_ssim`): the PyTorch reference against an independent NumPy SSIM and finite
differences (CPU), and the CUDA kernels against the float64 reference (forward map and mean,
backward vs autograd) on odd, tile-crossing and batched sizes (GPU, marker ``cuda``)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

try:
    import ga_ssim
except ImportError:  # not installed: serve it from the source tree
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "submodules", "fused-ssim"))
    import ga_ssim

from ga_ssim import reference
from utils.loss_utils import ssim as project_ssim

from numpy_oracles import numpy_ssim_map


def image_pair(shape, gen: torch.Generator, dtype=torch.float32, device="cpu"):
    """A smooth 'ground truth' and a noisy rendering of it, in [0, 1] (realistic SSIM ~0.3-0.9)."""
    gt = torch.rand(shape, generator=gen, dtype=torch.float64)
    if shape[-1] > 2 and shape[-2] > 2:
        k = torch.ones(1, 1, 3, 3, dtype=torch.float64) / 9
        flat = gt.reshape(-1, 1, shape[-2], shape[-1])
        gt = torch.nn.functional.conv2d(flat, k, padding=1).reshape(shape)
    img = (gt + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return img.to(device, dtype).contiguous(), gt.to(device, dtype).contiguous()


# ------------------------------------------------------------------------------------------ CPU

@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 7, 5), (3, 16, 23), (1, 12, 3)])
def test_reference_matches_numpy(shape):
    gen = torch.Generator().manual_seed(1)
    x, y = image_pair(shape, gen, torch.float64)
    want = numpy_ssim_map(x.numpy(), y.numpy())
    got = reference.ssim_map(x, y).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert abs(reference.ssim(x, y).item() - want.mean()) < 1e-12


def test_reference_batched_matches_per_image_and_project_ssim():
    gen = torch.Generator().manual_seed(2)
    x, y = image_pair((2, 3, 9, 11), gen, torch.float64)
    per = [numpy_ssim_map(x[i].numpy(), y[i].numpy()) for i in range(2)]
    np.testing.assert_allclose(reference.ssim_map(x, y).numpy(), np.stack(per), rtol=1e-10, atol=1e-12)
    assert abs(reference.ssim(x, y).item() - project_ssim(x, y).item()) < 1e-12
    assert abs(reference.ssim(x[0], y[0]).item() - project_ssim(x[0], y[0]).item()) < 1e-12


def test_identical_images_give_one():
    gen = torch.Generator().manual_seed(3)
    x, _ = image_pair((3, 8, 6), gen, torch.float64)
    assert abs(reference.ssim(x, x).item() - 1.0) < 1e-12
    assert abs(ga_ssim.fused_ssim(x, x).item() - 1.0) < 1e-12


def test_reference_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(4)
    x, y = image_pair((2, 6, 5), gen, torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: reference.ssim(t, y), (x,), eps=1e-6, atol=1e-8, rtol=1e-5)


def test_closed_form_gradient_matches_autograd_and_finite_differences():
    """The kernels' derivation (reference.ssim_with_grad) against autograd and central differences."""
    gen = torch.Generator().manual_seed(5)
    for shape in [(3, 1, 1), (3, 7, 5), (2, 2, 13, 12)]:
        x, y = image_pair(shape, gen, torch.float64)
        xg = x.clone().requires_grad_(True)
        reference.ssim(xg, y).backward()
        value, grad = reference.ssim_with_grad(x, y)
        assert abs(value.item() - reference.ssim(x, y).item()) < 1e-14
        assert ((grad - xg.grad).norm() / xg.grad.norm()).item() < 1e-10
    # central differences on a few entries of the last image
    flat = x.reshape(-1)
    for i in (0, flat.numel() // 2, flat.numel() - 1):
        e = torch.zeros_like(flat)
        e[i] = 1e-6
        fd = (reference.ssim((flat + e).reshape(x.shape), y) - reference.ssim((flat - e).reshape(x.shape), y)) / 2e-6
        assert abs(fd.item() - grad.reshape(-1)[i].item()) < 1e-8 * max(1.0, abs(fd.item())) + 1e-9


def test_cpu_fallback_and_train_flag():
    gen = torch.Generator().manual_seed(6)
    x, y = image_pair((3, 10, 9), gen)
    xg = x.clone().requires_grad_(True)
    v = ga_ssim.fused_ssim(xg, y)
    assert v.dim() == 0 and v.requires_grad
    v.backward()
    xr = x.clone().requires_grad_(True)
    reference.ssim(xr, y).backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    e = ga_ssim.fused_ssim(x.clone().requires_grad_(True), y, train=False)
    assert not e.requires_grad and abs(e.item() - v.item()) < 1e-7
    assert abs(ga_ssim.ssim(x, y).item() - v.item()) < 1e-7
    assert isinstance(ga_ssim.cuda_available(), bool)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        ga_ssim.fused_ssim(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match=r"\(C,H,W\)"):
        ga_ssim.fused_ssim(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="empty"):
        ga_ssim.fused_ssim(torch.zeros(3, 0, 4), torch.zeros(3, 0, 4))
    with pytest.raises(TypeError):
        ga_ssim.fused_ssim(np.zeros((3, 4, 4)), torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------------------- CUDA

CUDA_SHAPES = [(3, 1, 1), (3, 7, 5), (3, 5, 7), (3, 16, 32), (3, 17, 33), (1, 40, 3),
               (3, 802, 550), (3, 550, 802), (2, 3, 37, 41), (4, 3, 64, 48)]


def _need_kernel():
    if not ga_ssim.cuda_available():
        pytest.fail("ga_ssim._C is not built on this CUDA machine (build with setup.py build_ext --inplace)")


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_forward_matches_reference(shape):
    _need_kernel()
    gen = torch.Generator().manual_seed(10 + len(shape) + shape[-1])
    x, y = image_pair(shape, gen, device="cuda")
    ref_map = reference.ssim_map(x.double(), y.double())
    got_map = ga_ssim.ssim_map(x, y)
    assert got_map.shape == x.shape and got_map.dtype == torch.float32
    assert torch.isfinite(got_map).all()
    assert (got_map.double() - ref_map).abs().max().item() < 1e-4
    got = ga_ssim.fused_ssim(x, y, train=False)
    assert got.dim() == 0
    assert abs(got.item() - ref_map.mean().item()) < 1e-5
    assert abs(ga_ssim.fused_ssim(x, y).item() - got.item()) < 1e-7


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_backward_matches_autograd(shape):
    _need_kernel()
    gen = torch.Generator().manual_seed(20 + len(shape) + shape[-2])
    x, y = image_pair(shape, gen, device="cuda")
    xg = x.clone().requires_grad_(True)
    loss = 1.0 - ga_ssim.fused_ssim(xg, y)
    (3.0 * loss).backward()
    xr = x.double().requires_grad_(True)
    (3.0 * (1.0 - reference.ssim(xr, y.double()))).backward()
    assert torch.isfinite(xg.grad).all()
    rel = ((xg.grad.double() - xr.grad).norm() / xr.grad.norm()).item()
    assert rel < 1e-4, rel


@pytest.mark.cuda
def test_cuda_identical_noncontiguous_and_img2_grad():
    _need_kernel()
    gen = torch.Generator().manual_seed(30)
    x, y = image_pair((3, 45, 70), gen, device="cuda")
    assert abs(ga_ssim.fused_ssim(x, x).item() - 1.0) < 1e-5
    # a transposed view: the kernels take a contiguous copy
    xt, yt = x.transpose(1, 2), y.transpose(1, 2)
    want = reference.ssim(xt.double(), yt.double()).item()
    assert abs(ga_ssim.fused_ssim(xt, yt).item() - want) < 1e-5
    # img2 needing a gradient falls back to the reference, differentiable in both
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    ga_ssim.fused_ssim(xg, yg).backward()
    assert xg.grad is not None and yg.grad is not None


def test_ssim_vjp_reference_path_matches_autograd():
    gen = torch.Generator().manual_seed(40)
    x, y = image_pair((3, 19, 26), gen, dtype=torch.float64)
    value, vjp = ga_ssim.ssim_vjp(x, y)
    xr = x.clone().requires_grad_(True)
    ref = reference.ssim(xr, y)
    (want,) = torch.autograd.grad(ref * -2.5, xr)
    assert abs(value.item() - ref.item()) < 1e-12
    torch.testing.assert_close(vjp(torch.tensor(-2.5, dtype=torch.float64)), want, rtol=1e-9, atol=1e-14)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(3, 550, 802), (3, 45, 70)])
def test_cuda_ssim_vjp_matches_reference(shape):
    _need_kernel()
    gen = torch.Generator().manual_seed(41)
    x, y = image_pair(shape, gen, device="cuda")
    value, vjp = ga_ssim.ssim_vjp(x, y)
    xr = x.double().requires_grad_(True)
    ref = reference.ssim(xr, y.double())
    (want,) = torch.autograd.grad(ref * 0.7, xr)
    assert abs(value.item() - ref.item()) < 1e-5
    got = vjp(torch.tensor(0.7, device="cuda"))
    rel = ((got.double() - want).norm() / want.norm()).item()
    assert rel < 1e-4, rel
