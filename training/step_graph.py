"""A whole training iteration as one CUDA graph.

Between densification steps the shapes of a training iteration do not change, yet run eagerly it
is several hundred kernel launches and ~20 autograd nodes of host work for ~1.5 ms of GPU work:
the loop is bound by the host. :class:`TrainStepGraph` captures one iteration - FLAME posing,
render, losses, backward, densification statistics and the Adam step - and replays it, so an
iteration costs the host a handful of launches.

What changes from one iteration to the next lives in static device buffers that the host fills
before each replay: the camera (matrices, intrinsics in float64 and the timestep, one copy from a
per-camera row cached on the device), the ground-truth image (uint8) and the learning rates.

The rasterizer runs with a fixed-size (tile, splat) pair buffer, since reading the exact count
would synchronise (see ``diff_gaussian_rasterization``). Every replay also copies the exact count
to pinned host memory; the host reads it a few iterations later without waiting. A frame that
needed more pairs than the buffer holds had an incomplete image, so the graph itself turned that
iteration into a no-op on the device (Adam's ``found_inf`` flag, step counters and densification
statistics included): the host then grows the buffer, recaptures, and trains that camera again.

A graph is valid for one set of parameter and statistics tensors, SH degree, image size and
pair capacity; any change (densification, opacity reset, SH degree step, resume) recaptures on
the next iteration. Each capture starts with one eager warm-up run of the same step on a side
stream with the skip flag set (a no-op for the model) that also measures the pair count.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import torch

from training.adam_step import GraphableAdamStep

__all__ = ["TrainStepGraph", "GraphStepCamera", "CAMERA_ROW"]

# Layout of the float64 camera row: view (16), projection (16), centre (3), intrinsics (4), timestep (1).
_VIEW, _PROJ, _CENTRE, _INTR, _TIME = slice(0, 16), slice(16, 32), slice(32, 35), slice(35, 39), 39
CAMERA_ROW = 40
_HEADROOM = 1.5      # pair buffer size over the largest pair count seen
_MIN_CAPACITY = 1 << 16
_RING = 16           # pair counts in flight to the host
_MAX_SIZE_CHANGES = 8  # image size changes tolerated before the graph gives way to eager iterations
# The FLAME model's posed-mesh state that one iteration sets (FlameGaussianModel._set_frames).
_FRAME_ATTRIBUTES = ("verts", "verts_cano", "face_center", "face_orien_mat", "face_orien_quat", "face_scaling",
                     "timestep")


def camera_row(cam: Any, device: torch.device) -> torch.Tensor:
    """The float64 row :class:`TrainStepGraph` copies into its static camera buffer."""
    def values(t: Any, n: int, name: str) -> torch.Tensor:
        v = torch.as_tensor(t).detach().reshape(-1).to(torch.float64).cpu()
        if v.numel() != n:
            raise ValueError(f"camera {getattr(cam, 'image_name', '?')}: {name} has {v.numel()} values, expected {n}")
        return v

    from gaussian_renderer import camera_intrinsics

    intr = torch.tensor([math.nan if v is None else v for v in camera_intrinsics(cam)], dtype=torch.float64)
    timestep = getattr(cam, "timestep", None)
    t = torch.tensor([0.0 if timestep is None else float(int(timestep))], dtype=torch.float64)
    row = torch.cat([values(cam.world_view_transform, 16, "world_view_transform"),
                     values(cam.full_proj_transform, 16, "full_proj_transform"),
                     values(cam.camera_center, 3, "camera_center"), intr, t])
    return row.to(device)


class GraphStepCamera:
    """The camera :func:`gaussian_renderer.render` reads, made of views of the static row (the
    host-side field of view is a placeholder: the rasterizer reads the row's intrinsics)."""

    def __init__(self, row: torch.Tensor, height: int, width: int):
        self.image_height, self.image_width = int(height), int(width)
        self.world_view_transform = row[_VIEW].float().view(4, 4)
        self.full_proj_transform = row[_PROJ].float().view(4, 4)
        self.camera_center = row[_CENTRE].float()
        self.intrinsics = row[_INTR]
        self.timestep = row[_TIME:_TIME + 1].long()
        self.FoVx = self.FoVy = math.pi / 2
        self.cx = self.cy = None


@dataclass
class _InFlight:
    slot: int
    iteration: int
    camera: Any
    capacity: int


class TrainStepGraph:
    """Capture and replay one training iteration (see the module docstring).

    ``loss_fn(image, gt, visibility, timestep) -> dict`` gives the loss terms with ``"total"``
    (the trainer's ``compute_losses``); ``render_fn`` is :func:`gaussian_renderer.render`."""

    def __init__(self, gaussians: Any, pipe: Any, background: torch.Tensor, device: torch.device,
                 loss_fn: Callable[..., Dict[str, torch.Tensor]], render_fn: Callable[..., Dict[str, torch.Tensor]],
                 bound: bool, log: Optional[Callable[[str], None]] = None):
        if device.type != "cuda":
            raise ValueError("TrainStepGraph needs a CUDA device")
        self.gaussians, self.pipe, self.background, self.device = gaussians, pipe, background, device
        self.loss_fn, self.render_fn, self.bound = loss_fn, render_fn, bound
        self.log = log or (lambda msg: None)
        self.row = torch.zeros(CAMERA_ROW, dtype=torch.float64, device=device)
        self.pair_count = torch.zeros(1, dtype=torch.int64, device=device)
        self.force_skip = torch.zeros((), dtype=torch.float32, device=device)
        self.gt: Optional[torch.Tensor] = None
        self.capacity = 0
        self.max_pairs = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.loss_row: Optional[torch.Tensor] = None
        self.loss_keys: Tuple[str, ...] = ()
        self.captures = 0
        self.skipped_steps = 0
        self.disabled_reason: Optional[str] = None
        self.redo: Deque[Any] = deque()
        self._signature: Optional[Tuple[Any, ...]] = None
        self._frames: Dict[str, Any] = {}
        self._adam: Optional[GraphableAdamStep] = None
        self._rows: Dict[int, Tuple[Any, torch.Tensor]] = {}
        self._pinned = torch.zeros(_RING, dtype=torch.int64).pin_memory()
        self._events = [torch.cuda.Event() for _ in range(_RING)]
        self._in_flight: Deque[_InFlight] = deque()
        self._launches = 0
        self._size_changes = 0

    # ------------------------------------------------------------------ per iteration
    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def run(self, iteration: int, cam: Any, with_stats: bool) -> bool:
        """Train one iteration on ``cam`` through the graph (capturing it first when needed).
        False: nothing ran; the caller runs the iteration eagerly (graph unavailable)."""
        if not self.enabled:
            return False
        self.poll()
        image = cam.image_uint8
        self._load_inputs(cam, image)
        if self._size_changes > _MAX_SIZE_CHANGES:
            self.disabled_reason = "the training images differ in size (a capture per size change)"
            self.invalidate()
            self.log(f"note: {self.disabled_reason}; training goes on with eager kernels")
            return False
        signature = self._current_signature(image.shape, with_stats)
        if self.graph is None or not _same(signature, self._signature):
            if not self._capture(with_stats):
                return False
            self._signature = self._current_signature(image.shape, with_stats)
        self._adam.sync_learning_rates()
        self.graph.replay()
        self._restore_frames()
        self._track(iteration, cam)
        return True

    def invalidate(self) -> None:
        """Drop the graph (and the gradients it owns); the next :meth:`run` recaptures."""
        self.graph = None
        self.loss_row = None
        self._signature = None
        self._frames = {}
        opt = getattr(self.gaussians, "optimizer", None)
        if opt is not None:
            opt.zero_grad(set_to_none=True)

    def poll(self) -> None:
        """Read the pair counts of finished replays (no waiting)."""
        while self._in_flight and self._events[self._in_flight[0].slot].query():
            self._settle(self._in_flight.popleft())

    def flush(self) -> None:
        """Wait for every replay in flight and settle their pair counts (before densification,
        evaluation, saving: every skipped iteration is known and queued again afterwards)."""
        while self._in_flight:
            entry = self._in_flight.popleft()
            self._events[entry.slot].synchronize()
            self._settle(entry)

    # ------------------------------------------------------------------ internals
    def _load_inputs(self, cam: Any, image: torch.Tensor) -> None:
        key = id(cam)
        cached = self._rows.get(key)
        if cached is None or cached[0] is not cam:
            cached = (cam, camera_row(cam, self.device))
            self._rows[key] = cached
        self.row.copy_(cached[1])
        if self.gt is None or self.gt.shape != image.shape:
            if self.gt is not None:
                self._size_changes += 1
            self.gt = torch.empty(image.shape, dtype=torch.uint8, device=self.device)
            self.graph = None  # the graph reads the old buffer
        self.gt.copy_(image, non_blocking=True)

    def _current_signature(self, image_shape: torch.Size, with_stats: bool) -> Tuple[Any, ...]:
        g = self.gaussians
        opt = g.optimizer
        params = tuple(p for group in opt.param_groups for p in group["params"])
        return (opt, params, tuple(p.requires_grad for p in params), g.xyz_gradient_accum, g.denom, g.max_radii2D,
                getattr(g, "binding", None), int(g.active_sh_degree), tuple(image_shape), bool(with_stats),
                self.capacity)

    def _capture(self, with_stats: bool) -> bool:
        g = self.gaussians
        opt = g.optimizer
        self.invalidate()
        try:
            if self._adam is None or self._adam.optimizer is not opt:
                self._adam = GraphableAdamStep(opt, self.device)
            self._adam.ensure_state()
            self._adam.sync_learning_rates()
            # Warm-up on a side stream (lazy initialisations happen outside the capture), with the
            # skip flag set: a no-op for the model; it measures the pair count of this frame.
            self.force_skip.fill_(1.0)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(0, with_stats)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.max_pairs = max(self.max_pairs, int(self.pair_count.item()))
            self.capacity = max(self.capacity, _plan_capacity(self.max_pairs))
            opt.zero_grad(set_to_none=True)
            self.force_skip.fill_(0.0)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                row = self._step(self.capacity, with_stats)
        except (RuntimeError, ValueError, TypeError) as exc:
            self.disabled_reason = f"{type(exc).__name__}: {exc}"
            self.invalidate()
            self.force_skip.fill_(0.0)
            self.log(f"note: the training step cannot run as one CUDA graph ({self.disabled_reason}); "
                     "training goes on with eager kernels")
            return False
        self.graph, self.loss_row = graph, row
        self._frames = {name: getattr(g, name) for name in _FRAME_ATTRIBUTES if hasattr(g, name)}
        self.captures += 1
        return True

    def _restore_frames(self) -> None:
        """Point the model's posed-mesh attributes at the graph's outputs (which each replay
        rewrites): code outside the graph (densification) sees the last iteration's frame even
        after an evaluation or viewer render posed the model elsewhere, as in the eager loop."""
        g = self.gaussians
        for name, value in self._frames.items():
            setattr(g, name, value)

    def _step(self, capacity: int, with_stats: bool) -> torch.Tensor:
        """The captured iteration: returns the loss terms as one float32 row (``loss_keys``)."""
        from gaussian_renderer import DeviceRasterInputs

        g = self.gaussians
        h, w = int(self.gt.shape[-2]), int(self.gt.shape[-1])
        cam = GraphStepCamera(self.row, h, w)
        if self.bound:
            g.select_mesh_by_index(cam.timestep)
        inputs = DeviceRasterInputs(intrinsics=cam.intrinsics, pair_capacity=capacity, pair_count=self.pair_count)
        pkg = self.render_fn(cam, g, self.pipe, self.background, device_inputs=inputs)
        gt = self.gt.float().div_(255.0)
        losses = self.loss_fn(pkg["render"], gt, pkg["visibility_filter"], cam.timestep)
        losses["total"].backward()
        with torch.no_grad():
            skip = self.force_skip > 0
            if capacity > 0:
                skip = skip | (self.pair_count[0] > capacity)
            if with_stats:
                vis = pkg["visibility_filter"] & ~skip
                g.update_max_radii2D(pkg["radii"], vis)
                g.add_densification_stats(pkg["viewspace_points"], vis)
            self._adam.step(skip.float())
            self.loss_keys = tuple(losses)
            return torch.stack([v.detach().float().reshape(()) for v in losses.values()])

    def _track(self, iteration: int, cam: Any) -> None:
        slot = self._launches % _RING
        self._launches += 1
        if len(self._in_flight) == _RING:  # the ring is full: settle its oldest entry (long done)
            entry = self._in_flight.popleft()
            self._events[entry.slot].synchronize()
            self._settle(entry)
        self._pinned[slot:slot + 1].copy_(self.pair_count, non_blocking=True)
        self._events[slot].record()
        self._in_flight.append(_InFlight(slot, iteration, cam, self.capacity))

    def _settle(self, entry: _InFlight) -> None:
        pairs = int(self._pinned[entry.slot])
        self.max_pairs = max(self.max_pairs, pairs)
        if pairs > entry.capacity:
            # The device skipped this iteration (incomplete image): grow, recapture, train it again.
            self.skipped_steps += 1
            self.redo.append(entry.camera)
            if self.capacity < _plan_capacity(self.max_pairs):
                self.capacity = _plan_capacity(self.max_pairs)
                self.log(f"[ITER {entry.iteration}] {pairs} tile pairs exceed the pair buffer of "
                         f"{entry.capacity}: iteration skipped, buffer grown to {self.capacity}")


def _plan_capacity(max_pairs: int) -> int:
    want = max(_MIN_CAPACITY, int(max_pairs * _HEADROOM))
    return -(-want // _MIN_CAPACITY) * _MIN_CAPACITY


def _same(a: Optional[Tuple[Any, ...]], b: Optional[Tuple[Any, ...]]) -> bool:
    """Signatures equal: tensors and optimizers by identity, everything else by value."""
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if len(x) != len(y) or not all(u is v if isinstance(u, torch.Tensor) else u == v for u, v in zip(x, y)):
                return False
        elif isinstance(x, (torch.Tensor, torch.optim.Optimizer)) or x is None:
            if x is not y:
                return False
        elif x != y:
            return False
    return True
