"""The connect use-case of the coordinator: lookups, connects, answers.

Everything the coordinator decides about a connect attempt lives here, apart
from HTTP (``web.py`` maps requests to these calls and errors to responses)
and apart from the UDP protocol (``IRelay``).  Formats, limits and codes come
from :mod:`homechannel.protocol.connect`.

Order of checks for ``POST /api/connect`` (docs/protocol.md section 2):

1. the body parses (``ConnectRequest.parse``: shape of every field and of the
   offer SDP);
2. with a **device token** that verifies with the server's key (a client that
   signed in before): the device (for this server) is not locked out and is
   within its own rate, the source is within its device-path rate (a generous
   one of its own, apart from strangers' budget: whoever shares the owner's
   address, behind a carrier NAT or in a hotel, cannot lock the owner's
   device out), the server is online, the client-made challenge is fresh;
   the offer goes to the home server, which checks the proof (a wrong
   password there counts against the device and the source);
3. otherwise (**pool path**; a token that does not verify is refused as
   ``bad-device`` after these, and counts half a failure against the source):
   the source (IPv6 /56) is not locked out; the source (IPv6 /64) is within
   its rate; the server is online; the server's budget (per minute and per
   day) is not spent -- checked before the challenge is touched, so a spent
   budget never drains the pool; the challenge is taken from the pool
   (single use; a stale or made-up one counts half a failure against the
   source); only now is the server's budget spent; the answer is checked
   against ``expectedAnswer`` in constant time (a wrong one counts a
   failure against the source and is reported to the home server);
4. the pending session is created and the offer relayed.

The checks of one path that do not depend on each other are asked for
together, in one Redis round trip on a cluster node; they are decided in the
order above, and an attempt refused for a lockout has still spent one of its
rate's attempts.

So an attacker's attempts spend only what a valid challenge lets them spend,
lockouts fall on sources and devices, never on the server, and a client that
signed in before (it holds a device token) keeps a budget of its own.
"""

import math
import os
from collections import Counter, OrderedDict

from twisted.internet import defer

from homechannel import crypto

from homechannel.ops.logsafe import Logger
from homechannel.protocol import connect
from homechannel.coordinator.ratelimit import Lockout, RateLimiter, lockout_key, source_key
from homechannel.coordinator.sessions import MemorySessionStore
from homechannel.errors import (
    AuthenticationError,
    Forbidden,
    HomeChannelError,
    NotFound,
    ProtocolError,
    TooManyRequests,
    Unavailable,
)

DAY = 86400.0
# A stale or made-up challenge counts this much of a failed password towards
# the source's lockout (a stale one can be an honest race with another client).
STALE_WEIGHT = 0.5
# Device-path attempts one source may make, as a multiple of web.per_ip_per_minute:
# a budget of its own, so strangers spending a shared address's budget do not touch it.
DEVICE_SOURCE_FACTOR = 4
# The "scope" field of a 429 (rate-limited, locked-out): whose budget is spent, so a
# client can say so without reading the message (docs/protocol.md, "Error codes").
SOURCE, SERVER, DEVICE = "source", "server", "device"


def device_key(server_key: bytes, device: str) -> str:
    """What a device's budget and lockout are kept under: the device *for this server*
    (a device id is only the home server's word; another server could issue the same)."""
    return f"{crypto.b64u_encode(crypto.key_id(server_key))}:{device}"


def _settle(value):
    """A seam's result as a Deferred (in-memory seams answer at once, shared ones later)."""
    return value if isinstance(value, defer.Deferred) else defer.succeed(value)


def _all(*values):
    """:func:`_now_all` as a Deferred, for callers that are not coroutines."""
    ready = _now_all(*values)
    return defer.succeed(ready.value) if isinstance(ready, _Ready) else ready


class _Ready:
    """A value that is already there, to ``await`` in a coroutine without a Deferred
    (an in-memory seam's answer: no Deferred made, fired and taken apart again)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __await__(self):
        yield from ()
        return self.value


def _now(value):
    """A seam's result to ``await``: its Deferred, or the value itself at once."""
    return value if isinstance(value, defer.Deferred) else _Ready(value)


def _now_all(*values):
    """Wait for several seams' results at once (one Redis round trip for all of them),
    to ``await``: without any Deferred when every seam answered at once."""
    if not any(isinstance(v, defer.Deferred) for v in values):
        return _Ready(list(values))
    return defer.gatherResults([_settle(v) for v in values], consumeErrors=True).addErrback(
        lambda f: f.value.subFailure)


