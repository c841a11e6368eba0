"""One training run: the :class:`Trainer` (scene, model, optimizer state, camera order, outputs
and the loop), its options (:class:`RunOptions`) and result (:class:`TrainResult`), the errors it
raises, the signal flag and the deterministic mode.

``train.py`` is the command line over this module; the outputs, safety rules and differences from
the original loop that its docstring lists are implemented here.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import random
import shutil
import signal
import sys
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from arguments import ModelParams, OptimizationParams, PipelineParams, save_cfg_args
from training.adam_step import AdamStepper
from training.checkpoint import (
    CheckpointError,
    TrainingCheckpoint,
    capture_rng_state,
    load_checkpoint,
    python_rng_state,
    restore_rng_state,
    save_checkpoint,
    set_python_rng_state,
)
from training.evaluator import Evaluator
from training.loss_window import LossWindow
from training.losses import compute_losses, gt_image_on, is_bound
from utils.general_utils import seed_everything

LAST_GOOD_CHECKPOINT = "chkpnt_last_good.pth"
LOG_EVERY = 10  # iterations between host synchronisations (progress bar, NaN check, scalars)


# ------------------------------------------------------------------------------------------
# Errors and settings
# ------------------------------------------------------------------------------------------

class TrainingError(RuntimeError):
    """Bad input or settings: the message says what and where; nothing was overwritten."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; ``iteration`` is the first iteration where it was seen."""

    def __init__(self, iteration: int, last_good: Optional[str]):
        self.iteration = iteration
        self.last_good = last_good
        where = f"the last good checkpoint is kept at {last_good}" if last_good else \
            "no checkpoint had been written (use --checkpoint_iterations)"
        super().__init__(f"loss became NaN/Inf at iteration {iteration}; training stopped; {where}")


class TrainingInterrupted(RuntimeError):
    """A signal stopped training after the state was saved."""

    def __init__(self, iteration: int, signum: int, checkpoint: str, ply: str):
        self.iteration = iteration
        self.signum = signum
        self.checkpoint = checkpoint
        self.ply = ply
        name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else str(signum)
        super().__init__(f"{name} received: saved iteration {iteration} to {checkpoint} and {ply}")



@dataclass
class RunOptions:
    """Training-run options that are not model/pipeline/optimization settings."""

    ip: str = "127.0.0.1"
    port: int = 60000
    debug_from: int = -1
    detect_anomaly: bool = False
    interval: int = 60_000
    test_iterations: List[int] = field(default_factory=list)
    save_iterations: List[int] = field(default_factory=list)
    checkpoint_iterations: List[int] = field(default_factory=list)
    start_checkpoint: Optional[str] = None
    quiet: bool = False
    seed: int = 0
    overwrite: bool = False
    deterministic: bool = False
    no_cuda_graphs: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunOptions":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in vars(args).items() if k in names})



@dataclass
class TrainResult:
    """What a finished run leaves behind (for callers and tests)."""

    model_path: str
    final_iteration: int
    num_points: int
    metrics: Dict[int, Dict[str, Dict[str, float]]]  # iteration -> split -> {"l1","psnr","ssim"[,"lpips"]}
    saved_plys: List[str]
    checkpoints: List[str]
    stage_ms: Dict[str, float] = field(default_factory=dict)  # mean ms per stage when Trainer.timer is enabled


# ------------------------------------------------------------------------------------------
# Output folder, logging, devices
# ------------------------------------------------------------------------------------------

