"""Rate limits for the coordinator's UDP port, per source network and in all, in
fixed memory that no flood can reset, sans I/O.

The UDP port answers some datagrams before their source has proved its address
(HELLO's cookie, a STUN Binding answer, a signed UNKNOWN), so their sources may be
spoofed, by the million.  A table with an entry per source would grow with them; a
capped table that forgets its least recently used entry lets a spoofed flood evict a
victim's entry, which resets its count.  So the per-source counts here are a
count-min sketch of GCRA limits (the "generic cell rate algorithm": a token bucket
kept as one time per key, its *theoretical arrival time*):

* two rows of ``width`` floats, allocated once (16,384 a row, 256 KiB, unless the
  budget in all needs more, below); nothing is ever added, evicted or forgotten, so
  memory stays fixed and nothing a flood does can lower a count: it can only raise it;
* a source network counts in one cell of each row, chosen by a keyed hash (Python's
  per-process hash of the key's bytes, then a multiply-shift by a random odd
  multiplier from ``random_bytes``), so nobody can aim at a victim's cells without
  sending from the victim's network;
* a source's time is the earlier of its two cells, and an admitted datagram raises
  each of them to at most the source's new time (the sketch's *conservative update*).
  Every cell is therefore at least the time of every source that maps to it: a
  source is never allowed more than its limit (it can be refused early, when both of
  its cells are shared with sources that spent theirs);
* only an admitted datagram raises cells: two per tier, each by at most one interval
  (``1/rate``; a quarter and a sixteenth of it for the /56 and the /48), so at most
  2.6 intervals in all; and every one of the ``2 x width`` cells falls back by a second
  each second.  So sources, however many and however spoofed, can fill the cells (and
  refuse an innocent source whose two cells they share) only by being admitted at
  more than ``2 x width x rate / 2.6`` a second.  :class:`UdpLimit` sizes ``width``
  so that this is at least three times its budget in all, which no flood passes.

The sources (:func:`tier_keys`) are those of every table's shares
(``registry.source_tiers``): an IPv4 address (IPv4-mapped IPv6 counts as IPv4), an
IPv6 /64, and for IPv6 also its /56 and /48 with 4 and 16 times the allowance
(``ratelimit.WIDER_SHARES``): whoever holds a /48 is one source with a few shares,
not 65,536 sources.  IPv4 has no wider tier (a carrier-grade NAT's customers share
one address).

:class:`UdpLimit` puts a per-source :class:`SourceRates` before an optional budget in
all: a datagram refused for its source spends nothing of the budget in all (so one
flooding network cannot starve everybody else), and one refused by the budget in all
spends nothing of its source's.  Times are the ``now`` the caller passes (the
reactor's clock); a clock that steps back is treated as standing still.
"""

import os
import socket
from array import array
from collections.abc import Callable

from homechannel.coordinator.ratelimit import WIDER_SHARES
from homechannel.protocol.udp import Address

_MASK = (1 << 64) - 1
_V4_MAPPED = bytes(10) + b"\xff\xff"
_SHARES = (1, *WIDER_SHARES.values())      # a /64 (or an IPv4 address), a /56, a /48
_MOST_SHARES = max(_SHARES)
WIDTH = 1 << 14                   # cells per row at least: 2 x 16,384 x 8 bytes = 256 KiB
MAX_WIDTH = 1 << 20               # and at most (16 MiB)
# What one admitted IPv6 datagram raises the cells by, in intervals: two cells per
# tier, by 1, 1/4 and 1/16 of an interval.
_RAISE = 2 * sum(1 / shares for shares in _SHARES)


def width_for(per_source_per_second: float, in_all_per_second: float | None) -> int:
    """Cells per row so that what a flood admitted at *in_all_per_second* raises the
    cells by is at most a third of what they fall back by (:data:`WIDTH` at least,
    :data:`MAX_WIDTH` at most)."""
    if in_all_per_second is None:
        return WIDTH
    need = 3 * _RAISE * in_all_per_second / (2 * per_source_per_second)
    width = WIDTH
    while width < need and width < MAX_WIDTH:
        width *= 2
    return width


def tier_keys(host: str) -> tuple[bytes, ...]:
    """The source networks a datagram from the IP address *host* counts in, narrowest
    first, as bytes: an IPv4 address (also when IPv4-mapped), or an IPv6 /64, /56 and
    /48 (``registry.source_tiers``'s networks and shares; keys of different lengths
    never collide).  Raises OSError for anything that is not an IP address; a scoped
    IPv6 address counts without its zone."""
    if ":" not in host:
        return (socket.inet_pton(socket.AF_INET, host),)
    if "%" in host:
        host = host.split("%", 1)[0]
    ip = socket.inet_pton(socket.AF_INET6, host)
    if ip[:12] == _V4_MAPPED:
        return (ip[12:],)
    return (ip[:8], ip[:7], ip[:6])      # the /64, and WIDER_SHARES' /56 and /48


