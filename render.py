"""Render a trained model's cameras to numbered PNGs and MP4 videos.

    python render.py -m MODEL [--iteration N] [--skip_train] [--skip_val] [--skip_test]
                     [--select_camera_id ID] [-t TARGET] [--render_mesh] [--quiet]
                     [--no_video] [--num_writers K] [--pose_chunk T]   (+ model / pipeline flags, from cfg_args)

Output, per split (``train``, ``val``, ``test``; with ``-t TARGET`` one set named after the target
folder; ``_<ID>`` appended with ``--select_camera_id``)::

    MODEL/<set>/ours_<N>/renders/00000.png ...   the avatar
    MODEL/<set>/ours_<N>/gt/00000.png ...        ground truth (when the cameras have images)
    MODEL/<set>/ours_<N>/renders_mesh/...        --render_mesh: the posed FLAME mesh, shaded,
                                                 blended at 50% over the ground truth (or the
                                                 render when there is none)
    MODEL/<set>/ours_<N>/renders.mp4, gt.mp4, renders_mesh.mp4   25 fps, H.264, yuv420p

A mesh-bound avatar's FLAME frames are posed ``--pose_chunk`` timesteps at a time in one batched
pass (scene.pose_batches), not one timestep per view. Rendering never waits for the disk: each
view's images are converted to uint8 on the device, copied to (pinned) host memory in one
non-blocking copy, and handed to a pool of PNG writer threads and to one encoder thread per
video, all through bounded queues (memory stays flat).
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from arguments import ModelParams, PipelineParams, get_combined_args
from scene.pose_batches import SequencePoser
from utils.async_writer import AsyncImageWriter
from utils.video_utils import DEFAULT_FPS, VideoError, VideoWriter

MESH_OPACITY = 0.5
_FRAME_RE = re.compile(r"^\d{5,}\.png$")


# ---------------------------------------------------------------------------------------------
# device -> host transfer
# ---------------------------------------------------------------------------------------------

@dataclass
class HostFrames:
    """Images of one view on the host, (K, H, W, 3) uint8; ``ready`` is the CUDA event recorded
    after the non-blocking copy (None when the data is already there)."""

    data: torch.Tensor
    ready: Optional[Any] = None

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()


def to_uint8_hwc(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float in [0, 1] or uint8 -> (H, W, 3) uint8 on the same device. Floats are
    rounded like ``torchvision.utils.save_image`` (x * 255 + 0.5, clamped, truncated)."""
    if image.dtype != torch.uint8:
        image = image.detach().mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
    return image[:3].permute(1, 2, 0)