class _Log:
    """Text output that honours --quiet and keeps the progress bar intact."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._once: set = set()

    def info(self, msg: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)

    def warn(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"warning: {msg}", file=sys.stderr)

    def once(self, key: str, msg: str) -> None:
        if key not in self._once:
            self._once.add(key)
            self.info(msg)


def existing_run_files(model_path: str) -> List[str]:
    """Files/folders in ``model_path`` that show it holds a training run."""
    found = []
    if os.path.isdir(os.path.join(model_path, "point_cloud")):
        found.append(os.path.join(model_path, "point_cloud"))
    found.extend(sorted(glob.glob(os.path.join(model_path, "chkpnt*.pth"))))
    return found


def check_output_folder(model_path: str, resuming: bool, overwrite: bool, log: _Log) -> None:
    """Refuse a folder holding another run unless resuming or --overwrite (then clear it)."""
    if os.path.exists(model_path) and not os.path.isdir(model_path):
        raise TrainingError(f"model path {model_path} exists and is not a folder")
    found = existing_run_files(model_path)
    if not found or resuming:
        return
    if not overwrite:
        shown = ", ".join(os.path.basename(p) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise TrainingError(
            f"model folder {model_path} already holds a training run ({shown}); choose another -m, "
            "resume it with --start_checkpoint, or pass --overwrite to replace it")
    for path in found:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    log.warn(f"--overwrite: removed the previous run's point_cloud/ and checkpoints in {model_path}")


def resolve_devices(dataset: ModelParams, log: _Log) -> torch.device:
    """Model device (CUDA when available, else CPU); moves ``data_device`` to cpu without CUDA."""
    if str(dataset.data_device).startswith("cuda") and not torch.cuda.is_available():
        log.warn("CUDA is not available: --data_device falls back to cpu")
        dataset.data_device = "cpu"
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_tb_writer(model_path: str, log: _Log) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warn("tensorboard is not installed: no training log")
        return None
    return SummaryWriter(model_path)



# ------------------------------------------------------------------------------------------
# Model construction
# ------------------------------------------------------------------------------------------

def build_gaussians(dataset: ModelParams, device: torch.device) -> Any:
    """A ``FlameGaussianModel`` with --bind_to_mesh, else a ``GaussianModel``."""
    if not dataset.bind_to_mesh:
        from scene.gaussian_model import GaussianModel

        return GaussianModel(dataset.sh_degree, device=device)
    from scene.flame_gaussian_model import FlameGaussianModel

    kwargs: Dict[str, Any] = dict(disable_flame_static_offset=dataset.disable_flame_static_offset,
                                  not_finetune_flame_params=dataset.not_finetune_flame_params,
                                  flame_model_path=dataset.flame_model_path or None,
                                  flame_masks_path=dataset.flame_masks_path or None,
                                  teeth_style=dataset.teeth, device=device)
    try:
        return FlameGaussianModel(dataset.sh_degree, **kwargs)
    except FileNotFoundError as exc:
        # the loader's message already says where to download the files and where to put them
        raise TrainingError(f"FLAME asset missing: {exc} (or pass --flame_model_path / --flame_masks_path)") from None


def n_finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value != 0.0



# ------------------------------------------------------------------------------------------
# Stop requests (signals)
# ------------------------------------------------------------------------------------------

class StopFlag:
    """Installs SIGINT/SIGTERM handlers that only set a flag, checked once per iteration."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.signum = signum

    def __enter__(self) -> "StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------

