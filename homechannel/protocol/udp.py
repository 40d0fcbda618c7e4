"""The UDP wire codec: pure parse and serialise functions.

Every datagram starts with a 4-byte header: ``"HC"``, version 1, type.  The
layouts are documented byte by byte in ``docs/protocol.md`` section 1; this
module is their one implementation.  Parsing anything malformed raises
:class:`ProtocolError` and nothing else.
"""

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from homechannel import crypto
from homechannel.errors import ProtocolError

# A UDP peer as Twisted gives it, ``(host, port)``, and what the sans-I/O
# protocols return: the datagrams to send, each with where to.
Address = tuple[str, int]
Datagrams = list[tuple[bytes, Address]]

MAGIC = b"HC"
VERSION = 1

# Outer datagram types.
HELLO = 0x01     # server -> coordinator: nonce, padding
COOKIE = 0x02    # coordinator -> server: nonce, stateless cookie
INIT = 0x03      # server -> coordinator: cookie, nonce, identity key, ephemeral key
RESP = 0x04      # coordinator -> server: nonce, ephemeral key, signature
FINISH = 0x05    # server -> coordinator: nonce, signature, sealed REGISTER
DATA = 0x06      # either way, after the handshake: counter, sealed message
UNKNOWN = 0x07   # coordinator -> server: "I do not know you, re-register" (signed)

NONCE_SIZE = 16
COOKIE_SIZE = 20
HEADER_SIZE = 4
COUNTER_SIZE = 8
HELLO_SIZE = HEADER_SIZE + NONCE_SIZE + COOKIE_SIZE  # >= the COOKIE reply
INIT_SIZE = HEADER_SIZE + COOKIE_SIZE + NONCE_SIZE + 2 * crypto.PUBLIC_KEY_SIZE
RESP_SIZE = HEADER_SIZE + NONCE_SIZE + crypto.PUBLIC_KEY_SIZE + crypto.SIGNATURE_SIZE
UNKNOWN_SIZE = HEADER_SIZE + COUNTER_SIZE + crypto.TAG_SIZE + crypto.SIGNATURE_SIZE
# Every DATA datagram a home server sends is padded to this size, so that the
# signed UNKNOWN reply is never larger than the datagram that caused it.
MIN_SERVER_DATAGRAM = 96
MAX_DATAGRAM = 1200

# Inner (sealed) message types.  Requests are even, their replies are odd.
REGISTER, REGISTERED = 0x10, 0x11        # pool of challenges -> ok
REFUSED = 0x1B                           # reply to REGISTER instead of REGISTERED: reason
PING, PONG = 0x12, 0x13
CHALLENGES, CHALLENGES_ACK = 0x14, 0x15  # fresh pool (replaces), acknowledged
REFILL, REFILL_REPLY = 0x16, 0x17        # coordinator asks for challenges; reply carries them
BYE, BYE_ACK = 0x18, 0x19                # the server leaves (stopping); forgotten at once
XFER, XFER_ACK = 0x20, 0x21              # one fragment of an offer/answer transfer
MIGRATE, MIGRATE_ACK = 0x30, 0x31        # move to another coordinator (ACK: empty, or
                                          # the refusal's reason)
NOTICE, NOTICE_ACK = 0x40, 0x41          # coordinator tells the server of a failed login
DEVICES, DEVICES_ACK = 0x50, 0x51        # the server's password epoch and enrolled devices
REQUESTS = {REGISTER, PING, CHALLENGES, REFILL, BYE, XFER, MIGRATE, NOTICE, DEVICES}
MAX_NOTICE = 512
MAX_REFUSAL = 64
REPLIES = {t | 1 for t in REQUESTS} | {REFUSED}
# REFUSED is sealed with the handshake's keys under a counter with the top bit
# set (plus 63 random bits): the session's own counters start at 0 and never
# get there, so the nonce is never reused even if a refused handshake is
# later completed.
REFUSAL_COUNTER_BIT = 1 << 63

