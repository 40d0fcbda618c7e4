"""The UDP protocol between the real sans-I/O objects, over a lossy udp.

Every case ends registered with keys in sync, and every relayed payload is
delivered exactly once, whatever single datagram is dropped, duplicated or
delayed past its successor."""

import dataclasses
import random

import pytest

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.config import ServerKeepalive
from homechannel.coordinator.events import (
    AnswerReceived, OfferAcknowledged, OfferFailed, PoolUpdated, ServerForgotten,
)
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import Lost, OfferReceived, Registered
from homechannel.server.registrant import Registrant
from homechannel.testing.udp import LossyWire

ADDR = ("127.0.0.1", 40000)
K = bytes(range(32))
COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()
OFFER = bytes(range(256)) * 10          # 2,560 bytes: 3 fragments
ANSWER = b"answer-sdp " * 150           # 1,650 bytes: 2 fragments


def make(plan=None, keepalive=ServerKeepalive()):
    rv = Rendezvous(COORDINATOR)
    challenges = ChallengeSource(K)
    # A fixed jitter sequence: the same datagram positions on every run, so a
    # failing position reproduces.
    reg = Registrant(SERVER, COORDINATOR.public_raw, challenges, keepalive,
                     rng=random.Random(7))
    w = LossyWire(rv, plan=plan)
    w.add(ADDR, reg)
    return w, rv, reg, challenges


def in_sync(rv, reg):
    slot = rv.registry.lookup_key(SERVER.id)
    assert slot >= 0
    assert rv.registry.lookup_addr(ADDR) == slot
    rx, tx = rv.registry.keys(slot)
    assert (rx, tx) == (reg._tx_key, reg._rx_key)
    assert reg.state == "up"


def registered_events(w):
    return [e for _, e in w.events if isinstance(e, Registered)]


def offers(w):
    """What the server received: one ``OfferReceived`` per complete OFFER."""
    return [e for _, e in w.events if isinstance(e, OfferReceived)]


def coordinator_events(w, *kinds):
    return [e for e in w.coordinator_events if isinstance(e, kinds)]


def test_clean_registration():
    w, rv, reg, _ = make()
    w.run(1.0)
    in_sync(rv, reg)
    # HELLO, COOKIE, INIT, RESP, FINISH, REGISTERED: 6 datagrams, nothing more.
    assert [t for _, _, t in w.log] == [1, 2, 3, 4, 5, 6]
    assert len(registered_events(w)) == 1
    assert rv.registry.count == 1


def test_amplification_and_sizes():
    assert udp.HELLO_SIZE >= len(udp.cookie(b"n" * 16, b"c" * 20))
    assert udp.INIT_SIZE >= udp.RESP_SIZE
    assert udp.MIN_SERVER_DATAGRAM >= udp.UNKNOWN_SIZE


@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("action", ["drop", "dup", "delay"])
def test_handshake_survives_any_single_fault(n, action):
    w, rv, reg, _ = make(plan={n: action})
    w.run(30.0)
    in_sync(rv, reg)
    assert rv.registry.count == 1


def scenario(plan=None):
    """Register, then exercise every message type once; return the outcome: the
    offer's outcome events (``results``) and the ANSWERs the coordinator got."""
    w, rv, reg, challenges = make(plan=plan)
    w.run(5.0)
    t0 = w.now
    # Coordinator -> server: an OFFER transfer, a REFILL after a challenge is consumed.
    w.send_from_coordinator(rv.send_offer(SERVER.id, OFFER, w.now, 1))
    challenge = rv.server_status(SERVER.id)[1]
    expected, out = rv.take_challenge(SERVER.id, challenge, w.now)
    assert expected is not None
    w.send_from_coordinator(out)
    w.run(t0 + 20.0)
    # Server -> coordinator: an ANSWER transfer, a challenge refresh, pings.
    w.send_from_server(ADDR, reg.send_answer(ANSWER, w.now))
    w.send_from_server(ADDR, reg.refresh_challenges(w.now))
    w.run(t0 + 120.0)
    results = coordinator_events(w, OfferAcknowledged, OfferFailed)
    answers = coordinator_events(w, AnswerReceived)
    return w, rv, reg, challenges, results, answers


def _scenario_length():
    w, *_ = scenario()
    return w.count


