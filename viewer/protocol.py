"""Wire protocol of the remote viewer link (trainer <-> ``remote_viewer.py``).

Shared by both sides; documented in ``docs/PROTOCOL.md``. Depends only on the standard library,
NumPy and (for JPEG frames) Pillow, so the viewer does not need torch for the protocol itself.

Every message is a 12-byte header followed by ``length`` payload bytes::

    offset 0  4 bytes  magic  b"GAVW"
    offset 4  u8       protocol version (PROTOCOL_VERSION)
    offset 5  u8       message type (MsgType)
    offset 6  u16 LE   flags (FLAG_JPEG for frames; 0 otherwise)
    offset 8  u32 LE   payload length in bytes

JSON payloads are UTF-8 objects; NaN/Infinity are refused. A FRAME payload is
``u32 LE meta length | meta JSON | image bytes`` (raw RGB rows, or one JPEG).
"""
from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

MAGIC = b"GAVW"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sBBHI")
HEADER_SIZE = HEADER.size  # 12
META_LEN = struct.Struct("<I")

MAX_JSON_BYTES = 1 << 20          # requests, status, errors: 1 MiB
MAX_FRAME_BYTES = 64 << 20        # frames: 64 MiB (a 4096 x 4096 raw RGB frame is 48 MiB)
MAX_RESOLUTION = 4096             # per side, in pixels
MAX_TIMESTEP = 10_000_000
MAX_SCALING_MODIFIER = 10.0
MAX_ERROR_TEXT = 2000

FLAG_JPEG = 0x0001


class MsgType(enum.IntEnum):
    """Message types. REQUEST and BYE go viewer -> trainer; the others trainer -> viewer."""

    REQUEST = 1   # JSON render request (RenderRequest)
    FRAME = 2     # meta JSON + image bytes
    STATUS = 3    # JSON status only (the viewer paused rendering)
    ERROR = 4     # JSON {"error": str}; the sender closes the connection afterwards
    BYE = 5       # empty payload: the viewer leaves


VIEWER_TO_TRAINER = frozenset({MsgType.REQUEST, MsgType.BYE})
TRAINER_TO_VIEWER = frozenset({MsgType.FRAME, MsgType.STATUS, MsgType.ERROR})
ALLOWED_FLAGS = {MsgType.REQUEST: 0, MsgType.FRAME: FLAG_JPEG, MsgType.STATUS: 0,
                 MsgType.ERROR: 0, MsgType.BYE: 0}


