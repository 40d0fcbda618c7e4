"""Happy Eyeballs for the home server's registration (homechannel/server/eyeballs.py,
driven by homechannel/server/links.py): a coordinator with an IPv6 and an IPv4
address, a network that loses or delays one family, the links and a real
``Rendezvous`` passing datagrams by hand on a simulated clock.  Then the failover
rounds between a name's addresses (and a cluster's nodes) when one stops answering and
answers again, and what a replayed datagram (a moot UNKNOWN) does to them."""

import heapq
import itertools
import random

from homechannel import crypto
from homechannel.config import ServerKeepalive
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.protocol import udp
from homechannel.protocol.hostport import ip_family
from homechannel.server import eyeballs
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import (
    FailedOver, FailingOver, MoveFailed, PingMissed, Registered, Reregistering,
    ResolveNeeded, StillUp,
)
from homechannel.server.links import FAILOVER_TIMEOUT, Links
from homechannel.server.registrant import PING_TIMEOUT, UNKNOWN_HOLDOFF

V6 = ("2001:db8::10", 7777)
V4 = ("203.0.113.10", 7777)
# Where the coordinator sees the home server from, by the family it sent over.
HOME = {"IPv6": ("2001:db8:1::2", 40000), "IPv4": ("198.51.100.2", 40000)}
HOME |= {V6: HOME["IPv6"], V4: HOME["IPv4"]}
ATTACKER = ("192.0.2.66", 4444)
KEEPALIVE = ServerKeepalive()


class Net:
    """Coordinators reachable at addresses: by default one, at V6 and V4, for the name
    ``coordinator.example``.  *names* maps host names to their addresses (the first
    is the target; a sequence: that name's addresses); *nodes* maps an address to the
    ``Rendezvous`` there (any other: ``coordinator``); *candidates* are the cluster's
    ``(host, port)``.  ``dead`` addresses lose every datagram, ``delay[addr]`` holds the
    replies from *addr* that long, and an attacker on the path replays the DATA sent
    to an address in ``replay`` (that many datagrams; None: every one) from ATTACKER
    and hands the server the coordinator's signed UNKNOWN for it, as though it came
    from that address."""

    def __init__(self, names=("2001:db8::10", "203.0.113.10"), nodes=None, candidates=()):
        self.key = crypto.IdentityKey.generate()
        self.coordinator = Rendezvous(self.key)
        self.nodes = dict(nodes or {})
        self.server = crypto.IdentityKey.generate()
        self.names = dict(names) if isinstance(names, dict) else \
            {"coordinator.example": list(names)}
        self.links = Links(self.server, ChallengeSource(b"K" * 32), KEEPALIVE,
                           (next(iter(self.names)), 7777, self.key.public_raw),
                           random_bytes=random.Random(7).randbytes, candidates=candidates)
        self.dead = set()
        self.delay = {}
        self.replay = {}
        self.now = 0.0
        self.sent = []            # (time, addr) of every datagram the links sent
        self.events = []
        self._queue = []          # (time, seq, data, addr): replies on their way
        self._seq = itertools.count()

    def node(self, addr):
        return self.nodes.get(addr, self.coordinator)

    def handle(self, out):
        if out is None:
            return
        self.events += [event for _, event in out.events]
        for data, addr in out.datagrams:
            self.sent.append((self.now, addr))
            if addr in self.dead:
                continue
            node = self.node(addr)
            home = HOME[ip_family(addr[0])]
            for reply, _ in node.receive(data, home, self.now).datagrams:
                self._reply(reply, addr, self.now + self.delay.get(addr, 0.0))
            if udp.datagram_type(data) == udp.DATA and self.replay.get(addr, 0) != 0:
                if self.replay[addr] is not None:
                    self.replay[addr] -= 1
                for reply, _ in node.receive(data, ATTACKER, self.now).datagrams:
                    self._reply(reply, addr, self.now)
        for link, event in out.events:
            if isinstance(event, ResolveNeeded):
                self.handle(self.links.resolved(link, self.names[link.host], self.now))

    def _reply(self, data, addr, when):
        heapq.heappush(self._queue, (when, next(self._seq), data, addr))

    def run(self, until):
        while True:
            times = [t for t in (self.links.next_deadline(),
                                 self._queue[0][0] if self._queue else None) if t is not None]
            if not times or min(times) > until:
                break
            self.now = max(self.now, min(times))
            if self._queue and self._queue[0][0] <= self.now:
                _, _, data, addr = heapq.heappop(self._queue)
                self.handle(self.links.receive(data, addr, self.now))
            else:
                self.handle(self.links.poll(self.now))
        self.now = until

    def start(self, until=5.0):
        self.handle(self.links.start(self.now))
        self.run(until)

    def registered_from(self, node=None):
        """The address the coordinator (or *node*) has the server registered from, or
        None."""
        reg = (node or self.coordinator).registry
        slot = reg.lookup_key(crypto.key_id(self.server.public_raw))
        return None if slot < 0 else reg.addr(slot)

    def to(self, addr, since=0.0):
        return [t for t, a in self.sent if a == addr and t >= since]

    def count(self, kind):
        return sum(isinstance(event, kind) for event in self.events)


