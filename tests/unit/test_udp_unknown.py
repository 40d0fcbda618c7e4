"""Make-before-break on UNKNOWN: a signed UNKNOWN starts a new registration but the
home server keeps its session (and answers offers on it) until the new one is up; a
PONG on the session makes the UNKNOWN moot; UNKNOWN starts a registration at most
once every UNKNOWN_HOLDOFF seconds; a real coordinator restart or address change still
heals within one keepalive.  The attacker (``testing.udp.ReplayAttacker``) replays each
of the server's datagrams from another address and hands it the coordinator's genuine
UNKNOWN.

How the tests that name it were shown to fail: with ``server/registrant.py`` as it was
(an UNKNOWN dropped the session and registered again at once), run against this file."""

import random

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.config import ServerKeepalive
from homechannel.coordinator.events import AnswerReceived, OfferAcknowledged
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import OfferReceived, Registered, Reregistering
from homechannel.server.registrant import UNKNOWN_HOLDOFF, Registrant
from homechannel.testing.udp import LossyWire, ReplayAttacker

COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()
K = b"k" * 32
ADDR = ("198.51.100.1", 4000)
ATTACKER = ("203.0.113.66", 4444)
OFFER = b"offer " * 400                 # 2,400 bytes: 3 fragments
ANSWER = b"answer " * 200


def make(keepalive=ServerKeepalive()):
    rv = Rendezvous(COORDINATOR)
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K), keepalive,
                     rng=random.Random(3))
    w = LossyWire(rv)
    w.add(ADDR, reg)
    w.run(2.0)
    assert reg.state == "up"
    return w, rv, reg


def of(w, kind):
    return [e for _, e in w.events if isinstance(e, kind)]


def hellos(out):
    return [d for d in out.datagrams if udp.datagram_type(d) == udp.HELLO]


def keys_at_coordinator(rv):
    return rv.registry.keys(rv.registry.lookup_key(SERVER.id))


def in_sync(rv, reg, addr=ADDR):
    slot = rv.registry.lookup_key(SERVER.id)
    assert slot >= 0 and rv.registry.addr(slot) == addr
    assert rv.registry.keys(slot) == (reg._tx_key, reg._rx_key)
    assert reg.state == "up"


def test_replayed_pings_never_make_the_server_register_again():
    """For ten minutes every datagram the server sends is replayed from another
    address and the coordinator's signed UNKNOWN for it handed to the server (about 40
    of them).  The server never registers again: the coordinator keeps the keys of the
    first registration, and the probes' PONGs made each UNKNOWN moot.  Shown to fail on
    the old registrant: it registered again at every ping (about 40 registrations)."""
    w, rv, reg = make()
    keys = keys_at_coordinator(rv)
    attacker = ReplayAttacker(w, ADDR, ATTACKER)
    w.run(600.0)
    assert attacker.unknowns >= 30
    assert len(of(w, Registered)) == 1
    assert keys_at_coordinator(rv) == keys
    in_sync(rv, reg)
    # Each UNKNOWN the holdoff let through started a registration that a PONG ended.
    started = reg.stats["reregistrations"]
    assert 0 < started <= 600 / UNKNOWN_HOLDOFF + 1
    assert reg.stats["reregistrations-moot"] == started
    assert len(of(w, Reregistering)) == started


def unknown_for_next_ping(w, rv, reg):
    """Run to the server's next ping, deliver it, and return the UNKNOWN the
    coordinator signs for a copy of it sent from another address."""
    when = reg.next_deadline()
    w.run(when - 0.001)
    ping = reg.poll(when).datagrams[0]
    w.now = when
    w.inject(ping, ADDR, "up")
    (unknown, _), = rv.receive(ping, ATTACKER, w.now).datagrams
    return unknown


