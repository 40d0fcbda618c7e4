"""BYE (a stopping server says goodbye), REFUSED (the coordinator says why it will
not register a server) and the registrant's failure reasons, over the lossy
wire between the real sans-I/O objects."""

import random

import pytest

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.config import ServerKeepalive
from homechannel.coordinator.registry import Registry
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.server import registrant as registrant_mod
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import AttemptFailed, Left
from homechannel.server.registrant import Registrant
from homechannel.testing.udp import LossyWire

ADDR = ("127.0.0.1", 40000)
K = bytes(range(32))
COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()


def make(plan=None, pinned=None, registry=None, down=()):
    rv = Rendezvous(COORDINATOR, registry)
    reg = Registrant(SERVER, pinned or COORDINATOR.public_raw, ChallengeSource(K),
                     ServerKeepalive(), rng=random.Random(7))
    w = LossyWire(rv, plan=plan)
    w.down.update(down)
    w.add(ADDR, reg)
    return w, rv, reg


def events(w, kind):
    return [e for _, e in w.events if isinstance(e, kind)]


def reasons(w, addr=ADDR):
    """The reasons of the failed attempts of the registrant at *addr*."""
    return [e.reason for a, e in w.events if a == addr and isinstance(e, AttemptFailed)]


def leave(w, reg):
    start = w.count
    w.send_from_server(ADDR, reg.leave(w.now))
    return start


def test_bye_forgets_the_server_at_once():
    w, rv, reg = make()
    w.run(1.0)
    assert rv.server_status(SERVER.id)[0]
    leave(w, reg)
    w.run(w.now + 0.1)
    assert not rv.server_status(SERVER.id)[0]
    assert rv.registry.count == 0 and rv.stats["bye"] == 1
    assert reg.state == "stopped" and events(w, Left) == [Left()]


def _bye_positions():
    w, rv, reg = make()
    w.run(1.0)
    start = leave(w, reg)
    w.run(w.now + 3.0)
    return list(range(start + 1, w.count + 1))


@pytest.mark.parametrize("n", _bye_positions())
@pytest.mark.parametrize("action", ["drop", "dup", "delay"])
def test_bye_survives_any_single_fault(n, action):
    """A lost BYE is resent; a lost BYE_ACK makes the resent BYE an UNKNOWN (signed),
    which the server takes as done.  Either way the coordinator forgets the server
    and the server stops within a second."""
    w, rv, reg = make(plan={n: action})
    w.run(1.0)
    leave(w, reg)
    w.run(w.now + 1.0)
    assert not rv.server_status(SERVER.id)[0]
    assert reg.state == "stopped" and events(w, Left) == [Left()]


def test_bye_before_registration_sends_nothing():
    w, rv, reg = make()
    out = reg.leave(0.0)
    assert out.datagrams == [] and out.deadline is None
    assert reg.state == "stopped"
    assert out.events == [Left()]


def test_a_forged_bye_ack_does_not_stop_the_server():
    """BYE_ACK is only believed sealed under the session key; garbage is dropped."""
    w, rv, reg = make()
    w.run(1.0)
    reg.leave(w.now)
    fake = udp.header(udp.DATA) + bytes(8) + bytes(100)
    assert reg.receive(fake, w.now).datagrams == []
    assert reg.state == "leaving"


def test_no_answer_is_reported_once_per_attempt_with_the_reason():
    w, rv, reg = make(down={"up"})   # a firewall drops everything to the coordinator
    w.run(20.0)
    failed = reasons(w)
    assert 3 <= len(failed) <= 6   # backoff 1, 2, 4, 8 (jittered) within 20 s
    assert all("no answer from the coordinator" in r and "firewall" in r for r in failed)
    assert reg.last_failure == failed[-1]
    w.down.clear()
    w.run(90.0)
    assert reg.state == "up" and reg.last_failure is None


def test_wrong_pinned_key_is_reported_as_a_signature_mismatch():
    w, rv, reg = make(pinned=crypto.IdentityKey.generate().public_raw)
    w.run(10.0)
    failed = reasons(w)
    assert failed and all(r == registrant_mod.SIGNATURE_MISMATCH for r in failed)
    assert rv.registry.count == 0


def test_a_full_registry_refuses_with_a_reason_and_the_server_retries():
    """The coordinator tells a server that proved its key why it is not registered
    (REFUSED, sealed with the handshake's keys), instead of leaving it to time out."""
    registry = Registry(max_servers=1)
    other = Registrant(crypto.IdentityKey.generate(), COORDINATOR.public_raw,
                       ChallengeSource(K), ServerKeepalive(), rng=random.Random(3))
    rv = Rendezvous(COORDINATOR, registry)
    w = LossyWire(rv)
    w.add(("127.0.0.1", 40001), other)
    w.run(1.0)
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K), ServerKeepalive(),
                     rng=random.Random(7))
    w.add(ADDR, reg)
    w.run(2.0)
    failed = reasons(w)
    assert failed and "refused" in failed[0] and "registry full" in failed[0]
    assert reg.state in ("refused", "hello") and rv.stats["refused"] >= 1
    # Room again: the server registers by itself after its backoff.
    w.send_from_server(("127.0.0.1", 40001), other.leave(w.now))
    w.run(w.now + 10.0)
    assert reg.state == "up" and rv.server_status(SERVER.id)[0]


def test_refused_counter_never_collides_with_session_counters():
    assert udp.REFUSAL_COUNTER_BIT == 1 << 63
    assert udp.parse_refusal(udp.refusal("registry full (1 servers)")) == \
        "registry full (1 servers)"
    with pytest.raises(Exception):
        udp.parse_refusal(b"")


def test_bye_gives_back_the_bytes_of_an_incomplete_answer():
    """A server that sends all but the last fragment of an answer and then says BYE: its
    bytes leave the reassembly budgets at once.  (BYE once dropped the buffers without
    giving their bytes back, so a few throwaway servers could use up the global budget
    and every later answer was dropped.  Without
    ``_forget_reassembly`` in ``Rendezvous._bye`` this fails.)"""
    import os

    from homechannel.coordinator.rendezvous import Rendezvous
    from homechannel.server.challenges import ChallengeSource
    from homechannel.server.registrant import Registrant
    from homechannel.testing.udp import LossyWire

    coordinator = crypto.IdentityKey.generate()
    rv = Rendezvous(coordinator, per_source_per_second=1e6, reassembly_bytes=150_000,
                    reassembly_bytes_per_source=100_000)
    wire_ = LossyWire(rv)
    key = crypto.IdentityKey.generate()
    addr = ("2001:db8:bad::1", 5000)
    server = Registrant(key, coordinator.public_raw, ChallengeSource(b"k" * 32))
    wire_.add(addr, server)
    wire_.run(3.0)
    rv.send_offer(key.id, b"offer", wire_.now, 1)
    for datagram in server.send_answer(os.urandom(60 * 1024), wire_.now).datagrams[:-1]:
        rv.receive(datagram, addr, wire_.now)
    assert rv.reassembled > 50_000
    for datagram in server.leave(wire_.now).datagrams:
        rv.receive(datagram, addr, wire_.now)
    assert rv.registry.lookup_key(key.id) < 0          # it left ...
    assert rv.reassembled == 0                          # ... and its bytes are free
    assert len(rv._reassembly_by_source) == 0
