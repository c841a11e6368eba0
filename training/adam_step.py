"""A lean ``step()`` for a fused CUDA ``torch.optim.Adam``.

``torch.optim.Adam(fused=True).step()`` spends most of its time in Python bookkeeping (about
1 ms per call for the ~10 parameter groups of an avatar, against ~0.2 ms of GPU work). The
training loop steps every iteration, so :class:`AdamStepper` does the same update with one
``_foreach_add_`` over the step counters and one ``torch._fused_adam_`` call per group: the very
kernels ``Adam.step`` launches, on the optimizer's own state (so checkpoints, densification and
``state_dict`` see no difference).

The fast path is used only after it reproduced ``Adam.step`` exactly on a probe parameter at
construction; otherwise (CPU, other PyTorch versions, unusual group settings) ``step()`` is
``optimizer.step()``.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

__all__ = ["AdamStepper", "fused_adam_step", "GraphableAdamStep"]


def _plain_fused_group(group: dict) -> bool:
    return (group.get("fused") and not group.get("amsgrad") and not group.get("maximize")
            and not group.get("differentiable") and not group.get("capturable")
            and float(group.get("weight_decay", 0.0)) == 0.0 and not isinstance(group.get("lr"), torch.Tensor))


class AdamStepper:
    """``step()`` = ``optimizer.step()``, faster for fused CUDA Adam (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.fast = (isinstance(optimizer, torch.optim.Adam) and hasattr(torch, "_fused_adam_")
                     and all(_plain_fused_group(g) for g in optimizer.param_groups)
                     and _probe_matches(optimizer.param_groups[0]["params"][0].device
                                        if optimizer.param_groups and optimizer.param_groups[0]["params"] else None))

    def step(self) -> None:
        if not self.fast or not self._fast_step():
            self.optimizer.step()

    def _fast_step(self) -> bool:
        ok = fused_adam_step(self.optimizer)
        if ok is None:
            self.fast = False
        return bool(ok)


def fused_adam_step(opt: torch.optim.Optimizer) -> Optional[bool]:
    """One Adam update of ``opt`` through the fused kernels. True when done; False (nothing
    changed) when some parameter has no Adam state yet or a step counter sits on another device
    than its parameter; None (nothing changed) when a group left the plain fused case."""
    problem, batches, all_steps = _fused_batches(opt)
    if problem is not None:
        return None if problem == "settings" else False  # Adam.step copes with the others
    _launch_fused(batches, all_steps, lambda gi, group: float(group["lr"]))
    return True


def _fused_batches(opt: torch.optim.Optimizer) -> Tuple[Optional[str], List[tuple], List[torch.Tensor]]:
    """``(problem, batches, step counters)`` of the parameters that hold a gradient: one batch
    ``(group index, group, params, grads, exp_avgs, exp_avg_sqs, steps)`` per group. ``problem``
    is None, or why the fused update cannot run: "settings" (a group left the plain fused case),
    "state" (a parameter has no Adam state yet; Adam creates it on its first step) or "device"
    (a step counter sits on another device than its parameter, e.g. restored)."""
    batches: List[tuple] = []
    all_steps: List[torch.Tensor] = []
    for gi, group in enumerate(opt.param_groups):
        if not _plain_fused_group(group):
            return "settings", [], []
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = opt.state.get(p)
            if not state or "exp_avg" not in state or "step" not in state:
                return "state", [], []
            if not isinstance(state["step"], torch.Tensor) or state["step"].device != p.device:
                return "device", [], []
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if params:
            batches.append((gi, group, params, grads, exp_avgs, exp_avg_sqs, steps))
            all_steps.extend(steps)
    return None, batches, all_steps


def _launch_fused(batches: List[tuple], all_steps: List[torch.Tensor], lr_of: Callable[[int, dict], Any],
                  skip: Optional[torch.Tensor] = None) -> None:
    """The kernels of one update: step counters (+1, or +1 - ``skip``), then one ``_fused_adam_``
    per batch with learning rate ``lr_of(group index, group)`` (a float or a device tensor)."""
    if not all_steps:
        return
    torch._foreach_add_(all_steps, 1)
    if skip is not None:
        torch._foreach_sub_(all_steps, [skip] * len(all_steps))
    for gi, group, params, grads, exp_avgs, exp_avg_sqs, steps in batches:
        beta1, beta2 = group["betas"]
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr_of(gi, group),
                           beta1=float(beta1), beta2=float(beta2), weight_decay=0.0, eps=float(group["eps"]),
                           maximize=False, grad_scale=None, found_inf=skip)