def test_offers_are_answered_on_the_session_until_the_new_one_is_up():
    """A genuine UNKNOWN arrives and neither the probe's PONG nor the new handshake's
    COOKIE gets through: meanwhile an offer comes on the session and is answered on it.
    Then the new registration completes and replaces the session.  Shown to fail on the
    old registrant: the UNKNOWN dropped the session, and the offer was dropped
    (``unexpected-data``) until the new registration was up."""
    w, rv, reg = make()
    unknown = unknown_for_next_ping(w, rv, reg)
    w.run(w.now + 0.1)                                   # the ping's PONG comes back
    out = reg.receive(unknown, w.now)          # its datagrams (a probe, a HELLO) are lost
    assert len(hellos(out)) == 1
    # An offer on the session: received and acknowledged, and answered on it.
    w.send_from_coordinator(rv.send_offer(SERVER.id, OFFER, w.now, 7))
    w.run(w.now + 0.1)
    assert of(w, OfferReceived) == [OfferReceived(OFFER)]
    assert OfferAcknowledged(SERVER.id, 7) in w.coordinator_events
    w.send_from_server(ADDR, reg.send_answer(ANSWER, w.now))
    w.run(w.now + 0.1)
    assert AnswerReceived(SERVER.id, ANSWER) in w.coordinator_events
    assert reg.reregistering and Reregistering in [type(e) for e in out.events]
    # The HELLO is sent again (its backoff) and the new registration replaces the session.
    w.run(w.now + 3.0)
    assert len(of(w, Registered)) == 2 and not reg.reregistering
    in_sync(rv, reg)


def test_a_pong_since_the_unknown_makes_it_moot():
    """The probe's PONG comes back before the new handshake ends: the handshake is
    abandoned (its COOKIE is dropped) and the coordinator keeps the session."""
    w, rv, reg = make()
    keys = keys_at_coordinator(rv)
    unknown = unknown_for_next_ping(w, rv, reg)
    w.run(w.now + 0.1)
    w.inject(unknown, ADDR, "down")
    w.run(w.now + 5.0)
    assert reg.stats["reregistrations"] == 1 and reg.stats["reregistrations-moot"] == 1
    assert not reg.reregistering and len(of(w, Registered)) == 1
    assert keys_at_coordinator(rv) == keys
    assert reg.stats["dropped.unexpected-cookie"] == 1


def test_an_unknown_starts_a_registration_at_most_once_per_holdoff():
    """UNKNOWNs for two pings in a row: the second, inside the holdoff, starts nothing
    (no HELLO), and the same UNKNOWN delivered twice is acted on once.  Past the holdoff
    an UNKNOWN starts one again.  Shown to fail on the old registrant: the first
    UNKNOWN dropped the session and registered again (there was no probe to make it
    moot), as every later one did."""
    w, rv, reg = make()
    first = unknown_for_next_ping(w, rv, reg)
    w.run(w.now + 0.1)
    started = w.now
    out = reg.receive(first, w.now)
    assert len(hellos(out)) == 1
    w.send_from_server(ADDR, out)
    assert reg.receive(first, w.now).datagrams == []
    w.run(w.now + 2.0)
    assert len(of(w, Registered)) == 1 and not reg.reregistering     # moot
    second = unknown_for_next_ping(w, rv, reg)
    w.run(w.now + 0.1)
    assert w.now - started < UNKNOWN_HOLDOFF
    assert hellos(reg.receive(second, w.now)) == []
    while w.now - started < UNKNOWN_HOLDOFF:
        third = unknown_for_next_ping(w, rv, reg)
        w.run(w.now + 0.1)
    assert len(hellos(reg.receive(third, w.now))) == 1


def test_a_coordinator_restart_heals_within_one_keepalive():
    """The coordinator loses every session: the next ping meets an UNKNOWN; the probe
    gets nothing (it is smaller than an UNKNOWN, so the coordinator spends no second
    signature on it: padded like the other datagrams, it cost a second UNKNOWN, and
    this failed); the new registration completes within one keepalive."""
    w, rv, reg = make()
    restarted = w.rv = Rendezvous(COORDINATOR)
    lost_at = w.now
    w.run(lost_at + ServerKeepalive().interval * 1.2 + 1.0)
    in_sync(restarted, reg)
    assert restarted.stats["unknown-replies"] == 1
    assert restarted.stats["dropped.unknown-short"] == 1      # the probe
    assert len(of(w, Registered)) == 2


def test_a_new_address_heals_within_one_keepalive():
    """The home router's public address changes: the coordinator gets the next ping
    from an address it does not know, the UNKNOWN starts a registration, and the
    server is registered from its new address within one keepalive."""
    w, rv, reg = make()
    new = ("198.51.100.99", 61000)
    w.registrants = {new: w.registrants.pop(ADDR)}
    changed_at = w.now
    w.run(changed_at + ServerKeepalive().interval * 1.2 + 1.0)
    in_sync(rv, reg, new)
    assert len(of(w, Registered)) == 2 and reg.stats["reregistrations"] == 1
