"""render.py end to end on a tiny FLAME-bound model (procedural FLAME head + synthetic subject),
with reenactment and mesh overlays, plus the helpers it relies on: the bounded thread-pool PNG
writer (utils/async_writer.py) and the MP4 writer (utils/video_utils.py)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.async_writer import AsyncImageWriter, ImageWriteError, save_png, to_hwc_uint8
from utils import video_utils as vu


# ---------------------------------------------------------------------------------------------
# async PNG writer
# ---------------------------------------------------------------------------------------------

def test_to_hwc_uint8_rounding_and_layouts():
    x = torch.tensor([[[0.0, 0.5], [1.0, 0.002]]]).expand(3, 2, 2)  # (3, 2, 2) CHW float
    out = to_hwc_uint8(x)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    # torchvision.save_image rounding: floor(x * 255 + 0.5)
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 1]])
    hwc = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(to_hwc_uint8(hwc), hwc)
    np.testing.assert_array_equal(to_hwc_uint8(torch.from_numpy(hwc).permute(2, 0, 1)), hwc)


def test_async_writer_writes_every_frame_with_bounded_backlog(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (9, 13, 3), dtype=np.uint8) for _ in range(12)]
    max_seen = 0
    gate = threading.Event()

    def slow(img):  # runs on the worker thread: holds the first jobs until the gate opens
        gate.wait(5)
        return img

    with AsyncImageWriter(num_workers=2, max_pending=3) as writer:
        opener = threading.Timer(0.3, gate.set)
        opener.start()
        for i, f in enumerate(frames):
            writer.submit(tmp_path / f"{i:05d}.png", f, transform=slow)
            max_seen = max(max_seen, writer.pending)
        opener.join()
    assert max_seen <= 3
    assert writer.written == len(frames)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{i:05d}.png")), f)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left


def test_async_writer_reports_failures_with_file_name(tmp_path):
    writer = AsyncImageWriter(num_workers=1)
    bad = tmp_path / "missing_dir" / "00000.png"
    writer.submit(bad, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageWriteError, match="missing_dir/00000.png"):
        writer.close()


def test_async_writer_waits_on_ready_event(tmp_path):
    class Event:
        def __init__(self):
            self.done = False

        def synchronize(self):
            time.sleep(0.05)
            self.done = True

    ev = Event()
    img = np.full((3, 3, 3), 7, np.uint8)
    with AsyncImageWriter(num_workers=1) as writer:
        writer.submit(tmp_path / "a.png", img, ready=ev)
    assert ev.done
    save_png(tmp_path / "b.png", img)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


# ---------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------

def test_video_odd_size_is_padded_and_decodes(tmp_path):
    h, w, n = 21, 31, 7
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : 4 * (i + 1)] = (40 * i, 255 - 30 * i, 128)  # a bar growing frame by frame
        frames.append(f)
    path = tmp_path / "v.mp4"
    assert vu.write_video(path, frames, fps=25) == n
    decoded, (dw, dh) = vu.read_video_frames(path)
    assert (dw, dh) == (w + 1, h + 1)  # padded to even, not rescaled
    assert len(decoded) == n
    meta = vu.probe_video(path)
    assert meta["n_frames"] == n and meta["fps"] == pytest.approx(25.0)
    assert "h264" in meta["codec"]
    for f, d in zip(frames, decoded):  # lossy, but close: H.264 at crf 23 on flat colours
        assert np.abs(d[:h, :w].astype(int) - f.astype(int)).mean() < 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_video_writer_abort_leaves_no_file(tmp_path):
    path = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with vu.VideoWriter(path) as writer:
            writer.append(np.zeros((8, 8, 3), np.uint8))
            raise RuntimeError("boom")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_encode_png_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((6, 10, 3), 60 * i, np.uint8)).save(tmp_path / f"{i:05d}.png")
    assert vu.encode_png_folder(tmp_path, tmp_path / "out.mp4") == 3
    frames, size = vu.read_video_frames(tmp_path / "out.mp4")
    assert size == (10, 6) and len(frames) == 3
    assert frames[2].mean() > frames[1].mean() > frames[0].mean()
    (tmp_path / "empty").mkdir()
    with pytest.raises(vu.VideoError, match="no PNG frames"):
        vu.encode_png_folder(tmp_path / "empty", tmp_path / "y.mp4")


# ---------------------------------------------------------------------------------------------
# render.py helpers
# ---------------------------------------------------------------------------------------------

def test_copy_to_host_cpu_matches_save_image_rounding():
    import render

    imgs = [torch.rand(3, 5, 7), torch.rand(3, 5, 7)]
    host = render.copy_to_host(imgs)
    assert host.ready is None and host.data.shape == (2, 5, 7, 3) and host.data.dtype == torch.uint8
    for k, im in enumerate(imgs):
        np.testing.assert_array_equal(host.data[k].numpy(), to_hwc_uint8(im))


@pytest.mark.cuda
def test_copy_to_host_cuda_is_async_and_exact():
    import render

    imgs = [torch.rand(3, 64, 48, device="cuda"), torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8, device="cuda")]
    host = render.copy_to_host(imgs)
    assert host.ready is not None and host.data.is_pinned()
    host.wait()
    np.testing.assert_array_equal(host.data[0].numpy(), to_hwc_uint8(imgs[0].cpu()))
    np.testing.assert_array_equal(host.data[1].numpy(), imgs[1].permute(1, 2, 0).cpu().numpy())