def test_interleave_puts_ipv6_first_and_alternates():
    """RFC 8305 section 4: IPv6 first, then the families alternate; each once."""
    ips = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "2001:db8::3", "192.0.2.1"]
    assert eyeballs.interleave(ips) == ["2001:db8::1", "192.0.2.1", "2001:db8::2",
                                        "192.0.2.2", "2001:db8::3"]
    assert eyeballs.interleave(["192.0.2.1"]) == ["192.0.2.1"]
    assert eyeballs.other_family(["2001:db8::1", "192.0.2.1"], "2001:db8::1") == "192.0.2.1"
    assert eyeballs.other_family(["2001:db8::1", "2001:db8::2"], "2001:db8::1") is None
    assert eyeballs.other_family(["192.0.2.1", "192.0.2.2", "2001:db8::1"], "192.0.2.1",
                                 skip={"2001:db8::1"}) is None


def test_both_families_work_it_registers_over_ipv6_and_never_sends_ipv4():
    """Both work: IPv6's COOKIE is back before the head start ends, so the IPv4
    address never gets a datagram; the registration and its keepalives are IPv6.
    How this was shown to fail: with ``interleave`` keeping the resolver's order
    (IPv4 given first here) it registered over IPv4."""
    net = Net(names=("203.0.113.10", "2001:db8::10"))
    net.start(until=60.0)
    status = net.links.status()
    assert status["state"] == "up" and status["family"] == "IPv6"
    assert status["address"] == "[2001:db8::10]:7777"
    assert net.to(V4) == []
    assert len(net.to(V6)) > 3          # the handshake, then pings
    assert net.events.count(Registered()) == 1
    assert net.registered_from() == HOME[V6]


def test_ipv6_lost_ipv4_joins_after_the_head_start_and_keeps_the_mapping():
    """IPv6 loses everything (a broken IPv6 uplink): HELLO goes to IPv4 too after
    250 ms, the registration completes over IPv4 at once, and every keepalive goes
    to IPv4 only (the one mapping the home router must keep).  How this was shown to
    fail: without the race (no alternate address) it never registered."""
    net = Net()
    net.dead.add(V6)
    net.start(until=1.0)
    status = net.links.status()
    assert status["state"] == "up" and status["family"] == "IPv4"
    first_v4 = net.to(V4)[0]
    assert first_v4 == eyeballs.HEAD_START
    registered_at = net.now
    net.run(120.0)
    assert net.links.status()["state"] == "up"
    assert net.to(V6, since=registered_at) == []         # nothing over IPv6 after the race
    assert len(net.to(V4, since=registered_at)) >= 5     # the pings
    assert net.events.count(Registered()) == 1