def memory_limiter(clock, name, limit, period, burst=None):
    """The default ``make_limiter``: an in-memory token bucket."""
    return RateLimiter(clock, limit, period, burst=burst)


def memory_lockout(clock, name, threshold, base, maximum):
    """The default ``make_lockout``: in-memory lockouts."""
    return Lockout(clock, threshold=threshold, base=base, maximum=maximum)


class Broker:
    """The connect flow behind the HTTPS API (one per coordinator process).

    The seams (*relay*, *sessions*, the limiters and lockouts made by
    *make_limiter* and *make_lockout*) may answer at once (in memory) or with
    a Deferred (the cluster's Redis implementations); :meth:`lookup`,
    :meth:`connect` and :meth:`wait` return Deferreds either way.  Checks that
    do not depend on each other are asked for together, so that a cluster
    node makes one Redis round trip for them."""

    log = Logger()

    def __init__(self, relay, config, clock, *, sessions=None,
                 ice_servers=None, random_bytes=os.urandom, make_limiter=memory_limiter,
                 make_lockout=memory_lockout):
        """*config* is the ``[web]`` configuration (``config.CoordinatorWeb``): the
        budgets and the tables' caps come from it."""
        self._relay = relay
        self._config = config
        self._clock = clock
        self._random = random_bytes
        limits = config
        self.sessions = sessions or MemorySessionStore(
            clock,
            session_timeout=config.session_timeout,
            retention=max(30.0, config.long_poll_timeout + 5.0),
            max_sessions=config.max_sessions,
            max_waiters=config.max_waiters,
            max_sessions_per_source=config.max_sessions_per_source,
            max_sessions_per_server=config.max_sessions_per_server,
            max_waiters_per_source=config.max_waiters_per_source,
        )
        lockout = (limits.failures_before_lockout, limits.lockout_base, limits.lockout_max)
        self._lockout = make_lockout(clock, "source", *lockout)
        self._device_lockout = make_lockout(clock, "device", *lockout)
        self._ip_limiter = make_limiter(clock, "connect", limits.per_ip_per_minute, 60.0)
        # Looking up a server precedes every connect attempt and its retries.
        self._lookup_limiter = make_limiter(clock, "lookup", 2 * limits.per_ip_per_minute, 60.0)
        self._server_minute = make_limiter(clock, "server-minute",
                                           limits.per_server_per_minute, 60.0)
        # A day's budget refills evenly; at most a tenth of it can be spent at once, so
        # any 24 hours see at most 1.1 x per_server_per_day guesses (docs/security.md).
        self._server_day = make_limiter(clock, "server-day", limits.per_server_per_day, DAY,
                                        burst=max(1, limits.per_server_per_day // 10))
        self._device_limiter = make_limiter(clock, "device", limits.per_device_per_minute, 60.0)
        self._device_source_limiter = make_limiter(
            clock, "device-source", DEVICE_SOURCE_FACTOR * limits.per_ip_per_minute, 60.0)
        self._tokens = OrderedDict()     # device token text -> DeviceToken (verified)
        # ice_servers(role) -> list of RTCIceServer dicts for "client" or "server".
        self._ice = ice_servers or (lambda role: list(config.ice_servers or ())
                                    if role == "client" else [])
        self.metrics = Counter()
        relay.set_answer_handler(self.on_answer)

    # -- lookups ---------------------------------------------------------------

    def lookup(self, server_key: bytes, source: str):
        """A Deferred of ``{"online", "challenge", "ice_servers"}`` for a browser
        about to connect."""
        return defer.Deferred.fromCoroutine(self.run_lookup(server_key, source))

    async def run_lookup(self, server_key, source):
        """:meth:`lookup` as a coroutine, for a caller that is one (no Deferred
        between the two)."""
        retry, (online, challenge) = await _now_all(
            self._lookup_limiter.hit(source_key(source)), self._relay.server_status(server_key))
        self._refuse_rate(retry, "too many lookups from your address", SOURCE)
        self.metrics["lookups"] += 1
        return {"online": bool(online),
                "challenge": challenge if online and challenge else None,
                # TURN credentials are minted only for a server that is online.
                "ice_servers": self._ice("client") if online else []}

    # -- connects ----------------------------------------------------------------

    def connect(self, req: connect.ConnectRequest, source: str):
        """Check and relay one connect attempt: a Deferred that fails with a
        HomeChannelError to refuse it."""
        return defer.Deferred.fromCoroutine(self.run_connect(req, source))

    async def run_connect(self, req, source):
        """:meth:`connect` as a coroutine, for a caller that is one."""
        lock = lockout_key(source)
        key = req.server_key
        token = token_error = None
        if req.device is not None:
            try:
                token = self._device_token(key, req.device)
            except (ProtocolError, AuthenticationError) as e:
                token_error = e
        if token is not None:
            device = device_key(key, token.device)
            locked, retry, source_retry, (online, _) = await _now_all(
                self._device_lockout.check(device), self._device_limiter.hit(device),
                self._device_source_limiter.hit(source_key(source)),
                self._relay.server_status(key))
            self._device_path(req, locked, retry, source_retry)
            self._require_online(online)
            spend = []
        else:
            # One round: everything that does not depend on anything else.
            checks = [self._lockout.check(lock), self._ip_limiter.hit(source_key(source)),
                      self._relay.server_status(key)]
            if token_error is None:
                checks += [self._server_minute.peek(key), self._server_day.peek(key)]
            results = await _now_all(*checks)
            locked, retry, (online, _) = results[:3]
            self._refuse_locked(locked, "from your address", SOURCE)
            self._refuse_rate(retry, "too many connection attempts from your address", SOURCE)
            if token_error is not None:
                self.metrics["connect_bad_device"] += 1
                await _now(self._lockout.failure(lock, STALE_WEIGHT))
                raise Forbidden(f"this device's sign-in token was not accepted ({token_error}): "
                                "sign in with the password", connect.BAD_DEVICE)
            self._require_online(online)
            spend = await self._pool_path(req, source, lock, *results[3:])
        payload = connect.Offer(req.session, req.challenge, req.proof, req.offer,
                                source=source, device=req.device,
                                ice_servers=tuple(self._ice("server"))).encode()
        # The session is made together with the budget spent on a right answer.
        await _now_all(self.sessions.create(req.session, key, source=source,
                                        device=token.device if token is not None else None),
                   *spend)
        self.metrics["connect_relayed"] += 1
        d = _settle(self._relay.send_offer(key, payload))
        d.addErrback(self._offer_failed, req.session)

    def _require_online(self, online):
        if not online:
            self.metrics["connect_offline"] += 1
            raise NotFound("the home server is offline: check that it is running and "
                           "connected to the internet", "offline")

    async def _pool_path(self, req, source, lock, minute, day):
        """Raise for a spent budget, a stale challenge or a wrong answer; for a right
        answer, the seams' results still to wait for (budget spent, lockout cleared)."""
        key = req.server_key
        retry = max(minute or 0.0, day or 0.0)
        if retry:
            self.metrics["rate_limited"] += 1
            self.metrics["connect_server_budget"] += 1
            raise TooManyRequests(
                f"too many sign-in attempts to this home server right now: try again in "
                f"{whole_seconds(retry)} seconds (devices that signed in before are not affected)",
                "rate-limited", retry_after=whole_seconds(retry), scope=SERVER)
        expected = await _now(self._relay.take_challenge(key, req.challenge))
        if expected is None:
            self.metrics["connect_stale_challenge"] += 1
            await _now(self._lockout.failure(lock, STALE_WEIGHT))
            raise Forbidden("the challenge was already used or has expired: look the server "
                            "up again", "stale-challenge")
        spend = [self._server_minute.hit(key), self._server_day.hit(key)]
        if not crypto.check_answer(req.answer, expected):
            self.metrics["connect_wrong_password"] += 1
            await _now_all(*spend, self._failed(lock, source))
            _background(self._relay.notify(key, connect.failure_notice(source, "wrong-password")),
                        "reporting a failed login to the home server")
            raise Forbidden("wrong password", "wrong-password")
        return spend + [self._lockout.success(lock)]

    def _device_path(self, req, locked, retry, source_retry):
        self._refuse_locked(locked, "from this device", DEVICE)
        self._refuse_rate(retry, "too many connection attempts from this device", DEVICE)
        self._refuse_rate(source_retry, "too many connection attempts from your address",
                          SOURCE)
        made = connect.device_challenge_time(req.challenge)
        if not abs(made - self._clock.seconds()) < connect.MAX_CLOCK_SKEW:
            self.metrics["connect_stale_challenge"] += 1
            raise Forbidden("the connection attempt is too old or this device's clock is wrong "
                            "(more than 5 minutes off)", "stale-challenge")
        self.metrics["connect_device"] += 1

    def _device_token(self, server_key, text):
        token = self._tokens.get(text)
        now = self._clock.seconds()
        if token is None or token.server != crypto.b64u_encode(server_key):
            token = connect.DeviceToken.verify(server_key, text, now)
            self._tokens[text] = token
            while len(self._tokens) > 10_000:
                self._tokens.popitem(last=False)
        elif not now < token.expires:
            raise AuthenticationError("the device token has expired")
        return token

    def _failed(self, lock, source):
        def counted(lockout):
            if lockout is not None:
                self.metrics["lockouts"] += 1
                self.log.info("locked out {source} for {seconds}s after failed answers",
                              source=lock, seconds=lockout)

        return _settle(self._lockout.failure(lock)).addCallback(counted)

    def _offer_failed(self, failure, session_id):
        if failure.check(HomeChannelError):
            self.log.info("could not relay the offer for {session}: {error}",
                          session=session_id, error=failure.getErrorMessage())
        else:
            self.log.failure("relaying the offer for {session} failed", failure,
                             session=session_id)
        self.metrics["relay_failed"] += 1
        _background(self.sessions.fail(session_id, Unavailable(
            "the coordinator could not reach the home server: try again", "relay-failed")),
            "failing a session")

    # -- answers -------------------------------------------------------------------

    def wait(self, session_id: str, timeout: float, source: str = None):
        """Deferred: the session's result dict, None while pending, or its error.
        *source* (the client's address) counts the wait against its network's share."""
        return self.sessions.wait(session_id, timeout, source)

    def on_answer(self, kid: bytes, payload: bytes):
        """A complete ANSWER transfer from the home server with key id *kid*.

        Hostile or stale input is counted and dropped, never raised."""
        try:
            answer = connect.Answer.decode(payload)
        except ProtocolError:
            self.metrics["answers_malformed"] += 1
            self.log.debug("dropped a malformed answer")
            return None
        d = _settle(self.sessions.info(answer.session))
        d.addCallback(self._answered, kid, answer)
        return _background(d, "handling an answer")

    def _answered(self, info, kid, answer):
        if info is None:
            self.metrics["answers_unknown_session"] += 1
            return None
        if crypto.key_id(info.server_key) != kid:
            self.metrics["answers_wrong_server"] += 1
            self.log.debug("dropped an answer for {session} from another server",
                           session=answer.session)
            return None
        if answer.refused:
            def failed(changed):
                if changed:
                    self.metrics["answers_refused"] += 1
                    if answer.error == connect.BAD_PROOF:
                        return self._wrong_proof(info)
                return None

            return _settle(self.sessions.fail(
                answer.session, answer.as_error())
            ).addCallback(failed)

        def stored(changed):
            self.metrics["answers" if changed else "answers_duplicate"] += 1

        return _settle(self.sessions.answer(answer.session, answer.to_doc())).addCallback(stored)

    def _wrong_proof(self, info):
        """The home server refused a proof: a wrong password that the coordinator could
        not see (device path, or a changed password).  Count it like one."""
        counts = []
        if info.source is not None:
            counts.append(self._failed(lockout_key(info.source), info.source))
        if info.device is not None:
            def counted(lockout):
                if lockout is not None:
                    self.metrics["lockouts"] += 1

            counts.append(_settle(self._device_lockout.failure(
                device_key(info.server_key, info.device))).addCallback(counted))
        return _all(*counts)

    # -- helpers ---------------------------------------------------------------------

    def _refuse_locked(self, locked, whose, scope):
        if locked is not None:
            self.metrics["connect_locked_out"] += 1
            seconds = whole_seconds(locked)
            raise TooManyRequests(f"too many wrong passwords {whose}: try again in {seconds} "
                                  "seconds", "locked-out", retry_after=seconds, scope=scope)

    def _refuse_rate(self, retry, message, scope):
        if retry is not None:
            self.metrics["rate_limited"] += 1
            seconds = whole_seconds(retry)
            raise TooManyRequests(f"{message}: try again in {seconds} seconds",
                                  "rate-limited", retry_after=seconds, scope=scope)


def _background(value, what):
    """Let a seam's Deferred run on; log what it fails with (an unavailable store
    at info level, anything else as a bug)."""
    d = _settle(value)

    def failed(f):
        if f.check(HomeChannelError):
            Broker.log.info("{what} failed: {error}", what=what, error=f.getErrorMessage())
        else:
            Broker.log.failure("{what} failed", f, what=what)

    return d.addErrback(failed)


def whole_seconds(value) -> int:
    """A wait in seconds as people and ``Retry-After`` want it: a whole number, at least 1."""
    return max(1, int(math.ceil(value)))
