"""Each UDP security check, attacked directly: every test here fails if the
check it names is removed."""

import os

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.coordinator.events import AnswerReceived
from homechannel.coordinator.registry import Registry
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.server.challenges import ChallengeSource
from homechannel.server.registrant import Registrant
from homechannel.testing.udp import LossyWire

COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()
K = b"k" * 32
ADDR = ("198.51.100.1", 4000)


def handshake_until_finish(rv, identity=SERVER, addr=ADDR, now=1.0):
    """Drive a real Registrant to the point where it sends FINISH; return
    (registrant, init datagram, finish datagram)."""
    reg = Registrant(identity, COORDINATOR.public_raw, ChallengeSource(K))
    hello = reg.start(now).datagrams[0]
    (cookie, _), = rv.receive(hello, addr, now).datagrams
    init = reg.receive(cookie, now).datagrams[0]
    (resp, _), = rv.receive(init, addr, now).datagrams
    finish = reg.receive(resp, now).datagrams[0]
    return reg, init, finish


def handshake_until_finish_or_none(rv, addr):
    """Send HELLO and INIT from *addr*; the RESP datagram, or None if refused."""
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    (cookie, _), = rv.receive(reg.start(1.0).datagrams[0], addr, 1.0).datagrams
    replies = rv.receive(reg.receive(cookie, 1.0).datagrams[0], addr, 1.0).datagrams
    return replies[0] if replies else None


def registered(seconds):
    """A coordinator and a registrant joined by a clean wire, run for *seconds*."""
    rv = Rendezvous(COORDINATOR)
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    w = LossyWire(rv)
    w.add(ADDR, reg)
    w.run(seconds)
    return rv, reg, w


def test_clean_handshake_sizes_never_amplify():
    rv = Rendezvous(COORDINATOR)
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    out = reg.start(1.0).datagrams
    while out:
        request = out[0]
        replies = rv.receive(request, ADDR, 1.0).datagrams
        for reply, _ in replies:
            if request[3] != udp.FINISH:   # before authentication
                assert len(reply) <= len(request)
        out = [d for reply, _ in replies for d in reg.receive(reply, 1.0).datagrams]
    assert reg.state == "up"


class Impostor:
    """Claims SERVER's identity (its public key) but cannot sign with it."""

    def __init__(self, victim):
        self.public_raw = victim.public_raw
        self._attacker = crypto.IdentityKey.generate()

    def sign(self, data):
        return self._attacker.sign(data)


def test_finish_signed_by_another_key_does_not_register():
    """Only the holder of the identity key in INIT can complete the handshake:
    an impostor who runs the key agreement itself (so its FINISH is sealed
    correctly) is refused on the signature alone."""
    rv = Rendezvous(COORDINATOR)
    _, _, finish = handshake_until_finish(rv, identity=Impostor(SERVER))
    assert rv.receive(finish, ADDR, 1.0).datagrams == []
    assert rv.registry.count == 0
    assert rv.stats["dropped.unauthenticated"] == 1
    assert rv.server_status(SERVER.id) == (False, None)
    # The genuine server still registers from another address.
    _, _, finish = handshake_until_finish(rv, addr=("198.51.100.2", 4000))
    assert rv.receive(finish, ("198.51.100.2", 4000), 1.0).datagrams
    assert rv.registry.count == 1


def test_init_without_a_valid_cookie_creates_no_state():
    rv = Rendezvous(COORDINATOR)
    _, init, _ = handshake_until_finish(rv)
    rv2 = Rendezvous(COORDINATOR)                # another secret: the cookie is foreign
    assert rv2.receive(init, ADDR, 1.0).datagrams == []
    assert rv2.stats["dropped.bad-cookie"] == 1 and not rv2._pending
    # The right coordinator, but from another source address (spoofed copy).
    rv3 = Rendezvous(COORDINATOR)
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    (cookie, _), = rv3.receive(reg.start(1.0).datagrams[0], ADDR, 1.0).datagrams
    init = reg.receive(cookie, 1.0).datagrams[0]
    assert rv3.receive(init, ("203.0.113.9", 4000), 1.0).datagrams == []
    assert rv3.stats["dropped.bad-cookie"] == 1 and not rv3._pending
    # An expired cookie (more than two epochs later).
    assert rv3.receive(init, ADDR, 1.0 + 200.0).datagrams == []
    assert rv3.stats["dropped.bad-cookie"] == 2


