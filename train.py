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
import signal
import sys
from typing import Optional, Sequence

import torch

from arguments import ModelParams, OptimizationParams, PipelineParams
from training.trainer import (
    DeterministicMode,
    NonFiniteLossError,
    RunOptions,
    Trainer,
    TrainingError,
    TrainingInterrupted,
    TrainResult,
)


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


def training(dataset: ModelParams, opt: OptimizationParams, pipe: PipelineParams, run: RunOptions,
             cli_args: Optional[argparse.Namespace] = None) -> TrainResult:
    """Set up and run one training run (raises TrainingError / NonFiniteLossError / TrainingInterrupted)."""
    with DeterministicMode(run.deterministic):
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
