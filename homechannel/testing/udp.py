"""Test doubles shipped with the package: an in-memory, lossy UDP wire that
joins the real sans-I/O protocol objects (``Rendezvous`` and ``Registrant``)
under a fake clock."""

import heapq
import itertools

from homechannel.protocol import udp as codec


class LossyWire:
    """Delivers datagrams between one coordinator core and registrants.

    ``plan`` maps the ordinal of a datagram on the wire (1-based, counting
    both directions) to ``"drop"``, ``"dup"`` or ``"delay"`` (delivered
    after the next one: a reorder).  ``latency`` is the one-way delay.
    ``down`` (a set of "up"/"down" directions) drops everything that way.

    Every output of the cores that passes through the wire (``add``,
    ``send_from_server``, ``send_from_coordinator``, and what ``run`` delivers and
    polls) has its events recorded: ``events`` holds ``(addr, event)`` from the
    registrants, ``coordinator_events`` the coordinator's, in order.

    ``taps`` are called with ``(data, addr, direction)`` for every datagram put on
    the wire (an eavesdropper on the path, e.g. :class:`ReplayAttacker`); ``inject``
    puts a datagram on it as though one side had sent it.
    """

    def __init__(self, rendezvous, latency=0.01, plan=None):
        self.rv = rendezvous
        self.latency = latency
        self.plan = dict(plan or {})
        self.now = 0.0
        self.count = 0
        self.log = []
        self.down = set()
        self._queue = []
        self._seq = itertools.count()
        self._held = None
        self.registrants = {}   # addr -> registrant
        self.events = []        # (addr, event) from the registrants
        self.coordinator_events = []
        self.taps = []

    def add(self, addr, registrant):
        self.registrants[addr] = registrant
        self.send_from_server(addr, registrant.start(self.now))

    def send_from_server(self, addr, out):
        """A registrant's ``Output``: its datagrams onto the wire, its events recorded."""
        self.events += [(addr, e) for e in out.events]
        for d in out.datagrams:
            self._put(d, addr, "up")

    def inject(self, data, addr, direction):
        """*data* on the wire: ``"up"`` from the server at *addr*, ``"down"`` to it."""
        self._put(data, addr, direction)

    def _put(self, data, addr, direction):
        for tap in self.taps:
            tap(data, addr, direction)
        self.count += 1
        n = self.count
        self.log.append((n, direction, data[3]))
        if direction in self.down:
            return
        action = self.plan.get(n)
        item = (data, addr, direction)
        if action == "drop":
            return
        if action == "delay":
            self._held = item
            return
        self._schedule(item)
        if action == "dup":
            self._schedule(item)
        if self._held is not None and self._held is not item:
            held, self._held = self._held, None
            self._schedule(held, extra=self.latency / 2)

    def _schedule(self, item, extra=0.0):
        heapq.heappush(self._queue, (self.now + self.latency + extra, next(self._seq), item))

    def _deliver(self, item):
        data, addr, direction = item
        if direction == "up":
            self.send_from_coordinator(self.rv.receive(data, addr, self.now))
        else:
            reg = self.registrants.get(addr)
            if reg is None:
                return
            self.send_from_server(addr, reg.receive(data, self.now))

    def send_from_coordinator(self, out):
        """The coordinator's ``Output``: its datagrams onto the wire, its events recorded."""
        self.coordinator_events += out.events
        for data, addr in out.datagrams:
            self._put(data, addr, "down")

    def run(self, until):
        """Advance time to *until*, delivering datagrams and firing timers."""
        while True:
            times = [t for t in (self._queue[0][0] if self._queue else None,
                                 self.rv.next_deadline(),
                                 *(r.next_deadline() for r in self.registrants.values()))
                     if t is not None]
            nxt = min(times) if times else None
            if nxt is None or nxt > until:
                break
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, item = heapq.heappop(self._queue)
                self._deliver(item)
            self.send_from_coordinator(self.rv.poll(self.now))
            for addr, reg in self.registrants.items():
                self.send_from_server(addr, reg.poll(self.now))
        if self._held is not None:
            held, self._held = self._held, None
            self._schedule(held)
        self.now = max(self.now, until)


class ReplayAttacker:
    """Someone on a home server's path who replays each DATA datagram it sends from
    another address: the coordinator does not know that address, so it answers with
    an UNKNOWN signed for that datagram, which the attacker delivers to the server as
    though the coordinator had sent it there.  Tap it into a :class:`LossyWire`;
    ``unknowns`` counts the UNKNOWNs it got and delivered."""

    def __init__(self, wire, victim, addr=("203.0.113.66", 4444)):
        self.wire = wire
        self.victim = victim
        self.addr = addr
        self.active = True
        self.unknowns = 0
        wire.taps.append(self._tap)

    def _tap(self, data, addr, direction):
        if not self.active or direction != "up" or addr != self.victim or \
                codec.datagram_type(data) != codec.DATA:
            return
        out = self.wire.rv.receive(data, self.addr, self.wire.now)
        for reply, _ in out.datagrams:
            if codec.datagram_type(reply) == codec.UNKNOWN:
                self.unknowns += 1
                self.wire.inject(reply, self.victim, "down")


class _MemoryTransport:
    def __init__(self, network, addr):
        self.network = network
        self.addr = addr

    def write(self, data, addr):
        self.network.send(data, self.addr, addr)

    def getHost(self):
        return self.addr


class MemoryNetwork:
    """Joins real ``DatagramProtocol`` adapters in memory under a
    ``task.Clock``.  ``blocked`` holds (src, dst) pairs or addresses whose
    traffic is dropped (an outage)."""

    def __init__(self, clock, latency=0.001):
        self.clock = clock
        self.latency = latency
        self.endpoints = {}
        self.blocked = set()
        self.sent = 0

    def attach(self, protocol, addr):
        self.endpoints[addr] = protocol
        protocol.makeConnection(_MemoryTransport(self, addr))
        return protocol

    def detach(self, addr):
        protocol = self.endpoints.pop(addr)
        protocol.doStop()
        protocol.transport = None

    def send(self, data, src, dst):
        self.sent += 1
        if src in self.blocked or dst in self.blocked or (src, dst) in self.blocked:
            return
        self.clock.callLater(self.latency, self._deliver, data, src, dst)

    def _deliver(self, data, src, dst):
        protocol = self.endpoints.get(dst)
        if protocol is not None:
            protocol.datagramReceived(data, src)

    def run(self, seconds, step=0.05):
        """Advance the clock by *seconds* in small steps."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))