SCENARIO_LENGTH = _scenario_length()


def test_scenario_clean():
    w, rv, reg, challenges, results, answers = scenario()
    in_sync(rv, reg)
    assert results == [OfferAcknowledged(SERVER.id, 1)]
    assert offers(w) == [OfferReceived(OFFER)]
    assert answers == [AnswerReceived(SERVER.id, ANSWER)]
    slot = rv.registry.lookup_key(SERVER.id)
    pool = rv.registry.pool(slot)
    assert len(pool) == 2
    for c, e in pool:  # every pooled challenge is answerable with K
        assert crypto.check_answer(crypto.challenge_answer(K, c), e)
    assert rv.stats["pings"] >= 3
    # Every pool the coordinator set (REGISTER, the REFILL reply, the refresh) is an
    # event for a cluster's directory, with what the registry holds at the end.
    pools = coordinator_events(w, PoolUpdated)
    assert [p.replace for p in pools] == [True, False, True]
    assert all(p.kid == SERVER.id for p in pools)
    assert sorted(pools[-1].pairs) == sorted(pool)


@pytest.mark.parametrize("n", range(7, SCENARIO_LENGTH + 1))
@pytest.mark.parametrize("action", ["drop", "dup", "delay"])
def test_every_message_survives_any_single_fault(n, action):
    w, rv, reg, challenges, results, answers = scenario(plan={n: action})
    in_sync(rv, reg)
    assert results == [OfferAcknowledged(SERVER.id, 1)], \
        "the offer was acknowledged exactly once"
    assert offers(w) == [OfferReceived(OFFER)], "the offer was delivered exactly once"
    assert answers == [AnswerReceived(SERVER.id, ANSWER)], \
        "the answer was delivered exactly once"
    assert len(registered_events(w)) == 1, "no spurious re-registration"
    slot = rv.registry.lookup_key(SERVER.id)
    for c, e in rv.registry.pool(slot):
        assert crypto.check_answer(crypto.challenge_answer(K, c), e)


def test_coordinator_restart_heals_within_one_keepalive():
    w, rv, reg, _ = make()
    w.run(5.0)
    in_sync(rv, reg)
    restarted = Rendezvous(COORDINATOR)      # same key, empty memory
    w.rv = restarted
    w.run(5.0 + ServerKeepalive().interval * 1.2 + 2.0)   # one jittered keepalive and a round trip
    in_sync(restarted, reg)
    assert restarted.stats["unknown-replies"] == 1
    assert len(registered_events(w)) == 2


def test_unknown_reply_is_authenticated():
    """A forged UNKNOWN (wrong key) does not make the server re-register."""
    w, rv, reg, _ = make()
    w.run(40.0)   # at least one ping sent
    forger = crypto.IdentityKey.generate()
    ref = reg._sent_refs[-1]
    forged = udp.unknown(ref, forger.sign(udp.UNKNOWN_LABEL + ref))
    assert reg.receive(forged, w.now).datagrams == []
    assert reg.state == "up"
    assert reg.stats["dropped.unauthenticated"] == 1


def test_server_restart_replaces_registration():
    w, rv, reg, _ = make()
    w.run(5.0)
    reg.stop()
    fresh = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    w.registrants[ADDR] = fresh
    w.send_from_server(ADDR, fresh.start(w.now))
    w.run(w.now + 5.0)
    in_sync(rv, fresh)
    assert rv.registry.count == 1


@pytest.mark.parametrize("direction", [{"up"}, {"down"}, {"up", "down"}])
def test_outage_then_recovery(direction):
    keepalive = ServerKeepalive()
    w, rv, reg, _ = make(keepalive=keepalive)
    w.run(5.0)
    w.down = set(direction)
    w.run(300.0)
    lost = [e for _, e in w.events if isinstance(e, Lost)]
    assert lost, "a dead link is detected"
    assert reg.state != "up"
    # Backoff is capped at 60 s (+jitter): sends during the outage stay sparse.
    w.down = set()
    w.run(300.0 + keepalive.backoff_max * 1.3 + 5.0)
    in_sync(rv, reg)


