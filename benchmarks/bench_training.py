"""Training throughput on the synthetic subject: iterations per second, a per-stage breakdown
(ms) and peak GPU memory. Prints figures; asserts nothing.

    python benchmarks/bench_training.py [--subject DIR] [--width 802 --height 550 --timesteps 40]
        [--iterations 3000] [--densify_from 500 --densify_every 500] [--stage_iterations 300]

Two runs of the real ``training.trainer.Trainer`` (the same code ``train.py`` runs): one without timing,
whose wall time gives it/s (the loop never synchronises except every LOG_EVERY iterations), and a
shorter one with CUDA-event stage timing (camera+mesh, render, loss, backward, densify, step).
The subject is generated with ``scene.synthetic`` (procedural FLAME head) when not given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402


def make_subject(out: str, width: int, height: int, timesteps: int) -> str:
    from flame_model.procedural import write_assets
    from scene.synthetic import main as synth_main

    flame_dir = os.path.join(out, "flame")
    write_assets(flame_dir, seed=0)
    os.environ["FLAME_MODEL_PATH"] = os.path.join(flame_dir, "flame2023.pkl")
    os.environ["FLAME_MASKS_PATH"] = os.path.join(flame_dir, "FLAME_masks.pkl")
    subject = os.path.join(out, "subject")
    t0 = time.perf_counter()
    synth_main(["--out", subject, "--flame_dir", flame_dir, "--width", str(width), "--height", str(height),
                "--num_cameras", "16", "--num_timesteps", str(timesteps), "--seed", "0", "--quiet"])
    print(f"[bench] generated {subject} ({width}x{height}, 16 cameras, {timesteps} timesteps) "
          f"in {time.perf_counter() - t0:.1f} s")
    return subject


def run_training(subject: str, model_dir: str, iterations: int, args: argparse.Namespace, timed: bool,
                 evaluate: bool = False):
    import train
    from training.trainer import Trainer

    argv = ["-s", subject, "-m", model_dir, "--eval", "--white_background", "--bind_to_mesh", "--quiet",
            "--iterations", str(iterations), "--port", "0", "--interval", "0", "--overwrite",
            "--densify_from_iter", str(args.densify_from), "--densification_interval", str(args.densify_every),
            "--densify_until_iter", str(args.densify_until), "--opacity_reset_interval", str(args.opacity_reset),
            "--position_lr_max_steps", str(max(iterations, 1)), "--save_iterations", str(10 ** 9),
            "--seed", str(getattr(args, "seed", 0)),
            "--densify_grad_threshold", str(getattr(args, "densify_grad_threshold", 0.0002))]
    if args.no_finetune:
        argv.append("--not_finetune_flame_params")
    if getattr(args, "no_cuda_graphs", False):
        argv.append("--no_cuda_graphs")
    parser = train.build_parser()
    ns = parser.parse_args(argv)
    from arguments import ModelParams, OptimizationParams, PipelineParams

    dataset, opt, pipe = ModelParams.extract(ns), OptimizationParams.extract(ns), PipelineParams.extract(ns)
    run = train.RunOptions.from_args(ns)
    t_setup = time.perf_counter()
    trainer = Trainer(dataset, opt, pipe, run, ns)
    setup_s = time.perf_counter() - t_setup
    trainer.timer.enabled = timed
    trainer.timer.cuda = timed and trainer.device.type == "cuda"
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if trainer.device.type == "cuda" else float("nan")
    if evaluate:  # score val/test after the timed loop (trainer.metrics[iterations])
        trainer.evaluate(iterations)
    return dict(iterations=iterations, wall_s=wall, it_per_s=iterations / wall, setup_s=setup_s,
                splats=result.num_points, peak_gib=peak, stage_ms=result.stage_ms, trainer=trainer,
                metrics=trainer.metrics.get(iterations, {}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", default=None)
    p.add_argument("--width", type=int, default=802)
    p.add_argument("--height", type=int, default=550)
    p.add_argument("--timesteps", type=int, default=40)
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--stage_iterations", type=int, default=300)
    p.add_argument("--densify_from", type=int, default=500)
    p.add_argument("--densify_every", type=int, default=500)
    p.add_argument("--densify_until", type=int, default=100_000)
    p.add_argument("--opacity_reset", type=int, default=100_000)
    p.add_argument("--densify_grad_threshold", type=float, default=0.0002,
                   help="train.py's threshold (lower: more splats, e.g. 0.00003 grows to ~100k)")
    p.add_argument("--no_finetune", action="store_true", help="--not_finetune_flame_params")
    p.add_argument("--seed", type=int, default=0, help="train.py --seed")
    p.add_argument("--evaluate", action="store_true",
                   help="also score val/test PSNR/SSIM after the last iteration (not timed)")
    p.add_argument("--no_cuda_graphs", action="store_true", help="train.py --no_cuda_graphs (the eager loop)")
    p.add_argument("--eager_baseline", action="store_true",
                   help="then train the same schedule with the eager loop (--no_cuda_graphs) on the same subject "
                        "and print its it/s and val/test scores beside this run's")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--baseline_it_s", type=float, default=30.0,
                   help="it/s to compare against (default: the original's ~30 it/s on the H100; 0: none)")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="bench_training_")
    subject = args.subject or make_subject(work, args.width, args.height, args.timesteps)
    full = run_training(subject, os.path.join(work, "model_full"), args.iterations, args, timed=False,
                        evaluate=args.evaluate)
    print("[bench] FLAME posing: CUDA graphs" if getattr(full["trainer"].gaussians, "_graphed_pose", None) is not None
          else "[bench] FLAME posing: eager")
    graph = getattr(full["trainer"], "step_graph", None)
    if graph is not None:
        print(f"[bench] training step as one CUDA graph: {graph.captures} captures, {graph.skipped_steps} steps "
              f"skipped for the pair buffer (now {graph.capacity} pairs, largest frame {graph.max_pairs})"
              + ("" if graph.enabled else f"; disabled: {graph.disabled_reason}"))
    else:
        print("[bench] training step: eager kernels")
    print(f"[bench] {args.iterations} iterations in {full['wall_s']:.1f} s: {full['it_per_s']:.1f} it/s "
          f"(setup {full['setup_s']:.1f} s, {full['splats']} splats at the end, peak {full['peak_gib']:.2f} GiB)")
    for split, m in full["metrics"].items():
        print(f"[bench] {split} at iteration {args.iterations}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")
    if args.baseline_it_s > 0 and torch.cuda.is_available():
        print(f"[bench] x{full['it_per_s'] / args.baseline_it_s:.1f} the stated baseline of {args.baseline_it_s:g} it/s "
              "(the original GaussianAvatars on this subject, H100, issue 11; not run here)")
    if args.eager_baseline and not args.no_cuda_graphs:
        eager_args = argparse.Namespace(**{**vars(args), "no_cuda_graphs": True})
        eager = run_training(subject, os.path.join(work, "model_eager"), args.iterations, eager_args, timed=False,
                             evaluate=args.evaluate)
        print(f"[bench] eager baseline (--no_cuda_graphs), same schedule: {eager['it_per_s']:.1f} it/s "
              f"({eager['splats']} splats, peak {eager['peak_gib']:.2f} GiB); this run x{full['it_per_s'] / eager['it_per_s']:.2f}")
        for split, m in eager["metrics"].items():
            mine = full["metrics"].get(split, {})
            delta = f" (this run {mine['psnr'] - m['psnr']:+.2f} dB, SSIM {mine['ssim'] - m['ssim']:+.4f})" if mine else ""
            print(f"[bench] eager baseline {split}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}{delta}")
        full["eager_baseline"] = {k: v for k, v in eager.items() if k != "trainer"}
    staged = run_training(subject, os.path.join(work, "model_staged"), args.stage_iterations, args, timed=True)
    print(f"[bench] per-stage mean ms over {args.stage_iterations} iterations "
          f"({staged['it_per_s']:.1f} it/s with stage events):")
    total = sum(staged["stage_ms"].values())
    for name, ms in staged["stage_ms"].items():
        print(f"  {name:12s} {ms:8.3f} ms  {100 * ms / max(total, 1e-9):5.1f} %")
    figures = {k: v for k, v in full.items() if k != "trainer"}
    figures["stages_ms"] = staged["stage_ms"]
    figures["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
