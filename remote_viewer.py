"""Remote viewer: watch (and steer) a training run live.

    python remote_viewer.py --port 60000 [--ip 127.0.0.1] [--width 800 --height 600] [--jpeg_quality 85]

Mouse on the image: left drag orbits, right or middle drag pans, the wheel zooms. Left/right
arrow keys step the timestep. The network runs on a background thread (the window never
freezes) and reconnects with back-off when the trainer restarts. Protocol: docs/PROTOCOL.md.
For an SSH tunnel (``ssh -L 60000:127.0.0.1:60000 host``) choose a JPEG quality (e.g. 85).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Tuple

import numpy as np

from viewer.camera import OrbitCamera
# viewer/ imports nothing on its own and the protocol needs NumPy and Pillow only: no torch here
from viewer.protocol import (TRAINER_TO_VIEWER, MsgType, PeerClosed, ProtocolError, RenderRequest, Status,
                             decode_error, decode_frame, decode_status, encode_bye, read_message)

PANEL_WIDTH = 330
PANEL_MIN_HEIGHT = 600
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 5.0
STATUS_POLL_S = 0.2     # request rate while rendering is paused


@dataclass
class LinkStats:
    """What the network thread last heard (read by the UI thread under the link's lock)."""

    connected: bool = False
    message: str = "connecting..."
    status: Optional[Status] = None
    frames: int = 0
    fps: float = 0.0


class ViewerLink(threading.Thread):
    """Background thread: connect, send the UI's current request, receive the reply, repeat.

    ``make_request`` is called on this thread and must be thread-safe (it copies UI state).
    The trainer answers once per iteration (and not at all during an evaluation or a save), so
    ``io_timeout`` is generous; a dead link is noticed by TCP errors or by that timeout.
    The newest decoded frame (float32 RGB, flat, for a DearPyGui raw texture) is published via
    :meth:`take_frame`.
    """

    def __init__(self, ip: str, port: int, make_request: Callable[[], RenderRequest],
                 io_timeout: float = 60.0):
        super().__init__(daemon=True, name="viewer-link")
        self.ip, self.port = ip, port
        self.make_request = make_request
        self.io_timeout = io_timeout
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._frame: Optional[Tuple[np.ndarray, int, int]] = None
        self.stats = LinkStats()
        self._frame_times: list = []

    # -- UI-side accessors -------------------------------------------------------------------
    def take_frame(self) -> Optional[Tuple[np.ndarray, int, int]]:
        """The newest frame ``(rgb float32 flat, width, height)`` not yet taken, else None."""
        with self._lock:
            frame, self._frame = self._frame, None
        return frame

    def snapshot(self) -> LinkStats:
        with self._lock:
            return replace(self.stats)

    def stop(self, wait: float = 2.0) -> None:
        """Ask the thread to leave (it says BYE after the reply in flight), then, if it is still
        blocked on the network after ``wait`` seconds, shut the socket down under it."""
        self._stop_event.set()
        if self.is_alive():
            self.join(wait)
        sock = self._sock
        if self.is_alive() and sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- thread ------------------------------------------------------------------------------
    def _set(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, v)

    def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stop_event.is_set():
            try:
                sock = socket.create_connection((self.ip, self.port), timeout=3.0)
            except OSError as e:
                self._set(connected=False, message=f"waiting for trainer at {self.ip}:{self.port} ({e.strerror or e}); retry in {backoff:.1f} s")
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.io_timeout)
            self._sock = sock
            self._set(connected=True, message=f"connected to {self.ip}:{self.port}")
            try:
                self._session(sock)
                backoff = BACKOFF_MIN_S
            except ProtocolError as e:
                self._set(connected=False, message=f"{e}; reconnecting")
            except (OSError, PeerClosed) as e:
                self._set(connected=False, message=f"disconnected ({e}); reconnecting")
            finally:
                self._sock = None
                sock.close()
            if not self._stop_event.is_set():
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _session(self, sock: socket.socket) -> None:
        """Request/reply loop. The first request only asks for the status, so the timestep
        slider is clamped to the model actually being trained (it may have been restarted)."""
        num_timesteps: Optional[int] = None
        while not self._stop_event.is_set():
            req = self.make_request()
            if num_timesteps is None:
                req = replace(req, render=False, timestep=0)
            elif req.timestep >= max(num_timesteps, 1):
                req = replace(req, timestep=max(num_timesteps - 1, 0))
            sock.sendall(req.encode())
            header, payload = read_message(sock, TRAINER_TO_VIEWER, timeout=self.io_timeout)
            if header.msg_type == MsgType.ERROR:
                raise ProtocolError(f"trainer says: {decode_error(payload)}")
            if header.msg_type == MsgType.FRAME:
                frame = decode_frame(payload, header.flags)
                h, w = frame.image.shape[:2]
                rgb = (frame.image.reshape(-1).astype(np.float32) * (1.0 / 255.0))
                now = time.monotonic()
                self._frame_times = [t for t in self._frame_times if now - t < 1.0] + [now]
                num_timesteps = frame.status.num_timesteps
                with self._lock:
                    self._frame = (rgb, w, h)
                    self.stats.status = frame.status
                    self.stats.frames += 1
                    self.stats.fps = float(len(self._frame_times))
            else:
                status = decode_status(payload)
                first = num_timesteps is None
                num_timesteps = status.num_timesteps
                with self._lock:
                    self.stats.status = status
                    self.stats.fps = 0.0
                if not first:
                    self._stop_event.wait(STATUS_POLL_S)
        try:
            sock.sendall(encode_bye())
        except OSError:
            pass