class Trainer:
    """One training run: scene, model, optimizer state, camera order and outputs."""

    def __init__(self, dataset: ModelParams, opt: OptimizationParams, pipe: PipelineParams, run: RunOptions,
                 cli_args: Optional[argparse.Namespace] = None):
        self.dataset, self.opt, self.pipe, self.run = dataset, opt, pipe, run
        self.log = _Log(run.quiet)
        self.device = resolve_devices(dataset, self.log)
        if not dataset.model_path:
            dataset.model_path = os.path.join("output", uuid.uuid4().hex[:10])
        self.model_path = dataset.model_path
        self.resuming = bool(run.start_checkpoint)
        self.checkpoint: Optional[TrainingCheckpoint] = None

        # Validate everything before writing anything.
        if not dataset.source_path:
            raise TrainingError("--source_path/-s is required")
        if not os.path.isdir(dataset.source_path):
            raise TrainingError(f"source path {dataset.source_path} is not a folder")
        check_output_folder(self.model_path, self.resuming, run.overwrite, self.log)
        if self.resuming:
            try:
                self.checkpoint = load_checkpoint(run.start_checkpoint)
            except CheckpointError as exc:
                raise TrainingError(str(exc)) from None

        seed_everything(run.seed)
        self.gaussians = build_gaussians(dataset, self.device)
        from scene import Scene

        try:
            self.scene = Scene(dataset, self.gaussians, progress=not run.quiet)
        except FileNotFoundError as exc:
            raise TrainingError(str(exc)) from None
        except ValueError as exc:  # dataset errors (DatasetError is a ValueError) name the file
            raise TrainingError(str(exc)) from None
        self.gaussians.training_setup(opt)
        self.first_iter = 0
        self.train_cameras = self.scene.getTrainCameras()
        if not self.train_cameras:
            raise TrainingError(f"{dataset.source_path}: no training cameras")
        self.camera_rng = random.Random(run.seed)
        self.camera_stack: List[int] = []
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        if (self.device.type == "cuda" and not run.no_cuda_graphs and is_bound(self.gaussians)
                and self.gaussians.enable_cuda_graphs()):
            self.gaussians.enable_inference_graphs()  # evaluation poses without autograd
            self.log.info("FLAME posing runs as CUDA graphs (--no_cuda_graphs to disable)")
        self.log.info(f"Output folder: {self.model_path}")
        save_cfg_args(self.model_path, self._cfg_namespace(cli_args))
        self.tb = make_tb_writer(self.model_path, self.log)

        bg = [1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0]
        self.background = torch.tensor(bg, dtype=torch.float32, device=self.device)
        self.step_graph = self._make_step_graph()
        self.evaluator = Evaluator(self.scene, self.gaussians, pipe, self.background, self.device, self.tb, self.log)
        self.saved_plys: List[str] = []
        self.checkpoints: List[str] = []
        self.metrics: Dict[int, Dict[str, Dict[str, float]]] = {}
        self._stepper: Optional[Any] = None  # training.adam_step.AdamStepper of the current optimizer
        from utils.timing import StageTimer

        self.timer = StageTimer(enabled=False, device=self.device)  # benchmarks enable it before train()
        self.last_good: Optional[str] = None
        if os.path.isfile(os.path.join(self.model_path, LAST_GOOD_CHECKPOINT)):
            self.last_good = os.path.join(self.model_path, LAST_GOOD_CHECKPOINT)

    # -------------------------------------------------------------- setup helpers
    def _make_step_graph(self) -> Optional[Any]:
        """The whole-iteration CUDA graph (training.step_graph) where it applies: CUDA, graphs not
        disabled, fixed background, no anomaly detection. Debug rendering (--debug_from) and any
        capture failure fall back to the eager iteration."""
        run, opt = self.run, self.opt
        if self.device.type != "cuda" or run.no_cuda_graphs or opt.random_background or run.detect_anomaly:
            return None
        from gaussian_renderer import render
        from training.step_graph import TrainStepGraph

        g = self.gaussians

        def losses(image: torch.Tensor, gt: torch.Tensor, vis: torch.Tensor, timestep: Any) -> Dict[str, torch.Tensor]:
            return compute_losses(image, gt, g, opt, vis, timestep)

        self.log.info("training iterations run as one CUDA graph each (--no_cuda_graphs to disable)")
        return TrainStepGraph(g, self.pipe, self.background, self.device, losses, render, bound=is_bound(g),
                              log=self.log.warn)

    def _cfg_namespace(self, cli_args: Optional[argparse.Namespace]) -> argparse.Namespace:
        merged: Dict[str, Any] = {}
        if cli_args is not None:
            merged.update(vars(cli_args))
        merged.update(self.dataset.to_dict())
        merged.update(self.pipe.to_dict())
        merged.update(self.opt.to_dict())
        merged.update(asdict(self.run))
        # Record the FLAME files actually used (e.g. from $FLAME_MODEL_PATH) so that render.py and
        # the viewers find them again without the environment.
        for key, env in (("flame_model_path", "FLAME_MODEL_PATH"), ("flame_masks_path", "FLAME_MASKS_PATH")):
            if not merged.get(key) and os.environ.get(env):
                merged[key] = os.path.abspath(os.environ[env])
        return argparse.Namespace(**merged)

    def _restore(self, ckpt: TrainingCheckpoint) -> None:
        try:
            self.gaussians.restore(ckpt.model, self.opt)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise TrainingError(f"{self.run.start_checkpoint}: cannot restore the model: {exc}") from None
        self.first_iter = ckpt.iteration
        if ckpt.rng:
            restore_rng_state(ckpt.rng)
        else:
            self.log.warn(f"{self.run.start_checkpoint} has no random generator state: "
                          "the resumed run will not repeat the uninterrupted one exactly")
        n = len(self.train_cameras)
        if ckpt.camera_rng is not None:
            set_python_rng_state(ckpt.camera_rng, self.camera_rng)
        stack = [int(i) for i in ckpt.camera_stack]
        if any(i < 0 or i >= n for i in stack):
            self.log.warn("checkpoint camera order does not match this dataset: starting a fresh order")
            stack = []
        self.camera_stack = stack
        self.log.info(f"Resumed from {self.run.start_checkpoint} at iteration {self.first_iter}")

    # -------------------------------------------------------------- outputs
    def _finite_state(self) -> bool:
        for group in self.gaussians.optimizer.param_groups:
            for p in group["params"]:
                if not bool(torch.isfinite(p).all()):
                    return False
        return True

    def _make_checkpoint(self, iteration: int) -> TrainingCheckpoint:
        return TrainingCheckpoint(iteration=iteration, model=self.gaussians.capture(), rng=capture_rng_state(),
                                  camera_stack=list(self.camera_stack), camera_rng=python_rng_state(self.camera_rng))

    def save_checkpoint(self, iteration: int, last_good: bool = True) -> str:
        ckpt = self._make_checkpoint(iteration)
        path = os.path.join(self.model_path, f"chkpnt{iteration}.pth")
        save_checkpoint(path, ckpt)
        if last_good:
            self.last_good = save_checkpoint(os.path.join(self.model_path, LAST_GOOD_CHECKPOINT), ckpt)
        self.checkpoints.append(path)
        self.log.info(f"[ITER {iteration}] Saving checkpoint {path}")
        return path

    def save_ply(self, iteration: int) -> str:
        path = self.scene.save(iteration)
        self.saved_plys.append(path)
        self.log.info(f"[ITER {iteration}] Saving Gaussians to {os.path.dirname(path)}")
        return path

    # -------------------------------------------------------------- loop pieces
    def next_camera(self) -> Any:
        if self.step_graph is not None and self.step_graph.redo:
            return self.step_graph.redo.popleft()  # a graph iteration skipped for a short pair buffer
        if not self.camera_stack:
            self.camera_stack = list(range(len(self.train_cameras)))
        return self.train_cameras[self.camera_stack.pop(self.camera_rng.randrange(len(self.camera_stack)))]

    def densify(self, iteration: int, render_pkg: Optional[Dict[str, torch.Tensor]]) -> None:
        """Densification statistics of this iteration (``render_pkg``; None when the step graph
        already accumulated them), then densify/prune and opacity reset on their schedule."""
        opt, g = self.opt, self.gaussians
        if iteration >= opt.densify_until_iter:
            return
        if render_pkg is not None:
            vis = render_pkg["visibility_filter"]
            g.update_max_radii2D(render_pkg["radii"], vis)
            g.add_densification_stats(render_pkg["viewspace_points"], vis)
        densify_now = iteration > opt.densify_from_iter and iteration % opt.densification_interval == 0
        reset_now = iteration % opt.opacity_reset_interval == 0 or (
            self.dataset.white_background and iteration == opt.densify_from_iter)
        if (densify_now or reset_now) and self.step_graph is not None:
            self.step_graph.flush()  # every replay's statistics are in before they are used
        if densify_now:
            size_threshold = 20 if iteration > opt.opacity_reset_interval else None
            g.densify_and_prune(opt.densify_grad_threshold, 0.005, self.scene.cameras_extent, size_threshold)
        if reset_now:
            g.reset_opacity()

    def optimizer_step(self) -> None:
        """Adam step (through :class:`training.adam_step.AdamStepper`, same update) and clear grads."""
        opt = self.gaussians.optimizer
        if self._stepper is None or self._stepper.optimizer is not opt:
            self._stepper = AdamStepper(opt)
        self._stepper.step()
        opt.zero_grad(set_to_none=True)

    def evaluate(self, iteration: int) -> None:
        self.metrics[iteration] = self.evaluator(iteration)

    def _wants_eval(self, iteration: int) -> bool:
        return iteration in self.run.test_iterations or (self.run.interval > 0 and iteration % self.run.interval == 0)

    def _viewer_args(self, iteration: int, loss: float) -> Dict[str, Any]:
        return dict(iteration=iteration, gaussians=self.gaussians, scene=self.scene, pipe=self.pipe,
                    background=self.background, loss=(loss if n_finite(loss) else None))

    def _start_viewer(self) -> Any:
        if self.run.port <= 0:
            return None
        try:
            from viewer.server import ViewerServer
        except ImportError as exc:
            self.log.warn(f"remote viewer link unavailable ({exc}); training goes on without it")
            return None
        return ViewerServer.start(self.run.ip, self.run.port, quiet=self.run.quiet)

    # -------------------------------------------------------------- main loop
    def train(self) -> TrainResult:
        from tqdm import tqdm

        opt, run, g = self.opt, self.run, self.gaussians
        torch.autograd.set_detect_anomaly(run.detect_anomaly)
        save_at = set(run.save_iterations) | {opt.iterations}
        ckpt_at = set(run.checkpoint_iterations)
        if 0 in run.test_iterations and self.first_iter == 0:
            self.evaluate(0)

        viewer = self._start_viewer()
        window = LossWindow(LOG_EVERY, self.device)  # loss rows on the device between host syncs
        ema_loss = 0.0
        bar = tqdm(desc="Training progress", disable=run.quiet, initial=self.first_iter, total=opt.iterations,
                   dynamic_ncols=True)
        iteration = self.first_iter

        def sync_check(at_iteration: int) -> None:
            """Raise NonFiniteLossError if a loss so far was NaN/Inf (one host sync)."""
            if self.step_graph is not None:
                self.step_graph.flush()
            bad = window.first_non_finite()
            if bad is not None:
                raise NonFiniteLossError(bad, self.last_good)

        with StopFlag() as stop:
            self.evaluator.should_stop = lambda: stop.requested
            if self.first_iter >= opt.iterations:
                self.log.warn(f"the checkpoint is at iteration {self.first_iter}, --iterations is {opt.iterations}: "
                              "nothing to train")
            try:
                for iteration in range(self.first_iter + 1, opt.iterations + 1):
                    if stop.requested:
                        self._stop_on_signal(iteration - 1, stop.signum, sync_check)
                    if viewer is not None:
                        while viewer.handle(**self._viewer_args(iteration, ema_loss), training_done=False):
                            if stop.requested:
                                self._stop_on_signal(iteration - 1, stop.signum, sync_check)

                    timer = self.timer
                    g.update_learning_rate(iteration)
                    if iteration % 1000 == 0:
                        g.oneupSHdegree()
                    if iteration - 1 == run.debug_from:
                        self.pipe.debug = True
                    cam = self.next_camera()
                    graphed = False
                    if self.step_graph is not None and not self.pipe.debug:
                        with timer("graph_step"):  # posing to Adam step, one replay
                            graphed = self.step_graph.run(iteration, cam, with_stats=iteration < opt.densify_until_iter)
                    if graphed:
                        render_pkg = None
                        window.record_row(iteration, self.step_graph.loss_keys, self.step_graph.loss_row)
                    else:
                        render_pkg, losses = self._eager_forward_backward(cam, timer)
                        with torch.no_grad():
                            window.record(iteration, losses)  # one kernel; read back every LOG_EVERY

                    with torch.no_grad():
                        if iteration % LOG_EVERY == 0 or iteration == opt.iterations:
                            means, bad = window.drain()
                            if bad is not None:
                                raise NonFiniteLossError(bad, self.last_good)
                            ema_loss = means["total"] if ema_loss == 0.0 else 0.4 * means["total"] + 0.6 * ema_loss
                            bar.set_postfix({"Loss": f"{ema_loss:.7f}", "#splats": g.get_xyz.shape[0]})
                            bar.update(iteration - bar.n)
                            self._log_scalars(iteration, means)

                        # As in the original: report and save before this iteration's densification
                        # (an opacity reset would otherwise be what the evaluation sees) and step.
                        if self._wants_eval(iteration):
                            sync_check(iteration)
                            self.evaluate(iteration)
                        if iteration in save_at:
                            sync_check(iteration)
                            self.save_ply(iteration)
                        with timer("densify"):
                            self.densify(iteration, render_pkg)
                        if not graphed:
                            with timer("step"):
                                self.optimizer_step()
                        if iteration in ckpt_at:
                            sync_check(iteration)
                            if not self._finite_state():
                                raise NonFiniteLossError(iteration, self.last_good)
                            self.save_checkpoint(iteration)
                if self.step_graph is not None:
                    self.step_graph.flush()
                    if self.step_graph.skipped_steps:
                        self.log.info(f"{self.step_graph.skipped_steps} graph iterations were skipped and trained "
                                      "again after growing the tile-pair buffer")
                if viewer is not None:
                    viewer.keep_alive(**self._viewer_args(iteration, ema_loss))
            finally:
                bar.close()
                if self.tb is not None:
                    self.tb.close()
                if viewer is not None and hasattr(viewer, "close"):
                    viewer.close()

        return TrainResult(model_path=self.model_path, final_iteration=iteration, num_points=int(g.get_xyz.shape[0]),
                           metrics=self.metrics, saved_plys=self.saved_plys, checkpoints=self.checkpoints,
                           stage_ms=self.timer.summary_ms() if self.timer.enabled else {})

    def _eager_forward_backward(self, cam: Any, timer: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """One iteration's posing, render, losses and backward with eager kernels: ``(render
        package, loss terms)``."""
        from gaussian_renderer import render

        opt, g = self.opt, self.gaussians
        if self.step_graph is not None and self.step_graph.graph is not None:
            self.step_graph.invalidate()  # its gradient buffers must not take this backward's sums
        with timer("camera_mesh"):
            if is_bound(g):
                g.select_mesh_by_timestep(cam.timestep)
        bg = torch.rand(3, device=self.device) if opt.random_background else self.background
        with timer("render"):
            render_pkg = render(cam, g, self.pipe, bg)
        with timer("loss"):
            gt = gt_image_on(cam, self.device)
            if opt.random_background:
                gt = self._recomposite(cam, gt, bg)
            losses = compute_losses(render_pkg["render"], gt, g, opt, render_pkg["visibility_filter"], cam.timestep)
        with timer("backward"):
            losses["total"].backward()
        return render_pkg, losses

    def _recomposite(self, cam: Any, gt: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        """Put the ground truth on the random background ``bg`` using the image's alpha."""
        alpha = getattr(cam, "gt_alpha_mask", None)
        if alpha is None:
            self.log.once("no_alpha", "note: --random_background needs RGBA images; using the fixed background")
            return gt
        alpha = alpha.to(self.device)
        return gt + (bg - self.background).reshape(3, 1, 1) * (1.0 - alpha)

    def _log_scalars(self, iteration: int, means: Dict[str, float]) -> None:
        if self.tb is None:
            return
        for key, value in means.items():
            self.tb.add_scalar(f"train_loss_patches/{key}", value, iteration)
        self.tb.add_scalar("total_points", self.gaussians.get_xyz.shape[0], iteration)
        for group in self.gaussians.optimizer.param_groups:
            if group.get("name") == "xyz":
                self.tb.add_scalar("lr/xyz", group["lr"], iteration)

    def _stop_on_signal(self, iteration: int, signum: int, sync_check: Any) -> None:
        """Save checkpoint + PLY of the last completed iteration, then raise TrainingInterrupted."""
        sync_check(iteration)
        if not self._finite_state():
            raise NonFiniteLossError(iteration, self.last_good)
        ckpt = self.save_checkpoint(iteration)
        ply = self.save_ply(iteration)
        raise TrainingInterrupted(iteration, signum, ckpt, ply)



class DeterministicMode:
    """Turn on deterministic algorithms for the run and restore the previous setting afterwards."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._previous = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
        self._cudnn = torch.backends.cudnn.benchmark

    def __enter__(self) -> "DeterministicMode":
        if self.enabled:
            # warn_only: an op without a deterministic kernel warns instead of stopping training
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            torch.use_deterministic_algorithms(self._previous[0], warn_only=self._previous[1])
            torch.backends.cudnn.benchmark = self._cudnn
