"""Remote viewer wire protocol (viewer.protocol): framing, validation,
partial reads. CPU only, no torch needed."""
from __future__ import annotations

import io
import json
import math
import socket
import struct
import threading
import time

import numpy as np
import pytest

from viewer import protocol as vp


def _request(**kw) -> vp.RenderRequest:
    base = dict(width=64, height=48, fovx=0.7, fovy=0.55, znear=0.05, zfar=50.0,
                world_view_transform=tuple(tuple(float(i * 4 + j) for j in range(4)) for i in range(4)),
                full_proj_transform=tuple(tuple(1.0 if i == j else 0.25 for j in range(4)) for i in range(4)),
                timestep=3, scaling_modifier=0.5, render=True, train=False, keep_alive=True,
                show_splatting=False, show_mesh=True, mesh_opacity=0.3, original_mesh=True, jpeg_quality=70)
    base.update(kw)
    return vp.RenderRequest(**base)


def _split(msg: bytes):
    header = vp.parse_header(msg[:vp.HEADER_SIZE])
    assert header.length == len(msg) - vp.HEADER_SIZE
    return header, msg[vp.HEADER_SIZE:]


# ---------------------------------------------------------------------------------------------
# header

def test_header_layout_is_little_endian_and_12_bytes():
    raw = vp.pack_header(vp.MsgType.FRAME, 0x01020304, flags=vp.FLAG_JPEG)
    assert raw == b"GAVW" + bytes([vp.PROTOCOL_VERSION, 2]) + b"\x01\x00" + b"\x04\x03\x02\x01"
    h = vp.parse_header(raw)
    assert (h.msg_type, h.flags, h.length, h.version) == (vp.MsgType.FRAME, 1, 0x01020304, vp.PROTOCOL_VERSION)


@pytest.mark.parametrize("raw, match", [
    (b"XXXX" + bytes([1, 1, 0, 0, 0, 0, 0, 0]), "magic"),
    (b"GAVW" + bytes([1, 9, 0, 0, 0, 0, 0, 0]), "unknown message type"),
    (b"GAVW" + bytes([1, 1, 1, 0, 0, 0, 0, 0]), "unknown flags"),
    (b"GAVW" + bytes([1, 1]) + b"\x00\x00" + struct.pack("<I", vp.MAX_JSON_BYTES + 1), "exceeds the limit"),
    (b"GAVW" + bytes([1, 2]) + b"\x00\x00" + struct.pack("<I", vp.MAX_FRAME_BYTES + 1), "exceeds the limit"),
    (b"GAVW" + bytes([1, 1, 0, 0]), "12 bytes"),
])
def test_bad_headers_are_refused(raw, match):
    with pytest.raises(vp.ProtocolError, match=match):
        vp.parse_header(raw)


def test_version_mismatch_but_error_messages_of_any_version_are_readable():
    raw = vp.pack_header(vp.MsgType.REQUEST, 0, version=vp.PROTOCOL_VERSION + 1)
    with pytest.raises(vp.VersionMismatch, match="version 2 is not supported"):
        vp.parse_header(raw)
    h = vp.parse_header(vp.pack_header(vp.MsgType.ERROR, 5, version=7))
    assert h.msg_type == vp.MsgType.ERROR and h.version == 7


def test_direction_is_enforced():
    frame_header = vp.pack_header(vp.MsgType.FRAME, 10)
    with pytest.raises(vp.ProtocolError, match="not expected"):
        vp.parse_header(frame_header, vp.VIEWER_TO_TRAINER)
    with pytest.raises(vp.ProtocolError, match="not expected"):
        vp.parse_header(vp.pack_header(vp.MsgType.REQUEST, 10), vp.TRAINER_TO_VIEWER)


# ---------------------------------------------------------------------------------------------
# round trips of every message type

def test_request_round_trip():
    req = _request()
    header, payload = _split(req.encode())
    assert header.msg_type == vp.MsgType.REQUEST and header.flags == 0
    back = vp.decode_request(payload)
    assert back == req
    # the JSON is plain: a 4x4 nested list and booleans
    obj = json.loads(payload)
    assert obj["world_view_transform"][2][3] == 11.0 and obj["train"] is False


def test_status_round_trip():
    st = vp.Status(iteration=1234, num_splats=99, num_timesteps=7, training_paused=True, training_done=False,
                   loss=0.0125, render_ms=3.5, mesh_available=True, note="hi")
    header, payload = _split(vp.encode_status(st))
    assert header.msg_type == vp.MsgType.STATUS
    assert vp.decode_status(payload) == st
    # non-finite loss travels as null
    st2 = vp.Status(loss=float("nan"))
    assert vp.decode_status(_split(vp.encode_status(st2))[1]).loss is None


