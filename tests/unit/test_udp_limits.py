"""The UDP port's rate limits (coordinator/udplimits.py) attacked through the real
rendezvous: what a spoofed source, a /48 of them, or a flood of fresh ones can do to
somebody else's HELLO, STUN answer, signed UNKNOWN and registration.

How the tests that name it were shown to fail: with ``coordinator/rendezvous.py`` and
``coordinator/stun.py`` as they were before the sketch (per-source token buckets in
LRU tables of 10,000 keys, keyed by the /64 only, and HELLO with only its global
bucket), run against this file."""

import os
import struct
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.coordinator import stun
from homechannel.coordinator.registry import pack_addr, source_tiers
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.coordinator.udplimits import SourceRates, UdpLimit, tier_keys
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import AttemptFailed
from homechannel.server.registrant import Registrant
from homechannel.testing.udp import LossyWire

COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()
K = b"k" * 32
OWNER = ("2001:db8:900d::1", 4000)
BIG_DATA = udp.header(udp.DATA) + bytes(udp.MIN_SERVER_DATAGRAM - 4)


def stun_request():
    head = struct.pack(">HHI12s", stun.BINDING_REQUEST, 0, stun.MAGIC_COOKIE, os.urandom(12))
    return head


# What each kind of request is, and what its budget in all is set to on the coordinator.
ASK = {
    "hello": lambda: udp.hello(os.urandom(16)),
    "stun": stun_request,
    "unknown": lambda: BIG_DATA,
}


def coordinator(in_all):
    """A rendezvous whose HELLO, STUN and UNKNOWN budgets in all are *in_all* a second."""
    rv = Rendezvous(COORDINATOR, hellos_per_second=in_all, unknown_replies_per_second=in_all,
                    stun=None)
    rv.stun = stun.StunResponder(rv.stats, per_second=in_all)
    return rv


def answered(rv, kind, addr, now, times=1):
    return sum(bool(rv.receive(ASK[kind](), addr, now).datagrams) for _ in range(times))


def slash48(i):
    """An address in the i-th /64 of one /48."""
    return (f"2001:db8:bad:{i:x}::1", 5000 + i % 1000)


# -- a flood from one source network ----------------------------------------------------


@pytest.mark.parametrize("kind", ["hello", "stun", "unknown"])
@pytest.mark.parametrize("flood", ["one IPv4 address", "300 /64s of one /48"])
def test_one_flooding_network_does_not_stop_anybody_else(kind, flood):
    """3,000 requests in one second, twice the budget in all: from one IPv4 address, or
    from 300 /64s of one /48 (each within its /64's own limit).  Another source asking
    in the same second is still answered.  Shown to fail on the old code: HELLO from one
    address (no per-source HELLO limit), and every kind from the /48 (no /48 tier:
    300 fresh /64s spent the budget in all)."""
    rv = coordinator(in_all=1500.0)
    if flood == "one IPv4 address":
        sources = [("203.0.113.66", 5000)] * 300
    else:
        sources = [slash48(i) for i in range(300)]
    got = sum(answered(rv, kind, addr, 1.0, times=10) for addr in sources)
    assert got < 1500
    assert answered(rv, kind, OWNER, 1.0) == 1
    assert answered(rv, kind, ("198.51.100.7", 4000), 1.0) == 1


def test_a_48_flooding_hellos_does_not_stop_a_registration():
    """A /48 sends HELLOs from 300 /64s at twice the budget in all for five seconds
    (after a first burst of 3,000); a home server elsewhere registers on its first
    attempt, at once.  Shown to fail on the old code: its first HELLO met an empty
    global bucket (no /48 tier), and that attempt failed."""
    rv = Rendezvous(COORDINATOR, hellos_per_second=1500.0)
    wire = LossyWire(rv)
    owner = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    flood = [slash48(i) for i in range(300)]
    t = 1.0
    while t < 6.0:
        for addr in flood * (10 if t == 1.0 else 1):
            rv.receive(udp.hello(os.urandom(16)), addr, t)
        if t == 1.0:
            wire.add(OWNER, owner)
        t = round(t + 0.1, 1)
        wire.run(t)
    assert owner.state == "up"
    assert not [e for _, e in wire.events if isinstance(e, AttemptFailed)]
    assert rv.stats["dropped.hello-source-rate"] > 0


# -- spoofed sources cannot reset a count ----------------------------------------------


@pytest.mark.parametrize("kind", ["hello", "stun", "unknown"])
def test_a_flood_of_spoofed_sources_cannot_reset_a_victims_count(kind):
    """Requests spoofed from a victim's address spend its allowance; then 12,000 fresh
    spoofed sources ask once each; the victim's address is still refused in the same
    second (a reflection towards it stays within its limit).  Shown to fail on the old
    code: the fresh sources evicted the victim's bucket from the 10,000-key table (HELLO:
    no per-source limit at all), and the victim's address was answered again."""
    rv = coordinator(in_all=1e7)
    victim = ("192.0.2.55", 3478)
    allowed = answered(rv, kind, victim, 1.0, times=100)
    assert 0 < allowed < 100
    for i in range(12_000):
        rv.receive(ASK[kind](), (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1000), 1.0)
    assert answered(rv, kind, victim, 1.0, times=10) == 0


