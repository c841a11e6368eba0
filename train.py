#!/usr/bin/env python
"""Train a GaussianAvatars head avatar (``--bind_to_mesh``) or a plain 3D Gaussian Splatting scene.

    python train.py -s SUBJECT -m output/NAME --eval --white_background --bind_to_mesh --port 60000

Outputs (SPEC 4) in the model folder: ``cfg_args`` (JSON), ``cameras.json``, ``input.ply``,
``point_cloud/iteration_N/point_cloud.ply`` (+ ``flame_param.npz``), ``chkpntN.pth``,
``chkpnt_last_good.pth`` and the TensorBoard log.

Safety: every PLY and checkpoint is written atomically; Ctrl-C / SIGTERM save a checkpoint and
the current PLY before exiting; a non-finite loss stops the run (naming the iteration) without
touching ``chkpnt_last_good.pth``; ``--start_checkpoint`` resumes the exact run (parameters,
optimizer, densification statistics, SH degree, random generators, camera order).

Exit codes: 0 done, 1 bad input / settings, 3 non-finite loss, 128 + signal number when stopped
by a signal (after saving).

Differences from the original loop (on purpose): the optimizer also steps at the last iteration,
and PLYs / checkpoints of iteration N hold the state *after* N steps, so a run stopped at N and
resumed matches an uninterrupted run; ``--port 0`` disables the viewer link; ``--deterministic``
makes CPU runs repeat bit for bit (with ``--seed``); ``--test_iterations 0`` evaluates the
untrained model.
"""
from __future__ import annotations

import argparse
import functools
import glob
import math
import os
import random
import shutil
import signal
import sys
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from arguments import ModelParams, OptimizationParams, PipelineParams, save_cfg_args
from utils.checkpoint import (
    CheckpointError,
    TrainingCheckpoint,
    capture_rng_state,
    load_checkpoint,
    python_rng_state,
    restore_rng_state,
    save_checkpoint,
    set_python_rng_state,
)
from utils.adam_step import AdamStepper
from utils.loss_window import LossWindow
from utils.general_utils import seed_everything

LAST_GOOD_CHECKPOINT = "chkpnt_last_good.pth"
LOG_EVERY = 10  # iterations between host synchronisations (progress bar, NaN check, scalars)
NUM_VIS_IMAGES = 4  # images per split written to TensorBoard at each evaluation


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


def build_parser() -> argparse.ArgumentParser:
    """The train.py command line: the three settings groups plus the run options."""
    parser = argparse.ArgumentParser(description="Train GaussianAvatars (or plain 3D Gaussian Splatting).")
    ModelParams.add_to_parser(parser)
    OptimizationParams.add_to_parser(parser)
    PipelineParams.add_to_parser(parser)
    run = parser.add_argument_group("Run")
    run.add_argument("--ip", type=str, default="127.0.0.1", help="remote viewer address (default: '127.0.0.1')")
    run.add_argument("--port", type=int, default=60000,
                     help="remote viewer port; 0 disables the viewer link (default: 60000)")
    run.add_argument("--debug_from", type=int, default=-1,
                     help="turn on --debug from this iteration on (default: -1, never)")
    run.add_argument("--detect_anomaly", action="store_true", default=False,
                     help="autograd anomaly detection (slow) (default: False)")
    run.add_argument("--interval", type=int, default=60_000,
                     help="evaluate on val/test every N iterations; 0 disables (default: 60000)")
    run.add_argument("--test_iterations", nargs="+", type=int, default=[],
                     help="extra evaluation iterations; 0 evaluates the untrained model (default: [])")
    run.add_argument("--save_iterations", nargs="+", type=int, default=[],
                     help="iterations whose model is saved as PLY; the final iteration always is (default: [])")
    run.add_argument("--checkpoint_iterations", nargs="+", type=int, default=[],
                     help="iterations at which chkpntN.pth (and chkpnt_last_good.pth) are written (default: [])")
    run.add_argument("--start_checkpoint", type=str, default=None,
                     help="resume from this checkpoint (default: None)")
    run.add_argument("--quiet", action="store_true", default=False, help="no text on stdout (default: False)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    run.add_argument("--deterministic", action="store_true", default=False,
                     help="deterministic algorithms (torch.use_deterministic_algorithms): with --seed, reruns and "
                          "resumed runs repeat a run exactly on CPU (default: False)")
    run.add_argument("--no_cuda_graphs", action="store_true", default=False,
                     help="on a GPU, run every training iteration as eager kernels instead of replaying "
                          "it (and FLAME posing) as CUDA graphs (default: False)")
    run.add_argument("--overwrite", action="store_true", default=False,
                     help="allow a model folder that already holds a run: its point_cloud/ and chkpnt*.pth "
                          "are deleted (default: False)")
    return parser


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


