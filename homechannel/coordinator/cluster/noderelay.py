"""Messages between the nodes of a coordinator cluster, sans I/O.

A node publishes them on the Redis channel of the node they are for
(``<prefix>n:<node id>``, see ``redisrelay``); this module only encodes,
decodes and keeps the table of offers waiting for their result.  Binary,
because an offer carries up to 64 KiB of payload:

========  ====================================================================
``O``     OFFER: ``id(8) from-length(1) from key-id(16) payload``: relay the
          payload to the home server with that key id (registered here) and
          answer with RESULT to node *from*
``R``     RESULT: ``id(8) status(1) message``: status 0 = every fragment was
          acknowledged by the home server; 1 = it was not (message: why)
``N``     NOTICE: ``key-id(16) body``: send the home server a NOTICE
``F``     REFILL: ``key-id(16)``: ask the home server for fresh challenges
========  ====================================================================

Anything else, or a truncated message, raises ``ProtocolError`` (the adapter
counts and drops it).
"""

import struct
from dataclasses import dataclass

from homechannel.protocol import udp
from homechannel.errors import ProtocolError

OFFER, RESULT, NOTICE, REFILL = b"O", b"R", b"N", b"F"
KID = 16
_ID = struct.Struct(">Q")


@dataclass(frozen=True)
class Message:
    kind: bytes
    kid: bytes = b""
    id: int = 0
    sender: str = ""
    payload: bytes = b""
    ok: bool = True


def offer(request_id, sender, kid, payload):
    node = sender.encode("utf-8")
    return OFFER + _ID.pack(request_id) + bytes([len(node)]) + node + kid + payload


def result(request_id, ok, message=""):
    return RESULT + _ID.pack(request_id) + (b"\0" if ok else b"\1") + message.encode("utf-8")


def notice(kid, body):
    return NOTICE + kid + body


def refill(kid):
    return REFILL + kid


def decode(data: bytes) -> Message:
    kind = data[:1]
    try:
        if kind == OFFER:
            request_id = _ID.unpack_from(data, 1)[0]
            n = data[9]
            sender = data[10:10 + n].decode("utf-8")
            kid = data[10 + n:10 + n + KID]
            payload = data[10 + n + KID:]
            if len(kid) != KID or not 0 < len(payload) <= udp.MAX_TRANSFER:
                raise ProtocolError("truncated offer")
            return Message(OFFER, kid, request_id, sender, payload)
        if kind == RESULT:
            request_id = _ID.unpack_from(data, 1)[0]
            if len(data) < 10 or data[9] not in (0, 1):
                raise ProtocolError("bad result")
            return Message(RESULT, id=request_id, ok=data[9] == 0,
                           payload=data[10:])
        if kind in (NOTICE, REFILL):
            kid = data[1:1 + KID]
            if len(kid) != KID:
                raise ProtocolError("truncated message")
            body = data[1 + KID:]
            if kind == NOTICE and not 0 < len(body) <= udp.MAX_NOTICE:
                raise ProtocolError("bad notice")
            return Message(kind, kid, payload=body)
    except (struct.error, IndexError, UnicodeDecodeError):
        raise ProtocolError("truncated node message") from None
    raise ProtocolError("unknown node message")


class PendingOffers:
    """Offers this node sent to other nodes, waiting for their RESULT.

    ``add(callback, now)`` returns the request id; ``resolve(id, ok,
    message)`` calls ``callback(ok, message)`` once; ``expire(now)`` calls
    it with ``(False, "...")`` for every offer older than *deadline*
    seconds; ``next_deadline()`` says when to call it."""

    def __init__(self, deadline, first_id=1):
        self.deadline = deadline
        self._next = first_id
        self._pending = {}          # id -> (callback, expires at)

    def __len__(self):
        return len(self._pending)

    def add(self, callback, now):
        self._next = (self._next + 1) & 0xFFFFFFFFFFFFFFFF
        self._pending[self._next] = (callback, now + self.deadline)
        return self._next

    def resolve(self, request_id, ok, message=""):
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return False
        entry[0](ok, message)
        return True

    def expire(self, now):
        late = [i for i, (_, at) in self._pending.items() if at <= now]
        for i in late:
            self.resolve(i, False, "the home server's coordinator node did not answer")
        return len(late)

    def next_deadline(self):
        return min((at for _, at in self._pending.values()), default=None)

    def fail_all(self, message):
        """Resolve every pending offer as failed (the node is stopping)."""
        for request_id in list(self._pending):
            self.resolve(request_id, False, message)