def copy_to_host(images: Sequence[torch.Tensor]) -> HostFrames:
    """Stack same-size (3, H, W) images as uint8 and bring them to the host in one copy."""
    stacked = torch.stack([to_uint8_hwc(im) for im in images])
    if stacked.device.type != "cuda":
        return HostFrames(stacked.contiguous())
    host = torch.empty(stacked.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return HostFrames(host, event)


# ---------------------------------------------------------------------------------------------
# video encoding thread
# ---------------------------------------------------------------------------------------------

class VideoThread:
    """Encodes frames, in submission order, on its own thread (bounded backlog)."""

    _STOP = object()

    def __init__(self, path: Path, fps: float = DEFAULT_FPS, max_pending: int = 16):
        self.path = path
        self.writer = VideoWriter(path, fps=fps)
        self.error: Optional[BaseException] = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name=f"video-{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self.error is not None:
                continue  # drain after a failure
            frames, index = item
            try:
                frames.wait()
                self.writer.append(frames.data[index].numpy())
            except (VideoError, OSError, ValueError, RuntimeError) as exc:
                self.error = exc
                self.writer.abort()

    def submit(self, frames: HostFrames, index: int) -> None:
        self._queue.put((frames, index))

    def finish(self) -> int:
        """Wait for the backlog, finalize the file; returns the frame count (raises on error)."""
        self._queue.put(self._STOP)
        self._thread.join()
        if self.error is not None:
            raise VideoError(f"{self.path}: {self.error}")
        return self.writer.close()

    def abort(self) -> None:
        self._queue.put(self._STOP)
        self._thread.join()
        self.writer.abort()


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

@dataclass
class RenderOptions:
    render_mesh: bool = False
    write_video: bool = True
    num_writers: int = 4
    quiet: bool = False
    fps: float = DEFAULT_FPS
    pose_chunk: int = 64  # timesteps posed per batched FLAME pass


@dataclass
class SetResult:
    name: str
    folder: Path
    frames: int
    streams: List[str] = field(default_factory=list)
    videos: List[Path] = field(default_factory=list)
    seconds_total: float = 0.0    # the whole set: rendering, PNG and video writing, waiting for them
    seconds_render: float = 0.0   # the render calls alone (device time between events on CUDA)

    @property
    def fps_total(self) -> float:
        return self.frames / self.seconds_total if self.seconds_total > 0 else float("nan")

    @property
    def fps_render(self) -> float:
        return self.frames / self.seconds_render if self.seconds_render > 0 else float("nan")


def _clear_frames(folder: Path) -> None:
    """Remove numbered PNGs left by an earlier run (a shorter run must not leave stale frames)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if _FRAME_RE.match(p.name):
                p.unlink()


def _mesh_overlay(gaussians: Any, view: Any, base: torch.Tensor) -> torch.Tensor:
    from utils.mesh_renderer import render_mesh, render_mesh_overlay

    verts = gaussians.verts.reshape(-1, 3)
    out = render_mesh(verts, gaussians.faces, camera=view)
    rgba = out.rgba.to(base.device)
    return render_mesh_overlay(base.float(), rgba, MESH_OPACITY).clamp(0.0, 1.0)


class _RenderClock:
    """Sums the time of the render calls: CUDA events on the GPU (no host synchronisation per
    view; read once at the end), wall-clock time on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: List[Any] = []
        self.cpu_seconds = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            self.pairs.append([begin, None])
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs[-1][1] = end
        else:
            self.cpu_seconds += time.perf_counter() - self._t0

    def seconds(self) -> float:
        if not self.cuda:
            return self.cpu_seconds
        torch.cuda.synchronize()
        return sum(b.elapsed_time(e) for b, e in self.pairs) / 1000.0


def render_view(poser: Optional[SequencePoser], idx: int, view: Any, gaussians: Any, pipeline: Any,
                background: torch.Tensor) -> torch.Tensor:
    """The (3, H, W) image of view ``idx`` of a set (``poser``: the set's SequencePoser, None for
    a model without a mesh), left on the render device."""
    from gaussian_renderer import render

    if poser is not None:
        poser.select(idx)
    return render(view, gaussians, pipeline, background)["render"]


def make_poser(views: Sequence[Any], gaussians: Any, chunk: int) -> Optional[SequencePoser]:
    """The SequencePoser of a set's views for a mesh-bound model (None otherwise)."""
    bound = getattr(gaussians, "binding", None) is not None and hasattr(gaussians, "pose_timesteps")
    return SequencePoser(gaussians, [v.timestep for v in views], chunk=chunk) if bound else None


def render_set(model_path: Path, name: str, iteration: int, views: Sequence[Any], gaussians: Any,
               pipeline: Any, background: torch.Tensor, opts: RenderOptions) -> Optional[SetResult]:
    """Render ``views`` into ``model_path/name/ours_<iteration>``."""
    from tqdm import tqdm

    if not views:
        if not opts.quiet:
            print(f"[{name}] no cameras: skipped")
        return None
    iter_path = model_path / name / f"ours_{iteration}"
    has_gt = all(getattr(v, "image_uint8", None) is not None for v in views)
    streams = ["renders"] + (["gt"] if has_gt else []) + (["renders_mesh"] if opts.render_mesh else [])
    for s in streams:  # outputs of an earlier run of these streams would be stale
        _clear_frames(iter_path / s)
        (iter_path / f"{s}.mp4").unlink(missing_ok=True)
        (iter_path / s).mkdir(parents=True, exist_ok=True)
    # the views' FLAME frames are posed in batches of opts.pose_chunk timesteps (one FLAME pass each)
    poser = make_poser(views, gaussians, opts.pose_chunk)

    videos = {s: VideoThread(iter_path / f"{s}.mp4", fps=opts.fps) for s in streams} if opts.write_video else {}
    ok = False
    clock = _RenderClock(background.device)
    t_start = time.perf_counter()
    try:
        with AsyncImageWriter(num_workers=opts.num_writers, max_pending=4 * opts.num_writers) as writer:
            for idx, view in enumerate(tqdm(views, desc=f"Rendering {name}", disable=opts.quiet)):
                clock.start()
                rendering = render_view(poser, idx, view, gaussians, pipeline, background)
                clock.stop()
                gt = view.image_uint8[:3] if has_gt else None
                # everything that lives on the render device leaves it in one non-blocking copy
                on_device = {"renders": rendering}
                if gt is not None and gt.device == rendering.device:
                    on_device["gt"] = gt
                if opts.render_mesh:
                    base = gt.to(rendering.device).float() / 255.0 if gt is not None else rendering
                    on_device["renders_mesh"] = _mesh_overlay(gaussians, view, base)
                host = copy_to_host(list(on_device.values()))
                frames = {s: (host, k) for k, s in enumerate(on_device)}
                if gt is not None and "gt" not in frames:  # gt already on the host (data_device cpu)
                    frames["gt"] = (HostFrames(to_uint8_hwc(gt).unsqueeze(0)), 0)
                fname = f"{idx:05d}.png"
                for s, (hf, k) in frames.items():
                    writer.submit(iter_path / s / fname, hf.data[k].numpy(), ready=hf.ready)
                    if s in videos:
                        videos[s].submit(hf, k)
        video_frames = {s: v.finish() for s, v in videos.items()}
        ok = True
    finally:
        if not ok:
            for v in videos.values():
                v.abort()
    for s, n in video_frames.items():
        if n != len(views):
            raise VideoError(f"{iter_path / (s + '.mp4')}: wrote {n} frames for {len(views)} views")
    result = SetResult(name, iter_path, len(views), streams, [v.path for v in videos.values()],
                       seconds_total=time.perf_counter() - t_start, seconds_render=clock.seconds())
    if not opts.quiet:
        print(f"[{name}] {len(views)} views -> {iter_path} ({', '.join(streams)}"
              f"{'; videos: ' + ', '.join(p.name for p in result.videos) if result.videos else ''})")
        print(f"[{name}] {result.fps_total:.1f} views/s with writing ({result.seconds_total:.4f} s); "
              f"rendering alone {result.fps_render:.1f} views/s ({result.seconds_render:.4f} s)")
    return result


def build_model(dataset: ModelParams) -> Any:
    """An empty Gaussian model of the right kind for ``dataset`` (FLAME-bound or plain)."""
    if dataset.bind_to_mesh:
        from scene.flame_gaussian_model import FlameGaussianModel

        return FlameGaussianModel(dataset.sh_degree, dataset.disable_flame_static_offset,
                                  dataset.not_finetune_flame_params,
                                  flame_model_path=dataset.flame_model_path or None,
                                  flame_masks_path=dataset.flame_masks_path or None,
                                  teeth_style=dataset.teeth)
    from scene.gaussian_model import GaussianModel

    return GaussianModel(dataset.sh_degree)


@dataclass
class LoadedSets:
    """A model loaded for rendering and its camera sets, ``(name, views)`` in rendering order."""
    gaussians: Any
    loaded_iter: int
    background: torch.Tensor
    model_path: Path
    sets: List[Any]


def load_sets(dataset: ModelParams, iteration: int, skip_train: bool, skip_val: bool,
              skip_test: bool, quiet: bool = False) -> LoadedSets:
    """Load the model at ``iteration`` (-1: latest) and the camera sets to render."""
    from scene import Scene

    with torch.no_grad():
        gaussians = build_model(dataset)
        scene = Scene(dataset, gaussians, load_iteration=iteration, shuffle=False, progress=not quiet)
        device = getattr(gaussians, "device", None) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        bg = [1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0]
        background = torch.tensor(bg, dtype=torch.float32, device=device)
        model_path = Path(dataset.model_path)
        suffix = f"_{dataset.select_camera_id}" if dataset.select_camera_id is not None \
            and dataset.select_camera_id >= 0 else ""
        sets = []
        if dataset.target_path:
            name = os.path.basename(os.path.normpath(dataset.target_path))
            # the target's splits are merged into the test cameras (scene.dataset_readers)
            sets.append((name + suffix, scene.getTestCameras()))
        else:
            if not skip_train:
                sets.append(("train" + suffix, scene.getTrainCameras()))
            if not skip_val:
                sets.append(("val" + suffix, scene.getValCameras()))
            if not skip_test:
                sets.append(("test" + suffix, scene.getTestCameras()))
    return LoadedSets(gaussians, scene.loaded_iter, background, model_path, sets)


def render_sets(dataset: ModelParams, iteration: int, pipeline: PipelineParams, skip_train: bool,
                skip_val: bool, skip_test: bool, opts: RenderOptions) -> List[SetResult]:
    """Load the model at ``iteration`` (-1: latest) and render the requested sets."""
    if opts.render_mesh and not dataset.bind_to_mesh:
        raise ValueError("--render_mesh needs a mesh-bound avatar (trained with --bind_to_mesh)")
    loaded = load_sets(dataset, iteration, skip_train, skip_val, skip_test, quiet=opts.quiet)
    results = []
    with torch.no_grad():
        for name, views in loaded.sets:
            res = render_set(loaded.model_path, name, loaded.loaded_iter, views, loaded.gaussians, pipeline,
                             loaded.background, opts)
            if res is not None:
                results.append(res)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Render a trained model's cameras (PNGs + MP4).")
    ModelParams.add_to_parser(parser)
    PipelineParams.add_to_parser(parser)
    parser.add_argument("--iteration", default=-1, type=int, help="iteration to load (-1: latest)")
    parser.add_argument("--skip_train", action="store_true", help="do not render the training cameras")
    parser.add_argument("--skip_val", action="store_true", help="do not render the validation cameras")
    parser.add_argument("--skip_test", action="store_true", help="do not render the test cameras")
    parser.add_argument("--render_mesh", action="store_true", help="also write the posed mesh overlay")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--no_video", action="store_true", help="do not write the mp4 files")
    parser.add_argument("--num_writers", type=int, default=min(8, os.cpu_count() or 1),
                        help="PNG writer threads")
    parser.add_argument("--pose_chunk", type=int, default=RenderOptions.pose_chunk,
                        help="timesteps of a mesh-bound avatar posed together in one batched FLAME pass "
                             "(about 1 MB of device memory each)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = get_combined_args(parser, argv)
    except ValueError as exc:  # ConfigError: an unsafe or broken cfg_args
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.model_path:
        parser.error("-m/--model_path is required")
    if not os.path.isdir(args.model_path):
        print(f"error: model folder not found: {args.model_path}", file=sys.stderr)
        return 2
    if args.num_writers < 1:
        parser.error("--num_writers must be >= 1")
    if args.pose_chunk < 1:
        parser.error("--pose_chunk must be >= 1")
    try:
        dataset = ModelParams.extract(args)
        pipeline = PipelineParams.extract(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.render_mesh and not dataset.bind_to_mesh:
        print("error: --render_mesh needs a mesh-bound avatar (trained with --bind_to_mesh)", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"Rendering {dataset.model_path}")
    opts = RenderOptions(render_mesh=args.render_mesh, write_video=not args.no_video,
                         num_writers=args.num_writers, quiet=args.quiet, pose_chunk=args.pose_chunk)
    try:
        render_sets(dataset, args.iteration, pipeline, args.skip_train, args.skip_val, args.skip_test, opts)
    except (FileNotFoundError, ValueError, VideoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