def is_bound(gaussians: Any) -> bool:
    return getattr(gaussians, "binding", None) is not None


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------

def gt_image_on(cam: Any, device: torch.device) -> torch.Tensor:
    """The camera's ground truth as float (3,H,W) on ``device``: the cached uint8 image is moved
    first (a quarter of the bytes) and converted there."""
    img = cam.image_uint8
    if img.device != device:
        img = img.to(device, non_blocking=True)
    return img.float().div_(255.0)


@functools.lru_cache(maxsize=1)
def _fused_terms_available() -> bool:
    try:
        import ga_ssim  # noqa: F401  (its reference serves where the kernels are not built)
    except ImportError:
        return False
    return True


def compute_losses(image: torch.Tensor, gt_image: torch.Tensor, gaussians: Any, opt: OptimizationParams,
                   visibility_filter: torch.Tensor, timestep: Optional[int]) -> Dict[str, torch.Tensor]:
    """Image loss (1-λ) L1 + λ (1-SSIM) plus the regularisers of mesh-bound models (SPEC 5).

    The image terms and the default (local, non-metric) position and scale regularisers are one
    autograd node (:mod:`utils.training_loss`); metric variants and the offset/Laplacian terms
    are added by autograd operators."""
    from utils import loss_utils

    bound = is_bound(gaussians)
    vis = visibility_filter
    use_fused = _fused_terms_available()
    fuse_xyz = use_fused and bound and opt.lambda_xyz != 0 and not opt.metric_xyz
    fuse_scale = use_fused and bound and opt.lambda_scale != 0 and not opt.metric_scale
    losses: Dict[str, torch.Tensor] = {}
    outside: List[torch.Tensor] = []  # terms from autograd operators, added to the fused node's sum

    def composed(name: str, value: torch.Tensor) -> None:
        losses[name] = value
        outside.append(value)

    fused = None
    if use_fused:
        from utils.training_loss import LossWeights, training_terms

        weights = LossWeights(l1=1.0 - opt.lambda_dssim, ssim=opt.lambda_dssim,
                              xyz=opt.lambda_xyz if fuse_xyz else 0.0, xyz_threshold=opt.threshold_xyz,
                              scale=opt.lambda_scale if fuse_scale else 0.0, scale_threshold=opt.threshold_scale)
        fused = training_terms(image, gt_image, weights, xyz=gaussians._xyz if fuse_xyz else None,
                               scaling=gaussians._scaling if fuse_scale else None, mask=vis if bound else None)
        losses["l1"], losses["ssim"] = fused[0], fused[1]
    else:
        composed("l1", loss_utils.l1_loss(image, gt_image) * (1.0 - opt.lambda_dssim))
        composed("ssim", (1.0 - loss_utils.ssim(image, gt_image)) * opt.lambda_dssim)
    if bound:
        if fuse_xyz:
            losses["xyz"] = fused[2]
        elif opt.lambda_xyz != 0:
            composed("xyz", gaussians.compute_xyz_loss(opt.threshold_xyz, metric=opt.metric_xyz, mask=vis)
                     * opt.lambda_xyz)
        if fuse_scale:
            losses["scale"] = fused[3]
        elif opt.lambda_scale != 0:
            composed("scale", gaussians.compute_scale_loss(opt.threshold_scale, metric=opt.metric_scale, mask=vis)
                     * opt.lambda_scale)
        if opt.lambda_dynamic_offset != 0:
            composed("dy_off", gaussians.compute_dynamic_offset_loss() * opt.lambda_dynamic_offset)
        if opt.lambda_dynamic_offset_std != 0:
            composed("dynamic_offset_std",
                     gaussians.compute_dynamic_offset_std_loss() * opt.lambda_dynamic_offset_std)
        if opt.lambda_laplacian != 0:
            composed("lap", gaussians.compute_laplacian_loss() * opt.lambda_laplacian)
    total = fused.sum() if fused is not None else None
    for value in outside:
        total = value if total is None else total + value
    losses["total"] = total
    return losses


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------

