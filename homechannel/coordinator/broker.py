"""The connect use-case of the coordinator: lookups, connects, answers.

Everything the coordinator decides about a connect attempt lives here, apart
from HTTP (``web.py`` maps requests to these calls and errors to responses)
and apart from the UDP protocol (``IRelay``).  Formats, limits and codes come
from :mod:`homechannel.protocol.connect`.

Order of checks for ``POST /api/connect`` (docs/protocol.md section 2):

1. the body parses (``ConnectRequest.parse``: shape of every field and of the
   offer SDP);
2. with a **device token** that verifies with the server's key and a
   signature by the device key it names over this session, challenge and
   offer (a client that signed in before; a token copied without its key
   cannot sign): the device (for this server) is not locked out and is within
   its own rate, the source is within its device-path rate (a generous one of
   its own, apart from strangers' budget: whoever shares the owner's address,
   behind a carrier NAT or in a hotel, cannot lock the owner's device out), the
   server is online, the token's password epoch and device are the ones the
   home server told (``DevicePolicy``: a token from before ``homechannel
   passwd``, or of a removed device, is refused as ``bad-device``), the
   devices' budget of this server (per minute and per day, all its devices
   together) is not spent, the client-made challenge is fresh; the offer goes
   to the home server, which checks it all again and the proof (a wrong
   password there counts against the device and the source);
3. otherwise (**pool path**; a token or device signature that does not verify
   is refused as ``bad-device`` after these, and counts half a failure
   against the source, never against the device):
   the source (IPv6 /56) is not locked out; the source (IPv6 /64) is within
   its rate; the server is online; the server's budget (per minute and per
   day) is not spent -- checked before the challenge is touched, so a spent
   budget never drains the pool; the challenge is taken from the pool
   (single use; a stale or made-up one counts half a failure against the
   source); only now is the server's budget spent; the answer is checked
   against ``expectedAnswer`` in constant time (a wrong one counts a
   failure against the source and is reported to the home server);
4. the pending session is created and the offer relayed.

With TURN configured a connect has two steps.  ``POST /api/prove``
(:meth:`Broker.prove`) makes checks 2-3 without the offer (the device key
signs the session and challenge instead) and, within the TURN budgets (per
server per minute and per day, and in all), mints the client's relay
credential and a ticket; ``POST /api/connect`` with that ticket
(:meth:`Broker.connect`) checks the ticket (and the device key's signature
over the offer), makes the session and relays the offer with the home
server's credential.  A lookup never carries a credential.

The checks of one path that do not depend on each other are asked for
together (:func:`_together`: every seam's coroutine is started before any is
waited for), so that a cluster node sends their Redis commands in one
pipeline, one round trip; they are decided in the order above, and an attempt
refused for a lockout has still spent one of its rate's attempts.  The seams
are ``async def`` (``coordinator/interfaces.py``); an in-memory one finishes
at once, and awaiting it makes no Deferred.

So an attacker's attempts spend only what a valid challenge lets them spend,
lockouts fall on sources and devices, never on the server, and a client that
signed in before (it holds a device token) keeps a budget of its own.
"""

import os
from collections import Counter, OrderedDict

from twisted.internet import defer
from twisted.python.failure import Failure

from homechannel import crypto