def test_finish_from_another_address_is_dropped():
    rv = Rendezvous(COORDINATOR)
    _, _, finish = handshake_until_finish(rv)
    assert rv.receive(finish, ("203.0.113.9", 4000), 1.0).datagrams == []
    assert rv.stats["dropped.unknown-handshake"] == 1
    assert rv.registry.count == 0


def test_init_nonce_reuse_with_other_content_is_dropped():
    rv = Rendezvous(COORDINATOR)
    _, init, _ = handshake_until_finish(rv)
    other = init[:-65] + crypto.Ephemeral().public_raw   # same cookie and nonce
    assert rv.receive(other, ADDR, 1.0).datagrams == []
    assert rv.stats["dropped.nonce-reuse"] == 1


def test_pending_handshakes_are_capped():
    rv = Rendezvous(COORDINATOR, max_handshakes=3, per_source_per_second=1e6)
    results = [handshake_until_finish_or_none(rv, ("198.51.100.1", 5000 + i)) for i in range(5)]
    assert [r is not None for r in results] == [True, True, True, False, False]
    assert len(rv._pending) == 3
    assert rv.stats["dropped.handshakes-full"] == 2


def banked_inits(rv, addrs, identity=SERVER, rate=5.0):
    """INITs with valid cookies from *addrs*, one each: the HELLOs paced at *rate* a
    second (within the per-source HELLO limit), so that their INITs can all be sent
    at once while the cookies last (60-120 s)."""
    inits = []
    for i, addr in enumerate(addrs):
        now = 1.0 + i / rate
        reg = Registrant(identity, COORDINATOR.public_raw, ChallengeSource(K))
        (cookie, _), = rv.receive(reg.start(now).datagrams[0], addr, now).datagrams
        inits.append((reg.receive(cookie, now).datagrams[0], addr))
    return inits


def test_init_flood_from_one_source_is_limited_per_source():
    """Cookies gathered over a minute, then spent at once: INIT has a limit per source
    of its own (without it all 30 get a RESP, each costing an ECDH and a signature)."""
    rv = Rendezvous(COORDINATOR, per_source_per_second=5.0)
    now = 1.0 + 30 / 5.0
    inits = banked_inits(rv, [("198.51.100.1", 6000 + i) for i in range(30)])
    answered = sum(bool(rv.receive(init, addr, now).datagrams) for init, addr in inits)
    assert answered == 10 and rv.stats["dropped.source-rate"] == 20
    assert handshake_until_finish_or_none(rv, ("198.51.100.2", 6000)) is not None


def test_unknown_for_a_datagram_the_server_never_sent_is_ignored():
    """A genuine, coordinator-signed UNKNOWN for someone else's datagram (or an
    old one) does not make the server re-register."""
    rv, reg, w = registered(40.0)
    assert reg.state == "up"
    ref = os.urandom(8) + os.urandom(16)
    signed = udp.unknown(ref, COORDINATOR.sign(udp.UNKNOWN_LABEL + ref))
    assert reg.receive(signed, w.now).datagrams == []
    assert reg.state == "up"
    assert reg.stats["dropped.unexpected-unknown"] == 1
    mine = reg._sent_refs[-1]
    genuine = udp.unknown(mine, COORDINATOR.sign(udp.UNKNOWN_LABEL + mine))
    sent = reg.receive(genuine, w.now).datagrams            # a HELLO: registering again
    assert udp.HELLO in [udp.datagram_type(d) for d in sent]
    assert reg.state == "up" and reg.reregistering          # (the session is kept meanwhile)


def test_scoped_ipv6_source_is_a_counted_drop():
    rv = Rendezvous(COORDINATOR)
    assert rv.receive(udp.hello(os.urandom(16)), ("fe80::1%eth0", 5), 1.0).datagrams == []
    assert rv.stats["dropped.bad-address"] == 1


