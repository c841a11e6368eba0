"""Background image writing: a thread pool with a bounded backlog.

``render.py`` hands each frame to :class:`AsyncImageWriter` and immediately goes on rendering
the next one; PNG encoding (zlib, which releases the GIL inside Pillow) runs on worker threads.
The backlog is bounded (``max_pending`` frames in flight): when the writers fall behind,
``submit`` blocks, so memory stays flat however long the sequence is.

A frame may be a NumPy array or a CPU tensor filled by a non-blocking device-to-host copy; in the
latter case pass the CUDA event recorded after the copy as ``ready`` and the worker waits on it
(only that worker blocks, never the rendering thread).

Each PNG is written to a temporary name and renamed into place, so a killed run never leaves a
truncated image that a later ``metrics.py`` would choke on. The first write error is re-raised
in the caller's thread (by ``submit``/``close``) with the file name in the message.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["AsyncImageWriter", "ImageWriteError", "save_png", "to_hwc_uint8"]


class ImageWriteError(RuntimeError):
    """Writing an image failed; the message names the file."""


def to_hwc_uint8(image: Any) -> np.ndarray:
    """Turn an image into a contiguous (H, W, C) uint8 array.

    Torch tensors follow the torch layout (C, H, W); NumPy arrays the image layout (H, W, C).
    Floats in [0, 1] are rounded like ``torchvision.utils.save_image`` (x * 255 + 0.5, clamped,
    truncated)."""
    if hasattr(image, "detach"):  # torch tensor, (C, H, W) or (H, W)
        t = image.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def save_png(path: Path | str, image: Any, compress_level: int = 6) -> None:
    """Write ``image`` (see :func:`to_hwc_uint8`) as a PNG, atomically (temp file + rename)."""
    from PIL import Image

    path = Path(path)
    arr = to_hwc_uint8(image)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AsyncImageWriter:
    """Thread pool writing PNGs with at most ``max_pending`` frames queued or in progress.

    >>> with AsyncImageWriter(num_workers=4) as writer:
    ...     writer.submit("out/00000.png", frame)
    """

    def __init__(self, num_workers: int = 4, max_pending: Optional[int] = None,
                 compress_level: int = 6):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.max_pending = max_pending if max_pending is not None else 4 * num_workers
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")
        self.compress_level = compress_level
        self._pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="png-writer")
        self._slots = threading.BoundedSemaphore(self.max_pending)
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._closed = False
        self.written = 0
        self._futures: set[Future] = set()

    def _raise_pending_error(self) -> None:
        with self._lock:
            err = self._error
        if err is not None:
            raise ImageWriteError(str(err)) from err

    def _job(self, path: Path, image: Any, ready: Optional[Any],
             transform: Optional[Callable[[Any], Any]]) -> None:
        try:
            if ready is not None:
                ready.synchronize()  # CUDA event after a non-blocking copy into pinned memory
            if transform is not None:
                image = transform(image)
            save_png(path, image, self.compress_level)
            with self._lock:
                self.written += 1
        except Exception as exc:  # reported to the caller's thread, with the file name
            with self._lock:
                if self._error is None:
                    self._error = OSError(f"could not write {path}: {exc}")
        finally:
            self._slots.release()

    def submit(self, path: Path | str, image: Any, ready: Optional[Any] = None,
               transform: Optional[Callable[[Any], Any]] = None) -> None:
        """Queue ``image`` for writing to ``path``; blocks while ``max_pending`` jobs are in flight.

        ``ready``: an object with ``synchronize()`` (a CUDA event) waited on before reading the
        image. ``transform``: applied to the image on the worker thread before encoding.
        """
        if self._closed:
            raise RuntimeError("AsyncImageWriter is closed")
        self._raise_pending_error()
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._job, Path(path), image, ready, transform)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)

    def _forget(self, fut: Future) -> None:
        with self._lock:
            self._futures.discard(fut)

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._futures)

    def wait(self) -> None:
        """Block until every queued image is written; raise the first write error."""
        with self._lock:
            futures = list(self._futures)
        for fut in futures:
            fut.result()
        self._raise_pending_error()

    def close(self) -> None:
        """Finish all writes, stop the threads, raise the first write error if any."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._raise_pending_error()

    def __enter__(self) -> "AsyncImageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # don't mask the original exception; still let queued writes finish
            self._closed = True
            self._pool.shutdown(wait=True)
