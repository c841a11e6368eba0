"""MP4 writing and reading through imageio-ffmpeg (the ffmpeg binary shipped with the wheel).

Videos are H.264 (libx264), yuv420p, 25 fps by default. yuv420p needs even width and height, so
frames with an odd side are padded by one row/column (edge replicated) instead of being rescaled.
Files are written under a temporary name in the destination folder and moved into place only when
the encoder finished cleanly, so an interrupted run never leaves a truncated ``renders.mp4``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

DEFAULT_FPS = 25
DEFAULT_CRF = 23  # ffmpeg's own libx264 default, what a plain `ffmpeg -i ... out.mp4` gives


class VideoError(RuntimeError):
    """Encoding or decoding a video failed (message names the file)."""


def even_size(width: int, height: int) -> tuple[int, int]:
    """Smallest even (width, height) that holds a ``width x height`` frame."""
    return width + (width % 2), height + (height % 2)


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Return ``frame`` (H, W, 3|4 uint8) as an RGB (height, width, 3) contiguous array.

    Smaller frames are padded at the bottom/right by replicating the last row/column; larger
    ones are cropped (only happens when a split mixes camera resolutions).
    """
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 4) frame, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    rgb = frame[:height, :width, :3]
    pad_h, pad_w = height - rgb.shape[0], width - rgb.shape[1]
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(rgb)


def _tmp_path(path: Path) -> Path:
    # keep the .mp4 suffix so ffmpeg picks the container from the name
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix or '.mp4'}")


@dataclass
class VideoWriter:
    """Streaming H.264 writer. The frame size is fixed by the first frame (made even).

    Use as a context manager; on an exception inside the block the partial file is removed.
    """

    path: Path
    fps: float = DEFAULT_FPS
    crf: int = DEFAULT_CRF

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._tmp = _tmp_path(self.path)
        self._gen = None
        self._size: Optional[tuple[int, int]] = None
        self.frames_written = 0
        self.resized_frames = 0

    @property
    def size(self) -> Optional[tuple[int, int]]:
        """(width, height) of the encoded video, None before the first frame."""
        return self._size

    def _open(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        self._size = even_size(width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp), self._size, fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(int(self.crf)), "-movflags", "+faststart"])
        self._gen.send(None)  # start ffmpeg

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3|4) uint8 frame."""
        if self._gen is None:
            self._open(frame.shape[1], frame.shape[0])
        width, height = self._size
        if even_size(frame.shape[1], frame.shape[0]) != self._size:
            self.resized_frames += 1  # a camera of another resolution: padded / cropped
        try:
            self._gen.send(fit_frame(frame, width, height))
        except (OSError, RuntimeError) as exc:  # ffmpeg died (disk full, ...)
            self.abort()
            raise VideoError(f"writing {self.path} failed: {exc}") from exc
        self.frames_written += 1

    def close(self) -> int:
        """Finish encoding and move the file into place. Returns the number of frames."""
        if self._gen is None:
            return 0
        gen, self._gen = self._gen, None
        try:
            gen.close()
        except (OSError, RuntimeError) as exc:
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"finishing {self.path} failed: {exc}") from exc
        os.replace(self._tmp, self.path)
        return self.frames_written

    def abort(self) -> None:
        """Stop the encoder and delete the partial file."""
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()
            except (OSError, RuntimeError):
                pass  # the partial file is removed below either way
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: Path | str, frames: Iterable[np.ndarray], fps: float = DEFAULT_FPS,
                crf: int = DEFAULT_CRF) -> int:
    """Encode ``frames`` (uint8 HxWx3|4) into ``path``. Returns the frame count (0: no file)."""
    with VideoWriter(Path(path), fps=fps, crf=crf) as writer:
        for frame in frames:
            writer.append(frame)
    return writer.frames_written


def list_pngs(folder: Path | str) -> list[Path]:
    """PNG files of ``folder`` sorted by name (numbered frames 00000.png, 00001.png, ...)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file())


def iter_png_frames(paths: Sequence[Path]) -> Iterator[np.ndarray]:
    """Decode PNG files one at a time into uint8 (H, W, 3) arrays."""
    from PIL import Image

    for p in paths:
        with Image.open(p) as img:
            yield np.asarray(img.convert("RGB"))


def encode_png_folder(folder: Path | str, out_path: Path | str, fps: float = DEFAULT_FPS,
                      crf: int = DEFAULT_CRF) -> int:
    """Encode the numbered PNGs of ``folder`` into an mp4 (what ``ffmpeg -pattern_type glob`` did)."""
    paths = list_pngs(folder)
    if not paths:
        raise VideoError(f"no PNG frames in {folder}")
    return write_video(out_path, iter_png_frames(paths), fps=fps, crf=crf)


def read_video_frames(path: Path | str) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Decode every frame of a video: (frames as uint8 (H, W, 3), (width, height))."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"no video at {path}")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return frames, (width, height)


def probe_video(path: Path | str) -> dict:
    """Metadata of a video (size, fps, codec...) as reported by imageio-ffmpeg, plus the exact
    frame count (by decoding) under ``n_frames``."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"no video at {path}")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = dict(next(reader))
    reader.close()
    n_frames, _secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    meta["n_frames"] = n_frames
    return meta
