"""Drive a trained avatar interactively with FLAME controls (DearPyGui), or export a motion
headlessly.

    python local_viewer.py --point_path MODEL_OR_PLY [--motion_path MOTION.npz]
    python local_viewer.py --point_path MODEL --motion_path M.npz --export OUT_DIR [--video]

Mouse on the image: left drag orbits, right or middle drag pans, the wheel zooms. Left/right
arrow keys step the timeline. On a CPU the view renders at a reduced resolution (--cpu_scale).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from gaussian_renderer.avatar_engine import AvatarEngine, AvatarLoadError, RenderOptions
from gaussian_renderer.motion import (KEY_WIDTH, Keyframe, MotionError, interpolate_keyframes, motion_frame,
                                      motion_length, save_motion)
from viewer.camera import OrbitCamera

NUM_EXPR_SLIDERS = 10
POSE_SLIDERS = (("rotation", "global rotation", 0.7), ("neck_pose", "neck", 0.7),
                ("jaw_pose", "jaw", 0.6), ("eyes_pose", "eyes", 0.6))
AXES = ("pitch", "yaw", "roll")   # axis-angle components x, y, z


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point_path", required=True, help="model folder or point_cloud.ply (flame_param.npz beside it)")
    parser.add_argument("--motion_path", default=None, help="FLAME motion npz to play (e.g. another avatar's flame_param.npz)")
    parser.add_argument("--iteration", type=int, default=-1, help="iteration of a model folder (default: latest)")
    parser.add_argument("--width", type=int, default=802)
    parser.add_argument("--height", type=int, default=550)
    parser.add_argument("--fovy", type=float, default=20.0, help="vertical field of view in degrees")
    parser.add_argument("--radius", type=float, default=1.0, help="camera distance to the head in metres")
    parser.add_argument("--background", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--backend", default="auto", choices=["auto", "cuda", "reference"])
    parser.add_argument("--cpu_scale", type=float, default=0.35,
                        help="render-resolution factor on CPU so the view stays interactive")
    parser.add_argument("--flame_model_path", default=None)
    parser.add_argument("--flame_masks_path", default=None)
    # headless export
    parser.add_argument("--export", default=None, metavar="OUT_DIR",
                        help="render the motion (or the avatar's own frames) to OUT_DIR/00000.png ... without a window")
    parser.add_argument("--video", action="store_true", help="with --export: also write OUT_DIR/renders.mp4")
    parser.add_argument("--cameras_json", default=None,
                        help="with --export: a cameras.json (model folder's) to take the camera from")
    parser.add_argument("--camera_index", type=int, default=0, help="entry of --cameras_json to use")
    parser.add_argument("--frames", type=int, nargs="*", default=None, help="with --export: only these frames")
    # testing aids
    parser.add_argument("--screenshot", default=None, help="save a screenshot of the window after --exit_after frames")
    parser.add_argument("--exit_after", type=int, default=0, help="close the window after N frames (0: never)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# cameras
# ---------------------------------------------------------------------------------------------

def camera_from_json_entry(entry: Dict, device) -> object:
    """A ``MiniCam`` from one ``cameras.json`` entry (position, rotation = camera-to-world
    rotation, fx, fy, width, height; optional cx, cy)."""
    import torch

    from scene.cameras import MiniCam
    from utils.graphics_utils import getProjectionMatrix

    width, height = int(entry["width"]), int(entry["height"])
    fx, fy = float(entry["fx"]), float(entry["fy"])
    rot_c2w = np.asarray(entry["rotation"], np.float64)
    pos = np.asarray(entry["position"], np.float64)
    w2c = np.eye(4)
    w2c[:3, :3] = rot_c2w.T
    w2c[:3, 3] = -rot_c2w.T @ pos
    fovx, fovy = 2 * math.atan(width / (2 * fx)), 2 * math.atan(height / (2 * fy))
    cx, cy = entry.get("cx"), entry.get("cy")
    proj = getProjectionMatrix(znear=0.01, zfar=100.0, fovX=fovx, fovY=fovy, cx=cx, cy=cy,
                               width=width, height=height)
    proj = torch.as_tensor(proj, dtype=torch.float32)
    wvt = torch.tensor(w2c.T, dtype=torch.float32)
    fpt = wvt @ proj.T
    return MiniCam(width, height, fovy, fovx, 0.01, 100.0, wvt.to(device), fpt.to(device),
                   cx=cx, cy=cy)


def default_orbit_camera(engine: AvatarEngine, args: argparse.Namespace) -> OrbitCamera:
    return OrbitCamera(width=args.width, height=args.height, fovy=args.fovy, radius=args.radius,
                       target=engine.head_center())


# ---------------------------------------------------------------------------------------------
# headless export
# ---------------------------------------------------------------------------------------------

def export_motion(engine: AvatarEngine, args: argparse.Namespace) -> List[str]:
    """Render every frame (or ``args.frames``) to PNGs in ``args.export``; returns the paths."""
    from PIL import Image

    os.makedirs(args.export, exist_ok=True)
    if args.cameras_json:
        with open(args.cameras_json, "r", encoding="utf-8") as fh:
            entries = json.load(fh)
        if not 0 <= args.camera_index < len(entries):
            raise SystemExit(f"--camera_index {args.camera_index} out of range: {args.cameras_json} has {len(entries)} cameras")
        camera = camera_from_json_entry(entries[args.camera_index], engine.device)
    else:
        camera = default_orbit_camera(engine, args).minicam(device=engine.device)
    total = max(1, engine.num_timesteps)
    frames = args.frames if args.frames else list(range(total))
    options = RenderOptions(background=tuple(args.background))
    paths = []
    from tqdm import tqdm

    for i, t in enumerate(tqdm(frames, desc="export", unit="frame")):
        params = engine.params_at(t) if engine.bound else None
        image = engine.render(camera, params, options)
        path = os.path.join(args.export, f"{i:05d}.png")
        Image.fromarray((image * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    if args.video:
        from utils.video_utils import encode_png_folder

        encode_png_folder(args.export, os.path.join(args.export, "renders.mp4"), fps=25)
    return paths


# ---------------------------------------------------------------------------------------------
# the interactive viewer
# ---------------------------------------------------------------------------------------------

@dataclass
class ViewerState:
    timestep: int = 0
    playing: bool = False
    params: Dict[str, np.ndarray] = field(default_factory=dict)
    keyframes: List[Keyframe] = field(default_factory=list)
    selected_keyframe: int = -1
    trajectory: Optional[Dict[str, np.ndarray]] = None
    trajectory_frame: int = 0
    cached_camera: Optional[dict] = None
    status: str = ""


class LocalViewer:
    """The DearPyGui window around an :class:`AvatarEngine`."""

    PANEL_WIDTH = 360

    def __init__(self, engine: AvatarEngine, args: argparse.Namespace):
        self.engine = engine
        self.args = args
        self.camera = default_orbit_camera(engine, args)
        self.home = dict(yaw=self.camera.yaw, pitch=self.camera.pitch, radius=self.camera.radius,
                         target=self.camera.target.copy(), fovy=self.camera.fovy)
        self.options = RenderOptions(background=tuple(args.background))
        self.state = ViewerState(params=engine.params_at(0) if engine.bound else {})
        on_cpu = engine.device.type == "cpu"
        self.render_scale = float(args.cpu_scale) if on_cpu else 1.0
        self.dirty = True
        self.last_image: Optional[np.ndarray] = None
        self.fps = 0.0
        self._drag_last = {0: (0.0, 0.0), 1: (0.0, 0.0), 2: (0.0, 0.0)}
        self._last_time = time.perf_counter()
        self.frame_count = 0

    # ---- rendering ------------------------------------------------------------------------
    def render_frame(self) -> np.ndarray:
        w = max(1, int(round(self.args.width * self.render_scale)))
        h = max(1, int(round(self.args.height * self.render_scale)))
        cam = self.camera.minicam(width=w, height=h, device=self.engine.device)
        t0 = time.perf_counter()
        image = self.engine.render(cam, self.state.params if self.engine.bound else None, self.options)
        dt = time.perf_counter() - t0
        self.fps = 0.8 * self.fps + 0.2 * (1.0 / max(dt, 1e-6)) if self.fps else 1.0 / max(dt, 1e-6)
        self.last_image = image
        return image

    def _upload(self, image: np.ndarray) -> None:
        import dearpygui.dearpygui as dpg

        h, w = image.shape[:2]
        if (w, h) != (self.args.width, self.args.height):
            from PIL import Image

            up = Image.fromarray((image * 255).astype(np.uint8)).resize((self.args.width, self.args.height), Image.BILINEAR)
            image = np.asarray(up, np.float32) / 255.0
        dpg.set_value("view_texture", np.ascontiguousarray(image, dtype=np.float32).reshape(-1))

    # ---- parameter plumbing --------------------------------------------------------------
    def _slider_tag(self, key: str, i: int) -> str:
        return f"flame_{key}_{i}"

    def params_to_sliders(self) -> None:
        import dearpygui.dearpygui as dpg

        if not self.engine.bound:
            return
        p = self.state.params
        for key, _, _ in POSE_SLIDERS:          # eyes: the sliders show the first eye (both move together)
            for i in range(3):
                dpg.set_value(self._slider_tag(key, i), float(p[key][i]))
        for i in range(min(NUM_EXPR_SLIDERS, self.engine.n_expr)):
            dpg.set_value(self._slider_tag("expr", i), float(p["expr"][i]))

    def on_flame_slider(self, sender, value, user_data) -> None:
        key, i = user_data
        p = self.state.params
        if key == "eyes_pose":          # both eyes move together
            p[key][i] = value
            p[key][3 + i] = value
        else:
            p[key][i] = value
        self.state.playing = False
        self.state.trajectory = None
        self.dirty = True

    def set_timestep(self, t: int) -> None:
        import dearpygui.dearpygui as dpg

        n = self.engine.num_timesteps
        if n <= 0:
            return
        self.state.timestep = int(t) % n
        self.state.params = self.engine.params_at(self.state.timestep)
        dpg.set_value("timestep", self.state.timestep)
        self.params_to_sliders()
        self.dirty = True

    def reset_flame(self) -> None:
        self.state.params = self.engine.neutral_params()
        self.params_to_sliders()
        self.dirty = True

    # ---- camera ---------------------------------------------------------------------------
    def reset_camera(self) -> None:
        import dearpygui.dearpygui as dpg

        self.camera.yaw, self.camera.pitch = self.home["yaw"], self.home["pitch"]
        self.camera.radius, self.camera.target = self.home["radius"], self.home["target"].copy()
        self.camera.set_fovy(self.home["fovy"])
        dpg.set_value("fovy", self.camera.fovy)
        self.dirty = True

    def cache_camera(self) -> None:
        c = self.camera
        self.state.cached_camera = dict(yaw=c.yaw, pitch=c.pitch, radius=c.radius, target=c.target.copy(), fovy=c.fovy)
        self.set_status("camera cached")

    def restore_camera(self) -> None:
        cached = self.state.cached_camera
        if not cached:
            self.set_status("no cached camera")
            return
        c = self.camera
        c.yaw, c.pitch, c.radius, c.target = cached["yaw"], cached["pitch"], cached["radius"], cached["target"].copy()
        c.set_fovy(cached["fovy"])
        self.dirty = True

    # ---- keyframes ------------------------------------------------------------------------
    def _refresh_keyframe_list(self) -> None:
        import dearpygui.dearpygui as dpg

        items = [f"key {i}" for i in range(len(self.state.keyframes))]
        dpg.configure_item("keyframe_list", items=items)
        if self.state.selected_keyframe >= 0 and items:
            dpg.set_value("keyframe_list", items[min(self.state.selected_keyframe, len(items) - 1)])

    def add_keyframe(self) -> None:
        self.state.keyframes.append(Keyframe({k: v.copy() for k, v in self.state.params.items()}))
        self.state.selected_keyframe = len(self.state.keyframes) - 1
        self._refresh_keyframe_list()

    def update_keyframe(self) -> None:
        i = self.state.selected_keyframe
        if 0 <= i < len(self.state.keyframes):
            self.state.keyframes[i] = Keyframe({k: v.copy() for k, v in self.state.params.items()})

    def delete_keyframe(self) -> None:
        i = self.state.selected_keyframe
        if 0 <= i < len(self.state.keyframes):
            del self.state.keyframes[i]
            self.state.selected_keyframe = min(i, len(self.state.keyframes) - 1)
            self._refresh_keyframe_list()

    def select_keyframe(self, sender, value) -> None:
        try:
            i = int(str(value).split()[-1])
        except ValueError:
            return
        self.state.selected_keyframe = i
        self.state.params = {k: v.copy() for k, v in self.state.keyframes[i].params.items()}
        self.params_to_sliders()
        self.dirty = True

    def build_trajectory(self) -> Optional[Dict[str, np.ndarray]]:
        import dearpygui.dearpygui as dpg

        if not self.state.keyframes:
            self.set_status("add keyframes first")
            return None
        return interpolate_keyframes(self.state.keyframes, int(dpg.get_value("kf_interval")),
                                     int(dpg.get_value("kf_cycles")))

    def play_keyframes(self) -> None:
        self.state.trajectory = self.build_trajectory()
        self.state.trajectory_frame = 0
        self.state.playing = False

    def export_trajectory(self) -> None:
        import dearpygui.dearpygui as dpg

        traj = self.build_trajectory()
        if traj is None:
            return
        path = dpg.get_value("export_motion_path")
        try:
            save_motion(path, traj)
        except OSError as exc:
            self.set_status(f"cannot write {path}: {exc}")
            return
        self.set_status(f"saved {motion_length(traj)} frames to {path}")

    def export_frames(self) -> None:
        import dearpygui.dearpygui as dpg
        from PIL import Image

        traj = self.build_trajectory()
        if traj is None:
            return
        folder = dpg.get_value("export_frames_dir")
        os.makedirs(folder, exist_ok=True)
        cam = self.camera.minicam(device=self.engine.device)
        for i in range(motion_length(traj)):
            image = self.engine.render(cam, motion_frame(traj, i), self.options)
            Image.fromarray((image * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.png"))
        self.set_status(f"wrote {motion_length(traj)} frames to {folder}")

    def save_image(self, path: Optional[str] = None) -> str:
        import dearpygui.dearpygui as dpg
        from PIL import Image

        path = path or dpg.get_value("save_image_path")
        image = self.last_image if self.last_image is not None else self.render_frame()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        Image.fromarray((image * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(path)
        self.set_status(f"saved {path}")
        return path

    def set_status(self, text: str) -> None:
        import dearpygui.dearpygui as dpg

        self.state.status = text
        if dpg.does_item_exist("status"):
            dpg.set_value("status", text)

    # ---- the window -----------------------------------------------------------------------
    def build(self) -> None:
        import dearpygui.dearpygui as dpg

        dpg.create_context()
        W, H = self.args.width, self.args.height
        with dpg.texture_registry():
            dpg.add_raw_texture(W, H, np.ones(W * H * 3, np.float32), format=dpg.mvFormat_Float_rgb, tag="view_texture")
        with dpg.window(tag="view_window", pos=(0, 0), width=W, height=H, no_title_bar=True, no_move=True,
                        no_resize=True, no_scrollbar=True, no_background=True):
            dpg.add_image("view_texture", tag="view_image", pos=(0, 0))
        with dpg.window(label="controls", tag="panel", pos=(W, 0), width=self.PANEL_WIDTH, height=max(H, 720)):
            self._build_panel()
        with dpg.handler_registry():
            for button in (dpg.mvMouseButton_Left, dpg.mvMouseButton_Right, dpg.mvMouseButton_Middle):
                dpg.add_mouse_drag_handler(button=button, threshold=1.0, callback=self._on_drag, user_data=button)
                dpg.add_mouse_release_handler(button=button, callback=self._on_release, user_data=button)
            dpg.add_mouse_wheel_handler(callback=self._on_wheel)
            dpg.add_key_press_handler(dpg.mvKey_Left, callback=lambda: self.set_timestep(self.state.timestep - 1))
            dpg.add_key_press_handler(dpg.mvKey_Right, callback=lambda: self.set_timestep(self.state.timestep + 1))
        dpg.create_viewport(title="GaussianAvatars - local viewer", width=W + self.PANEL_WIDTH, height=max(H, 720) + 40)
        dpg.setup_dearpygui()
        dpg.show_viewport()

    def _build_panel(self) -> None:
        import dearpygui.dearpygui as dpg

        e = self.engine
        dpg.add_text("", tag="fps_text")
        dpg.add_text(f"splats: {e.num_splats}", tag="splat_text")
        for note in e.info.notes:
            dpg.add_text(note, wrap=self.PANEL_WIDTH - 20, color=(255, 180, 80))
        with dpg.collapsing_header(label="camera", default_open=True):
            with dpg.group(horizontal=True):
                dpg.add_button(label="reset", callback=self.reset_camera)
                dpg.add_button(label="cache", callback=self.cache_camera)
                dpg.add_button(label="restore", callback=self.restore_camera)
            dpg.add_slider_float(label="fov y", tag="fovy", default_value=self.camera.fovy, min_value=5, max_value=90,
                                 callback=lambda s, v: (self.camera.set_fovy(v), self._mark()))
            dpg.add_slider_float(label="scaling", tag="scaling_modifier", default_value=1.0, min_value=0.01, max_value=1.0,
                                 callback=lambda s, v: self._set_option("scaling_modifier", v))
        with dpg.collapsing_header(label="display", default_open=True):
            dpg.add_checkbox(label="show splatting", tag="show_splatting", default_value=True,
                             callback=lambda s, v: self._set_option("show_splatting", v))
            dpg.add_checkbox(label="show mesh", tag="show_mesh", default_value=False, enabled=e.bound,
                             callback=lambda s, v: self._set_option("show_mesh", v))
            dpg.add_color_edit(label="mesh colour", tag="mesh_color", default_value=(191, 191, 191), no_alpha=True,
                               callback=lambda s, v: self._set_option("mesh_color", tuple(float(c) / 255 if c > 1 else float(c) for c in v[:3])))
            dpg.add_slider_float(label="mesh opacity", tag="mesh_opacity", default_value=0.5, min_value=0, max_value=1,
                                 callback=lambda s, v: self._set_option("mesh_opacity", v))
            dpg.add_checkbox(label="splats per face", tag="splats_per_face", default_value=False, enabled=e.bound,
                             callback=lambda s, v: self._set_option("splats_per_face", v))
        with dpg.collapsing_header(label="timeline", default_open=True):
            n = max(1, e.num_timesteps)
            dpg.add_slider_int(label="timestep", tag="timestep", default_value=0, min_value=0, max_value=n - 1,
                               enabled=e.num_timesteps > 1, callback=lambda s, v: self.set_timestep(v))
            dpg.add_checkbox(label="play", tag="play", default_value=False, enabled=e.num_timesteps > 1,
                             callback=lambda s, v: setattr(self.state, "playing", bool(v)))
        with dpg.collapsing_header(label="FLAME", default_open=e.bound):
            if not e.bound:
                dpg.add_text("plain 3D Gaussians: no FLAME controls", color=(255, 180, 80))
            else:
                dpg.add_button(label="reset FLAME", callback=self.reset_flame)
                for key, label, rng in POSE_SLIDERS:
                    dpg.add_text(label)
                    for i, axis in enumerate(AXES):
                        dpg.add_slider_float(label=f"{axis}##{key}", tag=self._slider_tag(key, i),
                                             default_value=float(self.state.params[key][i]), min_value=-rng,
                                             max_value=rng, callback=self.on_flame_slider, user_data=(key, i))
                dpg.add_text("expression")
                for i in range(min(NUM_EXPR_SLIDERS, e.n_expr)):
                    dpg.add_slider_float(label=f"expr {i}", tag=self._slider_tag("expr", i),
                                         default_value=float(self.state.params["expr"][i]), min_value=-3, max_value=3,
                                         callback=self.on_flame_slider, user_data=("expr", i))
        with dpg.collapsing_header(label="keyframes", default_open=False):
            with dpg.group(horizontal=True):
                dpg.add_button(label="add", callback=self.add_keyframe, enabled=e.bound)
                dpg.add_button(label="update", callback=self.update_keyframe, enabled=e.bound)
                dpg.add_button(label="delete", callback=self.delete_keyframe, enabled=e.bound)
            dpg.add_listbox(items=[], tag="keyframe_list", num_items=4, callback=self.select_keyframe)
            dpg.add_input_int(label="interval", tag="kf_interval", default_value=25, min_value=1, min_clamped=True)
            dpg.add_input_int(label="cycles", tag="kf_cycles", default_value=1, min_value=1, min_clamped=True)
            dpg.add_button(label="play keyframes", callback=self.play_keyframes, enabled=e.bound)
            dpg.add_input_text(label="motion npz", tag="export_motion_path", default_value="output/keyframes_motion.npz")
            dpg.add_button(label="export motion", callback=self.export_trajectory, enabled=e.bound)
            dpg.add_input_text(label="frames dir", tag="export_frames_dir", default_value="output/keyframes_frames")
            dpg.add_button(label="export frames", callback=self.export_frames, enabled=e.bound)
        with dpg.collapsing_header(label="save", default_open=True):
            dpg.add_input_text(label="image", tag="save_image_path", default_value="output/screenshot.png")
            dpg.add_button(label="save image", callback=lambda: self.save_image())
        dpg.add_text("", tag="status", wrap=self.PANEL_WIDTH - 20)

    def _mark(self) -> None:
        self.dirty = True

    def _set_option(self, name: str, value) -> None:
        setattr(self.options, name, value)
        self.dirty = True

    def _over_image(self) -> bool:
        import dearpygui.dearpygui as dpg

        x, y = dpg.get_mouse_pos(local=False)
        return 0 <= x < self.args.width and 0 <= y < self.args.height

    def _on_drag(self, sender, app_data, user_data) -> None:
        import dearpygui.dearpygui as dpg

        if not self._over_image():
            return
        _, dx_total, dy_total = app_data
        lx, ly = self._drag_last[user_data]
        dx, dy = dx_total - lx, dy_total - ly
        self._drag_last[user_data] = (dx_total, dy_total)
        if user_data == dpg.mvMouseButton_Left:
            self.camera.orbit(dx, dy)
        else:
            self.camera.pan(dx, dy)   # the camera's size is the displayed image's
        self.dirty = True

    def _on_release(self, sender, app_data, user_data) -> None:
        self._drag_last[user_data] = (0.0, 0.0)

    def _on_wheel(self, sender, app_data) -> None:
        if self._over_image():
            self.camera.zoom(float(app_data))
            self.dirty = True

    # ---- main loop ------------------------------------------------------------------------
    def advance(self) -> None:
        """Advance playback by one frame (timeline or keyframe trajectory)."""
        traj = self.state.trajectory
        if traj is not None:
            self.state.params = motion_frame(traj, self.state.trajectory_frame)
            self.state.trajectory_frame += 1
            if self.state.trajectory_frame >= motion_length(traj):
                self.state.trajectory = None
            self.params_to_sliders()
            self.dirty = True
        elif self.state.playing:
            self.set_timestep(self.state.timestep + 1)

    def tick(self) -> None:
        """One GUI frame: playback, render when something changed, upload, status."""
        import dearpygui.dearpygui as dpg

        self.advance()
        if self.dirty:
            self._upload(self.render_frame())
            self.dirty = False
        dpg.set_value("fps_text", f"render: {self.fps:6.1f} FPS ({self.args.width}x{self.args.height}"
                                  + (f", rendered at {self.render_scale:.2f}x" if self.render_scale != 1 else "") + ")")
        dpg.set_value("splat_text", f"splats: {self.engine.num_splats}")
        dpg.render_dearpygui_frame()
        self.frame_count += 1

    def run(self) -> None:
        import dearpygui.dearpygui as dpg

        while dpg.is_dearpygui_running():
            self.tick()
            if self.args.exit_after and self.frame_count >= self.args.exit_after:
                if self.args.screenshot:
                    dpg.output_frame_buffer(self.args.screenshot)
                    for _ in range(3):
                        dpg.render_dearpygui_frame()
                break
        dpg.destroy_context()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        engine = AvatarEngine(args.point_path, motion_path=None, device=args.device, backend=args.backend,
                              flame_model_path=args.flame_model_path, flame_masks_path=args.flame_masks_path,
                              iteration=args.iteration)
    except (AvatarLoadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.motion_path:
        try:
            for note in engine.load_motion_file(args.motion_path):
                print(f"note: {note}")
        except MotionError as exc:
            # the viewer stays usable with the avatar's own frames
            print(f"warning: {exc}; showing the avatar's own frames", file=sys.stderr)
            engine.info.notes.append(str(exc))
    for note in engine.info.notes:
        print(f"note: {note}")
    if args.export:
        paths = export_motion(engine, args)
        print(f"wrote {len(paths)} frames to {args.export}")
        return 0
    viewer = LocalViewer(engine, args)
    viewer.build()
    viewer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