def lpips_weights_available() -> bool:
    """True when the VGG LPIPS weights are on disk (torchvision cache + lpips linear layers)."""
    try:
        import lpips
        from torchvision.models import VGG16_Weights
    except ImportError:
        return False
    vgg = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG16_Weights.IMAGENET1K_V1.url))
    lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    return os.path.isfile(vgg) and os.path.isfile(lin)


class Evaluator:
    """Periodic L1 / PSNR / SSIM (and LPIPS when its weights are local) on val, test and a few
    training views. Consumes no random numbers (so resumed runs stay identical)."""

    def __init__(self, scene: Any, gaussians: Any, pipe: PipelineParams, background: torch.Tensor,
                 device: torch.device, tb_writer: Any, log: _Log):
        self.scene, self.gaussians, self.pipe = scene, gaussians, pipe
        self.background, self.device, self.tb, self.log = background, device, tb_writer, log
        self._lpips: Any = None
        self._lpips_checked = False
        self._gt_logged: set = set()
        self.should_stop: Any = lambda: False  # set by the trainer: a signal aborts a long evaluation

    def _lpips_fn(self) -> Any:
        if not self._lpips_checked:
            self._lpips_checked = True
            if lpips_weights_available():
                import lpips

                self._lpips = lpips.LPIPS(net="vgg", verbose=False).to(self.device).eval()
            else:
                self.log.info("note: LPIPS (VGG) weights are not cached locally; evaluation skips LPIPS")
        return self._lpips

    def splits(self) -> List[tuple]:
        train = self.scene.getTrainCameras()
        train_views = [train[idx % len(train)] for idx in range(5, 30, 5)] if train else []
        return [("val", self.scene.getValCameras()), ("test", self.scene.getTestCameras()), ("train", train_views)]

    @torch.no_grad()
    def __call__(self, iteration: int) -> Dict[str, Dict[str, float]]:
        from gaussian_renderer import render
        from utils.image_utils import psnr
        from utils.loss_utils import l1_loss, ssim

        results: Dict[str, Dict[str, float]] = {}
        lp = self._lpips_fn()
        for name, cams in self.splits():
            if not cams:
                continue
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)
            for idx, cam in enumerate(cams):
                if self.should_stop():
                    self.log.info(f"[ITER {iteration}] evaluation interrupted")
                    return results
                if is_bound(self.gaussians) and cam.timestep is not None:
                    self.gaussians.select_mesh_by_timestep(cam.timestep)
                image = torch.clamp(render(cam, self.gaussians, self.pipe, self.background)["render"], 0.0, 1.0)
                gt = gt_image_on(cam, self.device)
                if self.tb is not None and idx < NUM_VIS_IMAGES:
                    tag = f"{name}_view_{cam.image_name}".replace("/", "_")
                    self.tb.add_images(tag + "/render", image[None], global_step=iteration)
                    if tag not in self._gt_logged:
                        self._gt_logged.add(tag)
                        self.tb.add_images(tag + "/ground_truth", gt[None], global_step=iteration)
                sums[0] += l1_loss(image, gt).double()
                sums[1] += psnr(image, gt).double()
                sums[2] += ssim(image, gt).double()
                if lp is not None:
                    sums[3] += lp(image[None], gt[None], normalize=True).double().reshape(())
            vals = (sums / len(cams)).tolist()
            res = {"l1": vals[0], "psnr": vals[1], "ssim": vals[2]}
            if lp is not None:
                res["lpips"] = vals[3]
            results[name] = res
            msg = f"[ITER {iteration}] Evaluating {name}: L1 {vals[0]:.5f} PSNR {vals[1]:.3f} SSIM {vals[2]:.4f}"
            if lp is not None:
                msg += f" LPIPS {vals[3]:.4f}"
            self.log.info(msg)
            if self.tb is not None:
                for key, value in res.items():
                    self.tb.add_scalar(f"{name}/loss_viewpoint - {key}", value, iteration)
        if self.tb is not None:
            self.tb.add_histogram("scene/opacity_histogram", self.gaussians.get_opacity, iteration)
        return results


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
        self._stepper: Optional[Any] = None  # utils.adam_step.AdamStepper of the current optimizer
        from utils.timing import StageTimer

        self.timer = StageTimer(enabled=False, device=self.device)  # benchmarks enable it before train()
        self.last_good: Optional[str] = None
        if os.path.isfile(os.path.join(self.model_path, LAST_GOOD_CHECKPOINT)):
            self.last_good = os.path.join(self.model_path, LAST_GOOD_CHECKPOINT)

    # -------------------------------------------------------------- setup helpers
    def _make_step_graph(self) -> Optional[Any]:
        """The whole-iteration CUDA graph (utils.step_graph) where it applies: CUDA, graphs not
        disabled, fixed background, no anomaly detection. Debug rendering (--debug_from) and any
        capture failure fall back to the eager iteration."""
        run, opt = self.run, self.opt
        if self.device.type != "cuda" or run.no_cuda_graphs or opt.random_background or run.detect_anomaly:
            return None
        from gaussian_renderer import render
        from utils.step_graph import TrainStepGraph

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
        """Adam step (through :class:`utils.adam_step.AdamStepper`, same update) and clear grads."""
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
            from gaussian_renderer.network_gui import ViewerServer
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