class DragTracker:
    """Turns per-frame mouse state into camera moves: a drag starts with a button pressed over
    the image (then may leave it), left = orbit, right/middle = pan; ends on release."""

    MODES = {"left": "orbit", "right": "pan", "middle": "pan"}

    def __init__(self) -> None:
        self.last: Optional[Tuple[float, float]] = None
        self.button: Optional[str] = None

    def update(self, down: list, pos: Tuple[float, float], hovered: bool) -> Optional[Tuple[str, float, float]]:
        """``down``: names of the buttons held; returns ``(mode, dx, dy)`` or None."""
        if self.button is not None and self.button not in down:
            self.last = self.button = None
        if self.button is None:
            if down and hovered:
                self.button, self.last = down[0], (float(pos[0]), float(pos[1]))
            return None
        dx, dy = pos[0] - self.last[0], pos[1] - self.last[1]
        self.last = (float(pos[0]), float(pos[1]))
        if dx == 0 and dy == 0:
            return None
        return self.MODES[self.button], float(dx), float(dy)


class RemoteViewerApp:
    """The DearPyGui window: image, controls, status; owns the camera and the link."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.width, self.height = args.width, args.height
        self.camera = OrbitCamera(width=self.width, height=self.height, fovy=args.fovy, radius=args.radius,
                                  target=np.array(args.target, dtype=np.float64))
        self._default_camera = replace(self.camera, target=self.camera.target.copy())
        self._lock = threading.Lock()
        self.settings = {"timestep": 0, "scaling_modifier": 1.0, "show_splatting": True, "show_mesh": False,
                         "mesh_opacity": 0.5, "original_mesh": False, "pause_training": False,
                         "pause_rendering": False, "keep_alive": False, "jpeg_quality": args.jpeg_quality}
        self.num_timesteps = 0
        self.link = ViewerLink(args.ip, args.port, self.make_request)
        self._drag = DragTracker()
        self.frames_shown = 0

    # -- request from UI state (called on the link thread) ---------------------------------
    def make_request(self) -> RenderRequest:
        with self._lock:
            s = dict(self.settings)
            cam = replace(self.camera, target=self.camera.target.copy())
            num_t = self.num_timesteps
        timestep = min(int(s["timestep"]), max(num_t - 1, 0))
        return RenderRequest(
            width=cam.width, height=cam.height, fovx=cam.fovx_rad, fovy=cam.fovy_rad,
            znear=cam.znear, zfar=cam.zfar,
            world_view_transform=cam.world_view_transform.tolist(),
            full_proj_transform=cam.full_proj_transform.tolist(),
            timestep=timestep, scaling_modifier=float(s["scaling_modifier"]),
            render=not s["pause_rendering"], train=not s["pause_training"], keep_alive=bool(s["keep_alive"]),
            show_splatting=bool(s["show_splatting"]), show_mesh=bool(s["show_mesh"]),
            mesh_opacity=float(s["mesh_opacity"]), original_mesh=bool(s["original_mesh"]),
            jpeg_quality=int(s["jpeg_quality"]))

    def _setting(self, key: str):
        def cb(sender, app_data, user_data=None):
            with self._lock:
                self.settings[key] = app_data
        return cb

    # -- UI ----------------------------------------------------------------------------------
    def build(self) -> None:
        import dearpygui.dearpygui as dpg

        dpg.create_context()
        with dpg.texture_registry():
            dpg.add_raw_texture(self.width, self.height, np.ones(self.width * self.height * 3, np.float32),
                                format=dpg.mvFormat_Float_rgb, tag="frame_tex")
        with dpg.window(tag="main", no_scrollbar=True):
            with dpg.group(horizontal=True):
                dpg.add_image("frame_tex", tag="frame_img", width=self.width, height=self.height)
                with dpg.child_window(width=PANEL_WIDTH - 10, height=max(self.height, PANEL_MIN_HEIGHT), border=False):
                    dpg.add_text("GaussianAvatars remote viewer")
                    dpg.add_text("", tag="status_text", wrap=PANEL_WIDTH - 20)
                    dpg.add_text("", tag="link_text", wrap=PANEL_WIDTH - 20, color=(160, 160, 160))
                    dpg.add_separator()
                    dpg.add_checkbox(label="pause training", tag="pause_training",
                                     callback=self._setting("pause_training"))
                    dpg.add_checkbox(label="pause rendering", tag="pause_rendering",
                                     callback=self._setting("pause_rendering"))
                    dpg.add_checkbox(label="keep alive after training", tag="keep_alive",
                                     callback=self._setting("keep_alive"))
                    dpg.add_separator()
                    dpg.add_checkbox(label="show splatting", default_value=True,
                                     callback=self._setting("show_splatting"))
                    dpg.add_checkbox(label="show mesh", callback=self._setting("show_mesh"))
                    dpg.add_slider_float(label="mesh opacity", default_value=0.5, min_value=0.0, max_value=1.0,
                                         width=150, callback=self._setting("mesh_opacity"))
                    dpg.add_checkbox(label="original FLAME (not fine-tuned)",
                                     callback=self._setting("original_mesh"))
                    dpg.add_separator()
                    dpg.add_slider_int(label="timestep", tag="timestep", default_value=0, min_value=0,
                                       max_value=0, width=150, callback=self._setting("timestep"))
                    dpg.add_slider_float(label="scaling modifier", default_value=1.0, min_value=0.01,
                                         max_value=3.0, width=150, callback=self._setting("scaling_modifier"))
                    dpg.add_slider_float(label="field of view", tag="fovy", default_value=self.camera.fovy,
                                         min_value=5.0, max_value=120.0, width=150, format="%.1f deg",
                                         callback=self._on_fov)
                    dpg.add_slider_int(label="JPEG quality", default_value=self.settings["jpeg_quality"],
                                       min_value=0, max_value=100, width=150,
                                       callback=self._setting("jpeg_quality"))
                    dpg.add_text("(0 = raw RGB)", color=(160, 160, 160))
                    dpg.add_button(label="reset camera", callback=self._reset_camera)
                    dpg.add_separator()
                    dpg.add_text("left drag: orbit | right/middle drag: pan\nwheel: zoom | left/right keys: timestep",
                                 color=(160, 160, 160))
        with dpg.handler_registry():
            dpg.add_mouse_wheel_handler(callback=self._on_wheel)
            dpg.add_key_press_handler(dpg.mvKey_Left, callback=lambda *a: self._step_timestep(-1))
            dpg.add_key_press_handler(dpg.mvKey_Right, callback=lambda *a: self._step_timestep(+1))
        dpg.create_viewport(title="GaussianAvatars - remote viewer", width=self.width + PANEL_WIDTH + 20,
                            height=max(self.height, PANEL_MIN_HEIGHT) + 20, resizable=False)
        dpg.setup_dearpygui()
        dpg.set_primary_window("main", True)
        dpg.show_viewport()

    def _on_fov(self, sender, app_data, user_data=None) -> None:
        with self._lock:
            self.camera.set_fovy(float(app_data))

    def _reset_camera(self, *args) -> None:
        import dearpygui.dearpygui as dpg

        with self._lock:
            self.camera = replace(self._default_camera, target=self._default_camera.target.copy())
        dpg.set_value("fovy", self.camera.fovy)

    def _on_wheel(self, sender, app_data, user_data=None) -> None:
        import dearpygui.dearpygui as dpg

        if dpg.is_item_hovered("frame_img"):
            with self._lock:
                self.camera.zoom(float(app_data))

    def _step_timestep(self, delta: int) -> None:
        import dearpygui.dearpygui as dpg

        with self._lock:
            n = max(self.num_timesteps, 1)
            t = (int(self.settings["timestep"]) + delta) % n
            self.settings["timestep"] = t
        dpg.set_value("timestep", t)

    def _poll_mouse(self) -> None:
        """Per-frame drag tracking on the image (orbit with left, pan with right/middle)."""
        import dearpygui.dearpygui as dpg

        names = {dpg.mvMouseButton_Left: "left", dpg.mvMouseButton_Right: "right",
                 dpg.mvMouseButton_Middle: "middle"}
        down = [name for b, name in names.items() if dpg.is_mouse_button_down(b)]
        x, y = dpg.get_mouse_pos(local=False)
        move = self._drag.update(down, (x, y), dpg.is_item_hovered("frame_img"))
        if move is None:
            return
        mode, dx, dy = move
        with self._lock:
            if mode == "orbit":
                self.camera.orbit(dx, dy)
            else:
                self.camera.pan(dx, dy)

    def _update_ui(self) -> None:
        import dearpygui.dearpygui as dpg

        frame = self.link.take_frame()
        if frame is not None:
            rgb, w, h = frame
            if (w, h) == (self.width, self.height):
                dpg.set_value("frame_tex", rgb)
                self.frames_shown += 1
        stats = self.link.snapshot()
        st = stats.status
        if st is not None and st.num_timesteps != self.num_timesteps:
            with self._lock:
                self.num_timesteps = st.num_timesteps
            dpg.configure_item("timestep", max_value=max(st.num_timesteps - 1, 0))
        if st is None:
            text = "no status yet"
        else:
            loss = f"{st.loss:.4f}" if st.loss is not None else "-"
            state = "done" if st.training_done else ("paused" if st.training_paused else "training")
            text = (f"iteration {st.iteration} ({state})\nsplats {st.num_splats}   timesteps {st.num_timesteps}\n"
                    f"loss {loss}   FPS {stats.fps:.1f}")
            if st.render_ms is not None:
                text += f"\nrender {st.render_ms:.1f} ms"
            if st.note:
                text += f"\n{st.note}"
        dpg.set_value("status_text", text)
        dpg.set_value("link_text", stats.message)

    def run(self) -> int:
        import dearpygui.dearpygui as dpg

        self.build()
        self.link.start()
        shot_requested_at: Optional[float] = None
        start = time.monotonic()
        try:
            while dpg.is_dearpygui_running():
                self._poll_mouse()
                self._update_ui()
                dpg.render_dearpygui_frame()
                if self.args.screenshot and self.frames_shown >= self.args.exit_after:
                    if shot_requested_at is None:
                        dpg.render_dearpygui_frame()  # the new texture is on screen
                        dpg.output_frame_buffer(file=self.args.screenshot)
                        shot_requested_at = time.monotonic()
                    elif os.path.exists(self.args.screenshot) and time.monotonic() - shot_requested_at > 0.5:
                        break
                if self.args.timeout and time.monotonic() - start > self.args.timeout:
                    print(f"remote_viewer: gave up after {self.args.timeout:.0f} s "
                          f"({self.frames_shown} frames shown)", file=sys.stderr)
                    return 2
        finally:
            self.link.stop()
            dpg.destroy_context()
        return 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Remote viewer for a GaussianAvatars training run")
    ap.add_argument("--ip", default="127.0.0.1", help="trainer address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=60000, help="trainer port (default 60000)")
    ap.add_argument("--width", type=int, default=800, help="render width in pixels")
    ap.add_argument("--height", type=int, default=600, help="render height in pixels")
    ap.add_argument("--jpeg_quality", type=int, default=0,
                    help="0: raw RGB frames (local); 1-100: JPEG frames (e.g. 85 over SSH)")
    ap.add_argument("--fovy", type=float, default=20.0, help="initial vertical field of view (degrees)")
    ap.add_argument("--radius", type=float, default=1.0, help="initial camera distance to the target")
    ap.add_argument("--target", type=float, nargs=3, default=(0.0, 0.0, 0.0), help="orbit centre (world)")
    ap.add_argument("--screenshot", default=None, help="save the window to this PNG after --exit_after frames, then quit")
    ap.add_argument("--exit_after", type=int, default=3, help="frames to show before --screenshot")
    ap.add_argument("--timeout", type=float, default=0.0, help="quit with exit code 2 after this many seconds (0: never)")
    args = ap.parse_args(argv)
    if not (1 <= args.width <= 4096 and 1 <= args.height <= 4096):
        ap.error("--width/--height must be within 1..4096")
    if not 0 <= args.jpeg_quality <= 100:
        ap.error("--jpeg_quality must be within 0..100")
    if not 0 < args.radius:
        ap.error("--radius must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return RemoteViewerApp(args).run()


if __name__ == "__main__":
    sys.exit(main())