class ProtocolError(ValueError):
    """A peer sent something this protocol does not allow (the connection is dropped)."""


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version."""

    def __init__(self, version: int):
        super().__init__(f"protocol version {version} is not supported (this side speaks version "
                         f"{PROTOCOL_VERSION}); update remote_viewer.py and the trainer together")
        self.version = version


class PeerClosed(ConnectionError):
    """The peer closed the connection (EOF) in the middle of or before a message."""


@dataclass(frozen=True)
class Header:
    """A decoded, validated message header."""

    version: int
    msg_type: MsgType
    flags: int
    length: int


def max_payload(msg_type: MsgType) -> int:
    """Upper bound on the payload size of one message of this type."""
    return MAX_FRAME_BYTES if msg_type == MsgType.FRAME else MAX_JSON_BYTES


def pack_header(msg_type: MsgType, length: int, flags: int = 0,
                version: int = PROTOCOL_VERSION) -> bytes:
    """The 12 header bytes."""
    return HEADER.pack(MAGIC, version, int(msg_type), flags, length)


def parse_header(data: bytes, allowed: Optional[frozenset] = None) -> Header:
    """Decode and validate 12 header bytes.

    Raises :class:`ProtocolError` for a wrong magic, unknown type, a type not in ``allowed``,
    unknown flags or an oversized length, and :class:`VersionMismatch` for another version
    (checked after the magic, so random bytes read as "not this protocol").
    ERROR messages of any version are accepted so that a peer's explanation can be shown.
    """
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"header must be {HEADER_SIZE} bytes, got {len(data)}")
    magic, version, mtype, flags, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a viewer-protocol peer")
    if version != PROTOCOL_VERSION and mtype != MsgType.ERROR:
        raise VersionMismatch(version)
    try:
        msg_type = MsgType(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None
    if allowed is not None and msg_type not in allowed:
        raise ProtocolError(f"message type {msg_type.name} is not expected in this direction")
    if flags & ~ALLOWED_FLAGS[msg_type]:
        raise ProtocolError(f"unknown flags 0x{flags:04x} for {msg_type.name}")
    if length > max_payload(msg_type):
        raise ProtocolError(f"{msg_type.name} payload of {length} bytes exceeds the limit of "
                            f"{max_payload(msg_type)} bytes")
    return Header(version, msg_type, flags, length)


def encode_message(msg_type: MsgType, payload: bytes = b"", flags: int = 0) -> bytes:
    """Header + payload, checking the size limit."""
    if len(payload) > max_payload(msg_type):
        raise ProtocolError(f"{msg_type.name} payload of {len(payload)} bytes exceeds the limit")
    return pack_header(msg_type, len(payload), flags) + payload


# ---------------------------------------------------------------------------------------------
# JSON helpers and field validation

def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"non-finite number {name} in JSON")


def dumps(obj: Dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (NaN/Infinity refused)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as e:
        raise ProtocolError(f"cannot encode JSON (non-finite number?): {e}") from None


def loads_object(payload: bytes, what: str) -> Dict[str, Any]:
    """Parse a UTF-8 JSON object, refusing NaN/Infinity, deep nesting and non-objects."""
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what}: payload is not UTF-8 ({e.reason})") from None
    except RecursionError:
        raise ProtocolError(f"{what}: JSON nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{what}: invalid JSON ({e.msg} at char {e.pos})") from None
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise ProtocolError(f"{what}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: JSON payload must be an object, got {type(obj).__name__}")
    return obj


def _get(obj: Dict[str, Any], key: str, what: str, default: Any = dataclasses.MISSING) -> Any:
    if key in obj:
        return obj[key]
    if default is dataclasses.MISSING:
        raise ProtocolError(f"{what}: missing field '{key}'")
    return default


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"field '{name}' must be a boolean, got {type(value).__name__}")
    return value


def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field '{name}' must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ProtocolError(f"field '{name}' = {value} is outside [{lo}, {hi}]")
    return value


def check_float(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite number within the (optionally open) interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"field '{name}' must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ProtocolError(f"field '{name}' must be finite, got {v}")
    bad_lo = v <= lo if lo_open else v < lo
    bad_hi = v >= hi if hi_open else v > hi
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ProtocolError(f"field '{name}' = {v} is outside {lb}{lo}, {hi}{rb}")
    return v


def check_matrix4(value: Any, name: str) -> Tuple[Tuple[float, ...], ...]:
    """A 4x4 list of finite numbers (row-major, transposed convention of the rasterizer)."""
    if not isinstance(value, list) or len(value) != 4:
        raise ProtocolError(f"field '{name}' must be a 4x4 list of numbers")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 4:
            raise ProtocolError(f"field '{name}' must be a 4x4 list of numbers (row {i})")
        rows.append(tuple(check_float(x, f"{name}[{i}]") for x in row))
    return tuple(rows)


# ---------------------------------------------------------------------------------------------
# Messages

Matrix4 = Tuple[Tuple[float, ...], ...]
_IDENTITY: Matrix4 = tuple(tuple(1.0 if i == j else 0.0 for j in range(4)) for i in range(4))


@dataclass
class RenderRequest:
    """What the viewer asks for (REQUEST payload). See docs/PROTOCOL.md for each field."""

    width: int = 512
    height: int = 512
    fovx: float = 0.6
    fovy: float = 0.6
    znear: float = 0.01
    zfar: float = 100.0
    world_view_transform: Matrix4 = _IDENTITY
    full_proj_transform: Matrix4 = _IDENTITY
    timestep: int = 0
    scaling_modifier: float = 1.0
    render: bool = True            # False: "pause rendering", the reply is a STATUS message
    train: bool = True             # False: "pause training"
    keep_alive: bool = True        # keep serving after the last iteration
    show_splatting: bool = True
    show_mesh: bool = False
    mesh_opacity: float = 0.5
    original_mesh: bool = False    # True: the FLAME fit before fine-tuning
    jpeg_quality: int = 0          # 0: raw RGB frames; 1..100: JPEG at that quality

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["world_view_transform"] = [list(map(float, r)) for r in self.world_view_transform]
        d["full_proj_transform"] = [list(map(float, r)) for r in self.full_proj_transform]
        return d

    def encode(self) -> bytes:
        """The complete REQUEST message (validated first, so a viewer never sends garbage)."""
        payload = dumps(self.to_json())
        RenderRequest.from_json(loads_object(payload, "request"))
        return encode_message(MsgType.REQUEST, payload)

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "RenderRequest":
        """Validate every field (types, finiteness, ranges); unknown fields are ignored."""
        w = "request"
        g = lambda k: _get(obj, k, w)  # noqa: E731
        znear = check_float(g("znear"), "znear", 0.0, 1e6, lo_open=True)
        zfar = check_float(g("zfar"), "zfar", 0.0, 1e9, lo_open=True)
        if zfar <= znear:
            raise ProtocolError(f"field 'zfar' = {zfar} must be greater than 'znear' = {znear}")
        return cls(
            width=check_int(g("width"), "width", 1, MAX_RESOLUTION),
            height=check_int(g("height"), "height", 1, MAX_RESOLUTION),
            fovx=check_float(g("fovx"), "fovx", 0.0, math.pi, lo_open=True, hi_open=True),
            fovy=check_float(g("fovy"), "fovy", 0.0, math.pi, lo_open=True, hi_open=True),
            znear=znear,
            zfar=zfar,
            world_view_transform=check_matrix4(g("world_view_transform"), "world_view_transform"),
            full_proj_transform=check_matrix4(g("full_proj_transform"), "full_proj_transform"),
            timestep=check_int(g("timestep"), "timestep", 0, MAX_TIMESTEP),
            scaling_modifier=check_float(g("scaling_modifier"), "scaling_modifier", 0.0,
                                         MAX_SCALING_MODIFIER, lo_open=True),
            render=check_bool(g("render"), "render"),
            train=check_bool(g("train"), "train"),
            keep_alive=check_bool(g("keep_alive"), "keep_alive"),
            show_splatting=check_bool(g("show_splatting"), "show_splatting"),
            show_mesh=check_bool(g("show_mesh"), "show_mesh"),
            mesh_opacity=check_float(g("mesh_opacity"), "mesh_opacity", 0.0, 1.0),
            original_mesh=check_bool(g("original_mesh"), "original_mesh"),
            jpeg_quality=check_int(g("jpeg_quality"), "jpeg_quality", 0, 100),
        )


@dataclass
class Status:
    """Training status sent with every reply."""

    iteration: int = 0
    num_splats: int = 0
    num_timesteps: int = 0
    training_paused: bool = False
    training_done: bool = False
    loss: Optional[float] = None
    render_ms: Optional[float] = None
    mesh_available: bool = False
    note: str = ""                 # short human-readable remark (e.g. "mesh overlay unavailable")

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("loss", "render_ms"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        return d

    @classmethod
    def from_json(cls, obj: Any) -> "Status":
        if not isinstance(obj, dict):
            raise ProtocolError("status must be a JSON object")
        w = "status"
        g = lambda k, d=dataclasses.MISSING: _get(obj, k, w, d)  # noqa: E731
        loss = g("loss", None)
        render_ms = g("render_ms", None)
        note = g("note", "")
        if not isinstance(note, str):
            raise ProtocolError("field 'note' must be a string")
        return cls(
            iteration=check_int(g("iteration"), "iteration", 0, 1 << 62),
            num_splats=check_int(g("num_splats"), "num_splats", 0, 1 << 62),
            num_timesteps=check_int(g("num_timesteps"), "num_timesteps", 0, MAX_TIMESTEP),
            training_paused=check_bool(g("training_paused"), "training_paused"),
            training_done=check_bool(g("training_done"), "training_done"),
            loss=None if loss is None else check_float(loss, "loss"),
            render_ms=None if render_ms is None else check_float(render_ms, "render_ms", 0.0),
            mesh_available=check_bool(g("mesh_available", False), "mesh_available"),
            note=note[:MAX_ERROR_TEXT],
        )


def encode_status(status: Status) -> bytes:
    return encode_message(MsgType.STATUS, dumps(status.to_json()))


def encode_error(text: str) -> bytes:
    return encode_message(MsgType.ERROR, dumps({"error": str(text)[:MAX_ERROR_TEXT]}))


def encode_bye() -> bytes:
    return encode_message(MsgType.BYE)


def decode_error(payload: bytes) -> str:
    obj = loads_object(payload, "error")
    text = obj.get("error")
    if not isinstance(text, str):
        raise ProtocolError("error message without an 'error' string")
    return text[:MAX_ERROR_TEXT]


def decode_request(payload: bytes) -> RenderRequest:
    return RenderRequest.from_json(loads_object(payload, "request"))


def decode_status(payload: bytes) -> Status:
    return Status.from_json(loads_object(payload, "status"))


@dataclass
class Frame:
    """A decoded FRAME: ``image`` is uint8 ``(H, W, 3)``."""

    image: np.ndarray
    timestep: int
    status: Status
    encoding: str = "raw"


def encode_frame(image: np.ndarray, status: Status, timestep: int = 0, jpeg_quality: int = 0) -> bytes:
    """FRAME message for a uint8 ``(H, W, 3)`` image; JPEG when ``1 <= jpeg_quality <= 100``."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame image must be uint8 (H,W,3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if not (1 <= w <= MAX_RESOLUTION and 1 <= h <= MAX_RESOLUTION):
        raise ValueError(f"frame of {w}x{h} exceeds the resolution limits")
    flags = 0
    if jpeg_quality > 0:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=int(jpeg_quality))
        data = buf.getvalue()
        encoding = "jpeg"
        flags = FLAG_JPEG
    else:
        data = image.tobytes()
        encoding = "raw"
    meta = dumps({"width": w, "height": h, "encoding": encoding, "timestep": int(timestep),
                  "status": status.to_json()})
    return encode_message(MsgType.FRAME, META_LEN.pack(len(meta)) + meta + data, flags)


