"""Trainer side of the remote viewer link (protocol: ``viewer.protocol`` / docs/PROTOCOL.md).

Usage in a training loop::

    server = ViewerServer.start(args.ip, args.port)          # None if the port is taken
    for iteration in ...:
        if server is not None:
            while server.handle(iteration, gaussians, scene, pipe, background, loss=last_loss):
                pass                                         # the viewer paused training
        ... one training step ...
    if server is not None:
        server.keep_alive(iteration, gaussians, scene, pipe, background)
        server.close()

Design: everything is non-blocking and lives in one object (no module globals). With nobody
connected, ``handle`` costs one ``time.monotonic()`` call, plus a non-blocking ``accept`` at most
every ``poll_interval_s``. With a viewer connected, ``handle`` reads whatever bytes arrived
(never waiting, except while training is paused), answers at most one complete request per call,
and pushes the reply out without blocking (the rest is flushed on later calls). A viewer that
disconnects, stalls past a deadline or sends malformed, oversized or hostile data is dropped
with a one-line warning; training never sees an exception from this module. The newest viewer
wins: a new connection replaces the current one (stale SSH tunnels cannot lock the link).
"""
from __future__ import annotations

import errno
import math
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, Optional, Tuple

import numpy as np

from viewer.protocol import (
    VIEWER_TO_TRAINER, MsgType, ProtocolError, RenderRequest, Status, StreamDecoder,
    decode_request, encode_error, encode_frame, encode_status,
)

RECV_CHUNK = 1 << 16


@dataclass
class ServerConfig:
    """Timing knobs of :class:`ViewerServer` (seconds)."""

    poll_interval_s: float = 0.1     # non-blocking accept at most this often
    read_timeout_s: float = 5.0      # a message whose first byte arrived must complete in this
    write_timeout_s: float = 10.0    # a reply must make progress within this
    idle_timeout_s: float = 60.0     # after a reply, the next request must start within this
    pause_wait_s: float = 0.05       # handle() waits this long for a request while paused
    linger_s: float = 1.0            # closing sockets drain input this long (error text arrives)
    max_lingering: int = 8


RenderFn = Callable[..., Any]


