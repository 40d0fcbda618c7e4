"""homechannel/udp.py: the UDP codec round-trips, rejects garbage with ProtocolError only,
and both protocol objects survive hostile datagrams without raising or amplifying."""

import os

import pytest

from hypothesis import given, settings, strategies as st

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.errors import ProtocolError
from homechannel.server.challenges import ChallengeSource
from homechannel.server.registrant import Registrant

COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()


# -- codec ------------------------------------------------------------------------


def test_inner_round_trip():
    m = udp.inner(udp.PING, 7, b"body")
    assert udp.parse_inner(m + b"\0" * 10) == (udp.PING, 7, b"body")


@given(st.binary(min_size=1, max_size=udp.MAX_TRANSFER), st.integers(0, 2**32 - 1))
@settings(max_examples=50)
def test_fragments_round_trip(payload, tid):
    r = udp.Reassembly()
    frags = [udp.parse_fragment(b) for b in udp.split(tid, udp.KIND_OFFER, payload)]
    out = [r.add(f, 0.0) for f in reversed(frags)]
    assert out[-1] == payload and all(o is None for o in out[:-1])
    assert r.add(frags[0], 0.0) is None  # a late duplicate is never delivered twice


@given(st.binary(max_size=1300))
@settings(max_examples=300)
def test_codec_garbage_raises_only_protocol_error(data):
    for parse in (udp.datagram_type, udp.parse_hello, udp.parse_cookie, udp.parse_init,
                  udp.parse_resp, udp.parse_finish, udp.parse_data, udp.parse_unknown,
                  udp.parse_inner, udp.parse_pairs, udp.parse_fragment,
                  udp.parse_fragment_ack, udp.parse_migrate):
        try:
            parse(data)
        except ProtocolError:
            pass


def test_migrate_round_trip():
    body = udp.migrate("coord.example", 7777, COORDINATOR.public_raw)
    assert udp.parse_migrate(body) == ("coord.example", 7777, COORDINATOR.public_raw)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_replay_window_accepts_each_counter_once(counters):
    top = bitmap = 0
    seen = set()
    for c in counters:
        ok, top, bitmap = udp.replay_check(top, bitmap, c)
        fresh = c not in seen and (not seen or c > max(seen) - udp.REPLAY_WINDOW)
        assert ok == fresh, (c, sorted(seen))
        if ok:
            seen.add(c)


# -- hostile datagrams against both protocol objects ----------------------------------


HEADERED = st.builds(lambda t, rest: udp.header(t) + rest,
                     st.integers(0, 255), st.binary(max_size=300))


@given(st.one_of(st.binary(max_size=1300), HEADERED))
@settings(max_examples=400)
def test_coordinator_never_raises_and_never_amplifies(data):
    rv = Rendezvous(COORDINATOR)
    out = rv.receive(data, ("192.0.2.1", 1234), 100.0)
    assert not out.events, "garbage is never an event"
    for reply, _ in out.datagrams:
        assert len(reply) <= len(data), "never a reply larger than the request"
    assert rv.registry.count == 0
    assert len(rv._pending) == 0, "nothing stored before the cookie round trip"


@given(st.one_of(st.binary(max_size=1300), HEADERED))
@settings(max_examples=300)
def test_registrant_never_raises(data):
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(b"k" * 32))
    reg.start(0.0)
    assert reg.receive(data, 1.0).datagrams == []


def test_hello_flood_is_bounded_and_stores_nothing():
    """No entry for an unproven source: HELLO counts in the per-source sketch, whose
    memory was fixed when it was made."""
    rv = Rendezvous(COORDINATOR, hellos_per_second=100.0)
    memory = rv._hello_limit.nbytes
    replies = sum(len(rv.receive(udp.hello(os.urandom(16)), ("192.0.2.%d" % (i % 250), i),
                                 5.0).datagrams)
                  for i in range(1000))
    assert replies <= 100
    assert rv.stats["dropped.hello-rate"] >= 900
    assert not rv._pending and rv._hello_limit.nbytes == memory, \
        "no state for unproven sources"


def test_unknown_replies_are_rate_limited_and_need_big_requests():
    rv = Rendezvous(COORDINATOR, unknown_replies_per_second=10)
    small = udp.header(udp.DATA) + bytes(40)
    assert rv.receive(small, ("192.0.2.1", 1), 1.0).datagrams == []
    big = udp.header(udp.DATA) + bytes(udp.MIN_SERVER_DATAGRAM - 4)
    n = sum(len(rv.receive(big, ("192.0.2.1", 1), 1.0).datagrams) for _ in range(100))
    assert n <= 10


def test_one_source_cannot_spend_everybody_s_unknown_replies():
    """Each UNKNOWN reply costs a signature, so they have a global budget; a source's own
    budget is checked first, so one flooding host does not delay every other server's
    re-registration (without the per-source bucket the second source gets nothing)."""
    rv = Rendezvous(COORDINATOR, unknown_replies_per_second=100)
    big = udp.header(udp.DATA) + bytes(udp.MIN_SERVER_DATAGRAM - 4)
    flood = sum(len(rv.receive(big, ("192.0.2.66", 1), 1.0).datagrams) for _ in range(1000))
    assert flood <= 50
    assert rv.receive(big, ("198.51.100.7", 2), 1.0).datagrams != []


def test_a_migrate_host_is_a_name_or_an_address_only():
    """A host with a control character (a forged log line waiting to happen), a space or
    anything else but letters, digits, ".", "-" and ":" is malformed: never followed,
    never logged.  Shown to fail without the check: parse_migrate returned the LF."""
    key = COORDINATOR.public_raw
    for host in ("node1.example.org", "192.0.2.1", "2001:db8::1"):
        assert udp.parse_migrate(udp.migrate(host, 7777, key)) == (host, 7777, key)
    for host in ("evil\nregistered", "a b", "x/y", "caf\u00e9", "%0a"):
        raw = host.encode("utf-8")
        body = bytes([len(raw)]) + raw + (7777).to_bytes(2, "big") + key
        with pytest.raises(ProtocolError):
            udp.parse_migrate(body)
