"""The home server's side of the UDP protocol, sans I/O.

One ``Registrant`` talks to one coordinator.  ``start``, ``receive``,
``poll`` and the requests (``send_answer``, ``refresh_challenges``, ``leave``)
take ``now`` and return an :class:`~homechannel.protocol.events.Output`: the
datagrams to send to that coordinator, the events the application must act on
and the next deadline (when to call ``poll``; also ``next_deadline()``).  The
events (:mod:`homechannel.server.events`):

* ``Registered()`` each time a registration completes;
* ``Lost(reason)`` when the link is declared dead;
* ``OfferReceived(payload)`` once per complete OFFER transfer;
* ``MigrateRequested(host, port, public_key)`` once per MIGRATE request;
* ``NoticeReceived(body)`` once per NOTICE (a failed login the coordinator caught);
* ``AttemptFailed(reason)`` once per registration attempt that failed, with a
  reason a person can act on (no answer: firewall or wrong address; a
  signature that does not match the pinned key; the coordinator refused, and
  why);
* ``Left()`` when a :meth:`leave` is acknowledged (or the coordinator had
  already forgotten us);
* ``PingMissed(n)`` each time a ping goes unanswered (*n* in a row), before
  ``Lost`` (a home server with other coordinators to go to starts there).

It retries for ever: each handshake datagram is retransmitted with jittered
exponential backoff from ``backoff_min`` to ``backoff_max``.
"""

import os
import random
from collections import deque
from collections.abc import Callable
from typing import Optional, TypeAlias

from twisted.logger import Logger

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.protocol.udp import POOL
from homechannel.config import ServerKeepalive
from homechannel.errors import AuthenticationError, ProtocolError
from homechannel.protocol.events import Event, Output
from homechannel.protocol.retransmit import Outstanding
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import (
    AttemptFailed, Left, Lost, MigrateRequested, NoticeReceived, OfferReceived, PingMissed,
    Registered,
)

log = Logger()

RegistrantOutput: TypeAlias = Output[bytes, Event]

HANDSHAKE_STEP_TRIES = 4     # resend INIT or FINISH this often, then start over
PING_TIMEOUT = 5.0           # a ping not answered by then counts as missed
ANSWER_DEADLINE = 30.0
BYE_INTERVAL = 0.25          # BYE is resent this often while leaving

# Why an attempt failed, by the step that got no answer.
NO_ANSWER = {
    "hello": "no answer from the coordinator (is outgoing UDP to it blocked by a firewall, "
             "or are coordinator.host and coordinator.port wrong?)",
    "init": "the coordinator answered the first step but not the key agreement "
            "(packet loss, or it is overloaded)",
    "finish": "the coordinator did not confirm the registration (packet loss, or it is "
              "overloaded)",
}
SIGNATURE_MISMATCH = ("the coordinator's signature does not match the pinned key (is "
                      "coordinator.public_key the key this coordinator logs at start?)")