def test_error_and_bye_round_trip():
    header, payload = _split(vp.encode_error("boom \u2603"))
    assert header.msg_type == vp.MsgType.ERROR and vp.decode_error(payload) == "boom \u2603"
    with pytest.raises(vp.ProtocolError, match="trainer: boom"):
        vp.raise_if_error(header, payload)
    header, payload = _split(vp.encode_bye())
    assert header.msg_type == vp.MsgType.BYE and payload == b""


def test_raw_frame_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    st = vp.Status(iteration=5, num_splats=3)
    header, payload = _split(vp.encode_frame(img, st, timestep=2))
    assert header.msg_type == vp.MsgType.FRAME and header.flags == 0
    (meta_len,) = struct.unpack_from("<I", payload)
    assert len(payload) == 4 + meta_len + 5 * 7 * 3
    frame = vp.decode_frame(payload, header.flags)
    np.testing.assert_array_equal(frame.image, img)
    assert frame.timestep == 2 and frame.status == st and frame.encoding == "raw"


def test_jpeg_frame_round_trip():
    yy, xx = np.mgrid[0:40, 0:60]
    img = np.stack([xx * 4, yy * 6, np.full_like(xx, 128)], -1).astype(np.uint8)  # smooth: JPEG-friendly
    header, payload = _split(vp.encode_frame(img, vp.Status(), jpeg_quality=95))
    assert header.flags == vp.FLAG_JPEG
    assert len(payload) < img.nbytes
    frame = vp.decode_frame(payload, header.flags)
    assert frame.encoding == "jpeg" and frame.image.shape == img.shape
    assert np.abs(frame.image.astype(int) - img.astype(int)).mean() < 3.0


def _frame_payload(meta: dict, data: bytes) -> bytes:
    m = json.dumps(meta).encode()
    return struct.pack("<I", len(m)) + m + data


@pytest.mark.parametrize("meta, data, flags, match", [
    ({"width": 2, "height": 2, "encoding": "raw", "status": vp.Status().to_json()}, b"\0" * 11, 0, "needs 12 bytes"),
    ({"width": 2, "height": 2, "encoding": "jpeg", "status": vp.Status().to_json()}, b"\0" * 12, 0, "does not match"),
    ({"width": 2, "height": 2, "encoding": "jpeg", "status": vp.Status().to_json()}, b"notajpeg", 1, "undecodable"),
    ({"width": 0, "height": 2, "encoding": "raw", "status": vp.Status().to_json()}, b"", 0, "width"),
    ({"width": 2, "height": 5000, "encoding": "raw", "status": vp.Status().to_json()}, b"", 0, "height"),
    ({"width": 2, "height": 2, "encoding": "raw"}, b"\0" * 12, 0, "status"),
])
def test_bad_frames_are_refused(meta, data, flags, match):
    with pytest.raises(vp.ProtocolError, match=match):
        vp.decode_frame(_frame_payload(meta, data), flags)


def test_jpeg_with_wrong_dimensions_is_refused():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    with pytest.raises(vp.ProtocolError, match="meta says 4x4"):
        vp.decode_frame(_frame_payload({"width": 4, "height": 4, "encoding": "jpeg",
                                        "status": vp.Status().to_json()}, buf.getvalue()), vp.FLAG_JPEG)


def test_frame_meta_length_beyond_payload_is_refused():
    with pytest.raises(vp.ProtocolError, match="meta length"):
        vp.decode_frame(struct.pack("<I", 1000) + b"{}", 0)


# ---------------------------------------------------------------------------------------------
# request validation

