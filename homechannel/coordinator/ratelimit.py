"""Rate limits and failed-answer lockouts.

* :class:`RateLimiter`: token buckets, one per key, at most ``limit`` hits per
  ``period`` seconds with bursts up to ``limit``.  Synchronous and sans-I/O
  (``hit(key, now)``): the UDP cores (``rendezvous``, ``stun``) spend one per
  datagram.
* :class:`MemoryRateLimiter`: the same buckets behind the connect flow's
  seam, :class:`~homechannel.coordinator.interfaces.IRateLimiter` (``async
  def``, so that ``cluster.redislimits`` can replace it for a cluster).
* :class:`MemoryLockout` (:class:`~homechannel.coordinator.interfaces.ILockout`):
  counts failed answers per *source* (or device) and locks it out with a
  doubling backoff.  It is keyed by the source only, never by the target
  server, so an attacker's failures can never lock the owner out.

All take an injected clock (``IReactorTime``) and are capped: when a table
is full the least recently used entry is forgotten (which at worst gives an
attacker who controls more than ``max_keys`` addresses a fresh budget; it
never denies service to anybody else).  :func:`source_key` and
:func:`lockout_key` say what a source is (an IPv6 /64 and /56).
"""

import functools
import ipaddress
from collections import OrderedDict

from zope.interface import implementer

from homechannel.coordinator.interfaces import ILockout, IRateLimiter

# Per-source tables key an IPv6 source by its /64 (what one subscriber line or
# one cloud VM usually gets) and lockouts by its /56; an IPv4 source by its
# address.  An attacker who owns a /64 is one source, not 2**64.
SOURCE_PREFIX_V6 = 64
LOCKOUT_PREFIX_V6 = 56


