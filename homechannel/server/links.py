"""The home server's coordinator links, sans I/O: the active one and, while
moving, the target's; migration and failover between them.

One :class:`Registrant` per coordinator.  A MIGRATE from the active
coordinator starts a second link; the server registers there before it
leaves, and stays put if the move fails within ``migration_timeout``.  Host
names are resolved by the adapter: a ``ResolveNeeded`` event says which link
needs an address, ``resolved()`` and ``resolve_failed()`` bring the answer
back.  Like the registrant, every input takes ``now`` and returns an
:class:`~homechannel.protocol.events.Output` (datagrams as ``[(datagram,
addr)]``, the next deadline), whose events are ``(link, event)`` pairs
(:mod:`homechannel.server.events`):

* ``Registered``, ``AttemptFailed``, ``PingMissed``, ``Reregistering``, ``Lost``,
  ``OfferReceived``, ``NoticeReceived``, ``MigrateRefused``, ``Left`` -- from a link's
  registrant (a ``MigrateRequested`` is acted on here);
* ``Moving``, ``Moved`` (the old link: the adapter saves the new target in the
  failover file), ``MoveFailed`` (reason);
* ``FailingOver`` (why), ``FailedOver`` (the old link): the active coordinator
  left a ping unanswered and another address of the same cluster
  (``candidates``) is being registered with / was;
* ``ResolveNeeded``; ``ResolveFailed`` (reason) -- the name did not resolve;
  retried later.

A MIGRATE may move the server only to a coordinator whose key is the configured one
(*pinned*: a move that keeps the key changes only the address) or in *allow_migrate*
(``coordinator.allow_migrate``, empty by default); any other is refused by the
registrant (``MigrateRefused``).  ``status()`` says whether the active coordinator's
key is another than the configured one (``pin_overridden``).

A name with IPv6 and IPv4 addresses is registered with over one of them, IPv6
first, by racing the HELLO step (Happy Eyeballs, :mod:`homechannel.server.eyeballs`);
``status()`` says which family won.
"""

import os

from homechannel.crypto import b64u_encode
from homechannel.protocol.events import Output
from homechannel.protocol.hostport import format_host_port, ip_family
from homechannel.server import eyeballs
from homechannel.server.events import (
    FailedOver, FailingOver, Lost, MigrateRequested, MoveFailed, Moved, Moving, PingMissed,
    Registered, Reregistering, ResolveFailed, ResolveNeeded,
)
from homechannel.server.registrant import Registrant

MIGRATION_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 10.0
RESOLVE_RETRY = 5.0


class Link:
    """One coordinator: its address, its registrant, its resolution state."""

    def __init__(self, host, port, key, registrant):
        self.host, self.port, self.key = host, port, key
        self.registrant = registrant
        self.addr = None          # resolved (ip, port): where the datagrams go
        self.race = None          # eyeballs.Race while the first HELLO step races families
        self.started_at = None    # first attempt (a move's deadline counts from it)
        self.retry_at = None      # when to resolve again after a failure
        self.resolving = False
        self.ipv6 = False         # its name has an IPv6 address
        self.failover = False     # to another node of the same cluster, not a move
        self.timeout = MIGRATION_TIMEOUT

    @property
    def name(self):
        return f"{self.host}:{self.port}"

    @property
    def target(self):
        return self.host, self.port, self.key


