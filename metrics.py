"""Score rendered images against ground truth: PSNR, SSIM, LPIPS (VGG).

    python metrics.py -m MODEL [MODEL ...] [--splits test val] [--lpips_weights PATH]
                      [--device cpu|cuda] [--no_lpips] [--no_download] [--batch_size B]

For each model and each split folder (``MODEL/test``, ``MODEL/val`` when present), every method
folder ``SPLIT/<method>/`` holding ``renders/`` and ``gt/`` (``ours_30000``, ...) is scored image by
image (files paired by name; RGBA PNGs lose their alpha channel, as in the original).

Outputs (JSON, written atomically, in the original's shape):

* ``MODEL/results.json``  ``{method: {"SSIM": mean, "PSNR": mean, "LPIPS": mean}}``  (split ``test``)
* ``MODEL/per_view.json`` ``{method: {"SSIM": {image: v}, "PSNR": {...}, "LPIPS": {...}}}``
* the other splits go to ``results_<split>.json`` / ``per_view_<split>.json`` (``results_val.json``).

When the VGG16 trunk weights for LPIPS are missing and cannot be downloaded (or ``--no_lpips``),
"LPIPS" is ``null`` (per view too), the method entry gets an ``"LPIPS_note"`` saying why, the table
shows ``n/a``, and the message names the file to place and the ``--lpips_weights`` flag.

Bad input (no renders, render/gt files that don't pair up or differ in size, unreadable images) is
reported with the file names; other methods and models are still scored; the exit code is 1 if
anything failed (2 for a bad command line).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from utils.metrics_utils import LpipsVGG, load_lpips, psnr_per_image, ssim_per_image

METRICS = ("SSIM", "PSNR", "LPIPS")
DEFAULT_SPLITS = ("test", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InputError(RuntimeError):
    """Bad or inconsistent input files (the message names them)."""


@dataclass
class MethodScores:
    """Per-image metrics of one method folder."""

    method: str
    names: list[str] = field(default_factory=list)
    values: dict[str, list[Optional[float]]] = field(default_factory=lambda: {m: [] for m in METRICS})
    lpips_note: str = ""

    def mean(self, metric: str) -> Optional[float]:
        vals = self.values[metric]
        if not vals or any(v is None for v in vals):
            return None
        return float(np.mean(np.asarray(vals, dtype=np.float64)))

    def summary(self) -> dict:
        out: dict = {m: _finite_or_none(self.mean(m)) for m in METRICS}
        if out["LPIPS"] is None and self.lpips_note:
            out["LPIPS_note"] = self.lpips_note
        return out

    def per_view(self) -> dict:
        return {m: {n: _finite_or_none(v) for n, v in zip(self.names, self.values[m])} for m in METRICS}


def _finite_or_none(v: Optional[float]) -> Optional[float]:
    if v is None or not math.isfinite(v):
        return None
    return float(v)


# ---------------------------------------------------------------------------------------------
# Input discovery and checks
# ---------------------------------------------------------------------------------------------

def _images_in(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from exc


def method_dirs(split_dir: Path) -> list[Path]:
    """Method folders of a split (those with a ``renders`` subfolder), sorted by name."""
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and (d / "renders").is_dir())


def pair_images(method_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, render, gt) triples of a method folder; InputError listing every problem."""
    renders_dir, gt_dir = method_dir / "renders", method_dir / "gt"
    if not gt_dir.is_dir():
        raise InputError(f"{method_dir}: has renders/ but no gt/ folder (renders without ground truth "
                         "cannot be scored)")
    renders, gts = _images_in(renders_dir), _images_in(gt_dir)
    problems = []
    if not renders:
        problems.append(f"{renders_dir}: no images")
    only_r = sorted(set(renders) - set(gts))
    only_g = sorted(set(gts) - set(renders))
    if only_r or only_g:
        problems.append(f"{method_dir}: {len(renders)} renders vs {len(gts)} gt images")
        if only_r:
            problems.append(f"  no gt for: {_list_names(only_r, renders_dir)}")
        if only_g:
            problems.append(f"  no render for: {_list_names(only_g, gt_dir)}")
    triples = [(n, renders[n], gts[n]) for n in sorted(set(renders) & set(gts))]
    for name, r_path, g_path in triples:
        try:
            r_size, g_size = _header_size(r_path), _header_size(g_path)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if r_size != g_size:
            problems.append(f"size mismatch: {r_path} is {r_size[0]}x{r_size[1]}, "
                            f"{g_path} is {g_size[0]}x{g_size[1]}")
    if problems:
        raise InputError("\n".join(problems))
    return triples


