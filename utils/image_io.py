"""Image decoding, resizing, background compositing and the resolution rule (SPEC 2.3).

Images are decoded once into uint8 arrays; RGBA is alpha-composited on the background at load
time and the alpha channel is kept as a uint8 mask. Decoding many images runs in a thread pool
(PIL releases the GIL while decoding/resizing).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

T = TypeVar("T")
R_ = TypeVar("R_")

MAX_AUTO_WIDTH = 1600


class DatasetError(ValueError):
    """Bad input data; the message names the file and the field."""


def target_resolution(orig_w: int, orig_h: int, resolution: int = -1,
                      resolution_scale: float = 1.0) -> Tuple[int, int]:
    """The size an image of ``orig_w x orig_h`` is loaded at (SPEC 2.3).

    ``resolution`` 1, 2, 4 or 8 divides the size; any other positive value is a target width
    (aspect kept); -1 scales images wider than 1600 px down to 1600 wide. ``resolution_scale``
    (the Scene's extra scale, 1.0 normally) divides on top.
    """
    if orig_w <= 0 or orig_h <= 0:
        raise ValueError(f"target_resolution: bad image size {orig_w}x{orig_h}")
    if resolution in (1, 2, 4, 8):
        s = resolution_scale * resolution
        return max(1, round(orig_w / s)), max(1, round(orig_h / s))
    if resolution == -1:
        global_down = orig_w / MAX_AUTO_WIDTH if orig_w > MAX_AUTO_WIDTH else 1.0
    elif resolution > 0:
        global_down = orig_w / resolution
    else:
        raise ValueError(f"resolution must be -1 or positive, got {resolution}")
    s = global_down * resolution_scale
    return max(1, int(orig_w / s)), max(1, int(orig_h / s))


def image_size(path: str) -> Tuple[int, int]:
    """(width, height) of an image file from its header (no full decode)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file not found") from e
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


@dataclass
class DecodedImage:
    """A decoded image: ``rgb`` uint8 (H,W,3) composited on the background, ``alpha`` uint8 (H,W) or None."""

    rgb: np.ndarray
    alpha: Optional[np.ndarray]

    @property
    def size(self) -> Tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def composite_uint8(rgb: np.ndarray, alpha: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """``rgb * a + bg * (1 - a)`` in exact integer arithmetic (rounded), uint8 in and out."""
    bg = np.clip(np.round(np.asarray(background, dtype=np.float64) * 255.0), 0, 255).astype(np.uint16)
    a = alpha.astype(np.uint16)[..., None]
    out = rgb.astype(np.uint16) * a          # <= 255 * 255, fits uint16
    out += bg[None, None, :] * (255 - a)     # the sum is still <= 255 * 255
    out += 127
    out //= 255
    return out.astype(np.uint8)


def load_image(path: str, size: Optional[Tuple[int, int]] = None,
               background: Sequence[float] = (0.0, 0.0, 0.0)) -> DecodedImage:
    """Decode ``path``, composite any alpha on ``background`` (RGB in [0,1]) and resize to ``size``
    (width, height) if given. Raises :class:`DatasetError` naming the file when it is missing or
    unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if has_alpha:
                im = im.convert("RGBA")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file not found") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e})") from e
    if has_alpha:
        alpha = np.ascontiguousarray(arr[..., 3])
        rgb = composite_uint8(arr[..., :3], alpha, background)
    else:
        alpha = None
        rgb = np.ascontiguousarray(arr)
    if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize(tuple(size), Image.BICUBIC))
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).resize(tuple(size), Image.BICUBIC))
    return DecodedImage(rgb=rgb, alpha=alpha)


def default_num_workers() -> int:
    """Threads for parallel decoding: the CPU count, at most 32."""
    return max(1, min(32, os.cpu_count() or 1))


def parallel_map(fn: Callable[[T], R_], items: Sequence[T], num_workers: Optional[int] = None,
                 desc: Optional[str] = None, progress: bool = True) -> List[R_]:
    """``[fn(x) for x in items]`` on a thread pool, in order, with a tqdm bar. Exceptions propagate."""
    from tqdm import tqdm

    n = len(items)
    workers = num_workers or default_num_workers()
    bar = tqdm(total=n, desc=desc, disable=not progress or n == 0, leave=False)
    try:
        if workers <= 1 or n <= 1:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update(1)
            return out
        with ThreadPoolExecutor(max_workers=workers) as ex:
            futures = [ex.submit(fn, x) for x in items]
            out = []
            for f in futures:
                out.append(f.result())
                bar.update(1)
            return out
    finally:
        bar.close()


def save_png(path: str, array: np.ndarray) -> None:
    """Write a uint8 (H,W,3|4) or (H,W) array as PNG through a temp file + rename."""
    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(array).save(tmp, compress_level=1)
    os.replace(tmp, path)


def iter_chunks(seq: Sequence[T], n: int) -> Iterable[Sequence[T]]:
    """Consecutive slices of at most ``n`` items."""
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
