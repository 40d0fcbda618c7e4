"""The coordinator's UDP transport: a thin ``DatagramProtocol`` around the
sans-I/O :class:`~homechannel.coordinator.rendezvous.Rendezvous`, which also
provides :class:`IRelay` to the HTTPS API.

It moves datagrams, runs the core's one timer (``ops.deadline``) and its
expiry sweep, and dispatches the core's events by class (``_HANDLERS``): an
ANSWER to the broker's handler, an offer's outcome to its Deferred, pool and
expiry events to a cluster's directory (``set_directory``)."""

import itertools

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from homechannel import crypto
from homechannel.coordinator.devicepolicy import DevicePolicies
from homechannel.coordinator.events import (
    AnswerReceived, DevicesUpdated, OfferAcknowledged, OfferFailed, PoolUpdated,
    ServerForgotten,
)
from homechannel.coordinator.interfaces import IRelay
from homechannel.errors import Unavailable
from homechannel.ops.deadline import DeadlineTimer
from homechannel.ops.logsafe import Logger

log = Logger()


def write_all(transport, out, stats):
    """Send ``[(bytes, addr)]``; a failed send is counted (``send-errors``), not raised."""
    for data, addr in out:
        try:
            transport.write(data, addr)
        except OSError as e:
            stats["send-errors"] += 1
            log.debug("send to {addr} failed: {err}", addr=addr, err=e)


class StunUDP(DatagramProtocol):
    """The optional extra STUN port (``udp.stun_port``): only STUN Binding,
    answered by the same :class:`~homechannel.coordinator.stun.StunResponder`
    (so one rate limit and one set of counters) as the registry port."""

    def __init__(self, responder, clock):
        self.responder = responder
        self.clock = clock

    def datagramReceived(self, data, addr):
        try:
            out = self.responder.receive(data, addr, self.clock.seconds())
        except Exception:
            log.failure("bug answering STUN from {addr}", addr=addr)
            return
        write_all(self.transport, out, self.responder.stats)