def test_backoff_is_exponential_and_capped():
    w, rv, reg, _ = make()
    w.down = {"up"}
    sent = []
    orig = w._put

    def spy(data, addr, direction):
        sent.append(w.now)
        orig(data, addr, direction)

    w._put = spy
    w.run(600.0)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert gaps[0] < 2.0
    assert max(gaps) <= 60.0 * 1.25
    assert max(gaps) >= 40.0
    assert len(sent) < 25          # not a flood: about 6 growing steps, then once a minute


def test_offer_to_offline_server_fails():
    rv = Rendezvous(COORDINATOR)
    out = rv.send_offer(SERVER.id, OFFER, 0.0, 7)
    assert out.datagrams == []
    assert out.events == [OfferFailed(SERVER.id, 7, "home server is offline")]


def test_offer_unacknowledged_times_out():
    w, rv, reg, _ = make()
    w.run(5.0)
    w.down = {"down"}
    sent = rv.send_offer(SERVER.id, OFFER, w.now, 7)
    assert sent.deadline is not None and sent.deadline <= w.now + 1.0   # a resend is due
    w.send_from_coordinator(sent)
    w.run(w.now + 15.0)
    assert coordinator_events(w, OfferAcknowledged, OfferFailed) == [
        OfferFailed(SERVER.id, 7, "the home server did not acknowledge the offer")]


def test_expiry_forgets_silent_servers():
    w, rv, reg, _ = make()
    w.run(5.0)
    reg.stop()
    assert rv.expire(w.now + 200.0, 90.0).events == [ServerForgotten(SERVER.id)]
    assert rv.registry.count == 0
    assert rv.server_status(SERVER.id) == (False, None)


def test_replayed_datagram_is_dropped():
    w, rv, reg, _ = make()
    w.run(5.0)
    ping = reg._seal(udp.inner(udp.PING, 999))
    assert len(rv.receive(ping, ADDR, w.now).datagrams) == 1
    assert rv.receive(ping, ADDR, w.now).datagrams == []
    assert rv.stats["dropped.replay"] == 1


def test_wrong_coordinator_key_never_registers():
    rv = Rendezvous(crypto.IdentityKey.generate())   # an impostor
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    w = LossyWire(rv)
    w.add(ADDR, reg)
    w.run(60.0)
    assert reg.state != "up"
    assert reg.stats["dropped.unauthenticated"] >= 1


def test_single_use_challenges():
    w, rv, reg, challenges = make()
    w.run(5.0)
    c = rv.server_status(SERVER.id)[1]
    e1, _ = rv.take_challenge(SERVER.id, c, w.now)
    e2, _ = rv.take_challenge(SERVER.id, c, w.now)
    assert e1 is not None and e2 is None
    assert challenges.consume(c) is True
    assert challenges.consume(c) is False


def test_offer_survives_a_reregistration_midway():
    """Fragments acknowledged before a re-registration are not forgotten: the
    offer is delivered once, never reported delivered without arriving."""
    w, rv, reg, _ = make()
    w.run(5.0)
    out = rv.send_offer(SERVER.id, OFFER, w.now, 1)
    assert len(out.datagrams) == 3
    # The third fragment is lost...
    w.send_from_coordinator(dataclasses.replace(out, datagrams=out.datagrams[:2]))
    w.run(w.now + 0.1)
    # ...and the server registers again (e.g. after a NAT rebinding).
    w.send_from_server(ADDR, reg.start(w.now))
    w.run(w.now + 15.0)
    in_sync(rv, reg)
    assert offers(w) == [OfferReceived(OFFER)]
    assert coordinator_events(w, OfferAcknowledged, OfferFailed) == [
        OfferAcknowledged(SERVER.id, 1)]


def test_answer_in_flight_survives_a_reregistration():
    w, rv, reg, _ = make()
    w.run(5.0)
    w.send_from_coordinator(rv.send_offer(SERVER.id, OFFER, w.now, 1))
    w.run(w.now + 1.0)
    w.down = {"up"}
    w.send_from_server(ADDR, reg.send_answer(ANSWER, w.now))   # lost on the way
    w.send_from_server(ADDR, reg.start(w.now))                # registering again
    w.down = set()
    w.run(w.now + 20.0)
    in_sync(rv, reg)
    assert [e.payload for e in coordinator_events(w, AnswerReceived)] == [ANSWER]