class _DeterministicMode:
    """Turn on deterministic algorithms for the run and restore the previous setting afterwards."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._previous = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
        self._cudnn = torch.backends.cudnn.benchmark

    def __enter__(self) -> "_DeterministicMode":
        if self.enabled:
            # warn_only: an op without a deterministic kernel warns instead of stopping training
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            torch.use_deterministic_algorithms(self._previous[0], warn_only=self._previous[1])
            torch.backends.cudnn.benchmark = self._cudnn


def training(dataset: ModelParams, opt: OptimizationParams, pipe: PipelineParams, run: RunOptions,
             cli_args: Optional[argparse.Namespace] = None) -> TrainResult:
    """Set up and run one training run (raises TrainingError / NonFiniteLossError / TrainingInterrupted)."""
    with _DeterministicMode(run.deterministic):
        return Trainer(dataset, opt, pipe, run, cli_args).train()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dataset = ModelParams.extract(args)
        opt = OptimizationParams.extract(args)
        pipe = PipelineParams.extract(args)
    except ValueError as exc:
        parser.error(str(exc))
    run = RunOptions.from_args(args)
    if not run.quiet:
        print("Optimizing " + (dataset.model_path or "(new folder under output/)"))
    try:
        result = training(dataset, opt, pipe, run, args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # before the training loop installed its handler: nothing to save yet
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    if not run.quiet:
        peak = ""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB"
        print(f"\nTraining complete: {result.model_path} ({result.num_points} splats{peak})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
