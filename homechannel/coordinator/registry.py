"""The coordinator's registry of home servers: memory-compact, O(1) both ways.

Every registered server is one fixed-size record in a single ``bytearray``
slab (no Python object per server).  Two
:class:`~homechannel.coordinator.slotindex.SlotIndex` tables (open addressing
over an ``array('i')`` of slot numbers) index the slab by 16-byte key id and
by source address.  At 100,000 servers this is
about 250 bytes per server in all (see ``bench/registry_memory.py``), where a
dict-of-objects design needs well over 1 KB.

Record layout (``RECORD`` bytes, offsets below):

====== ==== ==========================================================
offset size field
====== ==== ==========================================================
0      1    flags (bit 0: in use)
1      16   key id (SHA-256(raw public key)[:16])
17     18   address: 16-byte IPv6 (IPv4-mapped for IPv4) + port
35     4    last seen, seconds since the registry's epoch (uint32)
39     32   key server->coordinator
71     32   key coordinator->server
103    8    next counter coordinator->server
111    8    highest counter seen server->coordinator
119    8    replay bitmap (bit i: counter highest-i seen)
127    1    challenges in the pool (0..POOL)
128    96   POOL x (challenge 16 + expectedAnswer 32)
224    4    pool generation: the last CHALLENGES applied in this session
====== ==== ==========================================================
"""

import socket
import struct
from array import array

from zope.interface import implementer

from homechannel.protocol import udp
from homechannel.coordinator.interfaces import IRegistry
from homechannel.coordinator.ratelimit import WIDER_SHARES
from homechannel.coordinator.slotindex import SlotIndex
from homechannel.crypto import (
    AEAD_KEY_SIZE, CHALLENGE_SIZE, EXPECTED_ANSWER_SIZE, KEY_ID_SIZE, open_sealed,
)
from homechannel.errors import CapacityError
from homechannel.protocol.udp import parse_data, replay_check, seal_data

POOL = udp.POOL
ADDR_SIZE = 18                                  # 16-byte IPv6 (IPv4-mapped) + port
_PAIR = CHALLENGE_SIZE + EXPECTED_ANSWER_SIZE

# Field offsets in a record (see the table above).
_F_FLAGS = 0
_F_KID = _F_FLAGS + 1
_F_ADDR = _F_KID + KEY_ID_SIZE
_F_SEEN = _F_ADDR + ADDR_SIZE
_F_KRX = _F_SEEN + 4
_F_KTX = _F_KRX + AEAD_KEY_SIZE
_F_TXCTR = _F_KTX + AEAD_KEY_SIZE
_F_RXMAX = _F_TXCTR + 8
_F_RXMAP = _F_RXMAX + 8
_F_NPOOL = _F_RXMAP + 8
_F_POOL = _F_NPOOL + 1
_F_POOLGEN = _F_POOL + POOL * _PAIR
RECORD = _F_POOLGEN + 4
_KID_END = _F_KID + KEY_ID_SIZE
_ADDR_END = _F_ADDR + ADDR_SIZE

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_PORT = struct.Struct(">H")
_V4_PREFIX = b"\0" * 10 + b"\xff\xff"


def pack_addr(addr) -> bytes:
    """(host, port) to 18 bytes; IPv4 becomes IPv4-mapped IPv6."""
    host, port = addr[0], addr[1]
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host) + _PORT.pack(port)
    return _V4_PREFIX + socket.inet_pton(socket.AF_INET, host) + _PORT.pack(port)


def unpack_addr(raw: bytes):
    ip, port = raw[:16], int.from_bytes(raw[16:18], "big")
    if ip[:12] == _V4_PREFIX:
        return (socket.inet_ntoa(ip[12:]), port)
    return (socket.inet_ntop(socket.AF_INET6, ip), port)


def source_of(packed) -> bytes:
    """The source network of a packed address, as ``ratelimit.source_key``
    groups addresses: an IPv4 address (16 bytes, IPv4-mapped) or an IPv6
    /64 (its first 8 bytes)."""
    if packed[:12] == _V4_PREFIX:
        return bytes(packed[:16])
    return bytes(packed[:8])