class SourceRates:
    """At most *per_second* a second from each source network, in bursts of at most
    *burst*, with the wider IPv6 tiers; in a fixed count-min sketch (see the module's
    text).  ``plan`` and ``commit`` are the two halves of one admission, so that a
    caller may refuse for another reason in between without counting anything."""

    __slots__ = ("per_second", "burst", "width", "_bits", "_mask", "_cells", "_mul",
                 "_intervals", "_tolerance")

    def __init__(self, per_second: float, burst: float, width: int = WIDTH,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        if width < 2 or width & (width - 1) or width > MAX_WIDTH:
            raise ValueError(f"the width must be a power of two up to {MAX_WIDTH}")
        self.per_second = float(per_second)
        self.burst = float(burst)
        self.width = width
        self._bits = width.bit_length() - 1
        self._mask = width - 1
        self._cells = array("d", bytes(16 * width))   # row 0, then row 1; 0.0: long ago
        # Multiply-shift over Python's (per-process keyed) hash: the cells stay
        # unpredictable even where that hash's seed is known (PYTHONHASHSEED).
        self._mul = int.from_bytes(random_bytes(8), "big") | 1
        # One emission interval per share, narrowest tier first; the tolerance (a
        # full burst's worth of time) is the same in every tier, since a tier's burst
        # grows with its rate.  Half the smallest tier's interval more, so that
        # rounding never costs the last datagram of a burst (a burst of 10 is 10).
        self._intervals = tuple(1.0 / (self.per_second * shares) for shares in _SHARES)
        self._tolerance = (self.burst + 1 / (2 * _MOST_SHARES)) / self.per_second

    @property
    def nbytes(self) -> int:
        """The memory the counts take (fixed at construction)."""
        return self._cells.itemsize * len(self._cells)

    def plan(self, keys: tuple[bytes, ...], t: float) -> list[tuple[int, int, float]] | None:
        """What admitting a datagram from the source networks *keys* (:func:`tier_keys`)
        at time *t* would do: for each tier, its cell in each row and its new time
        (``[(cell, cell, time)]``); or None if a network has spent its allowance."""
        cells = self._cells
        bits, mask, mul, top = self._bits, self._mask, self._mul, 64 - 2 * self._bits
        out = []
        for key, interval in zip(keys, self._intervals):
            g = ((hash(key) * mul) & _MASK) >> top     # the product's top 2 x bits bits
            a = g >> bits
            b = self.width + (g & mask)
            seen = cells[a] if cells[a] < cells[b] else cells[b]
            new = (seen if seen > t else t) + interval
            if new - t > self._tolerance:
                return None
            out.append((a, b, new))
        return out

    def commit(self, plan: list[tuple[int, int, float]]) -> None:
        """Count the admission *plan* describes (conservative update: raise, never lower)."""
        cells = self._cells
        for a, b, new in plan:
            if cells[a] < new:
                cells[a] = new
            if cells[b] < new:
                cells[b] = new


class UdpLimit:
    """A per-source limit (:class:`SourceRates`: *per_source_per_second*, bursts of
    *burst*; *width* by default :func:`width_for` the two rates) checked first, then, if
    *in_all_per_second* is given, a budget in all (bursts of one second's worth).
    ``now`` that steps back is taken as standing still (the step is absorbed into an
    offset), so a clock set back an hour reads neither as an hour-long refusal nor
    as a fresh burst for everybody."""

    __slots__ = ("sources", "_skew", "_last", "_in_all_interval", "_in_all_tolerance",
                 "_in_all_tat")

    def __init__(self, per_source_per_second: float, burst: float,
                 in_all_per_second: float | None = None, width: int | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if width is None:
            width = width_for(per_source_per_second, in_all_per_second)
        self.sources = SourceRates(per_source_per_second, burst, width, random_bytes)
        self._skew = 0.0
        self._last = float("-inf")
        self._in_all_interval = 0.0
        self._in_all_tolerance = 0.0
        self._in_all_tat: float | None = None
        if in_all_per_second is not None:
            if in_all_per_second <= 0:
                raise ValueError("the rate in all must be positive")
            self._in_all_interval = 1.0 / in_all_per_second
            self._in_all_tolerance = (max(1.0, in_all_per_second) + 0.5) * self._in_all_interval
            self._in_all_tat = 0.0

    @property
    def nbytes(self) -> int:
        return self.sources.nbytes

    def admit(self, addr: Address, now: float) -> str | None:
        """Count one datagram from *addr*: None if it is admitted, else why not
        (``"source-rate"``: its source network's limit; ``"rate"``: the budget in all).
        A refused datagram is not counted.  Raises OSError for an address that does
        not parse (the caller's "bad-address" drop)."""
        t = now + self._skew
        if t < self._last:
            self._skew += self._last - t
            t = self._last
        self._last = t
        plan = self.sources.plan(tier_keys(addr[0]), t)
        if plan is None:
            return "source-rate"
        if self._in_all_tat is not None:
            new = (self._in_all_tat if self._in_all_tat > t else t) + self._in_all_interval
            if new - t > self._in_all_tolerance:
                return "rate"
            self._in_all_tat = new
        self.sources.commit(plan)
        return None
