"""Trainer side of the remote viewer link (viewer.server.ViewerServer).

A small fake training loop (a trainable stand-in model with timesteps, optimised with Adam and
drawing from torch's global RNG like real training) is driven in a thread while clients connect,
fuzz and misbehave. Checks: training never sees an exception, keeps iterating, ends bit-identical
to a run without a viewer, and a well-formed viewer is served correctly afterwards.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional

import numpy as np
import pytest
import torch

from viewer import protocol as vp
from viewer.server import (
    DemoGaussians, DemoPipe, ServerConfig, ViewerServer, splat_points,
)
from viewer.camera import OrbitCamera

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ServerConfig(poll_interval_s=0.0, read_timeout_s=0.5, write_timeout_s=0.5, idle_timeout_s=5.0,
                    pause_wait_s=0.01, linger_s=0.2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TrainableDemo(DemoGaussians):
    """DemoGaussians whose canonical positions are trained (the posed ones depend on the
    selected timestep, like a FLAME-bound model)."""

    def __init__(self, n: int = 48, num_timesteps: int = 4):
        super().__init__(n, num_timesteps, seed=1)
        self._base_xyz = self._base_xyz.clone().requires_grad_(True)
        self.select_mesh_by_timestep(0)


def train_step(model: TrainableDemo, iteration: int, lr: float = 0.5) -> float:
    """One plain gradient step (no torch.optim: keeps the test free of its slow first import)."""
    noise = torch.rand(model.get_xyz.shape)                  # global RNG, like random backgrounds
    loss = ((model.get_xyz - 0.05 * noise) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        model._base_xyz -= lr * model._base_xyz.grad
    model._base_xyz.grad = None
    return float(loss.detach())


class FakeTraining(threading.Thread):
    """select timestep -> viewer.handle (pause loop) -> train step; stricter than train.py (which
    selects after handle): a viewer render of another timestep must be undone by the server."""

    def __init__(self, server: Optional[ViewerServer], min_iterations: int = 0,
                 max_iterations: Optional[int] = None, sleep_s: float = 0.0005):
        super().__init__(daemon=True)
        self.server, self.min_iterations, self.max_iterations = server, min_iterations, max_iterations
        self.sleep_s = sleep_s
        self.stop_event = threading.Event()
        self.iteration = 0
        self.error: Optional[BaseException] = None
        self.model: Optional[TrainableDemo] = None
        self.paused_calls = 0

    def run(self) -> None:
        try:
            torch.manual_seed(0)
            self.model = TrainableDemo()
            pipe, bg, loss = DemoPipe(), torch.ones(3), None
            while True:
                if self.max_iterations is not None and self.iteration >= self.max_iterations:
                    break
                if self.stop_event.is_set() and self.iteration >= self.min_iterations:
                    break
                self.iteration += 1
                self.model.select_mesh_by_timestep(self.iteration % self.model.num_timesteps)
                if self.server is not None:
                    while self.server.handle(self.iteration, self.model, None, pipe, bg, loss=loss):
                        self.paused_calls += 1
                        if self.stop_event.is_set():    # test teardown while a viewer pauses
                            break
                loss = train_step(self.model, self.iteration)
                if self.sleep_s:
                    time.sleep(self.sleep_s)
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            self.error = e


def reference_params(iterations: int) -> torch.Tensor:
    run = FakeTraining(None, max_iterations=iterations, sleep_s=0.0)
    run.run()
    assert run.error is None
    return run.model._base_xyz.detach().clone()


def make_request(width=40, height=30, timestep=1, **kw) -> vp.RenderRequest:
    cam = OrbitCamera(width=width, height=height, fovy=25.0, radius=0.8, yaw=10.0, pitch=5.0)
    return vp.RenderRequest(width=width, height=height, fovx=cam.fovx_rad, fovy=cam.fovy_rad,
                            world_view_transform=cam.world_view_transform.tolist(),
                            full_proj_transform=cam.full_proj_transform.tolist(), timestep=timestep, **kw)


def connect(server: ViewerServer, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(server.address, timeout=timeout)
    s.settimeout(timeout)
    return s


def ask(s: socket.socket, req: vp.RenderRequest):
    s.sendall(req.encode())
    header, payload = vp.read_message(s, vp.TRAINER_TO_VIEWER, timeout=10.0)
    return header, payload


def read_until_eof(s: socket.socket, limit: float = 5.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 16)
        except ConnectionResetError:
            break
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def expected_image(req: vp.RenderRequest, model: DemoGaussians, timestep: int, original: bool) -> np.ndarray:
    from viewer.camera import make_minicam

    model.select_mesh_by_timestep(timestep, original=original)
    cam = make_minicam(req.width, req.height, req.fovy, req.fovx, req.znear, req.zfar,
                       torch.tensor(req.world_view_transform), torch.tensor(req.full_proj_transform))
    with torch.no_grad():
        img = splat_points(cam, model, DemoPipe(), torch.ones(3), req.scaling_modifier)["render"]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def server():
    logs: List[str] = []
    srv = ViewerServer.start("127.0.0.1", 0, quiet=True, config=FAST, log=logs.append, render_fn=splat_points)
    assert srv is not None
    srv.logs = logs
    yield srv
    srv.close()


@pytest.fixture
def training(server):
    run = FakeTraining(server)
    run.start()
    yield run
    run.stop_event.set()
    run.join(timeout=30)
    assert not run.is_alive()
    assert run.error is None, repr(run.error)


# ---------------------------------------------------------------------------------------------

def test_port_in_use_warns_once_and_returns_none(server):
    logs: List[str] = []
    second = ViewerServer.start("127.0.0.1", server.port, log=logs.append)
    assert second is None
    assert len(logs) == 1 and "port already in use" in logs[0] and "training goes on" in logs[0]


def test_unresolvable_address_returns_none():
    logs: List[str] = []
    assert ViewerServer.start("no-such-host.invalid", 0, log=logs.append) is None
    assert len(logs) == 1 and "cannot listen" in logs[0]


def test_idle_handle_returns_false_without_a_viewer(server):
    model = TrainableDemo()
    assert server.handle(1, model, None, DemoPipe(), torch.ones(3)) is False
    assert not server.connected


def serve_one(server: ViewerServer, model, s: socket.socket, req: vp.RenderRequest, iteration: int = 5):
    """Single-threaded: send a request, drive handle() until the reply is out, read it."""
    s.sendall(req.encode())
    sent = server.replies_sent
    deadline = time.monotonic() + 10
    while server.replies_sent == sent and time.monotonic() < deadline:
        server.handle(iteration, model, None, DemoPipe(), torch.ones(3), loss=0.25)
    return vp.read_message(s, vp.TRAINER_TO_VIEWER, timeout=5)


def test_frame_matches_direct_render_and_status(server):
    model = TrainableDemo()
    images = {}
    with connect(server) as s:
        for original in (False, True):
            req = make_request(timestep=2, original_mesh=original, scaling_modifier=0.7)
            header, payload = serve_one(server, model, s, req, iteration=42)
            assert header.msg_type == vp.MsgType.FRAME, payload[:200]
            frame = vp.decode_frame(payload, header.flags)
            images[original] = frame.image
            np.testing.assert_array_equal(frame.image, expected_image(req, model, 2, original))
            st = frame.status
            assert (st.iteration, st.num_splats, st.num_timesteps, st.loss) == (42, 48, 4, 0.25)
            assert not st.training_paused and not st.training_done and st.render_ms >= 0
    assert (images[True] != images[False]).any()        # original vs fine-tuned pose differ


def test_jpeg_frames_and_status_only(server, training):
    with connect(server) as s:
        header, payload = ask(s, make_request(jpeg_quality=80))
        assert header.flags == vp.FLAG_JPEG
        frame = vp.decode_frame(payload, header.flags)
        assert frame.image.shape == (30, 40, 3) and frame.encoding == "jpeg"
        header, payload = ask(s, make_request(render=False))
        assert header.msg_type == vp.MsgType.STATUS
        assert vp.decode_status(payload).num_timesteps == 4


def test_pause_training_and_resume(server, training):
    with connect(server) as s:
        ask(s, make_request(train=False, render=False))
        time.sleep(0.2)
        it0 = training.iteration
        header, payload = ask(s, make_request(train=False, render=False))
        assert vp.decode_status(payload).training_paused
        time.sleep(0.2)
        assert training.iteration == it0          # no training while paused
        assert training.paused_calls > 0
        ask(s, make_request(train=True, render=False))
        deadline = time.monotonic() + 10
        while training.iteration <= it0 + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert training.iteration > it0 + 5


def test_disconnect_while_paused_resumes_training(server, training):
    s = connect(server)
    ask(s, make_request(train=False, render=False))
    it0 = training.iteration
    s.close()
    deadline = time.monotonic() + 10
    while training.iteration <= it0 + 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert training.iteration > it0 + 5
    assert any("dropped viewer" in line for line in server.logs)


def test_newest_viewer_wins(server, training):
    first = connect(server)
    ask(first, make_request(render=False))
    second = connect(server)
    header, payload = ask(second, make_request(render=False))
    assert header.msg_type == vp.MsgType.STATUS
    header, payload = vp.read_message(first, timeout=5)
    assert header.msg_type == vp.MsgType.ERROR and "a new viewer connected" in vp.decode_error(payload)
    first.close()
    second.close()


def test_stalled_viewer_is_dropped_and_training_continues(server, training):
    with connect(server) as s:
        s.sendall(make_request().encode()[:17])        # header and 5 payload bytes, then silence
        time.sleep(0.05)
        it0 = training.iteration
        data = read_until_eof(s, limit=5.0)
        header = vp.parse_header(data[:vp.HEADER_SIZE])
        assert header.msg_type == vp.MsgType.ERROR
        assert "stalled" in vp.decode_error(data[vp.HEADER_SIZE:vp.HEADER_SIZE + header.length])
        assert training.iteration > it0 + 10          # training went on during the stall
    with connect(server) as s:
        assert ask(s, make_request())[0].msg_type == vp.MsgType.FRAME


def test_viewer_that_stops_reading_is_dropped(server):
    """A viewer that asks for big frames but never reads them: the send buffer fills, the
    server never blocks, and drops the viewer after write_timeout."""
    def flat_render(cam, pc, pipe, bg, scaling_modifier=1.0):
        return {"render": torch.rand(3, cam.image_height, cam.image_width)}
    server._render_fn = flat_render
    run = FakeTraining(server)
    run.start()
    try:
        s = connect(server)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        req = make_request(width=1024, height=1024).encode()
        deadline = time.monotonic() + 10
        while server.viewers_dropped == 0 and time.monotonic() < deadline:
            try:
                s.sendall(req)
            except OSError:
                break
            time.sleep(0.05)
        assert server.viewers_dropped >= 1
        assert "stopped reading" in server.last_error
        it0 = run.iteration
        time.sleep(0.1)
        assert run.iteration > it0
        s.close()
    finally:
        run.stop_event.set()
        run.join(10)
    assert run.error is None


def test_bye_and_timestep_range(server, training):
    with connect(server) as s:
        s.sendall(vp.encode_bye())
        assert read_until_eof(s) == b""
    with connect(server) as s:
        header, payload = ask(s, make_request(timestep=4))    # the model has 4 timesteps: 0..3
        assert header.msg_type == vp.MsgType.ERROR
        assert "timestep 4 out of range" in vp.decode_error(payload)


def test_version_mismatch_gets_a_clear_error(server, training):
    with connect(server) as s:
        payload = json.dumps(make_request().to_json()).encode()
        s.sendall(vp.pack_header(vp.MsgType.REQUEST, len(payload), version=9) + payload)
        data = read_until_eof(s)
        header = vp.parse_header(data[:vp.HEADER_SIZE])
        text = vp.decode_error(data[vp.HEADER_SIZE:vp.HEADER_SIZE + header.length])
        assert "protocol version 9 is not supported" in text


def test_render_restores_training_mesh_with_autograd(server):
    model = TrainableDemo()
    model.select_mesh_by_timestep(3)
    before = model.get_xyz.detach().clone()
    with connect(server) as s:
        s.sendall(make_request(timestep=1, original_mesh=True).encode())
        deadline = time.monotonic() + 10
        while server.replies_sent == 0 and time.monotonic() < deadline:
            server.handle(7, model, None, DemoPipe(), torch.ones(3))
        vp.read_message(s, timeout=5)
    assert model.timestep == 3
    assert torch.equal(model.get_xyz.detach(), before)
    assert model.get_xyz.requires_grad                      # graph rebuilt: training can backprop


def test_mesh_overlay_and_its_absence(server, training, monkeypatch):
    with connect(server) as s:
        header, payload = ask(s, make_request(show_splatting=False, show_mesh=True, mesh_opacity=1.0))
        frame = vp.decode_frame(payload, header.flags)
        covered = (frame.image != 255).any(-1)
        assert frame.status.mesh_available and 0.05 < covered.mean() < 0.95   # a mesh in front of white
    logs: List[str] = []
    monkeypatch.setitem(sys.modules, "utils.mesh_renderer", None)          # import fails
    srv2 = ViewerServer.start("127.0.0.1", 0, quiet=True, config=FAST, log=logs.append, render_fn=splat_points)
    model = TrainableDemo()
    try:
        with connect(srv2) as s:
            s.sendall(make_request(show_splatting=False, show_mesh=True).encode())
            deadline = time.monotonic() + 10
            while srv2.replies_sent == 0 and time.monotonic() < deadline:
                srv2.handle(1, model, None, DemoPipe(), torch.ones(3))
            header, payload = vp.read_message(s, timeout=5)
            frame = vp.decode_frame(payload, header.flags)
            assert (frame.image == 255).all()                                # background only
            assert "mesh overlay unavailable" in frame.status.note and not frame.status.mesh_available
            assert sum("mesh overlay unavailable" in line for line in logs) == 1
    finally:
        srv2.close()


@pytest.mark.parametrize("exc, text", [(RuntimeError("CUDA out of memory.\nTried to allocate"), "render failed (RuntimeError: CUDA out of memory.)"),
                                       (KeyError("boom"), "internal error while serving (KeyError")])
def test_failing_render_drops_the_viewer_not_training(server, exc, text):
    def failing(*args, **kwargs):
        raise exc
    model = TrainableDemo()
    server._render_fn = failing
    with connect(server) as s:
        s.sendall(make_request().encode())
        deadline = time.monotonic() + 10
        while server.viewers_dropped == 0 and time.monotonic() < deadline:
            assert server.handle(1, model, None, DemoPipe(), torch.ones(3)) is False
        header, payload = vp.read_message(s, timeout=5)
        assert header.msg_type == vp.MsgType.ERROR and text in vp.decode_error(payload)
    assert len(server.logs) == 1 and text in server.logs[0]
    server._render_fn = splat_points
    with connect(server) as s:
        assert serve_one(server, model, s, make_request())[0].msg_type == vp.MsgType.FRAME


def test_keep_alive_serves_until_the_viewer_lets_go(server):
    model = TrainableDemo()
    done = threading.Event()

    def serve():
        server.keep_alive(99, model, None, DemoPipe(), torch.ones(3), training_done=True, max_seconds=20)
        done.set()

    server.keep_alive(99, model, None, DemoPipe(), torch.ones(3), max_seconds=20)   # nobody: returns
    with connect(server) as s:
        while not server.connected:
            server.handle(99, model, None, DemoPipe(), torch.ones(3))
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        header, payload = ask(s, make_request(keep_alive=True))          # accepted by keep_alive's loop
        frame = vp.decode_frame(payload, header.flags)
        assert frame.status.training_done and frame.status.iteration == 99
        assert not frame.status.training_paused
        ask(s, make_request(keep_alive=True, render=False))
        time.sleep(0.2)
        assert not done.is_set()                                         # still serving
        ask(s, make_request(keep_alive=False, render=False))
        assert done.wait(10)
        t.join(10)


# ---------------------------------------------------------------------------------------------
# fuzzing

def _valid_payload(rng: random.Random) -> bytes:
    return json.dumps(make_request(timestep=rng.randrange(4)).to_json()).encode()


def _mutated_request(rng: random.Random) -> bytes:
    obj = make_request().to_json()
    key = rng.choice(sorted(obj))
    obj[key] = rng.choice([None, "x", -1, 0, 2 ** 40, 1e308, [], {}, [[1, 2]], True, -1e-9, 99999, 4097, 3.2])
    return json.dumps(obj).encode()


def _nan_matrix(rng: random.Random) -> bytes:
    obj = make_request().to_json()
    key = rng.choice(["world_view_transform", "full_proj_transform"])
    obj[key][rng.randrange(4)][rng.randrange(4)] = "__BAD__"
    bad = rng.choice(["NaN", "Infinity", "-Infinity"])
    return json.dumps(obj).replace('"__BAD__"', bad).encode()


def _resolution(rng: random.Random) -> bytes:
    obj = make_request().to_json()
    obj[rng.choice(["width", "height"])] = rng.choice([0, -5, 4097, 10 ** 9, 2 ** 63])
    return json.dumps(obj).encode()


def _fuzz_case(rng: random.Random) -> tuple:
    """(bytes to send, expect an ERROR reply?)"""
    kind = rng.randrange(16)
    H = vp.pack_header
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))), None
    if kind == 1:
        p = _valid_payload(rng)
        return b"GAVX" + H(vp.MsgType.REQUEST, len(p))[4:] + p, True
    if kind == 2:
        p = _valid_payload(rng)
        return H(vp.MsgType.REQUEST, len(p), version=rng.choice([0, 2, 255])) + p, True
    if kind == 3:
        return H(vp.MsgType.REQUEST, rng.choice([vp.MAX_JSON_BYTES + 1, 2 ** 32 - 1])) + b"{}", True
    if kind == 4:
        full = vp.encode_message(vp.MsgType.REQUEST, _valid_payload(rng))
        return full[:rng.randrange(1, len(full))], False              # truncated, then EOF
    if kind == 5:
        p = rng.choice([b"{", b"not json", b'{"width": }', b"\xff\xff", b"[]", b"null", b"1e999", b"[" * 5000,
                        b'{"width": ' + b"9" * 5000 + b"}"])
        return H(vp.MsgType.REQUEST, len(p)) + p, True
    if kind == 6:
        p = _mutated_request(rng)                                       # may happen to be valid
        return H(vp.MsgType.REQUEST, len(p)) + p, None
    if kind == 7:
        p = _nan_matrix(rng)
        return H(vp.MsgType.REQUEST, len(p)) + p, True
    if kind == 8:
        p = _resolution(rng)
        return H(vp.MsgType.REQUEST, len(p)) + p, True
    if kind == 9:
        p = _valid_payload(rng)
        return H(rng.choice([vp.MsgType.FRAME, vp.MsgType.STATUS, vp.MsgType.ERROR]), len(p)) + p, True
    if kind == 10:
        p = _valid_payload(rng)
        return H(vp.MsgType.REQUEST, len(p), flags=rng.randrange(1, 65536)) + p, True
    if kind == 11:
        obj = make_request().to_json()
        obj["world_view_transform"] = [[0.0] * 4] * 4                  # singular
        p = json.dumps(obj).encode()
        return H(vp.MsgType.REQUEST, len(p)) + p, True
    if kind == 12:
        return b"", False                                               # connect, close
    if kind == 13:
        p = _valid_payload(rng)
        return H(vp.MsgType.REQUEST, len(p)) + p + bytes(rng.getrandbits(8) for _ in range(20)), True
    if kind == 14:
        return bytes([rng.randrange(256)]) * rng.randrange(1, 5000), None
    p = _valid_payload(rng)                                             # header says shorter
    return H(vp.MsgType.REQUEST, max(len(p) - rng.randrange(1, 20), 0)) + p, True


def _fuzz(server: ViewerServer, cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    counts = {"error_replies": 0, "cases": 0}
    for _ in range(cases):
        data, expect_error = _fuzz_case(rng)
        with connect(server) as s:
            if data:
                try:
                    s.sendall(data)
                except OSError:
                    pass
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            reply = read_until_eof(s, limit=5.0)
        counts["cases"] += 1
        types = []
        pos = 0
        while pos + vp.HEADER_SIZE <= len(reply):
            h = vp.parse_header(reply[pos:pos + vp.HEADER_SIZE])
            types.append(h.msg_type)
            pos += vp.HEADER_SIZE + h.length
        if vp.MsgType.ERROR in types:
            counts["error_replies"] += 1
        if expect_error:
            assert vp.MsgType.ERROR in types, (data[:80], reply[:200])
        elif expect_error is False:
            assert vp.MsgType.ERROR not in types
    return counts


def test_fuzzing_does_not_harm_training(server):
    run = FakeTraining(server, min_iterations=300)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)        # let the fuzzing thread in often (CPU-bound trainer thread)
    run.start()
    try:
        counts = _fuzz(server, cases=2000, seed=1234)
        assert counts["cases"] == 2000 and counts["error_replies"] > 1000
        assert run.error is None and run.is_alive()
        # a well-formed viewer is served afterwards
        with connect(server) as s:
            for t in range(4):
                header, payload = ask(s, make_request(timestep=t))
                assert header.msg_type == vp.MsgType.FRAME
                assert vp.decode_frame(payload, header.flags).image.shape == (30, 40, 3)
    finally:
        run.stop_event.set()
        run.join(30)
        sys.setswitchinterval(switch)
    assert run.error is None, repr(run.error)
    assert server.viewers_accepted >= 2000
    assert all("\n" not in line for line in server.logs)          # one-line warnings
    # bit-identical to the same number of iterations without a viewer
    assert torch.equal(run.model._base_xyz.detach(), reference_params(run.iteration))


# ---------------------------------------------------------------------------------------------
# end to end: train.py on the reference rasterizer, with and without a hostile viewer

def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [REPO, os.path.join(REPO, "submodules", "diff-gaussian-rasterization"),
             os.path.join(REPO, "submodules", "simple-knn")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def avatar_subject(tmp_path_factory):
    """Procedural FLAME + a tiny synthetic subject (as tests/test_train.py builds them)."""
    flame = str(tmp_path_factory.mktemp("flame"))
    subprocess.run([sys.executable, "-m", "flame_model.procedural", "--out", flame], cwd=REPO, env=_env(),
                   check=True, capture_output=True)
    subject = str(tmp_path_factory.mktemp("subject"))
    subprocess.run([sys.executable, "-m", "scene.synthetic", "--out", subject, "--flame_dir", flame,
                    "--width", "48", "--height", "40", "--num_cameras", "3", "--num_timesteps", "3",
                    "--device", "cpu", "--quiet"], cwd=REPO, env=_env(), check=True, capture_output=True)
    return flame, subject


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(flame: str, subject: str, model: str, port: int, iterations: int) -> List[str]:
    return [sys.executable, os.path.join(REPO, "train.py"), "-s", subject, "-m", model, "--bind_to_mesh",
            "--eval", "--white_background", "--data_device", "cpu", "--port", str(port), "--quiet",
            "--interval", "0", "--sh_degree", "1", "--iterations", str(iterations), "--seed", "0",
            "--flame_model_path", os.path.join(flame, "flame2023.pkl"),
            "--flame_masks_path", os.path.join(flame, "FLAME_masks.pkl")]


class HostileViewer(threading.Thread):
    """Against a live train.py: cycles of (connect, pause training, valid renders of other
    timesteps / the original mesh / the mesh overlay, then one malformed message), plus raw junk
    connections, until the trainer goes away."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.frames = 0
        self.errors = 0
        self.cycles = 0
        self.num_timesteps = 0

    def _connect(self) -> Optional[socket.socket]:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        except OSError:
            return None
        s.settimeout(60)
        return s

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop_event.is_set():
            s = self._connect()
            if s is None:
                time.sleep(0.05)
                continue
            try:
                with s:
                    self._cycle(s, rng)
            except (OSError, vp.ProtocolError, vp.PeerClosed):
                pass
            self.cycles += 1

    def _cycle(self, s: socket.socket, rng: random.Random) -> None:
        header, payload = ask(s, make_request(timestep=0, train=False, render=False))
        if header.msg_type == vp.MsgType.ERROR:
            return
        self.num_timesteps = vp.decode_status(payload).num_timesteps
        for opts in (dict(original_mesh=True), dict(show_mesh=True, mesh_opacity=0.5), dict(jpeg_quality=60)):
            t = rng.randrange(max(self.num_timesteps, 1))
            header, payload = ask(s, make_request(width=24, height=20, timestep=t, train=False, **opts))
            assert header.msg_type == vp.MsgType.FRAME
            frame = vp.decode_frame(payload, header.flags)
            assert frame.status.training_paused and frame.image.shape == (20, 24, 3)
            self.frames += 1
        data, _ = _fuzz_case(rng)
        if data:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        if vp.MsgType.ERROR.value in read_until_eof(s, 30)[5:6]:
            self.errors += 1