# The wider IPv6 networks a /64 also counts in, as prefix lengths in bytes, with how
# many shares each may hold (ratelimit.WIDER_SHARES: a /56 4, a /48 16).
_WIDER = tuple((bits // 8, shares) for bits, shares in WIDER_SHARES.items())


def source_tiers(packed) -> tuple:
    """``((key, shares), ...)``: the source network of *packed* with one share, and for
    IPv6 its /56 and /48 with theirs (keys of different lengths never collide)."""
    source = source_of(packed)
    if len(source) == 16:
        return ((source, 1),)
    return ((source, 1),) + tuple((source[:n], shares) for n, shares in _WIDER)


class SourceCounts:
    """How many servers each source network holds, in a few bytes per server.

    An exact dict of counts would cost about 100 bytes per distinct source,
    as much as a third of a server's record.  This is a count-min sketch
    instead: two rows of uint32 counters, at least as many per row as there
    are servers; a source counts in one counter of each row, chosen by a
    keyed hash (Python's per-process ``hash`` of bytes), and its count is the
    smaller of the two.  That is never less than what it really holds, so no
    source ever gets more than its share.  It can be more, when other sources
    share both counters: a source is wrongly refused only if both of its
    counters are shared with sources that together hold a full share, about
    ``(k / size) ** 2`` for ``k`` full shares (e.g. one in a million with 1,000
    full shares among 10**6 counters).  The counters are rebuilt from the
    registry's records when the registry outgrows them."""

    def __init__(self, size=1024):
        self._size = size
        self._rows = array("I", bytes(8 * size))   # row 0, then row 1

    @property
    def size(self):
        return self._size

    def _cells(self, source):
        h = hash(source)
        mask = self._size - 1
        return h & mask, self._size + ((h >> 32) & mask)

    def count(self, source) -> int:
        a, b = self._cells(source)
        return min(self._rows[a], self._rows[b])

    def add(self, source, n=1) -> None:
        a, b = self._cells(source)
        self._rows[a] += n
        self._rows[b] += n

    def remove(self, source) -> None:
        a, b = self._cells(source)
        self._rows[a] -= 1
        self._rows[b] -= 1

    def rebuild(self, size, sources) -> None:
        """Start over with *size* counters per row from *sources* (one item
        per server)."""
        self._size = size
        self._rows = array("I", bytes(8 * size))
        for source in sources:
            self.add(source)


@implementer(IRegistry)
class Registry:
    """Registered servers.  ``now`` values are floats (seconds, reactor time)."""

    def __init__(self, max_servers=1_000_000, epoch=0.0, max_per_source=1024):
        self.max_servers = max_servers
        self.max_per_source = max_per_source
        self._epoch = epoch
        self._slab = bytearray()
        self._free = array("i")
        # Python's hash of bytes is keyed per process, so nobody can pick key
        # ids (by grinding keys) or addresses that collide in the index.
        self._by_key = SlotIndex(self._kid_at, hash, matches=self._kid_is)
        self._by_addr = SlotIndex(self._addr_at, hash, matches=self._addr_is)
        self._sources = SourceCounts()
        self.count = 0
        self._cursor = 0

    # -- slab access --

    def _kid_at(self, slot):
        o = slot * RECORD
        return bytes(self._slab[o + _F_KID:o + _KID_END])

    def _addr_at(self, slot):
        o = slot * RECORD
        return bytes(self._slab[o + _F_ADDR:o + _ADDR_END])

    def _kid_is(self, slot, kid):
        o = slot * RECORD
        return self._slab[o + _F_KID:o + _KID_END] == kid

    def _addr_is(self, slot, packed):
        o = slot * RECORD
        return self._slab[o + _F_ADDR:o + _ADDR_END] == packed

    def _seconds(self, now):
        return max(0, int(now - self._epoch)) & 0xFFFFFFFF

    # -- lookups --

    def lookup_key(self, kid: bytes) -> int:
        return self._by_key.find(kid)

    def lookup_addr(self, addr) -> int:
        try:
            return self._by_addr.find(pack_addr(addr))
        except (OSError, ValueError, TypeError, OverflowError):
            return -1

    def addr(self, slot):
        return unpack_addr(self._addr_at(slot))

    def key_id(self, slot) -> bytes:
        return self._kid_at(slot)

    def keys(self, slot):
        """``(server_to_coordinator, coordinator_to_server)`` AEAD keys."""
        o = slot * RECORD
        s = self._slab
        return (bytes(s[o + _F_KRX:o + _F_KRX + AEAD_KEY_SIZE]),
                bytes(s[o + _F_KTX:o + _F_KTX + AEAD_KEY_SIZE]))

    def register(self, kid, addr, rx_key, tx_key, now) -> int:
        """Insert or replace the registration of *kid* (a new session).

        A server that re-registers keeps its slot; an address that another
        server held is taken over (NAT mappings move).  Each source network
        (``source_of``) holds at most ``max_per_source`` servers: over that,
        a new server (or one that moved in from another network) is refused
        with ``CapacityError`` (``extra["share"] == "source"``)."""
        packed = pack_addr(addr)
        source = source_of(packed)
        slot = self._by_key.find(kid)
        other = self._by_addr.find(packed)
        if slot < 0 or source_of(self._addr_at(slot)) != source:
            # One more server for this source (and its wider networks); a takeover
            # frees one of its own.
            freed = 1 if other >= 0 and other != slot else 0
            for key, shares in source_tiers(packed):
                if self._sources.count(key) - freed >= shares * self.max_per_source:
                    raise CapacityError(f"this source network holds "
                                        f"{shares * self.max_per_source} servers already",
                                        share="source")
        if other >= 0 and other != slot:
            self.remove(other)
        if slot < 0:
            if self.count >= self.max_servers:
                raise CapacityError(f"registry full ({self.max_servers} servers)")
            if self._free:
                slot = self._free.pop()
            else:
                slot = len(self._slab) // RECORD
                self._slab.extend(bytes(RECORD))
            o = slot * RECORD
            self._slab[o:o + RECORD] = bytes(RECORD)
            self._slab[o + _F_KID:o + _KID_END] = kid
            self._slab[o + _F_ADDR:o + _ADDR_END] = packed
            self._slab[o] = 1
            self._by_key.insert(kid, slot)
            self._by_addr.insert(packed, slot)
            self.count += 1
            self._count_source(packed)
        else:
            o = slot * RECORD
            if self._slab[o + _F_ADDR:o + _ADDR_END] != packed:
                old = self._addr_at(slot)
                self._by_addr.remove(old)
                self._uncount_source(old)
                self._slab[o + _F_ADDR:o + _ADDR_END] = packed
                self._by_addr.insert(packed, slot)
                self._count_source(packed)
            # New session: fresh counters, window and pool generation.
            self._slab[o + _F_TXCTR:o + _F_RXMAP + 8] = bytes(24)
            self._slab[o + _F_POOLGEN:o + _F_POOLGEN + 4] = bytes(4)
        o = slot * RECORD
        self._slab[o + _F_KRX:o + _F_KRX + AEAD_KEY_SIZE] = rx_key
        self._slab[o + _F_KTX:o + _F_KTX + AEAD_KEY_SIZE] = tx_key
        _U32.pack_into(self._slab, o + _F_SEEN, self._seconds(now))
        return slot

    def remove(self, slot) -> None:
        o = slot * RECORD
        if not self._slab[o]:
            return
        self._by_key.remove(self._kid_at(slot))
        addr = self._addr_at(slot)
        self._by_addr.remove(addr)
        self._uncount_source(addr)
        self._slab[o:o + RECORD] = bytes(RECORD)
        self._free.append(slot)
        self.count -= 1

    def _count_source(self, packed):
        if self.count > self._sources.size:
            # Outgrown: twice the counters, rebuilt from the records.  (An IPv6 server
            # counts under three keys, its /64, /56 and /48; a counter then sums a few
            # more servers, which can only over-count, never let a source past its share.)
            s = self._slab
            used = (slot for slot in range(len(s) // RECORD) if s[slot * RECORD])
            self._sources.rebuild(2 * self._sources.size,
                                  (key for slot in used
                                   for key, _ in source_tiers(self._addr_at(slot))))
        else:
            for key, _ in source_tiers(packed):
                self._sources.add(key)

    def _uncount_source(self, packed):
        for key, _ in source_tiers(packed):
            self._sources.remove(key)

    def source_count(self, addr) -> int:
        """How many servers the source network of *addr* holds (an upper
        bound, see :class:`SourceCounts`)."""
        return self._sources.count(source_of(pack_addr(addr)))

    def open(self, slot, data, now):
        """Open a DATA datagram from the server in *slot*.

        Returns ``(counter, plaintext)``, or None for a replay.  Raises
        ProtocolError or AuthenticationError for a bad datagram; the replay
        window and last-seen time change only for an authentic one."""
        counter, aad, ct = parse_data(data)
        s = self._slab
        o = slot * RECORD
        top, bitmap = _U64X2.unpack_from(s, o + _F_RXMAX)
        ok, top, bitmap = replay_check(top, bitmap, counter)
        if not ok:
            return None
        plain = open_sealed(bytes(s[o + _F_KRX:o + _F_KRX + AEAD_KEY_SIZE]), counter, ct, aad)
        _U64X2.pack_into(s, o + _F_RXMAX, top, bitmap)
        _U32.pack_into(s, o + _F_SEEN, self._seconds(now))
        return counter, plain

    def seal(self, slot, message) -> bytes:
        """A DATA datagram carrying *message* to the server in *slot*."""
        s = self._slab
        o = slot * RECORD
        ctr = _U64.unpack_from(s, o + _F_TXCTR)[0]
        _U64.pack_into(s, o + _F_TXCTR, ctr + 1)
        return seal_data(bytes(s[o + _F_KTX:o + _F_KTX + AEAD_KEY_SIZE]), ctr, message)

    def accept_counter(self, slot, ctr) -> bool:
        """Sliding replay window: True once per counter, False for replays and too-old."""
        o = slot * RECORD
        s = self._slab
        top = _U64.unpack_from(s, o + _F_RXMAX)[0]
        bitmap = _U64.unpack_from(s, o + _F_RXMAP)[0]
        ok, top, bitmap = replay_check(top, bitmap, ctr)
        if ok:
            _U64.pack_into(s, o + _F_RXMAX, top)
            _U64.pack_into(s, o + _F_RXMAP, bitmap)
        return ok

    # -- the challenge pool --

    def set_pool(self, slot, pairs, replace=True) -> None:
        """Store up to POOL ``(challenge, expectedAnswer)`` pairs.

        ``replace=False`` keeps unconsumed pairs and fills free places."""
        current = [] if replace else self.pool(slot)
        pairs = (current + [p for p in pairs if p not in current])[:POOL]
        o = slot * RECORD
        s = self._slab
        s[o + _F_NPOOL] = len(pairs)
        blob = b"".join(c + e for c, e in pairs)
        s[o + _F_POOL:o + _F_POOL + POOL * _PAIR] = blob.ljust(POOL * _PAIR, b"\0")

    def replace_pool(self, slot, generation, pairs) -> bool:
        """Apply a CHALLENGES refresh unless a newer (or the same) one was
        applied already: a retransmitted or late refresh never brings back a
        consumed challenge."""
        o = slot * RECORD + _F_POOLGEN
        if generation <= _U32.unpack_from(self._slab, o)[0]:
            return False
        _U32.pack_into(self._slab, o, generation)
        self.set_pool(slot, pairs)
        return True

    def pool(self, slot):
        o = slot * RECORD
        s = self._slab
        n = s[o + _F_NPOOL]
        out = []
        for i in range(n):
            p = o + _F_POOL + i * _PAIR
            out.append((bytes(s[p:p + CHALLENGE_SIZE]), bytes(s[p + CHALLENGE_SIZE:p + _PAIR])))
        return out

    def peek_challenge(self, slot):
        o = slot * RECORD
        if not self._slab[o + _F_NPOOL]:
            return None
        p = o + _F_POOL
        return bytes(self._slab[p:p + CHALLENGE_SIZE])

    def take_challenge(self, slot, challenge):
        """Remove *challenge* from the pool; return its expectedAnswer or None."""
        pairs = self.pool(slot)
        for i, (c, e) in enumerate(pairs):
            if c == challenge:
                del pairs[i]
                self.set_pool(slot, pairs)
                return e
        return None

    # -- expiry --

    def expire(self, now, max_age, budget=None, forgotten=None) -> int:
        """Remove servers silent for more than *max_age* seconds.

        Scans at most *budget* slots from a rotating cursor, so one call
        costs O(budget) however large the registry is; call it often.
        ``forgotten(kid)``, if given, is called for each server removed."""
        limit = self._seconds(now - max_age) if now - max_age > self._epoch else -1
        s = self._slab
        total = len(s) // RECORD
        if not total:
            return 0
        n = total if budget is None else min(budget, total)
        removed = 0
        slot = self._cursor % total
        for _ in range(n):
            o = slot * RECORD
            if s[o] and _U32.unpack_from(s, o + _F_SEEN)[0] < limit:
                if forgotten is not None:
                    forgotten(self.key_id(slot))
                self.remove(slot)
                removed += 1
            slot = slot + 1 if slot + 1 < total else 0
        self._cursor = slot
        return removed

    @property
    def slot_count(self):
        """Slots in the slab, used or free (what a full expiry pass scans)."""
        return len(self._slab) // RECORD

    def slots(self):
        s = self._slab
        return [i for i in range(len(s) // RECORD) if s[i * RECORD]]