def test_when_ipv6_is_slower_than_the_head_start_ipv4_wins_and_ipv6s_late_cookie_is_dropped():
    """IPv6 works but answers after 400 ms: IPv4 (sent at 250 ms, answered at once)
    wins; IPv6's COOKIE arriving later is dropped, and the coordinator holds one
    registration, from the home server's IPv4 address.  How this was shown to fail:
    without the race it waited for IPv6 and registered over it."""
    net = Net()
    net.delay[V6] = 0.4
    net.start(until=30.0)
    assert net.links.status()["family"] == "IPv4"
    assert net.events.count(Registered()) == 1
    assert net.coordinator.stats["registered"] == 1
    assert len(net.coordinator.registry.slots()) == 1
    assert net.registered_from() == HOME[V4]


def test_one_family_only_is_not_raced():
    """A name with IPv4 addresses only (or a literal): no race, nothing changes (two
    addresses of one family are a cluster's nodes, tried one after the other when one
    stops answering).  How this was shown to fail: with ``other_family`` taking any
    other address, the two IPv4 addresses were raced."""
    net = Net(names=("203.0.113.10", "203.0.113.11"))
    net.handle(net.links.start(net.now))
    assert net.links.active.race is None        # resolved, its first HELLO on its way
    net.run(20.0)
    assert net.links.status()["family"] == "IPv4"
    assert {addr for _, addr in net.sent} == {V4}


def test_after_a_lost_registration_it_moves_back_to_ipv6():
    """Registered over IPv4 while IPv6 was down; IPv6 comes back, then the
    coordinator restarts (it forgets the server: UNKNOWN at the next ping): the home
    server registers again, and over IPv6 (the UNKNOWN starts a registration on the
    side on the IPv4 address, and the links try the name's IPv6 beside it, taking it
    when it answers).  How this was shown to fail: with the race started again on the
    same link at every new HELLO (a first version), that link and the failover's
    talked to one address and it stayed on IPv4; after make-before-break on UNKNOWN
    (issue 17), without ``Reregistering`` trying IPv6 in ``Links._out``, it stayed on
    IPv4."""
    net = Net()
    net.dead.add(V6)
    net.start(until=5.0)
    assert net.links.status()["family"] == "IPv4"
    net.dead.clear()
    net.coordinator = Rendezvous(net.key)            # restarted: an empty registry
    net.run(60.0)
    status = net.links.status()
    assert status["state"] == "up" and status["family"] == "IPv6", status
    assert net.registered_from() == HOME[V6]


def test_ipv6_stops_answering_it_fails_over_to_ipv4_before_leaving():
    """Registered over IPv6, then IPv6 loses everything: after the first unanswered
    ping the links register over IPv4 (make before break), and stay there.  How this
    was shown to fail: with a name of two families not counted as several addresses
    (``Links._several`` left False) it kept sending HELLO to IPv6 for ever."""
    net = Net()
    net.start(until=5.0)
    assert net.links.status()["family"] == "IPv6"
    net.dead.add(V6)
    net.run(60.0)
    status = net.links.status()
    assert status["state"] == "up" and status["family"] == "IPv4", status
    assert net.registered_from() == HOME[V4]


# -- an address that answers again; a new round; replays ------------------------------


def registered_over_ipv4_then_ipv6_works():
    """Registered over IPv4 while IPv6 was down (5 s); IPv6 works again from then on."""
    net = Net()
    net.dead.add(V6)
    net.start(until=5.0)
    assert net.links.status()["family"] == "IPv4"
    net.dead.clear()
    return net