BAD_FIELDS = [
    ("width", 0), ("width", 4097), ("width", 10.5), ("width", True), ("height", "64"), ("height", -1),
    ("fovx", 0.0), ("fovx", math.pi), ("fovy", -0.1), ("fovy", None), ("znear", 0.0), ("zfar", 0.01),
    ("timestep", -1), ("timestep", 1.5), ("timestep", vp.MAX_TIMESTEP + 1),
    ("scaling_modifier", 0.0), ("scaling_modifier", 10.5), ("scaling_modifier", "1"),
    ("render", 1), ("train", "yes"), ("keep_alive", None), ("show_splatting", 0), ("show_mesh", []),
    ("mesh_opacity", 1.5), ("original_mesh", {}), ("jpeg_quality", 101), ("jpeg_quality", -1),
    ("world_view_transform", [[1, 0, 0, 0]] * 3), ("world_view_transform", [[1, 0, 0]] * 4),
    ("world_view_transform", "eye"), ("full_proj_transform", [[1, 0, 0, 0]] * 3 + [[0, 0, "x", 1]]),
    ("full_proj_transform", [[1, 0, 0, 0]] * 3 + [[0, 0, 1e400, 1]]),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_request_field_validation_names_the_field(field, value):
    obj = _request().to_json()
    obj[field] = value
    with pytest.raises(vp.ProtocolError, match=field):
        vp.RenderRequest.from_json(obj)


def test_missing_field_and_unknown_fields():
    obj = _request().to_json()
    del obj["timestep"]
    with pytest.raises(vp.ProtocolError, match="missing field 'timestep'"):
        vp.RenderRequest.from_json(obj)
    obj = _request().to_json()
    obj["future_option"] = [1, 2, 3]       # forward compatible: ignored
    assert vp.RenderRequest.from_json(obj) == _request()


@pytest.mark.parametrize("payload, match", [
    (b'{"width": NaN}', "non-finite"),
    (b'{"a": Infinity}', "non-finite"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply|invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"width": ' + b"9" * 100000 + b"}", "invalid JSON"),
    (b"[1, 2]", "must be an object"),
    (b'{"a": ', "invalid JSON"),
    (b"", "invalid JSON"),
])
def test_hostile_json_is_refused(payload, match):
    with pytest.raises(vp.ProtocolError, match=match):
        vp.decode_request(payload)


def test_encode_refuses_an_invalid_request():
    with pytest.raises(vp.ProtocolError, match="fovy"):
        _request(fovy=4.0).encode()
    with pytest.raises(vp.ProtocolError, match="non-finite|finite"):
        _request(world_view_transform=((float("nan"),) * 4,) * 4).encode()


# ---------------------------------------------------------------------------------------------
# incremental decoding and partial socket reads

def _stream_of_messages():
    img = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    return [_request().encode(), vp.encode_bye(), _request(timestep=0, jpeg_quality=0).encode()], \
           [vp.encode_status(vp.Status(iteration=1)), vp.encode_frame(img, vp.Status(iteration=2)),
            vp.encode_error("x")]


def test_stream_decoder_byte_at_a_time():
    to_trainer, _ = _stream_of_messages()
    blob = b"".join(to_trainer)
    dec = vp.StreamDecoder(vp.VIEWER_TO_TRAINER)
    got = []
    for i in range(len(blob)):
        got += dec.feed(blob[i:i + 1], now=float(i))
        if i == 0:
            assert dec.in_message and dec.started_at == 0.0
    assert [h.msg_type for h, _ in got] == [vp.MsgType.REQUEST, vp.MsgType.BYE, vp.MsgType.REQUEST]
    assert vp.decode_request(got[0][1]) == _request()
    assert not dec.in_message and dec.buffered == 0


def test_stream_decoder_refuses_oversized_length_before_payload():
    dec = vp.StreamDecoder(vp.VIEWER_TO_TRAINER)
    with pytest.raises(vp.ProtocolError, match="exceeds"):
        dec.feed(b"GAVW\x01\x01\x00\x00" + struct.pack("<I", 0xFFFFFFFF))


def _slow_sender(sock: socket.socket, blob: bytes, close: bool) -> threading.Thread:
    def run():
        for i in range(len(blob)):
            sock.sendall(blob[i:i + 1])
        if close:
            sock.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_read_message_over_one_byte_socket_writes():
    _, to_viewer = _stream_of_messages()
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5.0)
        sender = _slow_sender(a, b"".join(to_viewer), close=True)
        h1, p1 = vp.read_message(b, vp.TRAINER_TO_VIEWER, timeout=5.0)
        h2, p2 = vp.read_message(b, vp.TRAINER_TO_VIEWER, timeout=5.0)
        h3, p3 = vp.read_message(b, vp.TRAINER_TO_VIEWER, timeout=5.0)
        sender.join()
        assert vp.decode_status(p1).iteration == 1
        frame = vp.decode_frame(p2, h2.flags)
        np.testing.assert_array_equal(frame.image, np.arange(36, dtype=np.uint8).reshape(4, 3, 3))
        assert vp.decode_error(p3) == "x"
        with pytest.raises(vp.PeerClosed):
            vp.read_message(b, timeout=5.0)


def test_recv_exact_counts_partial_reads_and_detects_truncation():
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5.0)
        msg = _request().encode()
        sender = _slow_sender(a, msg[:-5], close=True)
        with pytest.raises(vp.PeerClosed, match=f"after {len(msg) - 5 - vp.HEADER_SIZE} of"):
            vp.read_message(b, timeout=5.0)
        sender.join()


def test_read_message_times_out_on_a_stalled_peer():
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(0.05)
        a.sendall(_request().encode()[:20])  # header + a little payload, then silence
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            vp.read_message(b, timeout=0.2)
        assert time.monotonic() - t0 < 5.0
