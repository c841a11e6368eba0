"""remote_viewer.py: orbit camera maths (CPU), the network thread with reconnects (CPU), and
the DearPyGui window against a live ViewerServer (``gui``: run under ``xvfb-run -a``)."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from typing import List

import numpy as np
import pytest
import torch

from viewer import protocol as vp
from viewer.server import (
    DemoGaussians, DemoPipe, ServerConfig, ViewerServer, demo_render_fn, splat_points,
)
from viewer.camera import OrbitCamera, look_at_w2c

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# camera maths

CAMS = [OrbitCamera(width=64, height=48, fovy=30.0, radius=1.3, yaw=yaw, pitch=pitch,
                    target=np.array([0.1, -0.05, 0.2]))
        for yaw, pitch in [(0, 0), (35, 10), (-120, -60), (179, 89)]]


@pytest.mark.parametrize("cam", CAMS)
def test_target_projects_to_image_centre_and_eye_is_at_radius(cam):
    u, v = cam.project(cam.target[None])[0]
    assert u == pytest.approx((cam.width - 1) / 2, abs=1e-6)
    assert v == pytest.approx((cam.height - 1) / 2, abs=1e-6)
    assert np.linalg.norm(cam.eye - cam.target) == pytest.approx(cam.radius)
    np.testing.assert_allclose(cam.c2w[:3, 3], cam.eye, atol=1e-9)


@pytest.mark.parametrize("cam", CAMS)
def test_projection_is_the_pinhole_model(cam):
    rng = np.random.default_rng(0)
    pts = cam.target + rng.normal(scale=0.2, size=(20, 3))
    p_cam = (cam.w2c[:3, :3] @ pts.T).T + cam.w2c[:3, 3]
    f = cam.height / (2 * math.tan(math.radians(cam.fovy) / 2))
    expect = np.stack([f * p_cam[:, 0] / p_cam[:, 2] + (cam.width - 1) / 2,
                       f * p_cam[:, 1] / p_cam[:, 2] + (cam.height - 1) / 2], 1)
    np.testing.assert_allclose(cam.project(pts), expect, atol=1e-6)
    # square pixels: the horizontal focal length from fovx is the same
    assert cam.width / (2 * math.tan(cam.fovx_rad / 2)) == pytest.approx(f)


def test_transposed_matrices_match_graphics_utils_and_minicam():
    from utils.graphics_utils import getProjectionMatrix, getWorld2View2

    cam = CAMS[1]
    R = cam.w2c[:3, :3].T           # 3DGS convention: R is camera-to-world, w2c = [R^T | T]
    T = cam.w2c[:3, 3]
    wv = torch.tensor(getWorld2View2(R, T)).transpose(0, 1).float()
    P = getProjectionMatrix(znear=cam.znear, zfar=cam.zfar, fovX=cam.fovx_rad, fovY=cam.fovy_rad).transpose(0, 1)
    np.testing.assert_allclose(cam.world_view_transform, wv.numpy(), atol=1e-5)
    np.testing.assert_allclose(cam.full_proj_transform, (wv @ P.float()).numpy(), atol=1e-5)
    mc = cam.minicam(timestep=3)
    np.testing.assert_allclose(mc.camera_center.numpy(), cam.eye, atol=1e-5)
    assert (mc.image_width, mc.image_height, mc.timestep) == (64, 48, 3)
    assert mc.FoVy == pytest.approx(math.radians(30.0)) and mc.FoVx == pytest.approx(cam.fovx_rad)
    # points are row vectors: [p, 1] @ world_view_transform = camera coordinates
    p = np.array([0.3, 0.2, -0.1, 1.0])
    np.testing.assert_allclose((p @ cam.world_view_transform)[:3], cam.w2c[:3, :3] @ p[:3] + cam.w2c[:3, 3], atol=1e-5)


def test_axes_are_opencv_up_is_up_and_default_view_faces_plus_z():
    cam = OrbitCamera(width=100, height=100, fovy=40.0, radius=2.0)
    np.testing.assert_allclose(cam.eye, [0, 0, 2.0], atol=1e-12)       # in front of the face (+z)
    above, right = cam.project(np.array([[0, 0.1, 0], [0.1, 0, 0]]))
    assert above[1] < 49.5 and above[0] == pytest.approx(49.5)           # y down in the image
    assert right[0] > 49.5                                               # +x (subject's left) on the right


def test_pan_moves_the_target_plane_by_exactly_the_drag():
    cam = OrbitCamera(width=80, height=60, fovy=25.0, radius=1.7, yaw=30, pitch=-20)
    old = cam.target.copy()
    cam.pan(7.0, -4.0)
    u, v = cam.project(old[None])[0]
    assert u == pytest.approx(39.5 + 7.0, abs=1e-6) and v == pytest.approx(29.5 - 4.0, abs=1e-6)
    assert cam.radius == 1.7


def test_orbit_and_zoom():
    cam = OrbitCamera(radius=2.0)
    cam.orbit(10, 0)
    assert cam.yaw == pytest.approx(-3.0) and cam.pitch == 0.0
    # dragging right turns the object to the right: a point on the face moves right on screen
    cam2 = OrbitCamera(width=100, height=100, radius=2.0)
    p = np.array([[0.0, 0.0, 0.3]])
    u0 = cam2.project(p)[0, 0]
    cam2.orbit(20, 0)
    assert cam2.project(p)[0, 0] > u0
    cam.orbit(0, 10_000)
    assert cam.pitch == pytest.approx(89.0)          # clamped: never flips
    assert np.isfinite(cam.full_proj_transform).all()
    cam.zoom(2)
    assert cam.radius == pytest.approx(2.0 * 0.81)
    cam.zoom(-1000)
    assert cam.radius == cam.max_radius


def test_look_at_straight_down_is_well_defined():
    w2c = look_at_w2c([0, 5, 0], [0, 0, 0])
    assert np.isfinite(w2c).all()
    np.testing.assert_allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the viewer's request and network thread (no display needed)

def test_app_request_follows_ui_state():
    import remote_viewer

    app = remote_viewer.RemoteViewerApp(remote_viewer.parse_args(
        ["--port", "1", "--width", "64", "--height", "32", "--jpeg_quality", "85"]))
    app.settings.update(timestep=7, pause_training=True, show_mesh=True, mesh_opacity=0.25)
    app.num_timesteps = 5
    app.camera.orbit(30, 10)
    req = app.make_request()
    assert (req.width, req.height, req.jpeg_quality) == (64, 32, 85)
    assert req.timestep == 4 and req.train is False and req.show_mesh and req.mesh_opacity == 0.25
    np.testing.assert_allclose(np.array(req.full_proj_transform), app.camera.full_proj_transform, atol=1e-6)
    assert vp.decode_request(req.encode()[vp.HEADER_SIZE:]).to_json() == req.to_json()


def test_drag_tracker_maps_buttons_to_orbit_and_pan():
    from remote_viewer import DragTracker

    d = DragTracker()
    assert d.update(["left"], (10, 10), hovered=False) is None        # drags start on the image only
    assert d.update(["left"], (12, 10), hovered=False) is None
    assert d.update([], (12, 10), hovered=True) is None
    assert d.update(["left"], (10, 10), hovered=True) is None          # press: start
    assert d.update(["left"], (15, 7), hovered=False) == ("orbit", 5.0, -3.0)   # may leave the image
    assert d.update(["left"], (15, 7), hovered=False) is None          # no motion
    assert d.update([], (15, 7), hovered=True) is None                 # release
    assert d.update(["right"], (0, 0), hovered=True) is None
    assert d.update(["right"], (2, 1), hovered=True) == ("pan", 2.0, 1.0)
    assert d.update(["middle"], (3, 1), hovered=True) is None          # button changed: new drag
    assert d.update(["middle"], (4, 3), hovered=True) == ("pan", 1.0, 2.0)


def test_parse_args_rejects_bad_sizes():
    import remote_viewer

    with pytest.raises(SystemExit):
        remote_viewer.parse_args(["--width", "0"])
    with pytest.raises(SystemExit):
        remote_viewer.parse_args(["--jpeg_quality", "101"])


class DemoTrainer(threading.Thread):
    """A ViewerServer driven by a fake loop over a DemoGaussians (like run_demo)."""

    def __init__(self, port: int, render_fn=splat_points, splats: int = 200):
        super().__init__(daemon=True)
        self.server = ViewerServer.start("127.0.0.1", port, quiet=True, render_fn=render_fn, log=lambda s: None,
                                         config=ServerConfig(poll_interval_s=0.01))
        assert self.server is not None
        self.model = DemoGaussians(splats, 6)
        self.stop_event = threading.Event()
        self.frames: List[np.ndarray] = []
        inner = render_fn

        def recording(cam, pc, pipe, bg, scaling_modifier=1.0):
            out = inner(cam, pc, pipe, bg, scaling_modifier=scaling_modifier)
            self.frames.append((out["render"].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
            return out
        self.server._render_fn = recording

    def run(self) -> None:
        it = 0
        while not self.stop_event.is_set():
            it += 1
            self.model.select_mesh_by_timestep(it % 6)
            while self.server.handle(it, self.model, None, DemoPipe(), torch.ones(3)):
                pass
            time.sleep(0.002)
        self.server.close()

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_link_waits_connects_and_reconnects_after_trainer_restart():
    import remote_viewer

    port = _free_port()
    cam = OrbitCamera(width=24, height=16, radius=0.8)

    def make_request():
        return vp.RenderRequest(width=24, height=16, fovx=cam.fovx_rad, fovy=cam.fovy_rad,
                                world_view_transform=cam.world_view_transform.tolist(),
                                full_proj_transform=cam.full_proj_transform.tolist(),
                                timestep=50)        # beyond the model's 6: the link clamps it to 5

    link = remote_viewer.ViewerLink("127.0.0.1", port, make_request, io_timeout=5.0)
    link.start()
    trainers: List[DemoTrainer] = []
    try:
        assert _wait(lambda: "waiting for trainer" in link.snapshot().message, 5)
        first = DemoTrainer(port)
        trainers.append(first)
        first.start()
        assert _wait(lambda: link.snapshot().frames >= 3, 20)
        frame = link.take_frame()
        assert frame is not None and frame[1:] == (24, 16) and frame[0].shape == (24 * 16 * 3,)
        assert link.snapshot().status.num_timesteps == 6
        assert first.server.last_error == ""               # no request was refused
        first.finish()                                   # the trainer goes away ...
        assert _wait(lambda: not link.snapshot().connected, 10)
        n = link.snapshot().frames
        second = DemoTrainer(port)                       # ... and comes back on the same port
        trainers.append(second)
        second.start()
        assert _wait(lambda: link.snapshot().frames >= n + 3, 20)
        assert link.snapshot().connected
    finally:
        link.stop()
        link.join(10)
        for t in trainers:
            t.finish()
    assert not link.is_alive()


def test_link_shows_the_trainers_error_text_and_retries():
    """A trainer of another protocol version answers with an ERROR (version 9 header): the
    viewer shows its text and keeps retrying."""
    import remote_viewer

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []

    def fake_trainer():
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            vp.read_message(conn, timeout=10)
            payload = b'{"error": "protocol version 1 is not supported (this side speaks version 9)"}'
            conn.sendall(vp.pack_header(vp.MsgType.ERROR, len(payload), version=9) + payload)
            conn.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=fake_trainer, daemon=True)
    t.start()
    link = remote_viewer.ViewerLink("127.0.0.1", port, lambda: vp.RenderRequest(), io_timeout=5.0)
    link.start()
    try:
        assert _wait(lambda: "this side speaks version 9" in link.snapshot().message, 10)
        assert not link.snapshot().connected
        t.join(10)
        assert len(accepted) == 2                        # it came back after the error
    finally:
        link.stop()
        listener.close()
        for c in accepted:
            c.close()


# ---------------------------------------------------------------------------------------------
# the window (needs a display)

def _best_offset(shot: np.ndarray, frame: np.ndarray, max_off: int = 40):
    """Where in the screenshot the frame sits (the smallest mean absolute difference)."""
    h, w = frame.shape[:2]
    best = (1e9, 0, 0)
    for oy in range(max_off):
        for ox in range(max_off):
            crop = shot[oy:oy + h, ox:ox + w, :3]
            if crop.shape[:2] != (h, w):
                continue
            d = np.abs(crop.astype(np.int32) - frame.astype(np.int32)).mean()
            best = min(best, (d, ox, oy))
    return best


@pytest.mark.gui
def test_remote_viewer_window_shows_the_served_avatar(tmp_path):
    from PIL import Image

    port = _free_port()
    trainer = DemoTrainer(port, render_fn=demo_render_fn(), splats=300)
    trainer.start()
    shot = tmp_path / "viewer.png"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "remote_viewer.py"), "--port", str(port), "--width", "160",
             "--height", "160", "--radius", "0.9", "--screenshot", str(shot), "--exit_after", "2",
             "--timeout", "120"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    finally:
        trainer.finish()
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 160 and img.shape[1] >= 160 + 300      # image + control panel
    frame = trainer.frames[-1]
    avatar = (np.abs(frame.astype(int) - 255).sum(-1) > 30).mean()
    assert 0.1 < avatar < 0.9                                       # a head in front of white
    diff, ox, oy = _best_offset(img, frame)
    assert diff < 4.0, (diff, ox, oy)                               # the window shows that frame