def ipv6_breaks_and_it_is_back_on_ipv4(net):
    """IPv6 loses everything from now: registered over IPv4 within one keepalive (the
    next ping unanswered, then the failover).  Returns when IPv6 broke."""
    broke = net.now
    net.dead.add(V6)
    net.run(broke + KEEPALIVE.interval * 1.2 + PING_TIMEOUT + 1.0)
    status = net.links.status()
    assert status["state"] == "up" and status["family"] == "IPv4", status
    assert net.registered_from() == HOME[V4]
    return broke


def test_after_a_blip_on_ipv4_took_it_to_ipv6_a_later_ipv6_break_takes_it_back():
    """Registered over IPv4, IPv6 working: a few seconds of IPv4 loss leave a ping
    unanswered and the links move to IPv6; when IPv6 breaks later, they go back to
    IPv4 within one keepalive (every address of the name stopped answering once: a
    new round, both families raced).  How this was shown to fail: with ``resolved``
    taking the name's first address when every one had stopped answering (and the
    race skipping them), as before, it sent HELLO to the dead IPv6 for ever (state
    "hello"; in the review's run ten minutes later: 256 datagrams to IPv6, none to
    IPv4)."""
    net = registered_over_ipv4_then_ipv6_works()
    net.run(20.0)
    ping = net.links.next_deadline()
    net.dead.add(V4)                             # that ping is lost over IPv4
    net.run(ping + PING_TIMEOUT + 1.0)
    net.dead.clear()
    net.run(120.0)
    assert net.count(PingMissed) == 1 and net.count(FailedOver) == 1
    assert net.links.status()["family"] == "IPv6"
    broke = ipv6_breaks_and_it_is_back_on_ipv4(net)
    net.run(broke + 600.0)
    assert net.links.status()["family"] == "IPv4" and net.count(FailedOver) == 2
    assert net.to(V6, since=broke + 60.0) == []


def test_a_moot_unknown_does_not_mark_ipv4_as_unanswered():
    """Registered over IPv4, IPv6 working again: one of the server's datagrams is
    replayed from another address, and the coordinator's UNKNOWN for it starts a
    re-registration, with IPv6 tried beside it; the probe's PONG makes it moot, and the
    links move to IPv6 (which answers).  When IPv6 breaks later, they go back to IPv4:
    the UNKNOWN did not make IPv4 an address that stopped answering.  How this was
    shown to fail: with links.py as it was (the try a ``_failover`` that marked the
    active IPv4 address unanswered, no ``StillUp`` to clear it, and a name whose every
    address had stopped answering sent to its first), IPv4 was never tried again
    (state "hello" after IPv6 broke).  Any one of the three fixes passes it."""
    net = registered_over_ipv4_then_ipv6_works()
    net.run(40.0)
    net.replay[V4] = 1
    net.run(80.0)
    assert net.count(Reregistering) == 1 and net.count(StillUp) == 1
    assert net.links.status()["family"] == "IPv6" and net.count(FailedOver) == 1
    ipv6_breaks_and_it_is_back_on_ipv4(net)


def test_a_replayed_unknown_with_ipv6_broken_tries_ipv6_once_and_stays():
    """Registered over IPv4, IPv6 broken: a replayed datagram gets a genuine UNKNOWN,
    whose re-registration tries IPv6 beside it; the PONG makes it moot, IPv6 does not
    answer within the failover timeout, and that is all: one try, no failover after it,
    the first registration kept.  How this was shown to fail: with the try marking
    the active IPv4 address unanswered (a ``_failover``) and no ``StillUp`` clearing it
    on the PONG, ``_give_up`` chained on that and started another failover to the dead
    IPv6 every 10 s for ever (32 FailingOver in 360 s)."""
    net = Net()
    net.dead.add(V6)
    net.start(until=5.0)
    net.run(40.0)
    net.replay[V4] = 1
    net.run(360.0)
    assert net.count(Reregistering) == 1 and net.count(StillUp) == 1
    assert net.count(FailingOver) == 1 and net.count(MoveFailed) == 1
    status = net.links.status()
    assert status["state"] == "up" and status["family"] == "IPv4"
    assert status["registrations"] == 1 and net.coordinator.stats["registered"] == 1
    assert net.to(V6, since=40.0 + FAILOVER_TIMEOUT + 1.0) == []


