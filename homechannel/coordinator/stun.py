"""STUN Binding (RFC 8489) on the coordinator's UDP port, sans I/O.

Browsers, the native client and home servers ask the coordinator "which
address do you see me from?" while they gather ICE candidates; the answer
(XOR-MAPPED-ADDRESS) becomes their server-reflexive candidate, which is what
lets two peers behind ordinary (cone) NATs reach each other.

* :func:`looks_like_stun` is the cheap test the UDP dispatch uses: the first
  two bits are zero and bytes 4-8 are the magic cookie.  HomeChannel's own
  datagrams start with ``"HC"`` (0x48), so the two never collide.
* :func:`parse_request` checks a Binding request strictly (header, length,
  attribute layout, FINGERPRINT if present) and raises only
  :class:`~homechannel.errors.ProtocolError`.
* :func:`binding_response` builds the answer: XOR-MAPPED-ADDRESS, plus
  FINGERPRINT when the request had one.  At most :data:`MAX_RESPONSE` (52)
  bytes whatever the request held; nothing of the request but its
  transaction id is echoed.
* :class:`StunResponder` keeps no state per request: only a limit per source
  network (an IPv4 address, an IPv6 /64, and its /56 and /48 with 4 and 16 times
  the allowance) in fixed memory that no flood can reset, and a budget in all
  (``udplimits.UdpLimit``).  Every drop is counted in the shared ``stats``
  (``dropped.stun-<reason>``), every answer in ``stun-answers``.
"""

import binascii
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable

from homechannel.coordinator.udplimits import UdpLimit
from homechannel.errors import ProtocolError
from homechannel.protocol.udp import Address, Datagrams

MAGIC_COOKIE = 0x2112A442
_COOKIE = struct.pack(">I", MAGIC_COOKIE)
HEADER_SIZE = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
# Requests larger than this are not STUN Binding requests anybody needs answered.
MAX_REQUEST = 1200
# Header (20) + XOR-MAPPED-ADDRESS for IPv6 (4 + 20) + FINGERPRINT (8).
MAX_RESPONSE = 52

_HEADER = struct.Struct(">HHI12s")
_ATTR = struct.Struct(">HH")


def looks_like_stun(data: bytes) -> bool:
    """The RFC 8489 demultiplexing test: first two bits zero, magic cookie."""
    return len(data) >= HEADER_SIZE and data[0] < 0x40 and data[4:8] == _COOKIE


def _fingerprint(message: bytes) -> int:
    return (binascii.crc32(message) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


class Request:
    __slots__ = ("transaction_id", "fingerprint")

    def __init__(self, transaction_id: bytes, fingerprint: bool) -> None:
        self.transaction_id = transaction_id
        self.fingerprint = fingerprint


def parse_request(data: bytes) -> Request:
    """A well-formed Binding request, or ProtocolError (never anything else)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("not bytes")
    data = bytes(data)
    if len(data) < HEADER_SIZE or len(data) > MAX_REQUEST:
        raise ProtocolError("wrong size")
    kind, length, cookie, txid = _HEADER.unpack_from(data)
    if kind & 0xC000 or cookie != MAGIC_COOKIE:
        raise ProtocolError("not STUN")
    if length != len(data) - HEADER_SIZE or length % 4:
        raise ProtocolError("bad length")
    if kind != BINDING_REQUEST:
        raise ProtocolError("not a Binding request")
    offset = HEADER_SIZE
    fingerprint = False
    while offset < len(data):
        if fingerprint:
            raise ProtocolError("attribute after FINGERPRINT")
        if offset + 4 > len(data):
            raise ProtocolError("truncated attribute")
        atype, alen = _ATTR.unpack_from(data, offset)
        padded = offset + 4 + (alen + 3) // 4 * 4
        if padded > len(data):
            raise ProtocolError("truncated attribute")
        if atype == FINGERPRINT:
            if alen != 4:
                raise ProtocolError("bad FINGERPRINT")
            value = struct.unpack_from(">I", data, offset + 4)[0]
            if value != _fingerprint(data[:offset]):
                raise ProtocolError("FINGERPRINT mismatch")
            fingerprint = True
        offset = padded
    return Request(txid, fingerprint)


_XPORT = MAGIC_COOKIE >> 16
_V4_MAPPED = bytes(10) + b"\xff\xff"


def _xor_address(host: str, port: int, txid: bytes) -> bytes:
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        if packed[:12] == _V4_MAPPED:        # a dual-stack socket's IPv4 source
            packed = packed[12:]
    xport = port ^ _XPORT
    if len(packed) == 4:
        xaddr = int.from_bytes(packed, "big") ^ MAGIC_COOKIE
        return struct.pack(">HHBBHI", XOR_MAPPED_ADDRESS, 8, 0, 1, xport, xaddr)
    mask = int.from_bytes(_COOKIE + txid, "big")
    xaddr6 = (int.from_bytes(packed, "big") ^ mask).to_bytes(16, "big")
    return struct.pack(">HHBBH", XOR_MAPPED_ADDRESS, 20, 0, 2, xport) + xaddr6


def binding_response(transaction_id: bytes, addr: Address, fingerprint: bool) -> bytes:
    """A Binding success response telling *addr* ``(host, port)`` its address."""
    body = _xor_address(addr[0], addr[1], transaction_id)
    if not fingerprint:
        return _HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, transaction_id) + body
    message = _HEADER.pack(BINDING_SUCCESS, len(body) + 8, MAGIC_COOKIE, transaction_id) + body
    return message + struct.pack(">HHI", FINGERPRINT, 4, _fingerprint(message))


class StunResponder:
    """Answers Binding requests; rate-limited per source network and in all.

    ``receive(data, addr, now)`` returns ``[(response, addr)]`` or ``[]``;
    it never raises on hostile input.  *stats* is a ``Counter`` (shared with
    the rendezvous so that ``/metrics`` and logs show one table).
    """

    def __init__(self, stats: Counter[str], per_source_per_second: float = 20.0,
                 per_second: float = 20_000.0,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.stats = stats
        per_source = max(1.0, per_source_per_second)
        self.limit = UdpLimit(per_source, 2 * per_source, max(1.0, per_second),
                              random_bytes=random_bytes)

    def _drop(self, reason: str) -> Datagrams:
        self.stats["dropped"] += 1
        self.stats["dropped.stun-" + reason] += 1
        return []

    def receive(self, data: bytes, addr: Address, now: float) -> Datagrams:
        try:
            request = parse_request(data)
        except ProtocolError:
            return self._drop("malformed")
        # The source's own budget first: a refused request must not spend the global
        # one, or one flooding network would starve everybody else.
        try:
            refused = self.limit.admit(addr, now)
        except (OSError, ValueError, TypeError):
            return self._drop("bad-address")
        if refused is not None:
            return self._drop(refused)
        try:
            response = binding_response(request.transaction_id, addr, request.fingerprint)
        except (OSError, ValueError, TypeError, IndexError, struct.error):
            return self._drop("bad-address")
        self.stats["stun-answers"] += 1
        return [(response, addr)]