@pytest.mark.slow
def test_train_py_with_a_hostile_viewer_matches_a_run_without(avatar_subject, tmp_path):
    flame, subject = avatar_subject
    port = _free_port()
    iterations = 8
    quiet_run = subprocess.Popen(_train_cmd(flame, subject, str(tmp_path / "plain"), 0, iterations),
                                 cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    viewed_run = subprocess.Popen(_train_cmd(flame, subject, str(tmp_path / "viewed"), port, iterations),
                                  cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hostile = HostileViewer(port)
    hostile.start()
    try:
        out_viewed, _ = viewed_run.communicate(timeout=400)
        out_plain, _ = quiet_run.communicate(timeout=400)
    finally:
        hostile.stop_event.set()
        hostile.join(60)
        for p in (quiet_run, viewed_run):
            if p.poll() is None:
                p.kill()
    assert quiet_run.returncode == 0, out_plain[-3000:]
    assert viewed_run.returncode == 0, out_viewed[-3000:]
    assert hostile.cycles >= 3 and hostile.frames >= 6, (hostile.cycles, hostile.frames)
    assert hostile.num_timesteps > 0
    assert "dropped viewer" in out_viewed                          # one-line warnings were printed
    print(f"hostile viewer: {hostile.cycles} cycles, {hostile.frames} frames, {hostile.errors} error replies")
    rel = os.path.join("point_cloud", f"iteration_{iterations}")
    for name in ("point_cloud.ply", "flame_param.npz"):
        with open(tmp_path / "plain" / rel / name, "rb") as f1, open(tmp_path / "viewed" / rel / name, "rb") as f2:
            assert f1.read() == f2.read(), name