A6, A4 = ("2001:db8::a", 7777), ("203.0.113.1", 7777)
B6, B4 = ("2001:db8::b", 7777), ("203.0.113.2", 7777)


def two_nodes(ipv6=True):
    """A cluster of two nodes sharing one key (``coordinator.addresses``): node-a (the
    target) and node-b, each a name with an IPv6 and an IPv4 address (*ipv6*; else
    IPv4 only).  Registered with node-a."""
    names = {"node-a": [A6[0], A4[0]], "node-b": [B6[0], B4[0]]} if ipv6 else \
        {"node-a": [A4[0]], "node-b": [B4[0]]}
    net = Net(names, candidates=[("node-a", 7777), ("node-b", 7777)])
    net.a, net.b = net.coordinator, Rendezvous(net.key)
    net.nodes = {B6: net.b, B4: net.b}
    return net


def test_replays_for_ten_minutes_never_move_the_server_between_nodes():
    """Two dual-stack nodes, IPv6 broken, registered with node-a over IPv4: for ten
    minutes every datagram the server sends is replayed (each UNKNOWN the holdoff lets
    through is moot).  The server stays with node-a, on its first registration: each
    re-registration tries node-a's IPv6 only, never node-b.  How this was shown to
    fail: with the IPv6 try a failover to the next node (``_failover``), as before, the
    first replayed UNKNOWN moved the server to node-b, and from there it tried node-a's
    (dead) IPv6 every 10 s for ever (58 FailingOver in ten minutes); with ``StillUp``
    clearing nothing as well, it moved back and forth (39 moves in ten minutes)."""
    net = two_nodes()
    net.dead |= {A6, B6}
    net.start(until=5.0)
    assert net.links.status()["address"] == "203.0.113.1:7777"
    net.replay[A4] = net.replay[B4] = None
    net.run(600.0)
    assert net.count(Reregistering) >= 10
    assert net.count(StillUp) == net.count(Reregistering)
    assert net.count(FailedOver) == 0
    assert net.count(FailingOver) == net.count(MoveFailed) <= 600 / UNKNOWN_HOLDOFF + 1
    assert net.to(B4) == net.to(B6) == [] and net.b.stats["registered"] == 0
    status = net.links.status()
    assert status["state"] == "up" and status["address"] == "203.0.113.1:7777"
    assert status["registrations"] == 1 and net.a.stats["registered"] == 1


def test_a_node_that_answers_again_is_not_left_for_a_dead_one():
    """Two IPv4 nodes, node-b dead: node-a loses a few seconds of traffic, a ping goes
    unanswered, and the links try node-b; node-a answers the ping's resend meanwhile
    (``StillUp``), so when node-b does not answer within the failover timeout the
    server stays with node-a, and tries nothing more.  How this was shown to fail:
    without ``StillUp`` clearing node-a's address from the unanswered ones, ``_give_up``
    started another failover to node-b every 10 s for ever."""
    net = two_nodes(ipv6=False)
    net.dead.add(B4)
    net.start(until=5.0)
    net.run(20.0)
    ping = net.links.next_deadline()
    net.dead.add(A4)                    # that ping is lost, its resend is not
    net.run(ping + PING_TIMEOUT - 0.1)
    net.dead.discard(A4)
    net.run(ping + 300.0)
    assert net.count(PingMissed) == net.count(StillUp) == 1
    assert net.count(FailingOver) == net.count(MoveFailed) == 1
    status = net.links.status()
    assert status["state"] == "up" and status["address"] == "203.0.113.1:7777"
    assert status["registrations"] == 1
    assert net.to(B4, since=ping + PING_TIMEOUT + FAILOVER_TIMEOUT) == []