def decode_frame(payload: bytes, flags: int) -> Frame:
    """Validate and decode a FRAME payload (sizes, encoding flag, JPEG dimensions)."""
    if len(payload) < META_LEN.size:
        raise ProtocolError("frame payload shorter than its meta length field")
    (meta_len,) = META_LEN.unpack_from(payload, 0)
    if meta_len > min(MAX_JSON_BYTES, len(payload) - META_LEN.size):
        raise ProtocolError(f"frame meta length {meta_len} does not fit the payload")
    meta = loads_object(payload[META_LEN.size:META_LEN.size + meta_len], "frame meta")
    data = memoryview(payload)[META_LEN.size + meta_len:]
    w = check_int(_get(meta, "width", "frame meta"), "width", 1, MAX_RESOLUTION)
    h = check_int(_get(meta, "height", "frame meta"), "height", 1, MAX_RESOLUTION)
    encoding = _get(meta, "encoding", "frame meta")
    timestep = check_int(_get(meta, "timestep", "frame meta", 0), "timestep", 0, MAX_TIMESTEP)
    status = Status.from_json(_get(meta, "status", "frame meta"))
    if encoding not in ("raw", "jpeg") or (encoding == "jpeg") != bool(flags & FLAG_JPEG):
        raise ProtocolError(f"frame encoding {encoding!r} does not match the header flags")
    if encoding == "raw":
        if len(data) != w * h * 3:
            raise ProtocolError(f"raw frame of {w}x{h} needs {w * h * 3} bytes, got {len(data)}")
        image = np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)
    else:
        image = _decode_jpeg(bytes(data), w, h)
    return Frame(image=image, timestep=timestep, status=status, encoding=encoding)