def test_fresh_spoofed_sources_at_the_budget_in_all_do_not_fill_the_sketch():
    """Ten seconds of fresh spoofed sources at twice the budget in all (100,000, each
    asking once): the cells they raise fall back as fast, so another source still gets
    its whole burst.  Shown to fail with the sketch 128 times narrower (``width=128``:
    the admitted flood then raises the cells faster than they fall back, and the source
    is refused as though it had spent its own)."""
    limit = UdpLimit(20.0, 40.0, in_all_per_second=5_000.0)
    for step in range(1000):
        t = 1.0 + step / 100
        for j in range(100):
            i = step * 100 + j
            limit.admit((f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1), t)
    assert sum(limit.admit(("192.0.2.1", 1), 11.0) is None for _ in range(50)) == 40


# -- memory ------------------------------------------------------------------------------


def test_memory_stays_fixed_under_a_flood_of_fresh_sources():
    """HELLO, STUN and UNKNOWN from 30,000 fresh sources (IPv4 and IPv6): the rendezvous
    allocates nothing that stays.  Shown to fail on the old code: its LRU tables grew
    by several MB (an entry per source, up to 10,000 per table)."""
    rv = coordinator(in_all=1e7)

    def flood(first, n):
        for i in range(first, first + n):
            v4 = (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1000)
            v6 = (f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1", 1000)
            for kind in ASK:
                rv.receive(ASK[kind](), v4 if i % 2 else v6, 1.0 + i * 1e-4)

    flood(0, 2_000)                        # warm up (caches, counters)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        flood(2_000, 10_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept"


# -- the sketch never lets a source past its limit ------------------------------------

ADDRESSES = ["192.0.2.1", "192.0.2.2", "::ffff:192.0.2.2", "2001:db8:1:1::1",
             "2001:db8:1:1::2", "2001:db8:1:2::1", "2001:db8:1:200::1", "2001:db8:2::1"]


class ExactGcra:
    """The limit the sketch approximates: one exact GCRA time per key (a burst's
    tolerance rounded up by half the /48's interval, as the sketch's is)."""

    def __init__(self, per_second, burst):
        self.per_second, self.burst = per_second, burst
        self.tat = {}

    def admits(self, key, shares, t):
        new = max(self.tat.get(key, 0.0), t) + 1 / (self.per_second * shares)
        if new - t > (self.burst + 1 / 32) / self.per_second + 1e-12:
            return False
        self.tat[key] = new
        return True


@given(st.lists(st.tuples(st.sampled_from(ADDRESSES), st.floats(0, 0.3)), max_size=300),
       st.sampled_from([2, 4, 1024]))
@settings(max_examples=150, deadline=None)
def test_no_source_network_ever_gets_more_than_its_limit(hits, width):
    """However the sources collide in the sketch (2 cells a row: every one collides),
    what it admits, replayed through an exact limit per source network and tier, is
    never over that limit."""
    rates = SourceRates(5.0, 3.0, width=width)
    exact = ExactGcra(5.0, 3.0)
    t = 1.0
    for host, dt in hits:
        t += dt
        plan = rates.plan(tier_keys(host), t)
        if plan is not None:
            rates.commit(plan)
            for key, shares in source_tiers(pack_addr((host, 1))):
                assert exact.admits(key, shares, t), (host, key, t)


def test_a_48_is_one_source_with_sixteen_shares_and_a_56_with_four():
    limit = UdpLimit(10.0, 10.0)
    in_56 = [(f"2001:db8:7:{i:x}::1", 1) for i in range(8)]          # 8 /64s of one /56
    assert sum(limit.admit(a, 1.0) is None for a in in_56 for _ in range(20)) == 40
    in_48 = [(f"2001:db8:8:{i << 8:x}::1", 1) for i in range(40)]     # 40 /56s of one /48
    assert sum(limit.admit(a, 1.0) is None for a in in_48 for _ in range(20)) == 160
    # IPv4 has no wider tier: each address is a source (carrier-grade NAT).
    v4 = [(f"198.51.100.{i}", 1) for i in range(40)]
    assert sum(limit.admit(a, 1.0) is None for a in v4 for _ in range(20)) == 400


def test_a_clock_set_back_neither_refuses_for_long_nor_grants_a_new_burst():
    limit = UdpLimit(10.0, 10.0, in_all_per_second=100.0)
    addr = ("192.0.2.1", 1)
    assert sum(limit.admit(addr, 1000.0) is None for _ in range(20)) == 10
    # Set back an hour: no fresh burst...
    assert limit.admit(addr, -2600.0) == "source-rate"
    # ...and the rate comes back a second later, not an hour later.
    assert sum(limit.admit(addr, -2599.0) is None for _ in range(20)) == 10


def test_an_unparsable_source_is_an_error_the_caller_counts():
    rv = Rendezvous(COORDINATOR)
    assert rv.receive(stun_request(), ("not an address", 1), 1.0).datagrams == []
    assert rv.stats["dropped.stun-bad-address"] == 1
    # A scoped IPv6 source is its address without the zone, as before.
    assert rv.receive(stun_request(), ("fe80::1%lo", 1), 1.0).datagrams