# Challenges a coordinator keeps per server.
POOL = 2
_GEN = struct.Struct(">I")

# Transfer kinds.
KIND_OFFER = 1
KIND_ANSWER = 2
MAX_TRANSFER = 64 * 1024
FRAGMENT_SIZE = 1024
MAX_FRAGMENTS = -(-MAX_TRANSFER // FRAGMENT_SIZE)

_HDR = struct.Struct(">2sBB")
_INNER = struct.Struct(">BIH")      # type, request id, body length
_XFER = struct.Struct(">IBBBI")     # transfer id, kind, index, count, total length
_XFER_ACK = struct.Struct(">IB")
_PAIR = crypto.CHALLENGE_SIZE + crypto.EXPECTED_ANSWER_SIZE


def header(kind: int) -> bytes:
    return _HDR.pack(MAGIC, VERSION, kind)


def datagram_type(data: bytes) -> int:
    """The outer type of *data*, or ProtocolError."""
    if len(data) < HEADER_SIZE or len(data) > MAX_DATAGRAM:
        raise ProtocolError("bad datagram size")
    magic, version, kind = _HDR.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("bad magic")
    if version != VERSION:
        raise ProtocolError("unsupported version")
    return kind


def _exact(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ProtocolError(f"{what} must be {size} bytes")


# -- handshake datagrams ----------------------------------------------------


def hello(nonce: bytes) -> bytes:
    return (header(HELLO) + nonce).ljust(HELLO_SIZE, b"\0")


def parse_hello(data: bytes) -> bytes:
    _exact(data, HELLO_SIZE, "HELLO")
    return data[4:20]


def cookie(nonce: bytes, cookie_value: bytes) -> bytes:
    return header(COOKIE) + nonce + cookie_value


def parse_cookie(data: bytes) -> tuple[bytes, bytes]:
    _exact(data, HEADER_SIZE + NONCE_SIZE + COOKIE_SIZE, "COOKIE")
    return data[4:20], data[20:40]


@dataclass(frozen=True)
class Init:
    cookie: bytes
    nonce: bytes
    identity: bytes
    ephemeral: bytes


def init(cookie_value: bytes, nonce: bytes, identity_raw: bytes, ephemeral_raw: bytes) -> bytes:
    return header(INIT) + cookie_value + nonce + identity_raw + ephemeral_raw


def parse_init(data: bytes) -> Init:
    _exact(data, INIT_SIZE, "INIT")
    return Init(data[4:24], data[24:40], data[40:105], data[105:170])


def resp(nonce: bytes, ephemeral_raw: bytes, signature: bytes) -> bytes:
    return header(RESP) + nonce + ephemeral_raw + signature


def parse_resp(data: bytes) -> tuple[bytes, bytes, bytes]:
    _exact(data, RESP_SIZE, "RESP")
    return data[4:20], data[20:85], data[85:149]


def transcript_hash(init_datagram: bytes, coordinator_ephemeral: bytes) -> bytes:
    return crypto.sha256(b"homechannel udp v1 transcript\n" + init_datagram + coordinator_ephemeral)


RESP_LABEL = b"homechannel udp v1 resp\n"
FINISH_LABEL = b"homechannel udp v1 finish\n"
UNKNOWN_LABEL = b"homechannel udp v1 unknown\n"


_FIN_FIXED = HEADER_SIZE + NONCE_SIZE + crypto.SIGNATURE_SIZE


def finish(nonce: bytes, signature: bytes, key: bytes, counter: int, inner: bytes) -> bytes:
    """FINISH carries the first sealed message (REGISTER) with counter *counter*."""
    prefix = header(FINISH) + nonce + signature + counter.to_bytes(8, "big")
    return prefix + crypto.seal(key, counter, inner, prefix)


def parse_finish(data: bytes) -> tuple[bytes, bytes, int, bytes, bytes]:
    """``(nonce, signature, counter, aad, ciphertext)``; the caller opens it."""
    if len(data) < _FIN_FIXED + COUNTER_SIZE + crypto.TAG_SIZE + _INNER.size:
        raise ProtocolError("FINISH too short")
    end = _FIN_FIXED + COUNTER_SIZE
    counter = int.from_bytes(data[_FIN_FIXED:end], "big")
    return data[4:20], data[20:84], counter, data[:end], data[end:]


# -- sealed datagrams --------------------------------------------------------


def seal_data(key: bytes, counter: int, inner: bytes, pad_to: int = 0) -> bytes:
    prefix = header(DATA) + counter.to_bytes(8, "big")
    if pad_to:
        inner = inner.ljust(pad_to - len(prefix) - crypto.TAG_SIZE, b"\0")
    return prefix + crypto.seal(key, counter, inner, prefix)


def parse_data(data: bytes) -> tuple[int, bytes, bytes]:
    """``(counter, aad, ciphertext)`` of a DATA datagram."""
    if len(data) < HEADER_SIZE + COUNTER_SIZE + crypto.TAG_SIZE + _INNER.size:
        raise ProtocolError("DATA too short")
    return int.from_bytes(data[4:12], "big"), data[:12], data[12:]


def open_data(key: bytes, data: bytes) -> tuple[int, bytes]:
    """Open a DATA datagram: ``(counter, inner plaintext)``; AuthenticationError."""
    counter, aad, ct = parse_data(data)
    return counter, crypto.open_sealed(key, counter, ct, aad)


def unknown(counter_and_tag: bytes, signature: bytes) -> bytes:
    return header(UNKNOWN) + counter_and_tag + signature


def unknown_reference(data: bytes) -> bytes:
    """What an UNKNOWN reply echoes of the DATA datagram it answers: counter || tag."""
    return data[4:12] + data[-crypto.TAG_SIZE:]


def parse_unknown(data: bytes) -> tuple[bytes, bytes]:
    _exact(data, UNKNOWN_SIZE, "UNKNOWN")
    return data[4:28], data[28:92]


# -- inner messages ----------------------------------------------------------


def inner(kind: int, request_id: int, body: bytes = b"") -> bytes:
    return _INNER.pack(kind, request_id, len(body)) + body


def parse_inner(plain: bytes) -> tuple[int, int, bytes]:
    """``(kind, request id, body)``; trailing padding is ignored."""
    if len(plain) < _INNER.size:
        raise ProtocolError("message too short")
    kind, rid, n = _INNER.unpack_from(plain)
    if len(plain) < _INNER.size + n:
        raise ProtocolError("message body truncated")
    if kind not in REQUESTS and kind not in REPLIES:
        raise ProtocolError(f"unknown message type 0x{kind:02x}")
    return kind, rid, plain[_INNER.size:_INNER.size + n]


def pairs(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A challenge pool: count (1 byte), then challenge(16) || expectedAnswer(32)."""
    items = list(items)
    return bytes([len(items)]) + b"".join(c + e for c, e in items)


def generation_pairs(generation: int, items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A CHALLENGES body: generation (4, counts up from 1 in each session), then a pool."""
    return _GEN.pack(generation) + pairs(items)


def parse_generation_pairs(body: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    if len(body) < 5:
        raise ProtocolError("bad CHALLENGES")
    return _GEN.unpack_from(body)[0], parse_pairs(body[4:])


def parse_pairs(body: bytes) -> list[tuple[bytes, bytes]]:
    if not body or len(body) != 1 + body[0] * _PAIR or body[0] > 8:
        raise ProtocolError("bad challenge pool")
    return [(body[1 + i * _PAIR:17 + i * _PAIR], body[17 + i * _PAIR:1 + (i + 1) * _PAIR])
            for i in range(body[0])]


def devices(generation: int, policy: bytes) -> bytes:
    """A DEVICES body: generation (4, counts up from 1 in each session), then the
    device policy (``connect.DevicePolicy.encode``: epoch, count, device ids)."""
    return _GEN.pack(generation) + policy


def parse_devices(body: bytes) -> tuple[int, bytes]:
    """``(generation, policy bytes)`` of a DEVICES body (the policy is parsed by
    ``connect.DevicePolicy.decode``)."""
    if len(body) < _GEN.size + 5:
        raise ProtocolError("bad DEVICES")
    return _GEN.unpack_from(body)[0], body[_GEN.size:]


@dataclass(frozen=True)
class Fragment:
    transfer: int
    kind: int
    index: int
    count: int
    total: int
    chunk: bytes


def fragment(transfer: int, kind: int, index: int, count: int, total: int,
             chunk: bytes) -> bytes:
    return _XFER.pack(transfer, kind, index, count, total) + chunk


def parse_fragment(body: bytes) -> Fragment:
    if len(body) < _XFER.size:
        raise ProtocolError("fragment too short")
    transfer, kind, index, count, total = _XFER.unpack_from(body)
    chunk = body[_XFER.size:]
    if kind not in (KIND_OFFER, KIND_ANSWER):
        raise ProtocolError("unknown transfer kind")
    if not (0 < count <= MAX_FRAGMENTS and index < count and 0 < total <= MAX_TRANSFER):
        raise ProtocolError("bad fragment numbering")
    if count != -(-total // FRAGMENT_SIZE):
        raise ProtocolError("fragment count does not match total length")
    want = FRAGMENT_SIZE if index < count - 1 else total - FRAGMENT_SIZE * (count - 1)
    if len(chunk) != want:
        raise ProtocolError("fragment has the wrong length")
    return Fragment(transfer, kind, index, count, total, chunk)


def split(transfer: int, kind: int, payload: bytes) -> list[bytes]:
    """All fragment bodies of one transfer."""
    if not 0 < len(payload) <= MAX_TRANSFER:
        raise ValueError(f"transfer payload must be 1..{MAX_TRANSFER} bytes")
    count = -(-len(payload) // FRAGMENT_SIZE)
    return [fragment(transfer, kind, i, count, len(payload),
                     payload[i * FRAGMENT_SIZE:(i + 1) * FRAGMENT_SIZE]) for i in range(count)]


def fragment_ack(transfer: int, index: int) -> bytes:
    return _XFER_ACK.pack(transfer, index)


def parse_fragment_ack(body: bytes) -> tuple[int, int]:
    if len(body) != _XFER_ACK.size:
        raise ProtocolError("bad fragment ack")
    return _XFER_ACK.unpack(body)


def refusal(reason: str) -> bytes:
    """A REFUSED body: the reason, a short kebab-case code (ASCII, at most 64 bytes)."""
    body = reason.encode("ascii", "replace")[:MAX_REFUSAL]
    return body or b"refused"


def parse_refusal(body: bytes) -> str:
    if not 0 < len(body) <= MAX_REFUSAL:
        raise ProtocolError("bad REFUSED")
    text = body.decode("ascii", "replace")
    return "".join(c if c.isalnum() or c in "-_.,()/ " else "?" for c in text)


def host_ok(host: str) -> bool:
    """A host name or an IP address: letters, digits, ".", "-" and ":" only."""
    return bool(host) and all(c.isascii() and (c.isalnum() or c in ".-:") for c in host)


def migrate(host: str, port: int, public_raw: bytes) -> bytes:
    h = host.encode("ascii")
    if not 0 < len(h) < 256 or not host_ok(host):
        raise ValueError("bad host")
    return bytes([len(h)]) + h + port.to_bytes(2, "big") + public_raw


def parse_migrate(body: bytes) -> tuple[str, int, bytes]:
    if not body or len(body) != 1 + body[0] + 2 + crypto.PUBLIC_KEY_SIZE:
        raise ProtocolError("bad MIGRATE")
    n = body[0]
    host = body[1:1 + n].decode("ascii", "replace")
    if not host_ok(host):
        raise ProtocolError("bad MIGRATE host")    # a name or an address, nothing else
    port = int.from_bytes(body[1 + n:3 + n], "big")
    key = body[3 + n:]
    crypto.public_key_from_raw(key)
    if not port:
        raise ProtocolError("bad MIGRATE port")
    return host, port, key


REPLAY_WINDOW = 64
_MASK64 = (1 << 64) - 1


def replay_check(top: int, bitmap: int, counter: int) -> tuple[bool, int, int]:
    """The sliding replay window: ``(accepted, top, bitmap)``.

    *top* is the highest counter accepted so far, bit *i* of *bitmap* says
    whether ``top - i`` was seen; ``bitmap == 0`` means nothing was seen yet.
    Each counter is accepted once; counters 64 or more behind *top* never."""
    if not bitmap:
        return True, counter, 1
    if counter > top:
        shift = counter - top
        return True, counter, ((bitmap << shift) | 1) & _MASK64 if shift < 64 else 1
    back = top - counter
    if back >= REPLAY_WINDOW or bitmap >> back & 1:
        return False, top, bitmap
    return True, top, bitmap | (1 << back)


class Reassembly:
    """Reassembles fragments of transfers from one peer, with caps.

    ``add(fragment, now)`` returns the payload once when the last missing
    fragment arrives, else None.  Duplicates of a completed transfer are
    recognised (so the caller can re-acknowledge them) and never delivered
    twice.  Incomplete transfers older than *timeout* are dropped.
    ``buffered`` is the number of chunk bytes held in incomplete transfers and
    ``cost(fragment)`` what adding *fragment* would add to it, so that the
    owner can keep a byte budget over many peers."""

    def __init__(self, max_transfers: int = 8, timeout: float = 30.0, remember: int = 64) -> None:
        self.max_transfers = max_transfers
        self.timeout = timeout
        self.buffered = 0
        # transfer id -> (started, kind, count, total, {index: chunk})
        self._open: dict[int, tuple[float, int, int, int, dict[int, bytes]]] = {}
        self._done: dict[int, None] = {}  # transfer id -> None (insertion ordered)
        self._remember = remember

    def cost(self, frag: Fragment) -> int:
        if frag.transfer in self._done:
            return 0
        entry = self._open.get(frag.transfer)
        if entry is not None and frag.index in entry[4]:
            return 0
        return len(frag.chunk)

    def add(self, frag: Fragment, now: float) -> bytes | None:
        if frag.transfer in self._done:
            return None
        self.expire(now)
        entry = self._open.get(frag.transfer)
        if entry is None:
            if len(self._open) >= self.max_transfers:
                raise ProtocolError("too many transfers in progress")
            entry = (now, frag.kind, frag.count, frag.total, {})
            self._open[frag.transfer] = entry
        _, kind, count, total, chunks = entry
        if (kind, count, total) != (frag.kind, frag.count, frag.total):
            raise ProtocolError("fragment does not match its transfer")
        old = chunks.get(frag.index)
        self.buffered += len(frag.chunk) - (0 if old is None else len(old))
        chunks[frag.index] = frag.chunk
        if len(chunks) < count:
            return None
        del self._open[frag.transfer]
        self.buffered -= sum(map(len, chunks.values()))
        self._done[frag.transfer] = None
        while len(self._done) > self._remember:
            del self._done[next(iter(self._done))]
        return b"".join(chunks[i] for i in range(count))

    def expire(self, now: float) -> None:
        """Drop incomplete transfers older than the timeout."""
        for tid in [t for t, e in self._open.items() if now - e[0] > self.timeout]:
            self.buffered -= sum(map(len, self._open.pop(tid)[4].values()))
