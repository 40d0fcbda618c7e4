"""The home server's side of the UDP protocol, sans I/O.

One ``Registrant`` talks to one coordinator.  ``start``, ``receive``,
``poll`` and the requests (``send_answer``, ``refresh_challenges``, ``leave``)
take ``now`` and return an :class:`~homechannel.protocol.events.Output`: the
datagrams to send to that coordinator, the events the application must act on
and the next deadline (when to call ``poll``; also ``next_deadline()``).  The
events (:mod:`homechannel.server.events`):

* ``Registered()`` each time a registration completes;
* ``Reregistering(reason)`` when a signed UNKNOWN started a new registration while
  the session is kept until it completes (make-before-break, see :meth:`_unknown`);
* ``Lost(reason)`` when the link is declared dead;
* ``OfferReceived(payload)`` once per complete OFFER transfer;
* ``MigrateRequested(host, port, public_key)`` once per MIGRATE request to a key in
  *may_move_to*; ``MigrateRefused(host, port, public_key, reason)`` once per one to
  any other key (acknowledged with the reason, so the coordinator's operator sees it);
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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Optional, TypeAlias


from homechannel import crypto

from homechannel.ops.logsafe import Logger
from homechannel.protocol import udp
from homechannel.protocol.udp import POOL
from homechannel.config import ServerKeepalive
from homechannel.errors import AuthenticationError, ProtocolError
from homechannel.protocol.events import Event, Output
from homechannel.protocol.retransmit import Outstanding
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import (
    AttemptFailed, Left, Lost, MigrateRefused, MigrateRequested, NoticeReceived,
    OfferReceived, PingMissed, Registered, Reregistering,
)

log = Logger()

RegistrantOutput: TypeAlias = Output[bytes, Event]

HANDSHAKE_STEP_TRIES = 4     # resend INIT or FINISH this often, then start over
PING_TIMEOUT = 5.0           # a ping not answered by then counts as missed
ANSWER_DEADLINE = 30.0
BYE_INTERVAL = 0.25          # BYE is resent this often while leaving
UNKNOWN_HOLDOFF = 30.0       # an UNKNOWN starts a registration at most this often

# Why an attempt failed, by the step that got no answer.
NO_ANSWER = {
    "hello": "no answer from the coordinator (is outgoing UDP to it blocked by a firewall, "
             "or are coordinator.host and coordinator.port wrong?)",
    "init": "the coordinator answered the first step but not the key agreement "
            "(packet loss, or it is overloaded)",
    "finish": "the coordinator did not confirm the registration (packet loss, or it is "
              "overloaded)",
}
MIGRATE_NOT_ALLOWED = "key not in coordinator.allow_migrate"
SIGNATURE_MISMATCH = ("the coordinator's signature does not match the pinned key (is "
                      "coordinator.public_key the key this coordinator logs at start?)")


@dataclass(slots=True)
class _Handshake:
    """One registration attempt: its datagram (HELLO, INIT or FINISH, resent until the
    next step's answer), then the new session's keys until REGISTERED installs them."""

    nonce: bytes
    eph: crypto.Ephemeral
    datagram: bytes
    step: str = "hello"              # "hello", "init", "finish"; "refused": start over later
    tries: int = 0
    timer: float | None = None       # resend (or start over) at this time
    reported: bool = False           # this attempt's failure is already reported
    register_rid: int | None = None
    tx_key: bytes | None = None
    rx_key: bytes | None = None
    rx_top: int = 0
    rx_map: int = 0


class Registrant:
    # The session's state: _reset_session sets these to None, and a registration
    # (_registered) sets the keys and the ping and refresh times.
    _tx_key: bytes | None
    _rx_key: bytes | None
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
                 rng: random.Random | None = None, devices: bytes | None = None,
                 may_move_to: Collection[bytes] = ()) -> None:
        """*devices*: the device policy to tell (``set_devices``); *may_move_to*: the
        coordinator keys a MIGRATE may move this server to (the configured key and
        ``coordinator.allow_migrate``); others are refused."""
        crypto.public_key_from_raw(coordinator_key)
        self.identity = identity
        self.coordinator_key = coordinator_key
        self.may_move_to = frozenset(may_move_to)
        self.challenges = challenges
        self.cfg = keepalive
        self.random_bytes = random_bytes
        self.rng = rng or random.Random(int.from_bytes(random_bytes(8), "big"))
        # "idle", the handshake's step ("hello", "init", "finish", "refused") while not
        # registered, "up", "leaving" or "stopped".
        self.state = "idle"
        self.stats = {"dropped": 0, "registrations": 0, "lost": 0, "attempts-failed": 0,
                      "reregistrations": 0}
        self.last_registered: Optional[float] = None   # ``now`` of the last registration
        self.last_failure: Optional[str] = None        # the reason of the last failed attempt
        self._events: list[Event] = []     # of the call in progress (see _output)
        self._backoff = keepalive.backoff_min
        self._hs: _Handshake | None = None   # the registration in progress, if any
        self._unknown_at: float | None = None  # when an UNKNOWN last started one
        self._next_id = 0
        # Kept across sessions: transfer ids are unique per coordinator, and an
        # offer half received before a re-registration completes after it.
        self._reassembly = udp.Reassembly(max_transfers=8)
        self._out: Outstanding[int] = Outstanding(rto=1.0, rto_max=8.0, limit=1000)
        # The device policy (``connect.DevicePolicy.encode``) told to every coordinator
        # after each registration and whenever it changes (:meth:`set_devices`).
        self._devices = devices
        self._reset_session()

    @property
    def reregistering(self) -> bool:
        """Registered, and registering again (after an UNKNOWN) on the side."""
        return self.state == "up" and self._hs is not None

    # -- helpers -----------------------------------------------------------

    def _reset_session(self) -> None:
        self._tx_key = self._rx_key = None
        self._tx_ctr = 0
        self._rx_top = self._rx_map = 0
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

    def _attempt_failed(self, hs: _Handshake, reason: str) -> None:
        if hs.reported:
            return
        hs.reported = True
        self.last_failure = reason
        self.stats["attempts-failed"] += 1
        self._events.append(AttemptFailed(reason))

    def _seal(self, message: bytes, pad_to: int = udp.MIN_SERVER_DATAGRAM) -> bytes:
        assert self._tx_key is not None   # states "up" and "leaving"
        dgram = udp.seal_data(self._tx_key, self._tx_ctr, message, pad_to)
        self._tx_ctr += 1
        self._sent_refs.append(udp.unknown_reference(dgram))
        return dgram

    @property
    def _registered_now(self) -> bool:
        return self.state in ("up", "leaving")

    def _set_step(self, hs: _Handshake, step: str) -> None:
        """The handshake moves to *step*; so does the state while not registered."""
        hs.step = step
        if not self._registered_now:
            self.state = step

    # -- handshake -----------------------------------------------------------

    def start(self, now: float) -> RegistrantOutput:
        """Begin (or begin again) registering."""
        return self._output(self._hello(now))

    def stop(self) -> None:
        self.state = "stopped"
        self._hs = None
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
        self._hs = None
        self._out.clear()
        rid = self._bye_rid = self._rid()
        self._bye_due = now + BYE_INTERVAL
        return self._output([self._seal(udp.inner(udp.BYE, rid))])

    def _left(self) -> list[bytes]:
        self.stop()
        self._events.append(Left())
        return []

    def _hello(self, now: float) -> list[bytes]:
        """Start registering from scratch, with no session."""
        self._reset_session()
        self.state = "hello"
        return self._begin_handshake(now)

    def _begin_handshake(self, now: float) -> list[bytes]:
        """A new handshake from HELLO (a registered session, if any, is kept)."""
        nonce = self.random_bytes(udp.NONCE_SIZE)
        hs = self._hs = _Handshake(nonce, crypto.Ephemeral(), udp.hello(nonce))
        self._set_step(hs, "hello")
        return self._send_handshake(hs, now)

    def _send_handshake(self, hs: _Handshake, now: float) -> list[bytes]:
        hs.tries += 1
        hs.timer = now + self._jitter(self._backoff)
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max)
        return [hs.datagram]

    def _handshake_timeout(self, hs: _Handshake, now: float) -> list[bytes]:
        if hs.step == "refused":
            return self._begin_handshake(now)
        self._attempt_failed(hs, NO_ANSWER[hs.step])
        if hs.step in ("init", "finish") and hs.tries >= HANDSHAKE_STEP_TRIES:
            return self._begin_handshake(now)   # the cookie or pending state may be gone
        hs.reported = False           # each resend is a new attempt, reported once
        return self._send_handshake(hs, now)

    def _cookie(self, data: bytes, now: float) -> list[bytes]:
        nonce, value = udp.parse_cookie(data)
        hs = self._hs
        if hs is None or hs.step != "hello" or nonce != hs.nonce:
            return self._drop("unexpected-cookie")
        hs.datagram = udp.init(value, hs.nonce, self.identity.public_raw, hs.eph.public_raw)
        self._set_step(hs, "init")
        hs.tries = 0
        self._backoff = self.cfg.backoff_min
        return self._send_handshake(hs, now)

    def _resp(self, data: bytes, now: float) -> list[bytes]:
        nonce, eph_c, sig = udp.parse_resp(data)
        hs = self._hs
        if hs is None or hs.step != "init" or nonce != hs.nonce:
            return self._drop("unexpected-resp")
        th = udp.transcript_hash(hs.datagram, eph_c)
        try:
            crypto.verify(self.coordinator_key, sig, udp.RESP_LABEL + th)
        except AuthenticationError:
            self._attempt_failed(hs, SIGNATURE_MISMATCH)
            raise
        hs.tx_key, hs.rx_key = crypto.session_keys(hs.eph.shared_secret(eph_c), th)
        hs.register_rid = self._rid()
        pool = udp.pairs(self.challenges.issue(POOL))
        hs.datagram = udp.finish(
            hs.nonce, self.identity.sign(udp.FINISH_LABEL + th), hs.tx_key, 0,
            udp.inner(udp.REGISTER, hs.register_rid, pool))
        self._set_step(hs, "finish")
        hs.tries = 0
        self._backoff = self.cfg.backoff_min
        return self._send_handshake(hs, now)

    def _registered(self, hs: _Handshake, now: float) -> list[bytes]:
        """REGISTERED: the handshake's keys become the session (the one it replaces,
        if any, ends here)."""
        self._reset_session()
        self._tx_key, self._rx_key = hs.tx_key, hs.rx_key
        self._tx_ctr = 1                  # 0 was FINISH's
        self._rx_top, self._rx_map = hs.rx_top, hs.rx_map
        self._hs = None
        self.state = "up"
        self._backoff = self.cfg.backoff_min
        self._ping_due = now + self._jitter(self.cfg.interval)
        self._refresh_at = now + self._jitter(self.cfg.challenge_refresh, 0.1)
        self.stats["registrations"] += 1
        self.last_registered = now
        self.last_failure = None
        self._events.append(Registered())
        return self._send_devices(now)

    def _refused(self, hs: _Handshake, body: bytes, now: float) -> list[bytes]:
        reason = udp.parse_refusal(body)
        self._attempt_failed(hs, f"the coordinator refused the registration: {reason}")
        hs.tx_key = hs.rx_key = None
        self._set_step(hs, "refused")     # start over after the backoff
        hs.timer = now + self._jitter(self._backoff)
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max)
        return []

    def _lost(self, reason: str, now: float) -> list[bytes]:
        self.stats["lost"] += 1
        self._events.append(Lost(reason))
        self._backoff = self.cfg.backoff_min
        hs = self._hs
        if hs is not None and self.state == "up":
            # Registering again already (an UNKNOWN): carry on with that, sessionless.
            self._reset_session()
            self.state = hs.step
            return []
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
        """A signed "unknown, register again" for one of our last datagrams.

        Make-before-break: the session is kept (offers on it are answered) while a
        new registration runs on the side, and a PING probes it at once.  A PONG to
        that probe (or a later ping) proves the coordinator still knows the session:
        the UNKNOWN was not about it (someone replayed our datagram from another
        address) and the new registration is abandoned.  Otherwise REGISTERED
        replaces the session.  (The probe is smaller than an UNKNOWN, so a coordinator
        that lost the session answers it with nothing.)  Each datagram's UNKNOWN is acted on once, and an
        UNKNOWN starts a registration at most once every ``UNKNOWN_HOLDOFF`` seconds
        (a session that is really gone then ends by missed pings)."""
        ref, sig = udp.parse_unknown(data)
        if not self._registered_now or ref not in self._sent_refs:
            return self._drop("unexpected-unknown")
        crypto.verify(self.coordinator_key, sig, udp.UNKNOWN_LABEL + ref)
        self._sent_refs.remove(ref)
        if self.state == "leaving":
            return self._left()      # it forgot us already (our BYE_ACK was lost)
        if self._hs is not None:
            return self._drop("unknown-registering")
        if self._unknown_at is not None and now - self._unknown_at < UNKNOWN_HOLDOFF:
            return self._drop("unknown-holdoff")
        self._unknown_at = now
        self.stats["reregistrations"] += 1
        self._events.append(Reregistering("it does not know this server (it restarted, or "
                                          "this server's address changed)"))
        # The probe is not padded: smaller than an UNKNOWN, so a coordinator that
        # really lost the session does not spend a signature on a second one.
        self._ping_rid = self._rid()
        self._ping_due = now + min(PING_TIMEOUT, self.cfg.interval)
        probe = self._seal(udp.inner(udp.PING, self._ping_rid), pad_to=0)
        return [probe, *self._begin_handshake(now)]

    def _data(self, data: bytes, now: float) -> list[bytes]:
        hs = self._hs
        pending = hs if hs is not None and hs.rx_key is not None else None
        if self._registered_now:
            if pending is None:
                return self._session_data(data, now)
            try:
                return self._session_data(data, now)
            except AuthenticationError:
                pass                  # not the session's: maybe the new one's REGISTERED
        if pending is not None:
            return self._handshake_data(pending, data, now)
        return self._drop("unexpected-data")

    @staticmethod
    def _open(key: bytes, top: int, bitmap: int,
              data: bytes) -> tuple[int, int, bytes, int, int] | None:
        """DATA opened under *key* past the replay window (*top*, *bitmap*): ``(kind,
        rid, body, top, bitmap)`` with the window moved, or None for a replay.  Raises
        AuthenticationError or ProtocolError (the window then stays)."""
        counter, plain = udp.open_data(key, data)
        ok, top, bitmap = udp.replay_check(top, bitmap, counter)
        if not ok:
            return None
        return (*udp.parse_inner(plain), top, bitmap)

    def _handshake_data(self, hs: _Handshake, data: bytes, now: float) -> list[bytes]:
        """DATA under the keys of the registration in progress: REGISTERED or REFUSED."""
        assert hs.rx_key is not None
        opened = self._open(hs.rx_key, hs.rx_top, hs.rx_map, data)
        if opened is None:
            return self._drop("replay")
        kind, rid, body, hs.rx_top, hs.rx_map = opened
        if rid == hs.register_rid and hs.step == "finish":
            if kind == udp.REGISTERED:
                return self._registered(hs, now)
            if kind == udp.REFUSED:
                return self._refused(hs, body, now)
        return self._drop("not-registered")

    def _session_data(self, data: bytes, now: float) -> list[bytes]:
        assert self._rx_key is not None   # states "up" and "leaving"
        opened = self._open(self._rx_key, self._rx_top, self._rx_map, data)
        if opened is None:
            return self._drop("replay")
        kind, rid, body, self._rx_top, self._rx_map = opened
        if kind in (udp.REGISTERED, udp.REFUSED):
            return []                 # a late duplicate
        if self.state == "leaving":
            if kind == udp.BYE_ACK and rid == self._bye_rid:
                return self._left()
            return []
        if kind == udp.PONG:
            if rid == self._ping_rid:
                self._ping_rid = None
                self._missed = 0
                self._ping_due = now + self._jitter(self.cfg.interval)
                if self._hs is not None:
                    # A ping sent since the UNKNOWN was answered: the session works.
                    self._hs = None
                    self.stats["reregistrations-moot"] = \
                        self.stats.get("reregistrations-moot", 0) + 1
                    log.info("the coordinator answers this session: the UNKNOWN was "
                             "not about it (a datagram of ours replayed from another "
                             "address?); not registering again")
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
            allowed = public_key in self.may_move_to
            if rid not in self._migrations_seen:
                self._migrations_seen.append(rid)
                self._events.append(MigrateRequested(host, port, public_key) if allowed else
                                    MigrateRefused(host, port, public_key,
                                                   MIGRATE_NOT_ALLOWED))
            reply = b"" if allowed else udp.refusal(MIGRATE_NOT_ALLOWED)
            return [self._seal(udp.inner(udp.MIGRATE_ACK, rid, reply))]
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
        out = []
        hs = self._hs
        if hs is not None and hs.timer is not None and now >= hs.timer:
            out += self._handshake_timeout(hs, now)
        if self.state != "up":
            return out
        assert self._ping_due is not None and self._refresh_at is not None   # state "up"
        if now >= self._ping_due:
            if self._ping_rid is not None:
                self._missed += 1
                self._events.append(PingMissed(self._missed))
                if self._missed >= self.cfg.missed_pongs:
                    log.info("coordinator stopped answering ({n} pings missed): registering again",
                             n=self._missed)
                    return out + self._lost("pings unanswered", now)
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
        hs_timer = self._hs.timer if self._hs is not None else None
        if self.state != "up":
            return hs_timer
        times = [self._ping_due, self._refresh_at, self._out.next_deadline(), hs_timer]
        return min(t for t in times if t is not None)