from homechannel.ops.logsafe import Logger
from homechannel.protocol import connect
from homechannel.config import CoordinatorTurn
from homechannel.coordinator.ratelimit import (
    MemoryLockout,
    MemoryRateLimiter,
    lockout_key,
    source_key,
)
from homechannel.coordinator.sessions import MemorySessionStore
from homechannel.errors import (
    AuthenticationError,
    Forbidden,
    HomeChannelError,
    NotFound,
    ProtocolError,
    TooManyRequests,
    Unavailable,
    whole_seconds,
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
SOURCE, SERVER, DEVICE, DEVICES = "source", "server", "device", "devices"


def device_key(server_key: bytes, device: str) -> str:
    """What a device's budget and lockout are kept under: the device *for this server*
    (a device id is only the home server's word; another server could issue the same)."""
    return f"{crypto.b64u_encode(crypto.key_id(server_key))}:{device}"


async def _together(*steps):
    """Await several seams' coroutines as one round: their results, in order.

    Each is started before any is waited for, so that on a cluster node their Redis
    commands are queued in the same turn and go out as one pipeline.  One that
    finishes at once (an in-memory seam) is not wrapped in anything; one that waits
    goes on from callbacks (:func:`_follow`).  All of them run to their end; then the
    first error, in order, is raised."""
    results = [None] * len(steps)
    failed = None                   # (index, error) of the first error in order
    waiting = None
    for i, step in enumerate(steps):
        try:
            awaited = step.send(None)
        except StopIteration as stop:
            results[i] = stop.value
        except Exception as e:
            if failed is None:
                failed = (i, e)
        else:
            if waiting is None:
                waiting = []
            waiting.append((i, step, awaited))
    if waiting:
        left = len(waiting)
        all_done = defer.Deferred()

        def finished(i):
            def done(result, error):
                nonlocal left, failed
                results[i] = result
                if error is not None and (failed is None or i < failed[0]):
                    failed = (i, error)
                left -= 1
                if not left:
                    all_done.callback(None)
            return done

        for i, step, awaited in waiting:
            _follow(step, awaited, finished(i))
        await all_done
    if failed is not None:
        raise failed[1]
    return results


def _follow(coro, awaited, done):
    """Go on with the coroutine *coro*, which waits for the Deferred *awaited*: it is
    resumed from a callback on that Deferred (and on each one it waits for next), and
    ``done(result, error)`` is called at its end.  What ``Deferred.fromCoroutine`` does,
    less what nobody here uses (a Deferred of its own, cancelling, a context of its
    own): a third of its cost (``docs/performance.md``)."""

    def step(result):
        try:
            if isinstance(result, Failure):
                awaited = result.throwExceptionIntoGenerator(coro)
            else:
                awaited = coro.send(result)
        except StopIteration as stop:
            done(stop.value, None)
        except Exception as e:
            done(None, e)
        else:
            awaited.addBoth(step)

    awaited.addBoth(step)


def _background(coro, what):
    """Run the coroutine *coro* on its own (nobody waits for it); log what it fails
    with (an unavailable store at info level, anything else as a bug).  One that
    finishes at once (in-memory seams) makes no Deferred and no callback."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return
    except Exception:
        _log_background(Failure(), what)
        return
    _follow(coro, awaited, lambda result, error: error is None or _log_background(
        Failure(error), what))


def _log_background(failure, what):
    if failure.check(HomeChannelError):
        Broker.log.info("{what} failed: {error}", what=what, error=failure.getErrorMessage())
    else:
        Broker.log.failure("{what} failed", failure, what=what)


def memory_limiter(clock, name, limit, period, burst=None):
    """The default ``make_limiter``: in-memory token buckets."""
    return MemoryRateLimiter(clock, limit, period, burst=burst)


def memory_lockout(clock, name, threshold, base, maximum):
    """The default ``make_lockout``: in-memory lockouts."""
    return MemoryLockout(clock, threshold=threshold, base=base, maximum=maximum)


class Broker:
    """The connect flow behind the HTTPS API (one per coordinator process).

    The seams (*relay*, *sessions*, the limiters and lockouts made by
    *make_limiter* and *make_lockout*) are ``async def``: in memory (they finish
    at once) or the cluster's Redis implementations.  :meth:`lookup`,
    :meth:`prove`, :meth:`connect` and :meth:`wait` are coroutines;
    :meth:`on_answer` is the relay's plain callback.  Checks that do not depend on
    each other are asked for together, so that a cluster node makes one Redis
    round trip for them.

    *ice_servers* are the clients' (STUN; no credentials).  With *turn* (a
    ``turn.TurnMinter``) a connect has two steps: :meth:`prove` (the checks, then a
    TURN credential for the client, within the budgets of *turn_limits*, a
    ``config.CoordinatorTurn``) and :meth:`connect` with the ticket it gave (the
    offer; the home server's credential).  *ticket_key* MACs those tickets (the
    tap derives it from the identity key, so every node of a cluster has it)."""

    log = Logger()

    def __init__(self, relay, config, clock, *, sessions=None, ice_servers=None, turn=None,
                 turn_limits=None, ticket_key=None, random_bytes=os.urandom,
                 make_limiter=memory_limiter, make_lockout=memory_lockout):
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
        # The device path's own budget per server, for all its devices together: however
        # many tokens exist, they add at most this to the ceiling (docs/security.md).
        self._devices_minute = make_limiter(clock, "devices-minute",
                                            limits.per_server_device_per_minute, 60.0)
        self._devices_day = make_limiter(
            clock, "devices-day", limits.per_server_device_per_day, DAY,
            burst=max(1, limits.per_server_device_per_day // 10))
        self._tokens = OrderedDict()     # device token text -> DeviceToken (verified)
        if ice_servers is None:
            ice_servers = config.ice_servers or ()
        self._ice = [dict(s) for s in ice_servers]
        self._turn = turn
        self._ticket_key = ticket_key or random_bytes(32)
        if turn is not None:
            turn_limits = turn_limits or CoordinatorTurn()
            self._turn_minute = make_limiter(clock, "turn-server-minute",
                                             turn_limits.per_server_per_minute, 60.0)
            self._turn_day = make_limiter(clock, "turn-server-day",
                                          turn_limits.per_server_per_day, DAY,
                                          burst=max(1, turn_limits.per_server_per_day // 10))
            self._turn_all = make_limiter(clock, "turn-all", turn_limits.per_minute, 60.0)
        self.metrics = Counter()
        relay.set_answer_handler(self.on_answer)

    # -- lookups ---------------------------------------------------------------

    async def lookup(self, server_key: bytes, source: str):
        """``{"online", "challenge", "ice_servers", "turn"}`` for a client about to
        connect: ``turn`` says a relay exists, and that its credential comes from
        :meth:`prove`, never from a lookup."""
        retry, (online, challenge) = await _together(
            self._lookup_limiter.hit(source_key(source)), self._relay.server_status(server_key))
        self._refuse_rate(retry, "too many lookups from your address", SOURCE)
        self.metrics["lookups"] += 1
        return {"online": bool(online),
                "challenge": challenge if online and challenge else None,
                "ice_servers": list(self._ice) if online else [],
                "turn": bool(online) and self._turn is not None}

    # -- the proven first step of a connect with TURN ------------------------------------

    async def prove(self, req: connect.ProveRequest, source: str):
        """The checks of :meth:`connect` before the offer exists, then a TURN credential
        for the client (within the budgets) and a ticket for the second step.  Returns
        ``{"session", "ticket", "ice_servers", "expires"}``."""
        message = None
        if req.device is not None:
            message = crypto.device_start_message(req.session, req.challenge)
        token, spend, turn = await self._admit(req, source, message, self._turn is not None)
        results = await _together(*spend)
        ice = list(self._ice)
        if turn and all(r is None for r in results[-3:]):
            ice.append(self._turn.mint(req.server_key, "c"))
            self.metrics["turn_minted"] += 1
        else:
            turn = False
            if self._turn is not None:
                self.metrics["turn_refused"] += 1
        expires = int(self._clock.seconds() + self._config.session_timeout)
        ticket = connect.Ticket(req.server_key, req.session, req.challenge,
                                token.device if token is not None else None, expires, turn)
        self.metrics["proven"] += 1
        return {"session": req.session, "ticket": ticket.encode(self._ticket_key),
                "ice_servers": ice, "expires": expires}

    # -- connects ----------------------------------------------------------------

    async def connect(self, req: connect.ConnectRequest, source: str):
        """Check and relay one connect attempt; raise a HomeChannelError to refuse it.
        Returns once the session is made and the offer is on its way.  With a ticket
        (the second step after :meth:`prove`) the checks were made there."""
        if req.ticket is not None:
            device, turn = await self._ticketed(req, source)
            await self._relay_session(req, source, device, turn, ())
            return
        message = None
        if req.device is not None:
            message = crypto.device_offer_message(req.session, req.challenge, req.offer_digest)
        token, spend, _ = await self._admit(req, source, message, False)
        await self._relay_session(req, source, token.device if token is not None else None,
                                  False, spend)

    async def _relay_session(self, req, source, device, turn, spend):
        """Make the session (with the budget *spend* spent in the same round) and relay
        the offer; the home server's TURN credential only after a proven first step."""
        key = req.server_key
        ice = (self._turn.mint(key, "s"),) if turn else ()
        payload = connect.Offer(req.session, req.challenge, req.proof, req.offer,
                                source=source, device=req.device, ice_servers=ice,
                                device_signature=req.device_signature).encode()
        await _together(self.sessions.create(req.session, key, source=source, device=device),
                        *spend)
        self.metrics["connect_relayed"] += 1
        _background(self._relay_offer(req.session, key, payload), "relaying an offer")

    async def _ticketed(self, req, source):
        """The second step: the ticket is this connect's, and on the device path the
        device key signed this offer.  ``(device id or None, turn)``."""
        token = None
        if req.device is not None:
            try:
                token = self._device_token(req.server_key, req.device)
                token.check_signature(req.device_signature, crypto.device_offer_message(
                    req.session, req.challenge, req.offer_digest))
            except (ProtocolError, AuthenticationError) as e:
                self.metrics["connect_bad_device"] += 1
                await self._lockout.failure(lockout_key(source), STALE_WEIGHT)
                raise Forbidden(f"this device's sign-in was not accepted ({e}): sign in "
                                "with the password", connect.BAD_DEVICE) from None
        device = token.device if token is not None else None
        ticket = connect.Ticket.check(self._ticket_key, req.ticket, req.server_key,
                                      req.session, req.challenge, device,
                                      self._clock.seconds())
        return device, ticket.turn

    async def _admit(self, req, source, message, want_turn):
        """Every check of a connect attempt that does not need the offer (the order of
        the module's docstring); raise to refuse it.  Returns ``(device token or None,
        the budget to spend (coroutines) once the attempt goes on, whether the TURN
        budgets have room)``: the last three of the spending are the TURN budgets'
        when that is true.  *message* is what the device key must have signed."""
        lock = lockout_key(source)
        key = req.server_key
        token = token_error = None
        if req.device is not None:
            try:
                token = self._device_token(key, req.device)
                token.check_signature(req.device_signature, message)
            except (ProtocolError, AuthenticationError) as e:
                token, token_error = None, e
        turn = [self._turn_minute.peek(key), self._turn_day.peek(key),
                self._turn_all.peek("")] if want_turn else []
        if token is not None:
            device = device_key(key, token.device)
            results = await _together(
                self._device_lockout.check(device), self._device_limiter.hit(device),
                self._device_source_limiter.hit(source_key(source)),
                self._relay.server_status(key), self._relay.device_policy(key),
                self._devices_minute.peek(key), self._devices_day.peek(key), *turn)
            locked, retry, source_retry, (online, _), policy, minute, day = results[:7]
            self._device_path(req, locked, retry, source_retry)
            self._require_online(online)
            if policy is None or not policy.allows(token):
                self.metrics["connect_device_refused"] += 1
                await self._lockout.failure(lock, STALE_WEIGHT)
                raise Forbidden("this device's sign-in token is no longer valid (the "
                                "password was changed or the device was removed on the home "
                                "server): sign in with the password", connect.BAD_DEVICE)
            self._refuse_budget(minute, day, "sign-in attempts from this home server's "
                                "devices", DEVICES)
            self.metrics["connect_device"] += 1
            spend = [self._devices_minute.hit(key), self._devices_day.hit(key)]
            turn_results = results[7:]
        else:
            # One round: everything that does not depend on anything else.
            checks = [self._lockout.check(lock), self._ip_limiter.hit(source_key(source)),
                      self._relay.server_status(key)]
            if token_error is None:
                checks += [self._server_minute.peek(key), self._server_day.peek(key)]
            results = await _together(*checks, *turn)
            locked, retry, (online, _) = results[:3]
            self._refuse_locked(locked, "from your address", SOURCE)
            self._refuse_rate(retry, "too many connection attempts from your address", SOURCE)
            if token_error is not None:
                self.metrics["connect_bad_device"] += 1
                await self._lockout.failure(lock, STALE_WEIGHT)
                raise Forbidden(f"this device's sign-in token was not accepted ({token_error}): "
                                "sign in with the password", connect.BAD_DEVICE)
            self._require_online(online)
            await self._pool_path(req, source, lock, *results[3:5])
            spend = [self._server_minute.hit(key), self._server_day.hit(key),
                     self._lockout.success(lock)]
            turn_results = results[5:]
        room = want_turn and all(r is None for r in turn_results)
        if room:
            spend += [self._turn_minute.hit(key), self._turn_day.hit(key),
                      self._turn_all.hit("")]
        return token, spend, room

    def _require_online(self, online):
        if not online:
            self.metrics["connect_offline"] += 1
            raise NotFound("the home server is offline: check that it is running and "
                           "connected to the internet", "offline")

    def _refuse_budget(self, minute, day, what, scope, note=""):
        retry = max(minute or 0.0, day or 0.0)
        if retry:
            self.metrics["rate_limited"] += 1
            self.metrics["connect_server_budget"] += 1
            raise TooManyRequests(
                f"too many {what} right now: try again in {whole_seconds(retry)} seconds"
                f"{note}", "rate-limited", retry_after=whole_seconds(retry), scope=scope)

    async def _pool_path(self, req, source, lock, minute, day):
        """Raise for a spent budget, a stale challenge or a wrong answer (a wrong one
        spends the server's budget); return for a right answer, whose budget the
        caller spends together with making the session."""
        key = req.server_key
        self._refuse_budget(minute, day, "sign-in attempts to this home server", SERVER,
                            " (devices that signed in before are not affected)")
        expected = await self._relay.take_challenge(key, req.challenge)
        if expected is None:
            self.metrics["connect_stale_challenge"] += 1
            await self._lockout.failure(lock, STALE_WEIGHT)
            raise Forbidden("the challenge was already used or has expired: look the server "
                            "up again", "stale-challenge")
        if not self._relay.answer_matches(key, req.challenge, req.answer, expected):
            self.metrics["connect_wrong_password"] += 1
            await _together(self._server_minute.hit(key), self._server_day.hit(key),
                            self._failed(self._lockout, lock))
            _background(self._relay.notify(key, connect.failure_notice(source, "wrong-password")),
                        "reporting a failed login to the home server")
            raise Forbidden("wrong password", "wrong-password")

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

    async def _failed(self, lockout, key):
        """Count a wrong password against *key* in *lockout* (a source's or a device's)."""
        length = await lockout.failure(key)
        if length is not None:
            self.metrics["lockouts"] += 1
            if lockout is self._lockout:
                self.log.info("locked out {source} for {seconds}s after failed answers",
                              source=key, seconds=length)

    async def _relay_offer(self, session_id, key, payload):
        """Send the offer; if the home server cannot be reached, end the session."""
        try:
            await self._relay.send_offer(key, payload)
            return
        except HomeChannelError as e:
            self.log.info("could not relay the offer for {session}: {error}",
                          session=session_id, error=str(e))
        except Exception:
            self.log.failure("relaying the offer for {session} failed", session=session_id)
        self.metrics["relay_failed"] += 1
        await self.sessions.fail(session_id, Unavailable(
            "the coordinator could not reach the home server: try again", "relay-failed"))

    # -- answers -------------------------------------------------------------------

    async def wait(self, session_id: str, timeout: float, source: str | None = None):
        """The session's result dict, None while pending, or raise its error.
        *source* (the client's address) counts the wait against its network's share."""
        return await self.sessions.wait(session_id, timeout, source)

    def on_answer(self, kid: bytes, payload: bytes):
        """A complete ANSWER transfer from the home server with key id *kid* (the
        relay's answer handler: plain, it starts the coroutine that stores it and
        returns before a cluster's store has answered).

        Hostile or stale input is counted and dropped, never raised."""
        try:
            answer = connect.Answer.decode(payload)
        except ProtocolError:
            self.metrics["answers_malformed"] += 1
            self.log.debug("dropped a malformed answer")
            return
        _background(self._answered(kid, answer), "handling an answer")

    async def _answered(self, kid, answer):
        info = await self.sessions.info(answer.session)
        if info is None:
            self.metrics["answers_unknown_session"] += 1
            return
        if crypto.key_id(info.server_key) != kid:
            self.metrics["answers_wrong_server"] += 1
            self.log.debug("dropped an answer for {session} from another server",
                           session=answer.session)
            return
        if answer.refused:
            if await self.sessions.fail(answer.session,
                                        answer.as_error()):
                self.metrics["answers_refused"] += 1
                if answer.error == connect.BAD_PROOF:
                    await self._wrong_proof(info)
            return
        changed = await self.sessions.answer(answer.session, answer.to_doc())
        self.metrics["answers" if changed else "answers_duplicate"] += 1

    async def _wrong_proof(self, info):
        """The home server refused a proof: a wrong password that the coordinator could
        not see (device path, or a changed password).  Count it like one."""
        counts = []
        if info.source is not None:
            counts.append(self._failed(self._lockout, lockout_key(info.source)))
        if info.device is not None:
            counts.append(self._failed(self._device_lockout,
                                       device_key(info.server_key, info.device)))
        await _together(*counts)

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