def test_consumed_challenge_never_returns_through_a_late_refresh():
    rv, reg, w = registered(2.0)
    # A refresh whose ACK is lost: the server will retransmit it.
    refresh = reg.refresh_challenges(w.now).datagrams[0]
    pool = rv.registry.pool(rv.registry.lookup_key(SERVER.id))
    assert rv.receive(refresh, ADDR, w.now).datagrams    # applied (the ACK is dropped)
    a = rv.server_status(SERVER.id)[1]
    expected, _ = rv.take_challenge(SERVER.id, a, w.now)
    assert expected is not None
    # The retransmission (re-sealed with a fresh counter) must not restore `a`.
    again = reg._seal(reg._out.get(next(iter(reg._out._items))).message)
    assert rv.receive(again, ADDR, w.now).datagrams      # acknowledged, not applied
    assert a not in [c for c, _ in rv.registry.pool(rv.registry.lookup_key(SERVER.id))]
    assert rv.stats["challenge-refresh-stale"] == 1
    assert pool  # (the initial pool existed)


def test_unsolicited_answers_are_dropped():
    rv, reg, w = registered(2.0)
    got = []
    for d in reg.send_answer(b"x" * 5000, w.now).datagrams:
        got += rv.receive(d, ADDR, w.now).events
    assert got == [] and rv.stats["dropped.unsolicited-answer"] == 5
    assert not rv._reassembly


# -- shares of one source network (IPv6 /64, IPv4 address) -------------------------

FLOOD_NET = "2001:db8:bad:1::"
KEYS = [crypto.IdentityKey.generate() for _ in range(12)]


def resp_or_none(rv, addr, identity, now=1.0):
    """HELLO and INIT from *addr* for *identity*; the RESP, or None if refused."""
    reg = Registrant(identity, COORDINATOR.public_raw, ChallengeSource(K))
    (cookie, _), = rv.receive(reg.start(now).datagrams[0], addr, now).datagrams
    replies = rv.receive(reg.receive(cookie, now).datagrams[0], addr, now).datagrams
    return replies[0] if replies else None


def test_init_rate_limit_counts_a_whole_ipv6_network_as_one_source():
    """Per-source rates key by /64: fresh addresses do not buy fresh budget.
    Keyed by the exact address (as before), the flood is never limited."""
    rv = Rendezvous(COORDINATOR, per_source_per_second=5.0)
    now = 1.0 + 30 / 5.0
    inits = banked_inits(rv, [(f"{FLOOD_NET}{i + 1:x}", 6000) for i in range(30)])
    for init, addr in inits:
        rv.receive(init, addr, now)
    assert rv.stats["dropped.source-rate"] == 20
    assert resp_or_none(rv, ("2001:db8:bad:2::1", 6000), SERVER, now) is not None


def test_handshake_flood_from_one_network_fills_only_its_share():
    """Many addresses of one /64, many server keys: at most the source's share
    of pending handshakes; a server elsewhere still gets its RESP.  Without
    the share the flood takes every place and the last handshake is refused
    (handshakes-full)."""
    rv = Rendezvous(COORDINATOR, max_handshakes=10, max_handshakes_per_source=4,
                    per_source_per_second=1e6)
    got = [resp_or_none(rv, (f"{FLOOD_NET}{i + 1:x}", 5000 + i), KEYS[i]) for i in range(12)]
    assert sum(r is not None for r in got) == 4
    assert rv.stats["dropped.handshakes-source-full"] == 8
    assert resp_or_none(rv, ("2001:db8:900d::1", 4000), SERVER) is not None
    assert resp_or_none(rv, ("198.51.100.1", 4000), SERVER) is not None
    # Places come back when the handshakes expire.
    assert resp_or_none(rv, (f"{FLOOD_NET}99", 5000), KEYS[0], now=40.0) is not None
    assert len(rv._handshakes_by_source) == 3      # the /64, its /56 and its /48