class Registrant:
    # Per-session state: _reset_session sets these to None, then the step that
    # makes each sets it (the state tells which are set; the asserts say so).
    _nonce: bytes | None
    _eph: crypto.Ephemeral | None
    _hs_datagram: bytes | None
    _tx_key: bytes | None
    _rx_key: bytes | None
    _register_rid: int | None
    _timer: float | None
    _ping_rid: int | None
    _ping_due: float | None
    _refresh_at: float | None
    _sent_refs: deque[bytes]
    _migrations_seen: deque[int]
    _notices_seen: deque[int]

    def __init__(self, identity: crypto.IdentityKey, coordinator_key: bytes,
                 challenges: ChallengeSource,
                 keepalive: ServerKeepalive = ServerKeepalive(),
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 rng: random.Random | None = None, devices: bytes | None = None) -> None:
        crypto.public_key_from_raw(coordinator_key)
        self.identity = identity
        self.coordinator_key = coordinator_key
        self.challenges = challenges
        self.cfg = keepalive
        self.random_bytes = random_bytes
        self.rng = rng or random.Random(int.from_bytes(random_bytes(8), "big"))
        self.state = "idle"
        self.stats = {"dropped": 0, "registrations": 0, "lost": 0, "attempts-failed": 0}
        self.last_registered: Optional[float] = None   # ``now`` of the last registration
        self.last_failure: Optional[str] = None        # the reason of the last failed attempt
        self._events: list[Event] = []     # of the call in progress (see _output)
        self._backoff = keepalive.backoff_min
        self._timer = None
        self._step_tries = 0
        self._next_id = 0
        # Kept across sessions: transfer ids are unique per coordinator, and an
        # offer half received before a re-registration completes after it.
        self._reassembly = udp.Reassembly(max_transfers=8)
        self._out: Outstanding[int] = Outstanding(rto=1.0, rto_max=8.0, limit=1000)
        # The device policy (``connect.DevicePolicy.encode``) told to every coordinator
        # after each registration and whenever it changes (:meth:`set_devices`).
        self._devices = devices
        self._reset_session()

    # -- helpers -----------------------------------------------------------

    def _reset_session(self) -> None:
        self._nonce = None
        self._eph = None
        self._hs_datagram = None
        self._tx_key = self._rx_key = None
        self._tx_ctr = 0
        self._rx_top = self._rx_map = 0
        self._register_rid = None
        # Answers in flight survive a re-registration (re-sealed with the new
        # keys); a pending CHALLENGES refresh does not (REGISTER brings a pool).
        for req in self._out.clear():
            if req.message[0] == udp.XFER:
                self._out.add(req.key, req.message, req.sent, req.deadline)
        self._pool_gen = 0
        self._devices_gen = 0
        self._sent_refs = deque(maxlen=16)
        self._ping_rid = None
        self._ping_due = None
        self._missed = 0
        self._refresh_at = None
        self._migrations_seen = deque(maxlen=8)
        self._notices_seen = deque(maxlen=64)
        self._reported = False        # this attempt's failure is already reported
        self._bye_rid: Optional[int] = None
        self._bye_due: Optional[float] = None

    def _jitter(self, seconds: float, fraction: float | None = None) -> float:
        f = self.cfg.jitter if fraction is None else fraction
        return seconds * (1 + self.rng.uniform(-f, f))

    def _rid(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def _drop(self, reason: str) -> list[bytes]:
        self.stats["dropped"] += 1
        self.stats["dropped." + reason] = self.stats.get("dropped." + reason, 0) + 1
        log.debug("dropped datagram from coordinator: {reason}", reason=reason)
        return []

    def _output(self, datagrams: list[bytes]) -> RegistrantOutput:
        """The datagrams of one call, with the events it raised and the next deadline."""
        events, self._events = self._events, []
        return Output(datagrams, events, self.next_deadline())

    def _attempt_failed(self, reason: str) -> None:
        if self._reported:
            return
        self._reported = True
        self.last_failure = reason
        self.stats["attempts-failed"] += 1
        self._events.append(AttemptFailed(reason))

    def _seal(self, message: bytes) -> bytes:
        assert self._tx_key is not None   # states "finish", "up" and "leaving"
        dgram = udp.seal_data(self._tx_key, self._tx_ctr, message, udp.MIN_SERVER_DATAGRAM)
        self._tx_ctr += 1
        self._sent_refs.append(udp.unknown_reference(dgram))
        return dgram

    # -- handshake -----------------------------------------------------------

    def start(self, now: float) -> RegistrantOutput:
        """Begin (or begin again) registering."""
        return self._output(self._hello(now))

    def stop(self) -> None:
        self.state = "stopped"
        self._timer = None
        self._out.clear()

    def leave(self, now: float) -> RegistrantOutput:
        """Tell the coordinator we are going (BYE), so browsers see "offline" at once.

        Best effort: BYE is resent every ``BYE_INTERVAL`` while ``poll`` is called;
        ``Left()`` comes when it is acknowledged.  If we are not registered, there
        is nothing to say: the registrant stops at once (and ``Left()`` comes out
        of this call)."""
        if self.state == "leaving":
            return self._output([])
        if self.state != "up":
            return self._output(self._left())
        self.state = "leaving"
        self._out.clear()
        rid = self._bye_rid = self._rid()
        self._bye_due = now + BYE_INTERVAL
        return self._output([self._seal(udp.inner(udp.BYE, rid))])

    def _left(self) -> list[bytes]:
        self.stop()
        self._events.append(Left())
        return []

    def _hello(self, now: float) -> list[bytes]:
        self._reset_session()
        self._reported = False
        self.state = "hello"
        self._nonce = self.random_bytes(udp.NONCE_SIZE)
        self._eph = crypto.Ephemeral()
        self._hs_datagram = udp.hello(self._nonce)
        self._step_tries = 0
        return self._send_handshake(now)

    def _send_handshake(self, now: float) -> list[bytes]:
        self._step_tries += 1
        self._timer = now + self._jitter(self._backoff)
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max)
        assert self._hs_datagram is not None   # every handshake state has one
        return [self._hs_datagram]

    def _handshake_timeout(self, now: float) -> list[bytes]:
        if self.state == "refused":
            return self._hello(now)
        self._attempt_failed(NO_ANSWER[self.state])
        if self.state in ("init", "finish") and self._step_tries >= HANDSHAKE_STEP_TRIES:
            return self._hello(now)   # the cookie or pending state may be gone: start over
        self._reported = False        # each resend is a new attempt, reported once
        return self._send_handshake(now)

    def _cookie(self, data: bytes, now: float) -> list[bytes]:
        nonce, value = udp.parse_cookie(data)
        if self.state != "hello" or nonce != self._nonce:
            return self._drop("unexpected-cookie")
        assert self._eph is not None   # made with the nonce
        self._hs_datagram = udp.init(value, self._nonce, self.identity.public_raw,
                                      self._eph.public_raw)
        self.state = "init"
        self._step_tries = 0
        self._backoff = self.cfg.backoff_min
        return self._send_handshake(now)

    def _resp(self, data: bytes, now: float) -> list[bytes]:
        nonce, eph_c, sig = udp.parse_resp(data)
        if self.state != "init" or nonce != self._nonce:
            return self._drop("unexpected-resp")
        assert self._hs_datagram is not None and self._eph is not None   # state "init"
        th = udp.transcript_hash(self._hs_datagram, eph_c)
        try:
            crypto.verify(self.coordinator_key, sig, udp.RESP_LABEL + th)
        except AuthenticationError:
            self._attempt_failed(SIGNATURE_MISMATCH)
            raise
        self._tx_key, self._rx_key = crypto.session_keys(self._eph.shared_secret(eph_c), th)
        self._register_rid = self._rid()
        pool = udp.pairs(self.challenges.issue(POOL))
        self._hs_datagram = udp.finish(
            self._nonce, self.identity.sign(udp.FINISH_LABEL + th), self._tx_key, 0,
            udp.inner(udp.REGISTER, self._register_rid, pool))
        self._tx_ctr = 1
        self.state = "finish"
        self._step_tries = 0
        self._backoff = self.cfg.backoff_min
        return self._send_handshake(now)

    def _registered(self, now: float) -> list[bytes]:
        self.state = "up"
        self._backoff = self.cfg.backoff_min
        self._timer = None
        self._hs_datagram = None
        self._ping_due = now + self._jitter(self.cfg.interval)
        self._refresh_at = now + self._jitter(self.cfg.challenge_refresh, 0.1)
        self.stats["registrations"] += 1
        self.last_registered = now
        self.last_failure = None
        self._events.append(Registered())
        return self._send_devices(now)

    def _refused(self, body: bytes, now: float) -> list[bytes]:
        reason = udp.parse_refusal(body)
        self._attempt_failed(f"the coordinator refused the registration: {reason}")
        self._reset_session()
        self.state = "refused"           # start over after the backoff
        self._timer = now + self._jitter(self._backoff)
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max)
        return []

    def _lost(self, reason: str, now: float) -> list[bytes]:
        self.stats["lost"] += 1
        self._events.append(Lost(reason))
        self._backoff = self.cfg.backoff_min
        return self._hello(now)

    # -- input ----------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> RegistrantOutput:
        """A datagram from the coordinator.  Never raises on bad input."""
        return self._output(self._receive(data, now))

    def _receive(self, data: bytes, now: float) -> list[bytes]:
        if self.state == "stopped":
            return []
        try:
            kind = udp.datagram_type(data)
            if kind == udp.COOKIE:
                return self._cookie(data, now)
            if kind == udp.RESP:
                return self._resp(data, now)
            if kind == udp.DATA:
                return self._data(data, now)
            if kind == udp.UNKNOWN:
                return self._unknown(data, now)
            return self._drop("unexpected-type")
        except ProtocolError:
            return self._drop("malformed")
        except AuthenticationError:
            return self._drop("unauthenticated")

    def _unknown(self, data: bytes, now: float) -> list[bytes]:
        ref, sig = udp.parse_unknown(data)
        if self.state not in ("up", "leaving") or ref not in self._sent_refs:
            return self._drop("unexpected-unknown")
        crypto.verify(self.coordinator_key, sig, udp.UNKNOWN_LABEL + ref)
        if self.state == "leaving":
            return self._left()      # it forgot us already (our BYE_ACK was lost)
        log.info("coordinator does not know this server (restarted?): registering again")
        return self._lost("coordinator forgot us", now)

    def _data(self, data: bytes, now: float) -> list[bytes]:
        if self.state not in ("finish", "up", "leaving"):
            return self._drop("unexpected-data")
        assert self._rx_key is not None   # states "finish" and "up"
        counter, plain = udp.open_data(self._rx_key, data)
        ok, top, bitmap = udp.replay_check(self._rx_top, self._rx_map, counter)
        if not ok:
            return self._drop("replay")
        kind, rid, body = udp.parse_inner(plain)
        self._rx_top, self._rx_map = top, bitmap
        if kind == udp.REGISTERED:
            if self.state == "finish" and rid == self._register_rid:
                return self._registered(now)
            return []
        if kind == udp.REFUSED:
            if self.state == "finish" and rid == self._register_rid:
                return self._refused(body, now)
            return []
        if self.state == "leaving":
            if kind == udp.BYE_ACK and rid == self._bye_rid:
                return self._left()
            return []
        if self.state != "up":
            return self._drop("not-registered")
        if kind == udp.PONG:
            if rid == self._ping_rid:
                self._ping_rid = None
                self._missed = 0
                self._ping_due = now + self._jitter(self.cfg.interval)
            return []
        if kind in (udp.CHALLENGES_ACK, udp.XFER_ACK, udp.DEVICES_ACK):
            self._out.pop(rid)
            return []
        if kind == udp.REFILL:
            n = min(body[0] if body else POOL, POOL)
            return [self._seal(udp.inner(udp.REFILL_REPLY, rid,
                                          udp.pairs(self.challenges.issue(n))))]
        if kind == udp.XFER:
            frag = udp.parse_fragment(body)
            if frag.kind != udp.KIND_OFFER:
                return self._drop("unexpected-transfer")
            payload = self._reassembly.add(frag, now)
            if payload is not None:
                self._events.append(OfferReceived(payload))
            return [self._seal(udp.inner(udp.XFER_ACK, rid,
                                          udp.fragment_ack(frag.transfer, frag.index)))]
        if kind == udp.NOTICE:
            if rid not in self._notices_seen:
                self._notices_seen.append(rid)
                self._events.append(NoticeReceived(body))
            return [self._seal(udp.inner(udp.NOTICE_ACK, rid))]
        if kind == udp.MIGRATE:
            host, port, public_key = udp.parse_migrate(body)
            if rid not in self._migrations_seen:
                self._migrations_seen.append(rid)
                self._events.append(MigrateRequested(host, port, public_key))
            return [self._seal(udp.inner(udp.MIGRATE_ACK, rid))]
        return self._drop("unexpected-message")

    # -- requests from the home server --------------------------------------------

    def _request(self, kind: int, body: bytes, now: float, deadline: float = float("inf")) -> bytes:
        rid = self._rid()
        message = udp.inner(kind, rid, body)
        self._out.add(rid, message, now, deadline=now + deadline)
        return self._seal(message)

    def send_answer(self, payload: bytes, now: float) -> RegistrantOutput:
        """Send an ANSWER transfer (fragmented); retransmitted until acknowledged."""
        if self.state != "up":
            return self._output([])
        tid = self._rid()
        return self._output([self._request(udp.XFER, body, now, ANSWER_DEADLINE)
                             for body in udp.split(tid, udp.KIND_ANSWER, payload)])

    def refresh_challenges(self, now: float) -> RegistrantOutput:
        """Replace the coordinator's pool with fresh challenges (acknowledged)."""
        return self._output(self._refresh_challenges(now))

    def _refresh_challenges(self, now: float) -> list[bytes]:
        if self.state != "up":
            return []
        self._refresh_at = now + self._jitter(self.cfg.challenge_refresh, 0.1)
        self._pool_gen += 1
        return [self._request(udp.CHALLENGES, udp.generation_pairs(
            self._pool_gen, self.challenges.issue(POOL)), now)]

    def set_devices(self, policy: bytes, now: float) -> RegistrantOutput:
        """The home server's device policy changed (a device enrolled or revoked, or
        read at start): tell the coordinator now if registered, else after the next
        registration.  Acknowledged; the generation keeps a late copy from undoing a
        newer one."""
        self._devices = policy
        return self._output(self._send_devices(now))

    def _send_devices(self, now: float) -> list[bytes]:
        if self.state != "up" or self._devices is None:
            return []
        self._devices_gen += 1
        return [self._request(udp.DEVICES, udp.devices(self._devices_gen, self._devices), now)]

    # -- time ----------------------------------------------------------------------

    def poll(self, now: float) -> RegistrantOutput:
        """Whatever is due by *now*: handshake resends, pings, a challenge refresh,
        retransmissions, BYE while leaving."""
        return self._output(self._poll(now))

    def _poll(self, now: float) -> list[bytes]:
        if self.state in ("idle", "stopped"):
            return []
        if self.state == "leaving":
            assert self._bye_due is not None and self._bye_rid is not None
            if now >= self._bye_due:
                self._bye_due = now + BYE_INTERVAL
                return [self._seal(udp.inner(udp.BYE, self._bye_rid))]
            return []
        if self.state != "up":
            if self._timer is not None and now >= self._timer:
                return self._handshake_timeout(now)
            return []
        out = []
        assert self._ping_due is not None and self._refresh_at is not None   # state "up"
        if now >= self._ping_due:
            if self._ping_rid is not None:
                self._missed += 1
                self._events.append(PingMissed(self._missed))
                if self._missed >= self.cfg.missed_pongs:
                    log.info("coordinator stopped answering ({n} pings missed): registering again",
                             n=self._missed)
                    return self._lost("pings unanswered", now)
            self._ping_rid = self._rid()
            self._ping_due = now + min(PING_TIMEOUT, self.cfg.interval)
            out.append(self._seal(udp.inner(udp.PING, self._ping_rid)))
        if now >= self._refresh_at:
            out += self._refresh_challenges(now)
        resend, _expired = self._out.due(now)
        out += [self._seal(req.message) for req in resend]
        return out

    def next_deadline(self) -> float | None:
        """When to call ``poll`` (also in every :class:`Output`)."""
        if self.state in ("idle", "stopped"):
            return None
        if self.state == "leaving":
            return self._bye_due
        if self.state != "up":
            return self._timer
        times = [self._ping_due, self._refresh_at, self._out.next_deadline()]
        return min(t for t in times if t is not None)