class Links:
    def __init__(self, identity, challenges, keepalive, target, random_bytes=os.urandom,
                 migration_timeout=MIGRATION_TIMEOUT, candidates=(), allow_migrate=(),
                 pinned=None):
        """*candidates*: every ``(host, port)`` of the coordinators that share the
        target's key, in order (a cluster's nodes), for failover.  *pinned*: the
        configured coordinator key (default: the target's); *allow_migrate*: the other
        keys a MIGRATE may move the server to."""
        self.identity = identity
        self.challenges = challenges
        self.keepalive = keepalive
        self.random_bytes = random_bytes
        self.migration_timeout = migration_timeout
        self._devices = None          # the device policy every registrant tells
        self.pinned = target[2] if pinned is None else pinned
        self.may_move_to = frozenset((self.pinned, *allow_migrate))
        self.active = self._link(*target)
        self.moving = None
        self._events = []             # (link, event) of the call in progress (see _output)
        self.candidates = [tuple(c) for c in candidates]
        self._unanswered = set()      # (ip, port) that stopped answering
        self._several = False         # a name resolved to several addresses
        self._last_tried = None       # (host, port) the last failover went to

    def _link(self, host, port, key):
        return Link(host, port, key, Registrant(self.identity, key, self.challenges,
                                                self.keepalive, self.random_bytes,
                                                devices=self._devices,
                                                may_move_to=self.may_move_to))

    def links(self):
        return [link for link in (self.active, self.moving) if link is not None]

    # -- lifecycle ------------------------------------------------------------

    def start(self, now):
        self._begin(self.active, now)
        return self._output([])

    def _begin(self, link, now):
        if link.started_at is None:
            link.started_at = now
        link.retry_at = None
        link.resolving = True
        self._events.append((link, ResolveNeeded()))

    def resolved(self, link, ips, now):
        """*ips*: an address, or every address of the name (the first that has not
        stopped answering is used)."""
        link.resolving = False
        if link.registrant.state == "stopped" or link not in self.links():
            return self._output([])
        ips = eyeballs.interleave([ips] if isinstance(ips, str) else list(ips))
        self._several = self._several or len(ips) > 1
        link.ipv6 = any(ip_family(ip) == "IPv6" for ip in ips)
        ip = next((ip for ip in ips if (ip, link.port) not in self._unanswered), ips[0])
        link.addr = (ip, link.port)
        other = eyeballs.other_family(
            ips, ip, skip={a for a, port in self._unanswered if port == link.port})
        link.race = eyeballs.Race(link.addr, (other, link.port), now) if other else None
        return self._output(self._out(link, link.registrant.start(now), now))

    def resolve_failed(self, link, reason, now):
        link.resolving = False
        if link.registrant.state == "stopped" or link not in self.links():
            return self._output([])
        if link is self.moving and now - link.started_at >= link.timeout:
            self._give_up(link, f"cannot resolve {link.host}: {reason}", now)
            return self._output([])
        self._events.append((link, ResolveFailed(reason)))
        link.retry_at = now + RESOLVE_RETRY
        return self._output([])

    def stop(self):
        for link in self.links():
            link.registrant.stop()

    def leave(self, now):
        """BYE to the active coordinator; abandon a move in progress."""
        if self.moving is not None:
            self.moving.registrant.stop()
            self.moving = None
        return self._output(self._out(self.active, self.active.registrant.leave(now), now))

    @property
    def left(self):
        return self.active.registrant.state == "stopped"

    # -- I/O ------------------------------------------------------------------------

    def receive(self, data, addr, now):
        """A datagram from *addr*; None if it is from no coordinator we talk to."""
        for link in self.links():
            if link.addr is not None and addr == link.addr:
                return self._output(self._out(link, link.registrant.receive(data, now), now))
            if link.race is not None and addr in link.race:
                output = link.registrant.receive(data, now)
                if link.registrant.state != "hello":
                    link.addr = addr        # its COOKIE came first: this family won
                return self._output(self._out(link, output, now))
        return None

    def set_devices(self, policy, now):
        """The device policy changed: every link tells its coordinator."""
        self._devices = policy
        out = []
        for link in self.links():
            out += self._out(link, link.registrant.set_devices(policy, now), now)
        return self._output(out)

    def send_answer(self, link, payload, now):
        if link not in self.links():
            return self._output([])
        return self._output(self._out(link, link.registrant.send_answer(payload, now), now))

    def poll(self, now):
        out = []
        for link in self.links():
            if link.retry_at is not None and now >= link.retry_at:
                self._begin(link, now)
            if link is self.moving and now >= link.started_at + link.timeout \
                    and link.registrant.state != "up":
                self._give_up(link, "it did not answer in time", now)
                continue
            if link.race is not None and link.registrant.state == "hello":
                out += link.race.poll(now)
            deadline = link.registrant.next_deadline()
            if link.addr is not None and deadline is not None and now >= deadline:
                out += self._out(link, link.registrant.poll(now), now)
        return self._output(out)

    def next_deadline(self):
        times = []
        for link in self.links():
            if link.retry_at is not None:
                times.append(link.retry_at)
            if link.addr is not None:
                times.append(link.registrant.next_deadline())
            if link.race is not None and link.registrant.state == "hello":
                times.append(link.race.next_deadline())
            if link is self.moving:
                times.append(link.started_at + link.timeout)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    # -- events -----------------------------------------------------------------------

    def _output(self, datagrams):
        """The datagrams of one call, with the events it raised and the next deadline."""
        events, self._events = self._events, []
        return Output(datagrams, events, self.next_deadline())

    def _out(self, link, output, now):
        """A registrant's output: its datagrams addressed, its events acted on and passed on."""
        out = self._address(link, output.datagrams, now)
        for event in output.events:
            if isinstance(event, Registered):
                self._unanswered.discard(link.addr)
                self._last_tried = None
                if link is self.moving:
                    self._moved(link)
            elif isinstance(event, MigrateRequested):
                self._migrate(event.target, now)
                continue
            elif isinstance(event, PingMissed) and link is self.active:
                self._failover(link, f"{event.count} ping(s) unanswered", now)
            elif isinstance(event, Lost) and link is self.active:
                self._failover(link, event.reason, now)
            elif (isinstance(event, Reregistering) and link is self.active and link.ipv6
                  and link.addr is not None and ip_family(link.addr[0]) == "IPv4"):
                # Registering again anyway (make before break, on this IPv4 address):
                # the name's IPv6 is tried beside it, and taken if it answers (IPv6
                # first, as at start: a mapping through no NAT).
                self._failover(link, "registering again: IPv6 first", now)
            self._events.append((link, event))
        return out

    def _address(self, link, datagrams, now):
        """*datagrams* of *link*'s registrant addressed: to the link's address, or, in
        the first HELLO step after resolving a name with both families, to the race's
        (``eyeballs``; decided by the first COOKIE, and then gone)."""
        if link.addr is None:
            return []
        if link.race is not None and link.registrant.state == "hello":
            return link.race.send(datagrams)
        link.race = None
        return [(d, link.addr) for d in datagrams]

    def _moved(self, link):
        old = self.active
        self.active, self.moving = link, None
        old.registrant.stop()
        if link.failover:
            # Another node of the same cluster: the configured list stays the truth.
            self._events.append((link, FailedOver(old)))
        else:
            self._events.append((link, Moved(old)))

    def _give_up(self, link, reason, now):
        link.registrant.stop()
        self.moving = None
        self._events.append((link, MoveFailed(reason)))
        if link.failover and (self.active.registrant.state != "up"
                              or self.active.addr in self._unanswered):
            # That one did not answer either: on to the next.
            if link.addr is not None:
                self._unanswered.add(link.addr)
            self._failover(link, "the next one did not answer either", now)

    # -- failover -------------------------------------------------------------------

    def _failover(self, link, why, now):
        """The active coordinator stopped answering: register with the next address
        of the same cluster (the old link is kept until the new one is up)."""
        if self.moving is not None or not (len(self.candidates) > 1 or self._several):
            return
        if link.addr is not None:
            self._unanswered.add(link.addr)
        host, port = self._next_candidate(self._last_tried or (link.host, link.port))
        self._last_tried = (host, port)
        self.moving = self._link(host, port, link.key)
        self.moving.failover = True
        self.moving.timeout = FAILOVER_TIMEOUT
        self._events.append((self.moving, FailingOver(why)))
        self._begin(self.moving, now)

    def _next_candidate(self, here):
        """The address after *here* in the list, never the active one's (it is
        retrying by itself) unless it is the only one (a name with several addresses)."""
        active = (self.active.host, self.active.port)
        n = len(self.candidates)
        start = self.candidates.index(here) if here in self.candidates else -1
        for step in range(1, n + 1):
            candidate = self.candidates[(start + step) % n]
            if candidate != active:
                return candidate
        return here

    def _migrate(self, target, now):
        host, port, key = target
        if self.moving is not None:
            if self.moving.target == target:
                return
            self.moving.registrant.stop()
            self.moving = None
        if target == self.active.target:
            return
        self.moving = self._link(host, port, key)
        self._events.append((self.moving, Moving()))
        self._begin(self.moving, now)

    # -- status ---------------------------------------------------------------------------

    def status(self):
        r = self.active.registrant
        addr = self.active.addr
        return {
            "state": r.state,
            "reregistering": r.reregistering,
            "coordinator": self.active.name,
            "coordinator_key": b64u_encode(self.active.key),
            "pin_overridden": self.active.key != self.pinned,
            # The address talked to, and its family once registered ("IPv6", "IPv4").
            "address": format_host_port(*addr) if addr is not None else None,
            "family": ip_family(addr[0]) if addr is not None and r.state == "up" else None,
            "moving_to": self.moving.name if self.moving is not None else None,
            "registrations": r.stats["registrations"],
            "lost": r.stats["lost"],
            "last_registered": r.last_registered,
            "last_failure": r.last_failure,
        }