class ViewerServer:
    """Serves one remote viewer at a time from inside the training loop."""

    def __init__(self, listener: socket.socket, config: Optional[ServerConfig] = None,
                 log: Optional[Callable[[str], None]] = None, quiet: bool = False,
                 render_fn: Optional[RenderFn] = None,
                 mesh_overlay_fn: Optional[Callable[..., Any]] = None):
        self.listener = listener
        self.config = config or ServerConfig()
        self.quiet = quiet
        self._log = log or _print_stderr
        self._render_fn = render_fn
        self._mesh_overlay_fn = mesh_overlay_fn
        self._mesh_overlay_checked = mesh_overlay_fn is not None
        self.address: Tuple[str, int] = listener.getsockname()[:2]
        self._next_poll = 0.0
        self._conn: Optional[socket.socket] = None
        self._peer = ""
        self._decoder: Optional[StreamDecoder] = None
        self._out: Optional[memoryview] = None
        self._out_progress_at = 0.0
        self._idle_since = 0.0
        self._lingering: Deque[Tuple[socket.socket, float]] = deque()
        self.paused = False          # the connected viewer asked to pause training
        self.keep_alive_requested: Optional[bool] = None   # None: no request from this viewer yet
        self.replies_sent = 0
        self.viewers_dropped = 0
        self.viewers_accepted = 0
        self.last_error = ""
        self._mesh_note = ""

    # ---- lifecycle ------------------------------------------------------------------------
    @classmethod
    def start(cls, ip: str = "127.0.0.1", port: int = 60000, quiet: bool = False,
              **kwargs: Any) -> Optional["ViewerServer"]:
        """Listen on ``ip:port`` (port 0: any free port). On failure (port in use, bad address)
        print one warning line and return None: training goes on without a viewer."""
        log = kwargs.get("log") or _print_stderr
        try:
            infos = socket.getaddrinfo(ip, port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            listener = socket.socket(family, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            log(f"[viewer] WARNING cannot listen on {ip}:{port} ({e}); training goes on without the remote viewer")
            return None
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(4)
            listener.setblocking(False)
        except OSError as e:
            listener.close()
            reason = "port already in use" if e.errno == errno.EADDRINUSE else str(e)
            log(f"[viewer] WARNING cannot listen on {ip}:{port} ({reason}); training goes on without the remote viewer")
            return None
        server = cls(listener, quiet=quiet, **kwargs)
        if not quiet:
            log(f"[viewer] listening on {server.address[0]}:{server.address[1]} (python remote_viewer.py --ip {ip} --port {server.port})")
        return server

    @property
    def port(self) -> int:
        return int(self.address[1])

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        """Close the viewer connection and the listening socket."""
        if self._conn is not None:
            self._close_conn(linger=False)
        while self._lingering:
            self._lingering.popleft()[0].close()
        self.listener.close()

    def __enter__(self) -> "ViewerServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the per-iteration entry point -----------------------------------------------------
    def handle(self, iteration: int, gaussians: Any, scene: Any, pipe: Any, background: Any,
               training_done: bool = False, loss: Optional[float] = None) -> bool:
        """Serve the viewer for one iteration. Returns True when the viewer asks to pause
        training (call again, without training, until it returns False)."""
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + self.config.poll_interval_s
            self._poll_accept()
            if self._lingering:
                self._service_lingering(now)
        if self._conn is None:
            return False
        try:
            self._serve(iteration, gaussians, scene, pipe, background, training_done, loss)
        except ProtocolError as e:
            self._drop(str(e), send_error=True)
        except (OSError, EOFError) as e:
            self._drop(_describe_os_error(e), send_error=False)
        except Exception as e:  # noqa: BLE001 - last resort: a viewer must never stop training
            self._drop(f"internal error while serving ({type(e).__name__}: {e})", send_error=True)
        return self._conn is not None and self.paused and not training_done

    def keep_alive(self, iteration: int, gaussians: Any, scene: Any, pipe: Any, background: Any,
                   training_done: bool = True, loss: Optional[float] = None,
                   max_seconds: Optional[float] = None) -> None:
        """After the last iteration: keep serving while a viewer is connected and asked for
        keep-alive, or has not sent its first request yet (returns when it disconnects, unticks
        keep-alive, goes idle past ``idle_timeout_s``, or after ``max_seconds``).
        ``training_done`` is accepted for symmetry with :meth:`handle` (always treated as True)."""
        start = time.monotonic()
        while self._conn is not None and self.keep_alive_requested is not False:
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                break
            self.handle(iteration, gaussians, scene, pipe, background, training_done=True, loss=loss)

    # ---- connection management --------------------------------------------------------------
    def _poll_accept(self) -> None:
        try:
            conn, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # e.g. EMFILE, ECONNABORTED: try again at the next poll
            self._warn(f"accept failed ({e})")
            return
        if self._conn is not None:
            self._drop("a new viewer connected", send_error=True)
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
        self._conn = conn
        self._peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self._decoder = StreamDecoder(allowed=VIEWER_TO_TRAINER)
        self._out = None
        self._idle_since = time.monotonic()
        self.paused = False
        self.keep_alive_requested = None
        self.viewers_accepted += 1
        if not self.quiet:
            self._log(f"[viewer] viewer connected from {self._peer}")

    def _drop(self, reason: str, send_error: bool) -> None:
        """One warning line, best-effort ERROR message, then close (training continues)."""
        self.last_error = reason
        self.viewers_dropped += 1
        self._warn(f"dropped viewer {self._peer}: {reason}")
        if send_error and self._conn is not None:
            try:
                self._conn.send(encode_error(_one_line(reason)))
            except OSError:
                pass
        self._close_conn(linger=send_error)

    def _close_conn(self, linger: bool) -> None:
        conn, self._conn = self._conn, None
        self._decoder = None
        self._out = None
        self.paused = False
        self.keep_alive_requested = False
        if conn is None:
            return
        if linger:
            # Half-close so the peer reads our ERROR then EOF; drain its input for a moment so
            # that closing with unread bytes does not reset the connection before it reads.
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                conn.close()
                return
            if len(self._lingering) >= self.config.max_lingering:
                self._lingering.popleft()[0].close()
            self._lingering.append((conn, time.monotonic() + self.config.linger_s))
        else:
            conn.close()

    def _service_lingering(self, now: float) -> None:
        keep: Deque[Tuple[socket.socket, float]] = deque()
        while self._lingering:
            sock, deadline = self._lingering.popleft()
            done = now > deadline
            if not done:
                try:
                    for _ in range(16):
                        if not sock.recv(RECV_CHUNK):
                            done = True
                            break
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    done = True
            if done:
                sock.close()
            else:
                keep.append((sock, deadline))
        self._lingering = keep

    # ---- serving ------------------------------------------------------------------------------
    def _serve(self, iteration: int, gaussians: Any, scene: Any, pipe: Any, background: Any,
               training_done: bool, loss: Optional[float]) -> None:
        cfg = self.config
        if self._out is not None:
            if self.paused or training_done:  # nothing else to do: wait for the socket to drain
                _wait_fd(self._conn, write=True, timeout=cfg.pause_wait_s)
            self._flush()
            if self._out is not None:
                if time.monotonic() - self._out_progress_at > cfg.write_timeout_s:
                    raise ProtocolError(f"viewer stopped reading (no progress for {cfg.write_timeout_s:.0f} s)")
                return
        wait = cfg.pause_wait_s if (self.paused or training_done) else 0.0
        message = self._receive(wait)
        now = time.monotonic()
        if message is None:
            dec = self._decoder
            if dec is not None and dec.in_message and now - dec.started_at > cfg.read_timeout_s:
                raise ProtocolError(f"incomplete message for {cfg.read_timeout_s:.1f} s (stalled viewer)")
            if dec is not None and not dec.in_message and now - self._idle_since > cfg.idle_timeout_s:
                raise ProtocolError(f"no request for {cfg.idle_timeout_s:.0f} s (idle viewer)")
            return
        header, payload = message
        if header.msg_type == MsgType.BYE:
            if not self.quiet:
                self._log(f"[viewer] viewer {self._peer} left")
            self._close_conn(linger=False)
            return
        request = decode_request(payload)
        reply = self._answer(request, iteration, gaussians, scene, pipe, background, training_done, loss)
        self._out = memoryview(reply)
        self._out_progress_at = time.monotonic()
        self._flush()
        self._idle_since = time.monotonic()

    def _receive(self, wait: float) -> Optional[Tuple[Any, bytes]]:
        """Read what is available (waiting up to ``wait`` s for the first byte) and return one
        complete message if there is one; raises on EOF or protocol violations."""
        conn, dec = self._conn, self._decoder
        assert conn is not None and dec is not None
        if dec.pending:
            return dec.pending.popleft()
        if wait > 0:
            if not _wait_fd(conn, write=False, timeout=wait):
                return None
        for _ in range(64):  # bounded work per call; a 1 MiB request is 16 chunks
            try:
                data = conn.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise EOFError("viewer closed the connection")
            for msg in dec.feed(data):
                dec.pending.append(msg)
            if dec.pending:
                break
        return dec.pending.popleft() if dec.pending else None

    def _flush(self) -> None:
        out = self._out
        assert out is not None and self._conn is not None
        while len(out):
            try:
                n = self._conn.send(out)
            except (BlockingIOError, InterruptedError):
                break
            if n <= 0:
                break
            out = out[n:]
            self._out_progress_at = time.monotonic()
        if len(out):
            self._out = out
        else:
            self._out = None
            self.replies_sent += 1

    # ---- rendering ------------------------------------------------------------------------------
    def _answer(self, req: RenderRequest, iteration: int, gaussians: Any, scene: Any, pipe: Any,
                background: Any, training_done: bool, loss: Optional[float]) -> bytes:
        num_t = num_timesteps(gaussians)
        if num_t > 0 and req.timestep >= num_t:
            raise ProtocolError(f"timestep {req.timestep} out of range: the model has {num_t} timesteps")
        if num_t == 0 and req.timestep != 0:
            raise ProtocolError(f"timestep {req.timestep} out of range: the model has no timesteps (use 0)")
        self.paused = not req.train
        self.keep_alive_requested = req.keep_alive
        status = Status(iteration=int(iteration), num_splats=num_splats(gaussians), num_timesteps=num_t,
                        training_paused=self.paused and not training_done, training_done=bool(training_done),
                        loss=_finite_or_none(loss), mesh_available=self._mesh_possible(gaussians))
        if not req.render:
            return encode_status(status)
        t0 = time.perf_counter()
        try:
            image = self._render(req, gaussians, pipe, background, num_t)
        except ProtocolError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, ImportError) as e:
            raise ProtocolError(f"render failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        status.render_ms = (time.perf_counter() - t0) * 1000.0
        status.note = self._mesh_note if req.show_mesh else ""
        return encode_frame(image, status, timestep=req.timestep, jpeg_quality=req.jpeg_quality)

    def _render(self, req: RenderRequest, gaussians: Any, pipe: Any, background: Any,
                num_t: int) -> np.ndarray:
        """uint8 (H, W, 3) image of the request; the model's training mesh state is restored."""
        import torch

        device = _model_device(gaussians)
        cam = _request_camera(req, device)
        bg = torch.as_tensor(background, dtype=torch.float32).reshape(3).to(device)
        selects = num_t > 0 and hasattr(gaussians, "select_mesh_by_timestep")
        prev_t = getattr(gaussians, "timestep", None) if selects else None
        try:
            with torch.no_grad():
                if selects:
                    gaussians.select_mesh_by_timestep(req.timestep, original=req.original_mesh)
                if req.show_splatting:
                    render = self._render_fn or _default_render()
                    image = render(cam, gaussians, pipe, bg, scaling_modifier=req.scaling_modifier)["render"]
                else:
                    image = bg.reshape(3, 1, 1).expand(3, req.height, req.width)
                if req.show_mesh:
                    image = self._overlay(cam, gaussians, image, req.mesh_opacity, bg)
                image = image.detach().float().clamp(0.0, 1.0)
                if tuple(image.shape) != (3, req.height, req.width):
                    raise ValueError(f"renderer returned {tuple(image.shape)}, expected (3, {req.height}, {req.width})")
                rgb = (image * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
        finally:
            if selects and prev_t is not None:
                # Restore the training mesh (with autograd, as training built it).
                gaussians.select_mesh_by_timestep(prev_t)
        return rgb

    def _mesh_possible(self, gaussians: Any) -> bool:
        return _mesh_of(gaussians) is not None and self._overlay_fn() is not None

    def _overlay_fn(self) -> Optional[Callable[..., Any]]:
        """``fn(camera, verts, faces, image, opacity) -> image``: injected, or built from
        ``utils.mesh_renderer`` (None, with a one-time warning, when that is missing)."""
        if not self._mesh_overlay_checked:
            self._mesh_overlay_checked = True
            try:
                from utils.mesh_renderer import render_mesh, render_mesh_overlay
            except ImportError as e:
                self._mesh_note = f"mesh overlay unavailable ({e})"
                self._warn(self._mesh_note)
            else:
                def overlay(cam: Any, verts: Any, faces: Any, image: Any, opacity: float) -> Any:
                    rgba = render_mesh(verts, faces, cam).rgba
                    return render_mesh_overlay(image, rgba.to(image.device), opacity)
                self._mesh_overlay_fn = overlay
        return self._mesh_overlay_fn

    def _overlay(self, cam: Any, gaussians: Any, image: Any, opacity: float, bg: Any) -> Any:
        """Blend the posed mesh over ``image``; without a mesh or renderer, return ``image``."""
        fn = self._overlay_fn()
        mesh = _mesh_of(gaussians)
        if fn is None or mesh is None:
            if mesh is None:
                self._mesh_note = "this model has no mesh"
            return image
        verts, faces = mesh
        return fn(cam, verts, faces, image, opacity)

    def _warn(self, text: str) -> None:
        self._log(f"[viewer] WARNING {_one_line(text)}")


# ---------------------------------------------------------------------------------------------
# helpers

def _print_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _wait_fd(sock: socket.socket, write: bool, timeout: float) -> bool:
    """Wait until ``sock`` is readable (or writable); ``poll`` where available (no FD_SETSIZE
    limit: training processes may hold many descriptors), else ``select``."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(max(int(timeout * 1000), 0)))
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], timeout)
    return bool(r or w)


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (no newlines from peer-influenced text) and cap the length."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe_os_error(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "viewer disconnected"
    if isinstance(e, ConnectionResetError):
        return "connection reset by the viewer"
    if isinstance(e, BrokenPipeError):
        return "viewer went away while receiving"
    return f"socket error ({e})"


def _finite_or_none(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def num_splats(gaussians: Any) -> int:
    try:
        return int(gaussians.get_xyz.shape[0])
    except AttributeError:
        return 0


def num_timesteps(gaussians: Any) -> int:
    """Number of FLAME timesteps the model can select (0 for plain 3DGS)."""
    n = getattr(gaussians, "num_timesteps", None)
    if isinstance(n, int):
        return max(n, 0)
    params = getattr(gaussians, "flame_param", None)
    if isinstance(params, dict) and "expr" in params:
        return int(params["expr"].shape[0])
    return 0


def _mesh_of(gaussians: Any) -> Optional[Tuple[Any, Any]]:
    """(verts (V,3), faces (F,3)) of the currently selected mesh, if the model has one."""
    verts = getattr(gaussians, "verts", None)
    faces = getattr(gaussians, "faces", None)
    if verts is None or faces is None:
        return None
    if verts.dim() == 3:
        verts = verts[0]
    return verts, faces


def _model_device(gaussians: Any) -> Any:
    import torch

    try:
        return gaussians.get_xyz.device
    except AttributeError:
        return torch.device("cpu")


def _request_camera(req: RenderRequest, device: Any) -> Any:
    import torch

    from viewer.camera import make_minicam

    wvt = torch.tensor(req.world_view_transform, dtype=torch.float32, device=device)
    fpt = torch.tensor(req.full_proj_transform, dtype=torch.float32, device=device)
    if abs(float(torch.linalg.det(wvt.double()))) < 1e-12:
        raise ProtocolError("world_view_transform is singular")
    return make_minicam(req.width, req.height, req.fovy, req.fovx, req.znear, req.zfar, wvt, fpt,
                        timestep=req.timestep)


def _default_render() -> RenderFn:
    from gaussian_renderer import render

    return render


# ---------------------------------------------------------------------------------------------
# Demo model: check the viewer link (or an SSH tunnel) without training anything.
#   python -m viewer.server --demo --port 60000

SH_C0 = 0.28209479177387814


class DemoGaussians:
    """A small synthetic "head" of isotropic Gaussians on an ellipsoid, coloured by normal,
    with ``num_timesteps`` poses (a slow head turn) and a coarse posed mesh (``verts``,
    ``faces``). Exposes the attributes ``render()`` and :class:`ViewerServer` read."""

    def __init__(self, n: int = 400, num_timesteps: int = 8, seed: int = 0, device: str = "cpu"):
        import torch

        g = torch.Generator().manual_seed(seed)
        dirs = torch.randn(n, 3, generator=g)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        self._axes = torch.tensor([0.09, 0.12, 0.10])
        self._base_xyz = (dirs * self._axes).to(device)
        colour = _demo_head_colours(dirs)
        self._features = ((colour - 0.5) / SH_C0).reshape(n, 1, 3).to(device)
        self._scaling = torch.full((n, 3), 0.018, device=device)
        self._rotation = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device).repeat(n, 1)
        self._opacity = torch.full((n, 1), 0.9, device=device)
        self.active_sh_degree = 0
        self.max_sh_degree = 0
        self.num_timesteps = int(num_timesteps)
        self._mesh_verts, self.faces = _uv_sphere(12, 16)
        self._mesh_verts = (self._mesh_verts * self._axes * 0.97).to(device)
        self.faces = self.faces.to(device)
        self.timestep = 0
        self.select_mesh_by_timestep(0)

    def _rotation_at(self, t: int, original: bool) -> Any:
        import torch

        angle = 0.5 * math.sin(2 * math.pi * t / max(self.num_timesteps, 1)) + (0.0 if original else 0.05)
        c, s = math.cos(angle), math.sin(angle)
        return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], device=self._base_xyz.device)

    def select_mesh_by_timestep(self, timestep: int, original: bool = False) -> None:
        rot = self._rotation_at(int(timestep), original)
        self.timestep = int(timestep)
        self._xyz = self._base_xyz @ rot.T
        self.verts = (self._mesh_verts @ rot.T).unsqueeze(0)

    @property
    def get_xyz(self) -> Any:
        return self._xyz

    @property
    def get_features(self) -> Any:
        return self._features

    @property
    def get_scaling(self) -> Any:
        return self._scaling

    @property
    def get_rotation(self) -> Any:
        return self._rotation

    @property
    def get_opacity(self) -> Any:
        return self._opacity


def _demo_head_colours(dirs: Any) -> Any:
    """Skin, hair on top and back, dark eyes and red lips for points on the unit sphere
    (face towards +z, up +y): enough for a screenshot to read as a head."""
    import torch

    skin = torch.tensor([0.86, 0.66, 0.55])
    colour = skin * (0.75 + 0.25 * dirs[:, 2:3].clamp(min=0))  # a little shading towards the sides
    hair = (dirs[:, 1] > 0.45) | ((dirs[:, 2] < -0.2) & (dirs[:, 1] > -0.3))
    colour[hair] = torch.tensor([0.25, 0.16, 0.10])
    for ex in (-0.38, 0.38):
        eye = (dirs - torch.tensor([ex, 0.22, 0.90])).norm(dim=1) < 0.17
        colour[eye] = torch.tensor([0.08, 0.08, 0.12])
    lips = ((dirs[:, 0].abs() < 0.33) & ((dirs[:, 1] + 0.45).abs() < 0.08) & (dirs[:, 2] > 0))
    colour[lips] = torch.tensor([0.75, 0.15, 0.18])
    return colour


def _uv_sphere(rings: int, segments: int) -> Tuple[Any, Any]:
    """Unit UV sphere: vertices (V,3) float32, faces (F,3) int64 (outward winding)."""
    import torch

    verts = [[0.0, 1.0, 0.0]]
    for i in range(1, rings):
        th = math.pi * i / rings
        for j in range(segments):
            ph = 2 * math.pi * j / segments
            verts.append([math.sin(th) * math.sin(ph), math.cos(th), math.sin(th) * math.cos(ph)])
    verts.append([0.0, -1.0, 0.0])
    faces: List[List[int]] = []
    ring = lambda i, j: 1 + (i - 1) * segments + (j % segments)  # noqa: E731
    for j in range(segments):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        faces.append([len(verts) - 1, ring(rings - 1, j + 1), ring(rings - 1, j)])
    for i in range(1, rings - 1):
        for j in range(segments):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces.append([a, c, d])
            faces.append([a, d, b])
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces, dtype=torch.int64)


def splat_points(camera: Any, pc: Any, pipe: Any, bg_color: Any, scaling_modifier: float = 1.0) -> dict:
    """Minimal isotropic-Gaussian splatter (SH degree 0), used by the demo only when the
    ``diff_gaussian_rasterization`` package is not importable. Same output key as ``render``."""
    import torch

    h, w = int(camera.image_height), int(camera.image_width)
    xyz = pc.get_xyz
    ones = torch.ones(xyz.shape[0], 1, dtype=xyz.dtype, device=xyz.device)
    hom = torch.cat([xyz, ones], 1)
    view = hom @ camera.world_view_transform.to(xyz)
    clip = hom @ camera.full_proj_transform.to(xyz)
    depth = view[:, 2]
    keep = depth > 0.2
    ndc = clip[:, :2] / clip[:, 3:4].clamp_min(1e-6)
    u = ((ndc[:, 0] + 1) * w - 1) / 2
    v = ((ndc[:, 1] + 1) * h - 1) / 2
    focal = h / (2 * math.tan(float(camera.FoVy) / 2))
    sigma = (pc.get_scaling.max(dim=1).values * scaling_modifier * focal / depth.clamp_min(1e-6)).clamp_min(0.5)
    colour = (pc.get_features[:, 0, :] * SH_C0 + 0.5).clamp_min(0.0)
    order = torch.argsort(depth[keep])
    u, v, sigma, colour = u[keep][order], v[keep][order], sigma[keep][order], colour[keep][order]
    opacity = pc.get_opacity[keep][order, 0]
    ys = torch.arange(h, dtype=xyz.dtype, device=xyz.device).reshape(h, 1, 1)
    xs = torch.arange(w, dtype=xyz.dtype, device=xyz.device).reshape(1, w, 1)
    d2 = (xs - u) ** 2 + (ys - v) ** 2
    alpha = (opacity * torch.exp(-0.5 * d2 / sigma ** 2)).clamp(max=0.99)  # (H, W, N)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    weight = alpha * trans
    image = weight @ colour + (1 - weight.sum(-1, keepdim=True)) * bg_color.reshape(1, 1, 3).to(xyz)
    return {"render": image.permute(2, 0, 1).contiguous()}


def demo_render_fn() -> RenderFn:
    """The project's ``render`` when the rasterizer imports, else :func:`splat_points`."""
    try:
        import diff_gaussian_rasterization  # noqa: F401
        from gaussian_renderer import render
        return render
    except ImportError:
        return splat_points


def DemoPipe():  # noqa: N802 - kept as the name the demo and tests use
    """Default pipeline settings for the demo server."""
    from gaussian_renderer import PipelineSettings

    return PipelineSettings()


def run_demo(ip: str, port: int, splats: int, timesteps: int, seconds: Optional[float],
             iteration_ms: float, quiet: bool = False) -> int:
    """Serve a :class:`DemoGaussians` from a fake training loop (one "iteration" every
    ``iteration_ms``). Returns a process exit code."""
    import torch

    server = ViewerServer.start(ip, port, quiet=quiet, render_fn=demo_render_fn())
    if server is None:
        return 1
    model = DemoGaussians(splats, timesteps)
    pipe, bg = DemoPipe(), torch.ones(3)
    start, iteration = time.monotonic(), 0
    try:
        while seconds is None or time.monotonic() - start < seconds:
            while server.handle(iteration, model, None, pipe, bg, loss=1.0 / (1 + iteration)):
                pass
            iteration += 1
            model.select_mesh_by_timestep(iteration % max(timesteps, 1))
            time.sleep(iteration_ms / 1000.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Serve a small synthetic model to the remote viewer "
                                             "(checks the link or an SSH tunnel without training).")
    ap.add_argument("--demo", action="store_true", required=True)
    ap.add_argument("--ip", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=60000)
    ap.add_argument("--splats", type=int, default=400)
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    ap.add_argument("--iteration_ms", type=float, default=10.0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    return run_demo(args.ip, args.port, args.splats, args.timesteps, args.seconds, args.iteration_ms, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