def test_registration_flood_from_one_network_fills_only_its_share():
    """Throwaway server keys registering from one /64 (each completes a real
    handshake) hold at most max_per_source places in the registry; the owner's
    server from another network still registers.  Without the share all 12
    register and the owner is refused (registry-full)."""
    rv = Rendezvous(COORDINATOR, registry=Registry(max_servers=8, max_per_source=5),
                    per_source_per_second=1e6)
    w = LossyWire(rv)
    for i, key in enumerate(KEYS):
        w.add((f"{FLOOD_NET}{i + 1:x}", 5000), Registrant(key, COORDINATOR.public_raw,
                                                          ChallengeSource(K)))
    w.run(5.0)
    assert rv.registry.count == 5
    assert rv.stats["dropped.registry-source-full"] >= 7
    owner = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K))
    w.add(("2001:db8:900d::1", 4000), owner)
    w.run(10.0)
    assert owner.state == "up" and rv.registry.count == 6
    assert rv.server_status(SERVER.id)[0]


def answer_fragments(reg, size, now):
    """The XFER datagrams of one ANSWER of *size* bytes from *reg*."""
    return reg.send_answer(os.urandom(size), now).datagrams


def test_reassembly_has_a_byte_budget_per_network_and_in_all():
    """Incomplete answers (all fragments but the last, never finished) from
    servers of one /64 hold at most its share of reassembly memory; from
    everybody at most the global budget.  Dropped fragments are not
    acknowledged and are counted; complete answers release their bytes.
    Without the budgets every fragment is buffered (up to 4 transfers of
    64 KiB per server, for every server with an offer in flight)."""
    rv = Rendezvous(COORDINATOR, per_source_per_second=1e6,
                    reassembly_bytes=150_000, reassembly_bytes_per_source=100_000)
    w = LossyWire(rv)
    regs = {}
    for i, key in enumerate(KEYS[:4]):
        regs[(f"{FLOOD_NET}{i + 1:x}", 5000)] = key
    regs[("198.51.100.5", 4000)] = KEYS[4]
    regs[("2001:db8:900d::1", 4000)] = SERVER
    registrants = {}
    for addr, key in regs.items():
        registrants[addr] = Registrant(key, COORDINATOR.public_raw, ChallengeSource(K))
        w.add(addr, registrants[addr])
    w.run(3.0)
    assert rv.registry.count == 6
    for key in regs.values():            # an offer to each: answers are expected
        rv.send_offer(key.id, b"offer", w.now, 1)
    got = []

    def receive(d, addr):
        out = rv.receive(d, addr, w.now)
        got.extend(e.kid for e in out.events if isinstance(e, AnswerReceived))
        return out.datagrams

    def send_all_but_last(addr, size):
        acked = 0
        for d in answer_fragments(registrants[addr], size, w.now)[:-1]:
            acked += len(receive(d, addr))
        return acked

    # The /64: 4 servers x 60 KiB would be 236 KiB; its share is 100 KB.
    acked = [send_all_but_last(addr, 60 * 1024) for addr in list(regs)[:4]]
    assert sum(acked) * 1024 <= 100_000 and rv.reassembled <= 100_000
    assert rv.stats["dropped.reassembly-source-full"] > 0
    # An IPv4 server (another source) takes the rest of the global budget...
    send_all_but_last(("198.51.100.5", 4000), 60 * 1024)
    assert rv.reassembled <= 150_000
    assert rv.stats["dropped.reassembly-full"] > 0
    full = rv.reassembled
    # ...and a complete answer is refused while the budget is full.
    owner = ("2001:db8:900d::1", 4000)
    for d in answer_fragments(registrants[owner], 3000, w.now):
        receive(d, owner)
    assert got == []
    # Incomplete transfers time out (30 s) and give their bytes back.
    w.now += 31.0
    rv.expire(w.now, 90.0)
    assert rv.reassembled == 0 and len(rv._reassembly_by_source) == 0
    # Now the owner's answer fits; a complete answer holds nothing afterwards.
    for key in regs.values():
        rv.send_offer(key.id, b"offer", w.now, 2)
    for d in answer_fragments(registrants[owner], 3000, w.now):
        receive(d, owner)
    assert got == [SERVER.id] and rv.reassembled == 0
    assert full > 100_000