class GraphableAdamStep:
    """The fused Adam update of ``opt`` in a form a CUDA graph can capture: learning rates live in
    device tensors (:meth:`sync_learning_rates`, called before each replay, writes the groups'
    changed values into them), and a device flag ``skip`` (float32 0-d, 1 = skip) turns the
    whole step into a no-op, step counters included (``_fused_adam_``'s ``found_inf``, the AMP
    convention). Parameters without a gradient are left out, as ``Adam.step`` leaves them out;
    :meth:`ensure_state` must have created the state of the others before a capture."""

    def __init__(self, opt: torch.optim.Optimizer, device: torch.device):
        if not (isinstance(opt, torch.optim.Adam) and hasattr(torch, "_fused_adam_")
                and all(_plain_fused_group(g) for g in opt.param_groups)):
            raise ValueError("GraphableAdamStep needs a torch.optim.Adam(fused=True) without amsgrad, "
                             "maximize or weight decay")
        self.optimizer = opt
        self.lrs = torch.zeros(len(opt.param_groups), dtype=torch.float32, device=device)
        self._lr_values: List[Optional[float]] = [None] * len(opt.param_groups)
        self.sync_learning_rates()

    def ensure_state(self) -> None:
        """Create Adam's state (zero moments, step 0 on the parameter's device, the layout of
        ``Adam(fused=True)``) for every trainable parameter that has none yet (``Adam.step`` makes
        it on a parameter's first update, which inside a captured graph never runs eagerly), and
        move step counters that sit on another device (a restored checkpoint) to the parameter's."""
        opt = self.optimizer
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state.get(p, {})
                if "exp_avg" in state:
                    step = state.get("step")
                    if isinstance(step, torch.Tensor) and step.device != p.device:  # e.g. restored
                        state["step"] = step.to(device=p.device, dtype=torch.float32)
                    continue
                if not p.requires_grad:
                    continue
                opt.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def sync_learning_rates(self) -> None:
        """Write the groups' current ``lr`` into the device tensors (one small fill per change)."""
        for gi, group in enumerate(self.optimizer.param_groups):
            lr = float(group["lr"])
            if lr != self._lr_values[gi]:
                self.lrs[gi].fill_(lr)
                self._lr_values[gi] = lr

    def step(self, skip: torch.Tensor) -> None:
        """Adam update of every parameter with a gradient, unless ``skip`` (float32 0-d on the
        device) is 1. No host synchronisation; learning rates from :attr:`lrs`."""
        problem, batches, all_steps = _fused_batches(self.optimizer)
        if problem is not None:
            raise ValueError(f"GraphableAdamStep: the fused update cannot run ({problem}); "
                             "call ensure_state() before the step")
        _launch_fused(batches, all_steps, lambda gi, group: self.lrs[gi], skip)


def _probe_matches(device: Optional[torch.device]) -> bool:
    """Three steps of both paths on a probe parameter must agree exactly."""
    if device is None or device.type != "cuda":
        return False
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        init = torch.randn(257, device=device, generator=gen)
        grads = [torch.randn(257, device=device, generator=gen) for _ in range(3)]
        a = torch.nn.Parameter(init.clone())
        b = torch.nn.Parameter(init.clone())
        ref = torch.optim.Adam([{"params": [a], "lr": 0.01}], lr=0.0, eps=1e-15, fused=True)
        fast = torch.optim.Adam([{"params": [b], "lr": 0.01}], lr=0.0, eps=1e-15, fused=True)
        for i, g in enumerate(grads):
            a.grad, b.grad = g.clone(), g.clone()
            ref.step()
            if i == 0:
                fast.step()  # the first step creates the state
            elif not fused_adam_step(fast):
                return False
        torch.cuda.synchronize(device)
        return bool(torch.equal(a.detach(), b.detach()))
    except (RuntimeError, TypeError, AttributeError):
        return False
