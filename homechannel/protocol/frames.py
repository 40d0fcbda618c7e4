"""The one binary frame codec of the app channels (pure: bytes in, frames out).

A frame is one datachannel message::

    byte 0      frame type (REQ, RES, ERR, DATA, END, CANCEL, ACK)
    bytes 1-4   request id, unsigned 32-bit big-endian (chosen by the side
                that sent the REQ; 0 is for channel-level messages)
    bytes 5-    payload: raw bytes for DATA, a UTF-8 JSON object for the rest

``static/js/apps/channel.js`` mirrors this module; ``docs/protocol.md``
section 3 is the reference.  Anything that does not parse raises
:class:`~homechannel.errors.ProtocolError` and nothing else.
"""

import json
import struct
from dataclasses import dataclass
from typing import Any

from homechannel import errors

REQ = 1  # open a request: {"op": ..., ...}
RES = 2  # final (or, for downloads/uploads, first) answer to a request
ERR = 3  # the request failed: {"code": ..., "message": ...}; ends the request
DATA = 4  # a chunk of bytes belonging to a request
END = 5  # end of a DATA stream: JSON with the summary (size, sha256)
CANCEL = 6  # the requester gives up: {} ; ends the request
ACK = 7  # flow control / progress: {"received": n}

TYPES = {REQ: "REQ", RES: "RES", ERR: "ERR", DATA: "DATA", END: "END", CANCEL: "CANCEL", ACK: "ACK"}

HEADER = struct.Struct(">BI")
MAX_ID = 2 ** 32 - 1
# Largest frame either side sends: aiortc advertises a 64 KiB max-message-size
# and browsers honour it, so stay well under.
MAX_FRAME = 65536
# Payload of one DATA frame.
CHUNK = 32768
# Largest JSON payload accepted.
MAX_JSON = 16384


@dataclass(frozen=True)
class Frame:
    type: int
    id: int
    body: dict[str, Any] | None = None  # JSON frames
    data: bytes = b""  # DATA frames

    def __repr__(self) -> str:
        what = f"{len(self.data)} bytes" if self.type == DATA else repr(self.body)
        return f"<Frame {TYPES.get(self.type, self.type)} #{self.id} {what}>"


def encode(ftype: int, rid: int, body: dict[str, Any] | None = None,
           data: bytes | bytearray | memoryview = b"") -> bytes:
    """Serialise one frame.  *body* (a dict) for JSON frames, *data* for DATA."""
    if ftype not in TYPES:
        raise ValueError(f"unknown frame type {ftype}")
    if not 0 <= rid <= MAX_ID:
        raise ValueError(f"request id {rid} out of range")
    if ftype == DATA:
        payload = bytes(data)
    else:
        payload = json.dumps(body if body is not None else {}, separators=(",", ":"),
                             ensure_ascii=True).encode("ascii")
    frame = HEADER.pack(ftype, rid) + payload
    if len(frame) > MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    return frame


def decode(message: object) -> Frame:
    """Parse one datachannel message into a :class:`Frame` or raise ProtocolError."""
    if isinstance(message, str):
        raise errors.ProtocolError("app channels carry binary frames, not text")
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise errors.ProtocolError("frame is not bytes")
    message = bytes(message)
    if len(message) < HEADER.size:
        raise errors.ProtocolError(f"frame of {len(message)} bytes is shorter than its header")
    if len(message) > MAX_FRAME:
        raise errors.ProtocolError(f"frame of {len(message)} bytes exceeds {MAX_FRAME}")
    ftype, rid = HEADER.unpack_from(message)
    if ftype not in TYPES:
        raise errors.ProtocolError(f"unknown frame type {ftype}")
    payload = message[HEADER.size:]
    if ftype == DATA:
        return Frame(ftype, rid, None, payload)
    if len(payload) > MAX_JSON:
        raise errors.ProtocolError(f"{TYPES[ftype]} payload of {len(payload)} bytes is too large")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise errors.ProtocolError(f"{TYPES[ftype]} payload is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise errors.ProtocolError(f"{TYPES[ftype]} payload is not a JSON object")
    return Frame(ftype, rid, body, b"")


# -- structured errors ------------------------------------------------------

def error_body(exc: BaseException) -> dict[str, Any]:
    """The ERR payload for *exc*: ``{"code", "message"}``; never a traceback."""
    if isinstance(exc, errors.HomeChannelError):
        return exc.doc()
    return {"code": "internal", "message": "internal error on the home server (see its log)"}
