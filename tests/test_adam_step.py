"""training.adam_step.AdamStepper: the same update as ``torch.optim.Adam.step`` (fused CUDA Adam
through its kernels directly; the optimizer itself elsewhere)."""
from __future__ import annotations

import pytest
import torch

from training.adam_step import AdamStepper


def _twin_optimizers(device: str, fused: bool):
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = {"xyz": (50, 3), "f_dc": (50, 1, 3), "opacity": (50, 1), "expr": (4, 10)}
    lrs = {"xyz": 1e-3, "f_dc": 2.5e-3, "opacity": 0.05, "expr": 1e-3}
    twins = []
    for _ in range(2):
        params = {k: torch.nn.Parameter(torch.zeros(s, device=device)) for k, s in shapes.items()}
        groups = [{"params": [p], "lr": lrs[k], "name": k} for k, p in params.items()]
        twins.append((params, torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=fused)))
    inits = {k: torch.randn(s, device=device, generator=gen) for k, s in shapes.items()}
    for params, _ in twins:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(inits[k])
    return twins, shapes, gen


def _run(device: str, fused: bool, steps: int = 6):
    twins, shapes, gen = _twin_optimizers(device, fused)
    (pa, ref), (pb, opt) = twins
    stepper = AdamStepper(opt)
    for i in range(steps):
        for k in shapes:
            g = torch.randn(shapes[k], device=device, generator=gen)
            if k == "expr" and i % 2:  # a group without gradient this step is left alone
                pa[k].grad = pb[k].grad = None
            else:
                pa[k].grad, pb[k].grad = g.clone(), g.clone()
        for group_a, group_b in zip(ref.param_groups, opt.param_groups):  # a schedule changes an lr
            group_a["lr"] = group_b["lr"] = group_a["lr"] * 0.9
        ref.step()
        stepper.step()
    return pa, pb, ref, opt, stepper


def test_cpu_falls_back_to_optimizer_step():
    pa, pb, ref, opt, stepper = _run("cpu", fused=False)
    assert not stepper.fast
    for k in pa:
        assert torch.equal(pa[k], pb[k])


@pytest.mark.cuda
def test_fused_fast_path_is_exactly_adam():
    pa, pb, ref, opt, stepper = _run("cuda", fused=True)
    assert stepper.fast
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
        sa, sb = ref.state[pa[k]], opt.state[pb[k]]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[key], sb[key]), (k, key)