def _decode_jpeg(data: bytes, w: int, h: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.size != (w, h):
                raise ProtocolError(f"JPEG frame is {im.format} {im.size}, meta says {w}x{h}")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ProtocolError(f"undecodable JPEG frame: {e}") from None


# ---------------------------------------------------------------------------------------------
# Incremental decoding (non-blocking trainer side)

class StreamDecoder:
    """Incremental parser: ``feed`` raw bytes, get complete ``(Header, payload)`` messages.

    The header is validated as soon as its 12 bytes are in, so an oversized length or wrong
    magic is refused before any payload is buffered. ``started_at`` is the monotonic time the
    first byte of the current incomplete message arrived (None between messages), for stall
    deadlines. Memory is bounded by one message plus the bytes of one ``feed``.
    """

    def __init__(self, allowed: Optional[frozenset] = None):
        self.allowed = allowed
        self._buf = bytearray()
        self._header: Optional[Header] = None
        self.started_at: Optional[float] = None
        self.pending: Deque[Tuple[Header, bytes]] = deque()  # complete messages not yet consumed

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        return self.started_at is not None

    def feed(self, data: bytes, now: Optional[float] = None) -> List[Tuple[Header, bytes]]:
        out: List[Tuple[Header, bytes]] = []
        if not data:
            return out
        if self.started_at is None:
            self.started_at = time.monotonic() if now is None else now
        self._buf += data
        while True:
            if self._header is None:
                if len(self._buf) < HEADER_SIZE:
                    break
                self._header = parse_header(bytes(self._buf[:HEADER_SIZE]), self.allowed)
                del self._buf[:HEADER_SIZE]
            if len(self._buf) < self._header.length:
                break
            n = self._header.length
            out.append((self._header, bytes(self._buf[:n])))
            del self._buf[:n]
            self._header = None
            self.started_at = (time.monotonic() if now is None else now) if self._buf else None
        return out


# ---------------------------------------------------------------------------------------------
# Blocking helpers (viewer side, tests)

def recv_exact(sock: socket.socket, n: int, deadline: Optional[float] = None) -> bytearray:
    """Read exactly ``n`` bytes, looping over partial ``recv_into`` results.

    The socket's own timeout bounds each call; ``deadline`` (monotonic) bounds the whole read.
    Raises :class:`PeerClosed` on EOF and ``socket.timeout`` past the deadline.
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None and time.monotonic() > deadline:
            raise socket.timeout(f"read of {n} bytes timed out after {got} bytes")
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerClosed(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def read_message(sock: socket.socket, allowed: Optional[frozenset] = None,
                 timeout: Optional[float] = None) -> Tuple[Header, bytes]:
    """Blocking read of one whole message; ``timeout`` bounds the complete message."""
    deadline = None if timeout is None else time.monotonic() + timeout
    header = parse_header(bytes(recv_exact(sock, HEADER_SIZE, deadline)), allowed)
    payload = bytes(recv_exact(sock, header.length, deadline)) if header.length else b""
    return header, payload


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sendall`` (the socket's timeout applies to each chunk)."""
    sock.sendall(data)


def raise_if_error(header: Header, payload: bytes) -> None:
    """Turn an ERROR message into a ProtocolError carrying the peer's text."""
    if header.msg_type == MsgType.ERROR:
        raise ProtocolError(f"trainer: {decode_error(payload)}")