@implementer(IRelay)
class CoordinatorUDP(DatagramProtocol):
    def __init__(self, rendezvous, clock, expiry=90.0, sweep_interval=1.0):
        self.rv = rendezvous
        self.clock = clock
        self.expiry = expiry
        self.sweep_interval = sweep_interval
        self._timer = DeadlineTimer(clock, self._fire)
        self._answer_handler = None
        self._directory = None
        self.devices = DevicePolicies()   # the device policies of servers registered here
        self._policies = None             # a cluster's store of them (set_policy_store)
        self._offers = {}                 # offer_id -> Deferred
        self._offer_ids = itertools.count(1)
        self._sweeper = None

    # -- transport --

    def startProtocol(self):
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.sweep_interval, now=False).addErrback(
            lambda f: log.failure("expiry sweep stopped", f))

    def stopProtocol(self):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._timer.cancel()

    def _sweep(self):
        # Scan enough slots per tick that a whole pass takes at most a third
        # of the expiry time, however large the registry grows.
        passes = max(1.0, (self.expiry / 3) / self.sweep_interval)
        budget = max(1000, int(self.rv.registry.slot_count / passes) + 1)
        try:
            out = self.rv.expire(self.clock.seconds(), self.expiry, budget)
        except Exception:
            log.failure("expiry sweep failed (will run again)")
            return
        removed = sum(isinstance(e, ServerForgotten) for e in out.events)
        if removed:
            log.info("expired {n} silent servers", n=removed)
        self._send(out)

    def datagramReceived(self, data, addr):
        try:
            out = self.rv.receive(data, addr, self.clock.seconds())
        except Exception:
            log.failure("bug handling a datagram from {addr}", addr=addr)
            return
        self._send(out)

    def _send(self, out):
        """One call's output: its datagrams sent, the timer set, then its events
        handled (a handler that calls the core again sends and schedules itself)."""
        if self.transport is not None:
            write_all(self.transport, out.datagrams, self.rv.stats)
        self._timer.schedule(out.deadline)
        for event in out.events:
            try:
                self._HANDLERS[type(event)](self, event)
            except Exception:
                log.failure("bug handling {event}", event=type(event).__name__)

    def _fire(self):
        try:
            out = self.rv.poll(self.clock.seconds())
        except Exception:
            log.failure("bug in retransmission")
            self._timer.schedule(self.rv.next_deadline())
            return
        self._send(out)

    # -- IRelay (async def: the connect flow's seam; these finish at once but the offer) --

    async def server_status(self, server_key):
        return self.rv.server_status(crypto.key_id(server_key))

    async def take_challenge(self, server_key, challenge):
        expected, out = self.rv.take_challenge(crypto.key_id(server_key), challenge,
                                               self.clock.seconds())
        self._send(out)
        return expected

    def answer_matches(self, server_key, challenge, answer, expected):
        return crypto.check_answer(answer, expected)

    async def send_offer(self, server_key, payload):
        await self.offer_to(crypto.key_id(server_key), payload)

    async def notify(self, server_key, body):
        self.notice_to(crypto.key_id(server_key), body)

    async def device_policy(self, server_key):
        return self.devices.get(crypto.key_id(server_key))

    # -- by key id (the cluster relays offers, notices and refills from other nodes) --

    def offer_to(self, kid, payload):
        """``send_offer`` for the server with key id *kid*."""
        offer_id = next(self._offer_ids)
        d = self._offers[offer_id] = defer.Deferred()
        self._send(self.rv.send_offer(kid, payload, self.clock.seconds(), offer_id))
        return d

    def notice_to(self, kid, body):
        self._send(self.rv.notify(kid, body, self.clock.seconds()))

    def refill(self, kid):
        """Ask the server with key id *kid* for fresh challenges (one request in flight)."""
        self._send(self.rv.request_refill(kid, self.clock.seconds()))

    def set_answer_handler(self, handler):
        self._answer_handler = handler

    def set_directory(self, directory):
        """A cluster's directory (``redisrelay.Directory``): ``directory.pool(kid,
        pairs, replace)`` whenever a server's challenge pool is set here,
        ``directory.forget(kid)`` when a server expires here.  Either may return a
        Deferred or a coroutine; its failure is logged."""
        self._directory = directory

    # -- events from the core --

    def _answer_received(self, event):
        if self._answer_handler is None:
            self.rv.stats["dropped.unsolicited-answer"] += 1
            return
        self._answer_handler(event.kid, event.payload)

    def _offer_acknowledged(self, event):
        d = self._offers.pop(event.offer_id, None)
        if d is not None:
            d.callback(None)

    def _offer_failed(self, event):
        d = self._offers.pop(event.offer_id, None)
        if d is not None:
            d.errback(Unavailable(event.reason))

    def _pool_updated(self, event):
        if self._directory is not None:
            self._to_directory(self._directory.pool, event.kid, event.pairs, event.replace)

    def _server_forgotten(self, event):
        if self._directory is not None:
            self._to_directory(self._directory.forget, event.kid)
        if self.devices.get(event.kid) is not None and self._policies is not None:
            self._to_directory(self._policies.forget, event.kid)
        self.devices.forget(event.kid)

    def set_policy_store(self, store):
        """A cluster's store of device policies (``redispolicies.PolicyStore``):
        ``store.set(kid, policy)`` when a server here tells a new one,
        ``store.forget(kid)`` when it is forgotten here."""
        self._policies = store

    def _devices_updated(self, event):
        if self.devices.update(event.kid, event.session, event.generation, event.policy):
            if self._policies is not None:
                self._to_directory(self._policies.set, event.kid, event.policy)

    def _to_directory(self, method, *args):
        defer.maybeDeferred(method, *args).addErrback(
            lambda f: log.failure("the cluster directory failed", f))

    _HANDLERS = {
        AnswerReceived: _answer_received,
        OfferAcknowledged: _offer_acknowledged,
        OfferFailed: _offer_failed,
        PoolUpdated: _pool_updated,
        ServerForgotten: _server_forgotten,
        DevicesUpdated: _devices_updated,
    }

    # -- operator --

    def migrate(self, server_key, host, port, target_key):
        """Tell a registered server to move to another coordinator."""
        out = self.rv.migrate(crypto.key_id(server_key), host, port, target_key,
                              self.clock.seconds())
        self._send(out)

    def migrate_all(self, host, port, target_key):
        now = self.clock.seconds()
        reg = self.rv.registry
        n = 0
        for slot in reg.slots():
            try:
                self._send(self.rv.migrate(reg.key_id(slot), host, port, target_key, now))
                n += 1
            except (Unavailable, OverflowError):
                pass
        return n
