"""The app frame codec: round trips, and garbage raises only ProtocolError."""

import pytest
from hypothesis import given, strategies as st

from homechannel import errors
from homechannel.protocol import frames

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
json_types = st.sampled_from([frames.REQ, frames.RES, frames.ERR, frames.END, frames.CANCEL, frames.ACK])


@given(json_types, st.integers(0, frames.MAX_ID), st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_json_frames_round_trip(ftype, rid, body):
    f = frames.decode(frames.encode(ftype, rid, body))
    assert (f.type, f.id, f.body) == (ftype, rid, body)


@given(st.integers(0, frames.MAX_ID), st.binary(max_size=frames.CHUNK))
def test_data_frames_round_trip(rid, data):
    f = frames.decode(frames.encode(frames.DATA, rid, data=data))
    assert (f.type, f.id, f.data) == (frames.DATA, rid, data)


def test_known_bytes():
    assert frames.encode(frames.REQ, 7, {"op": "list"}) == b"\x01\x00\x00\x00\x07" + b'{"op":"list"}'
    assert frames.encode(frames.DATA, 258, data=b"hi") == b"\x04\x00\x00\x01\x02hi"


@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_error(blob):
    try:
        f = frames.decode(blob)
    except errors.ProtocolError:
        return
    assert f.type in frames.TYPES


@given(json_types, st.integers(0, frames.MAX_ID), st.binary(max_size=100))
def test_bad_json_payload_raises_protocol_error(ftype, rid, payload):
    blob = frames.HEADER.pack(ftype, rid) + payload
    try:
        f = frames.decode(blob)
    except errors.ProtocolError:
        return
    assert isinstance(f.body, dict)


@pytest.mark.parametrize("message", [
    "text", b"", b"\x01\x00\x00", b"\x09\x00\x00\x00\x01{}", b"\x01\x00\x00\x00\x01[]",
    b"\x01\x00\x00\x00\x01\xff", b"\x02\x00\x00\x00\x01" + b"[" * 100000,
    b"\x04" + b"\x00" * (frames.MAX_FRAME + 1), 42,
])
def test_specific_garbage(message):
    with pytest.raises(errors.ProtocolError):
        frames.decode(message)


def test_encode_refuses_oversize_and_bad_ids():
    with pytest.raises(ValueError):
        frames.encode(frames.DATA, 1, data=b"x" * frames.MAX_FRAME)
    with pytest.raises(ValueError):
        frames.encode(frames.REQ, -1, {})
    with pytest.raises(ValueError):
        frames.encode(99, 1, {})


def test_error_body_names_the_problem_and_hides_bugs():
    e = errors.Forbidden("read-only", "read-only", path="x")
    assert frames.error_body(e) == {"code": "read-only", "message": "read-only", "path": "x"}
    assert frames.error_body(errors.NotFound("gone"))["code"] == "not-found"
    assert frames.error_body(KeyError("secret"))["code"] == "internal"
    assert "secret" not in frames.error_body(KeyError("secret"))["message"]