def _list_names(names: Sequence[str], folder: Path, limit: int = 8) -> str:
    shown = ", ".join(str(folder / n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]; alpha is dropped (not composited), as the original did."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            arr = np.array(img)[..., :3]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from exc
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def _prefetch(items: Sequence, fn: Callable, pool: ThreadPoolExecutor, depth: int) -> Iterator:
    """Ordered ``map(fn, items)`` with at most ``depth`` results decoded ahead."""
    window: deque[Future] = deque()
    it = iter(items)
    for item in it:
        window.append(pool.submit(fn, item))
        if len(window) >= depth:
            break
    for item in it:
        yield window.popleft().result()
        window.append(pool.submit(fn, item))
    while window:
        yield window.popleft().result()


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def score_method(method_dir: Path, lpips_scorer: Optional[LpipsVGG], lpips_note: str,
                 device: torch.device, batch_size: int, pool: ThreadPoolExecutor,
                 progress: bool = False) -> MethodScores:
    """Score every (render, gt) pair of a method folder. InputError on bad input."""
    triples = pair_images(method_dir)
    scores = MethodScores(method_dir.name, lpips_note="" if lpips_scorer else lpips_note)

    def load(t: tuple[str, Path, Path]) -> tuple[str, torch.Tensor, torch.Tensor]:
        return t[0], read_image(t[1]), read_image(t[2])

    batch: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        r = torch.stack([b[1] for b in batch]).to(device)
        g = torch.stack([b[2] for b in batch]).to(device)
        with torch.no_grad():
            scores.values["PSNR"].extend(psnr_per_image(r, g).double().cpu().tolist())
            scores.values["SSIM"].extend(ssim_per_image(r, g).double().cpu().tolist())
            if lpips_scorer is not None:
                scores.values["LPIPS"].extend(lpips_scorer(r, g).double().tolist())
            else:
                scores.values["LPIPS"].extend([None] * len(batch))
        scores.names.extend(b[0] for b in batch)
        batch.clear()

    loaded = _prefetch(triples, load, pool, depth=max(2 * batch_size, 4))
    if progress:
        from tqdm import tqdm

        loaded = tqdm(loaded, total=len(triples), desc=f"{method_dir.parent.name}/{method_dir.name}",
                      leave=False)
    for item in loaded:
        if batch and item[1].shape != batch[0][1].shape:
            flush()  # batches hold images of one size
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    flush()
    return scores


def results_names(split: str) -> tuple[str, str]:
    """(results file, per-view file) for a split: the original names for ``test``."""
    if split == "test":
        return "results.json", "per_view.json"
    safe = split.replace("/", "_")
    return f"results_{safe}.json", f"per_view_{safe}.json"


def write_json(path: Path, data: dict) -> None:
    from utils.system_utils import atomic_write

    with atomic_write(str(path), mode="w") as fh:
        json.dump(data, fh, indent=True, allow_nan=False)
        fh.write("\n")


def _fmt(v: Optional[float], digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


@dataclass
class RunReport:
    rows: list[tuple[str, str, str, int, dict]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def evaluate_model(model: Path, splits: Sequence[str], explicit_splits: bool,
                   lpips_scorer: Optional[LpipsVGG], lpips_note: str, device: torch.device,
                   batch_size: int, pool: ThreadPoolExecutor, report: RunReport, progress: bool) -> None:
    """Score one model folder; results, failures and written files go into ``report``."""
    if not model.is_dir():
        report.failures.append(f"{model}: no such model folder")
        return
    present = [s for s in splits if (model / s).is_dir()]
    missing = [s for s in splits if s not in present]
    if explicit_splits and missing:
        report.failures.append(f"{model}: no {', '.join(missing)} folder(s) (run render.py first)")
    if not present:
        if not explicit_splits:
            report.failures.append(f"{model}: no renders to score: none of "
                                   f"{', '.join(str(model / s) for s in splits)} exists (run render.py first)")
        return
    for split in present:
        split_dir = model / split
        methods = method_dirs(split_dir)
        if not methods:
            report.failures.append(f"{split_dir}: no method folders with renders/ (e.g. ours_30000/renders)")
            continue
        full, per_view = {}, {}
        for mdir in methods:
            try:
                scores = score_method(mdir, lpips_scorer, lpips_note, device, batch_size, pool, progress)
            except InputError as exc:
                report.failures.append(f"{mdir}: not scored:\n{exc}")
                continue
            full[scores.method] = scores.summary()
            per_view[scores.method] = scores.per_view()
            report.rows.append((str(model), split, scores.method, len(scores.names), full[scores.method]))
        if full:
            res_name, pv_name = results_names(split)
            write_json(model / res_name, full)
            write_json(model / pv_name, per_view)
            report.written += [model / res_name, model / pv_name]


def print_table(report: RunReport, out=None) -> None:
    """One line per (model, split, method)."""
    out = out or sys.stdout
    if not report.rows:
        return
    header = f"{'model':<40} {'split':<8} {'method':<16} {'n':>5} {'PSNR':>8} {'SSIM':>7} {'LPIPS':>7}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for model, split, method, n, s in report.rows:
        name = model if len(model) <= 40 else "..." + model[-37:]
        print(f"{name:<40} {split:<8} {method:<16} {n:>5} {_fmt(s['PSNR'], 3):>8} "
              f"{_fmt(s['SSIM'], 4):>7} {_fmt(s['LPIPS'], 4):>7}", file=out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compute PSNR / SSIM / LPIPS of rendered images against ground truth.")
    p.add_argument("--model_paths", "--model_path", "-m", dest="model_paths", required=True, nargs="+",
                   help="one or more trained model folders (with test/<method>/renders and gt)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="split folders to score (default: test, and val when present)")
    p.add_argument("--lpips_weights", default=None,
                   help="path to a local torchvision VGG16 weights file (vgg16-397923af.pth)")
    p.add_argument("--no_lpips", action="store_true", help="skip LPIPS (reported as null / n/a)")
    p.add_argument("--no_download", action="store_true",
                   help="never try to download the VGG16 weights")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per LPIPS batch (default 8 on cuda, 2 on cpu)")
    p.add_argument("--num_workers", type=int, default=4, help="image decoding threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device_name)
    except RuntimeError as exc:
        print(f"error: --device {device_name!r}: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is available (use --device cpu)", file=sys.stderr)
        return 2
    batch_size = args.batch_size or (8 if device.type == "cuda" else 2)
    if batch_size < 1 or args.num_workers < 1:
        print("error: --batch_size and --num_workers must be >= 1", file=sys.stderr)
        return 2

    if args.no_lpips:
        scorer, note = None, "LPIPS disabled (--no_lpips)"
    else:
        loaded = load_lpips(args.lpips_weights, device=device, allow_download=not args.no_download,
                            progress=not args.quiet)
        scorer, note = loaded.scorer, loaded.note
        if scorer is None:
            print(f"WARNING: LPIPS unavailable, reported as null / n/a.\n{note}", file=sys.stderr)

    splits = args.splits or list(DEFAULT_SPLITS)
    report = RunReport()
    with ThreadPoolExecutor(max_workers=args.num_workers, thread_name_prefix="metrics-read") as pool:
        for model in args.model_paths:
            if not args.quiet:
                print(f"Scene: {model}")
            evaluate_model(Path(model), splits, args.splits is not None, scorer, note, device,
                           batch_size, pool, report, progress=not args.quiet)
    print_table(report)
    for path in report.written:
        print(f"wrote {path}")
    for failure in report.failures:
        print(f"ERROR: {failure}", file=sys.stderr)
    if args.lpips_weights and scorer is None and not args.no_lpips:
        return 1  # the user pointed at weights that could not be used
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
