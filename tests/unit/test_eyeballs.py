"""Happy Eyeballs for the home server's registration (homechannel/server/eyeballs.py,
driven by homechannel/server/links.py): a coordinator with an IPv6 and an IPv4
address, a network that loses or delays one family, the links and a real
``Rendezvous`` passing datagrams by hand on a simulated clock."""

import heapq
import itertools
import random

from homechannel import crypto
from homechannel.config import ServerKeepalive
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.server import eyeballs
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import Registered, ResolveNeeded
from homechannel.server.links import Links

V6 = ("2001:db8::10", 7777)
V4 = ("203.0.113.10", 7777)
# Where the coordinator sees the home server from, by the family it sent over.
HOME = {V6: ("2001:db8:1::2", 40000), V4: ("198.51.100.2", 40000)}


class Net:
    """One coordinator reachable at V6 and V4; ``dead`` families lose every datagram,
    ``delay[addr]`` holds the replies from *addr* that long."""

    def __init__(self, names=("2001:db8::10", "203.0.113.10")):
        self.key = crypto.IdentityKey.generate()
        self.coordinator = Rendezvous(self.key)
        self.server = crypto.IdentityKey.generate()
        self.links = Links(self.server, ChallengeSource(b"K" * 32), ServerKeepalive(),
                           ("coordinator.example", 7777, self.key.public_raw),
                           random_bytes=random.Random(7).randbytes)
        self.names = list(names)
        self.dead = set()
        self.delay = {}
        self.now = 0.0
        self.sent = []            # (time, addr) of every datagram the links sent
        self.events = []
        self._queue = []          # (time, seq, data, addr): replies on their way
        self._seq = itertools.count()

    def handle(self, out):
        if out is None:
            return
        self.events += [event for _, event in out.events]
        for data, addr in out.datagrams:
            self.sent.append((self.now, addr))
            if addr in self.dead:
                continue
            for reply, _ in self.coordinator.receive(data, HOME[addr], self.now).datagrams:
                when = self.now + self.delay.get(addr, 0.0)
                heapq.heappush(self._queue, (when, next(self._seq), reply, addr))
        for link, event in out.events:
            if isinstance(event, ResolveNeeded):
                self.handle(self.links.resolved(link, self.names, self.now))

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

    def registered_from(self):
        """The address the coordinator has the server registered from, or None."""
        reg = self.coordinator.registry
        slot = reg.lookup_key(crypto.key_id(self.server.public_raw))
        return None if slot < 0 else reg.addr(slot)

    def to(self, addr, since=0.0):
        return [t for t, a in self.sent if a == addr and t >= since]


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