@functools.lru_cache(maxsize=65536)
def source_key(address: str, v6_prefix: int = SOURCE_PREFIX_V6) -> str:
    """The key a per-source table uses for the IP *address* (a string).

    IPv4 (and IPv4-mapped IPv6): the address itself.  IPv6: the network
    of *v6_prefix* bits, e.g. ``"2001:db8:1:2::/64"``.  Anything that does
    not parse (e.g. "unknown") is returned unchanged, so it is one key.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except (ValueError, AttributeError):
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{v6_prefix}", strict=False))


# A holder of a wider IPv6 prefix (a /56 is a common residential delegation, a /48 a
# business one or a free tunnel broker's) is not 256 or 65,536 sources: per-source tables
# also cap each /56 at WIDER_SHARES[56] shares and each /48 at WIDER_SHARES[48] shares.
WIDER_SHARES = {56: 4, 48: 16}


@functools.lru_cache(maxsize=65536)
def wider_keys(key) -> tuple:
    """``((network, shares), ...)``: the wider networks a per-source *key* (a
    ``source_key`` of an IPv6 address, "…/64") counts in, with how many shares each may
    hold.  Empty for IPv4 keys and anything else (server keys, "unknown")."""
    if not isinstance(key, str) or not key.endswith("/64"):
        return ()
    try:
        network = ipaddress.ip_network(key)
    except ValueError:
        return ()
    return tuple((str(network.supernet(new_prefix=bits)), shares)
                 for bits, shares in WIDER_SHARES.items())


def _v4_if_mapped(network):
    """An IPv6 network inside ::ffff:0:0/96 as the IPv4 network it stands for."""
    if network.version == 6 and network.prefixlen >= 96 and \
            network.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/"
                                    f"{network.prefixlen - 96}", strict=False)
    return network


def canonical_address(text):
    """*text* (str or bytes) as one IP address in its one spelling (IPv6 compressed and
    lower case, an IPv4-mapped IPv6 address as IPv4), or None if it is anything else.

    A zone (``fe80::1%eth0``) is refused, not stripped: it names an interface of some
    other host, and its text is whatever that host or a forger wrote.  So are a port,
    brackets, a prefix, spaces and every other character: what this returns is safe
    to log, to key a table by, and to send to a home server."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(text, str) or "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For is believed: addresses or networks
    (``web.trusted_proxies``, checked by ``config``), matched by value, so any way of
    writing an address (``::1``, ``0:0:0:0:0:0:0:1``, an IPv4-mapped one) matches."""

    def __init__(self, entries=()):
        self._networks = tuple(_v4_if_mapped(ipaddress.ip_network(e, strict=False))
                               for e in entries)

    def __bool__(self):
        return bool(self._networks)

    def __contains__(self, address) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks if network.version == ip.version)

    def client_address(self, peer, forwarded=()):
        """The address a request from *peer* (the TCP peer's address) comes from, given
        its X-Forwarded-For header lines *forwarded* (bytes or str): the peer, or, if
        the peer is one of these proxies, the right-most address in the header that is
        not; the peer again if that hop is not exactly one address
        (:func:`canonical_address`): a forged or broken header, of which nothing left
        of the break is believed.  Always :func:`canonical_address` spelling, except
        for a peer that is not an IP address (kept as it is)."""
        peer = canonical_address(peer.split("%", 1)[0]) or peer  # the kernel's own zone
        if not forwarded or peer not in self:
            return peer
        hops = [hop for line in forwarded
                for hop in (line.decode("latin-1") if isinstance(line, bytes) else line)
                .split(",")]
        for hop in reversed(hops):
            hop = canonical_address(hop.strip(" \t"))   # HTTP whitespace only
            if hop is None:
                return peer
            if hop not in self:
                return hop
        return peer


def lockout_key(address: str) -> str:
    """The key failed-password lockouts use: IPv6 /56, IPv4 /32."""
    return source_key(address, LOCKOUT_PREFIX_V6)


class RateLimiter:
    """Token buckets, one per key, in a capped LRU table (sans-I/O: *clock* may be
    None when every call gives *now*)."""

    def __init__(self, clock, limit, period=60.0, max_keys=100_000, burst=None):
        """At most *limit* hits per *period* seconds sustained, and *burst* (default
        *limit*) at once: so at most ``burst + limit`` in any window of *period*."""
        if limit <= 0 or period <= 0:
            raise ValueError("limit and period must be positive")
        self._clock = clock
        self._capacity = float(limit if burst is None else max(1, burst))
        self._rate = float(limit) / float(period)
        self._max_keys = max_keys
        # key -> [tokens, last update time]
        self._buckets = OrderedDict()

    def __len__(self):
        return len(self._buckets)

    def hit(self, key, now=None):
        """*now* may be given by sans-I/O callers (then *clock* may be None)."""
        if now is None:
            now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self._capacity, now]
        else:
            self._buckets.move_to_end(key)
            tokens, last = bucket
            bucket[0] = min(self._capacity, tokens + max(0.0, now - last) * self._rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return None
        return (1.0 - bucket[0]) / self._rate

    def peek(self, key, now=None):
        """What :meth:`hit` would return for *key*, without counting anything
        (and without making an entry for a key it has not seen)."""
        if now is None:
            now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        tokens = min(self._capacity, bucket[0] + max(0.0, now - bucket[1]) * self._rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self._rate


@implementer(IRateLimiter)
class MemoryRateLimiter:
    """:class:`RateLimiter`'s buckets as the connect flow's ``IRateLimiter``."""

    def __init__(self, clock, limit, period=60.0, max_keys=100_000, burst=None):
        self.buckets = RateLimiter(clock, limit, period, max_keys=max_keys, burst=burst)

    def __len__(self):
        return len(self.buckets)

    async def hit(self, key):
        return self.buckets.hit(key)

    async def peek(self, key):
        return self.buckets.peek(key)


@implementer(ILockout)
class MemoryLockout:
    """Failed-answer lockout per source with doubling backoff.

    ``threshold`` failures in a row lock the source out for ``base`` seconds.
    Once a source has been locked out, each further failure locks it out
    again for twice as long as the previous time (up to ``maximum``).  A
    source that behaves (no failure) for ``forget_after`` seconds after its
    last lockout ended starts from scratch; so does one that succeeds.
    """

    def __init__(self, clock, threshold=5, base=60.0, maximum=3600.0,
                 forget_after=None, max_keys=100_000):
        self._clock = clock
        self._threshold = max(1, int(threshold))
        self._base = float(base)
        self._max = float(maximum)
        self._forget_after = float(maximum if forget_after is None else forget_after)
        self._max_keys = max_keys
        # key -> [failures since last lockout, lockouts so far, locked until, last failure]
        self._entries = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def _entry(self, key, now):
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= max(entry[2], entry[3]) + self._forget_after:
            del self._entries[key]
            return None
        return entry

    async def check(self, key):
        now = self._clock.seconds()
        entry = self._entry(key, now)
        if entry is None or now >= entry[2]:
            return None
        return entry[2] - now

    async def failure(self, key, weight=1.0):
        now = self._clock.seconds()
        entry = self._entry(key, now)
        if entry is None:
            if len(self._entries) >= self._max_keys:
                self._entries.popitem(last=False)
            entry = self._entries[key] = [0.0, 0, 0.0, now]
        else:
            self._entries.move_to_end(key)
        entry[0] += weight
        entry[3] = now
        if entry[0] < (self._threshold if entry[1] == 0 else 1.0):
            return None
        length = min(self._max, self._base * (2 ** min(entry[1], 32)))
        entry[0] = 0
        entry[1] += 1
        entry[2] = now + length
        return length

    async def success(self, key):
        self._entries.pop(key, None)
