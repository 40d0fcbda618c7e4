"""Connect sessions shared by the nodes of a coordinator cluster.

:class:`RedisSessionStore` implements
:class:`~homechannel.coordinator.interfaces.ISessionStore` (``async def``)
with the rules of the in-memory store, so that any node can create a session,
complete it (the node the home server's answer reaches) and serve its
long-poll (the node the browser's request reaches):

* ``<prefix>s:<session id>``: a hash ``{i: server key, source and device,
  sealed; st: p|a|f (pending, answered, failed), r: the result or the error as
  JSON, sealed; dl: deadline, ss: source shares, sv: server share}``.  The
  sealed records (``ClusterKey.seal_record``) are bound to the session id (the
  result to its state too): Redis can neither read nor change nor move them,
  and a node refuses one that does not open (a 503, counted).  It expires
  ``retention`` seconds after it completes, and at the latest
  ``session_timeout + retention`` after it was made.
* Shares: three sorted sets of session ids scored by when each session will
  be forgotten, ``<prefix>ss`` (all), ``<prefix>ss:src:<hash of the source
  network>`` and ``<prefix>ss:srv:<hash of the server key id>``; entries past their score are dropped
  before counting, so a share is held exactly until the session is forgotten.
  ``web.max_sessions`` and its shares hold for the whole cluster.
* Completion is one script that sets the result only while the session is
  pending (the first answer wins) and publishes ``<session id> <state>
  <sealed result>`` (itself sealed, as every message between nodes) on
  ``<prefix>done`` (an error as the API's answer for it,
  ``errors.to_response``, with its status).  Every node subscribes to that
  channel once (``redisrelay.NodeLink``) and hands the messages to
  :meth:`completed`; a
  long-poll registers its local waiter *before* it reads the session, so an
  answer that arrives between the read and the subscription is never missed,
  and nothing polls Redis in a loop.
* A session not answered by its deadline ends with ``408 timeout``: the node
  that notices (a waiter's timer, or a read) completes it with that error.
* Waiting long-polls are held by the node that holds the HTTP connection,
  so their caps (``web.max_waiters``, 4 per session, ``max_waiters_per_source``)
  are per node.
"""

import json
from collections import Counter, OrderedDict

from twisted.internet import defer
from zope.interface import implementer

from homechannel import crypto, errors
from homechannel.coordinator.interfaces import ISessionStore
from homechannel.coordinator.ratelimit import source_key, wider_keys
from homechannel.coordinator.cluster.clusterkey import DONE, MessageRefused
from homechannel.coordinator.cluster.redisstore import Script, unavailable
from homechannel.coordinator.sessions import SessionInfo, timed_out
from homechannel.coordinator.shares import Shares
from homechannel.errors import BadRequest, CapacityError, NotFound
from homechannel.ops.logsafe import Logger

# KEYS: session, all-share, source /64 share, server share, the source's wider shares
# (its /56 and /48, if IPv6); ARGV: now, forget-at, deadline, the sealed info (server key,
# source, device), session id, the source's share keys (space-separated), then one limit
# per share key.
CREATE = Script("session-create", """
local now, forget, dl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[5 + i]) then return i end
end
redis.call('HSET', KEYS[1], 'i', ARGV[4], 'st', 'p', 'dl', dl, 'ss', ARGV[6], 'sv', KEYS[4])
redis.call('PEXPIRE', KEYS[1], math.ceil((forget - now) * 1000))
-- The newest session is forgotten last: the share expires with it.
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], forget, ARGV[5])
  redis.call('PEXPIRE', KEYS[i], math.ceil((forget - now) * 1000) + 1000)
end
return 0
""")

# KEYS: session, all-share; ARGV: now, forget-at, state, sealed result, channel,
# session id, the completion message (sealed: published only if this completed it)
COMPLETE = Script("session-complete", """
local st = redis.call('HGET', KEYS[1], 'st')
if st ~= 'p' then return 0 end
local now, forget = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'st', ARGV[3], 'r', ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil((forget - now) * 1000))
local shares = redis.call('HMGET', KEYS[1], 'ss', 'sv')
redis.call('ZADD', KEYS[2], 'XX', forget, ARGV[6])
if shares[1] then
  for key in string.gmatch(shares[1], '%S+') do redis.call('ZADD', key, 'XX', forget, ARGV[6]) end
end
if shares[2] then redis.call('ZADD', shares[2], 'XX', forget, ARGV[6]) end
redis.call('PUBLISH', ARGV[5], ARGV[7])
return 1
""")


def _seconds(value):
    """A time Redis holds (bytes), or None if it is not a number (Redis changed it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _info_aad(session_id):
    return b"info " + session_id.encode("ascii")


def _result_aad(session_id, state):
    return b"result " + state + b" " + session_id.encode("ascii")

# A session made here is known to be pending (no read needed) this long after.
FRESH = 1.0


class _Waiter:
    __slots__ = ("d", "timer", "share", "sid")

    def __init__(self, sid, share):
        self.sid = sid
        self.share = share
        self.d = None
        self.timer = None


@implementer(ISessionStore)
class RedisSessionStore:
    log = Logger()

    def __init__(self, store, clock, session_timeout=60.0, retention=30.0,
                 max_sessions=10_000, max_waiters=10_000, max_waiters_per_session=4,
                 max_sessions_per_source=100, max_sessions_per_server=100,
                 max_waiters_per_source=100):
        self._store = store
        self._clock = clock
        self._session_timeout = session_timeout
        self._retention = retention
        self._limits = [str(max_sessions), str(max_sessions_per_source),
                        str(max_sessions_per_server)]
        self._max_waiters = max_waiters
        self._max_waiters_per_session = max_waiters_per_session
        self._waiters = {}             # session id -> [_Waiter]
        # Sessions this node has just made and nobody waited for yet: the first wait
        # (POST /api/connect?wait=N, right after) needs no read, they are pending.
        self._fresh = OrderedDict()
        self._waiting = 0
        self._waiters_by_source = Shares(max_waiters_per_source)
        self.channel = store.key("done")
        self.dropped = Counter()       # reason -> session records that did not open

    @property
    def waiting(self):
        return self._waiting

    def _key(self, session_id):
        return self._store.key("s", session_id)

    # -- ISessionStore ---------------------------------------------------------------

    async def create(self, session_id, server_key, source=None, device=None):
        now = self._clock.seconds()
        forget = now + self._session_timeout + self._retention
        share = source_key(source if source is not None else "unknown")
        per_source = int(self._limits[1])
        hidden = self._store.hidden_key
        source_shares = [(hidden("ss", "src", hidden=share), per_source)] + [
            (hidden("ss", "src", hidden=wider), n * per_source)
            for wider, n in wider_keys(share)]
        keys = [self._key(session_id), self._store.key("ss"), source_shares[0][0],
                hidden("ss", "srv", hidden=crypto.key_id(server_key))]
        keys += [key for key, _ in source_shares[1:]]
        limits = [self._limits[0], self._limits[1], self._limits[2]]
        limits += [str(limit) for _, limit in source_shares[1:]]
        info = json.dumps([crypto.b64u_encode(server_key), source, device]).encode()
        args = [repr(now), repr(forget), repr(now + self._session_timeout),
                self._store.cluster_key.seal_record(_info_aad(session_id), info), session_id,
                b" ".join(key for key, _ in source_shares), *limits]
        self._created(await self._store.run(CREATE, keys, args), session_id, now)

    def _created(self, code, session_id, now):
        if code == 0:
            self._fresh[session_id] = (now + FRESH, now + self._session_timeout)
            while len(self._fresh) > 1000:
                self._fresh.popitem(last=False)
            return None
        if code == 1:
            raise BadRequest("this session id is already in use: start a new attempt",
                             "session-exists")
        if code == 3 or code >= 5:
            raise CapacityError("too many connect attempts from your network are in "
                                "progress: try again in a minute", "busy")
        if code == 4:
            raise CapacityError("too many connect attempts to this home server are in "
                                "progress: try again in a minute", "busy")
        raise CapacityError("the coordinator is busy: try again in a minute", "busy")

    async def info(self, session_id):
        sealed = await self._store.call("HGET", self._key(session_id), "i")
        if sealed is None:
            return None
        try:
            key, source, device = json.loads(self._store.cluster_key.open_record(
                _info_aad(session_id), sealed))
        except MessageRefused as e:
            self._refused(session_id, e)
            return None
        return SessionInfo(crypto.b64u_decode(key), source or None, device or None)

    def _refused(self, session_id, error):
        """A record that does not open (Redis changed it): counted, never used."""
        self.dropped[error.reason] += 1
        self.log.debug("session {session}: {error}", session=session_id, error=str(error))

    async def is_pending(self, session_id):
        state, deadline = await self._store.call("HMGET", self._key(session_id), "st", "dl")
        deadline = _seconds(deadline)
        return state == b"p" and deadline is not None and self._clock.seconds() < deadline

    async def answer(self, session_id, result):
        return await self._complete(session_id, "a", result)

    async def fail(self, session_id, error):
        status, doc = errors.to_response(error)
        return await self._complete(session_id, "f", dict(doc, status=status))

    async def _complete(self, session_id, state, doc):
        now = self._clock.seconds()
        result = self._store.cluster_key.seal_record(
            _result_aad(session_id, state.encode()),
            json.dumps(doc, separators=(",", ":")).encode())
        message = self._store.messages.seal(
            DONE, b" ".join([session_id.encode("ascii"), state.encode(), result]), now)
        done = await self._store.run(
            COMPLETE, [self._key(session_id), self._store.key("ss")],
            [repr(now), repr(now + self._retention), state, result, self.channel, session_id,
             message])
        return done == 1

    async def wait(self, session_id, timeout, source=None):
        waiters = self._waiters.get(session_id, ())
        if self._waiting >= self._max_waiters or len(waiters) >= self._max_waiters_per_session:
            raise CapacityError("too many requests are waiting: try again shortly", "busy")
        share = source_key(source if source is not None else "unknown")
        if not self._waiters_by_source.room(share):
            raise CapacityError("too many requests from your network are waiting: "
                                "try again shortly", "busy")
        waiter = _Waiter(session_id, share)
        waiter.d = defer.Deferred(lambda d: self._drop(waiter))
        # Registered before the read: a completion published meanwhile finds it.
        self._waiters.setdefault(session_id, []).append(waiter)
        self._waiting += 1
        self._waiters_by_source.take(share)
        waiter.timer = self._clock.callLater(timeout, self._timed_out, waiter)
        fresh = self._fresh.pop(session_id, None)
        if fresh is not None and self._clock.seconds() < fresh[0]:
            # Made here a moment ago: pending, and its answer will be published.
            self._read([b"p", None, repr(fresh[1]).encode()], waiter)
        else:
            self._read_for(waiter)
        return await waiter.d

    # -- completions -----------------------------------------------------------------

    def completed(self, message):
        """A message from the ``done`` channel (opened by ``NodeLink``): ``<session id>
        <state> <sealed result>``."""
        try:
            sid, state, body = message.split(b" ", 2)
            sid = sid.decode("ascii")
        except (ValueError, UnicodeDecodeError):
            self.log.debug("malformed completion message")
            return
        self._fresh.pop(sid, None)
        if sid in self._waiters:
            self._resolve_all(sid, state, body)

    def _read_for(self, waiter):
        """Read the session for *waiter* (in the background: a completion published
        meanwhile may resolve the waiter first)."""
        read = self._store.call("HMGET", self._key(waiter.sid), "st", "r", "dl")
        read.addCallbacks(self._read, self._read_failed, callbackArgs=(waiter,),
                          errbackArgs=(waiter,))

    def _read(self, reply, waiter):
        if waiter.d.called:
            return
        state, body, deadline = reply
        if state is None:
            self._finish(waiter, NotFound("unknown or forgotten session: connect again",
                                          "unknown-session"))
        elif state != b"p":
            self._resolve_all(waiter.sid, state, body)
        elif _seconds(deadline) is None:
            self._refused(waiter.sid, MessageRefused("bad-record", "a session deadline that "
                                                     "is not a number"))
            self._finish(waiter, unavailable())
        else:
            left = _seconds(deadline) - self._clock.seconds()
            if left <= 0:
                self._expire(waiter.sid)
            elif waiter.timer.getTime() - self._clock.seconds() > left:
                # The session's deadline comes before the wait's end.
                waiter.timer.cancel()
                waiter.timer = self._clock.callLater(left, self._deadline, waiter)

    def _read_failed(self, failure, waiter):
        if not waiter.d.called:
            self._finish(waiter, failure.value)

    def _resolve_all(self, sid, state, sealed):
        try:
            doc = json.loads(self._store.cluster_key.open_record(_result_aad(sid, state),
                                                                 sealed))
        except MessageRefused as e:
            self._refused(sid, e)
            for waiter in list(self._waiters.get(sid, ())):
                self._finish(waiter, unavailable())
            return
        except ValueError:
            self.log.error("malformed session result for {session}", session=sid)
            return
        outcome = errors.from_response(doc.pop("status", 503), doc) if state == b"f" else doc
        for waiter in list(self._waiters.get(sid, ())):
            self._finish(waiter, outcome)

    def _finish(self, waiter, outcome):
        if not self._drop(waiter):
            return
        if isinstance(outcome, Exception):
            waiter.d.errback(outcome)
        else:
            waiter.d.callback(outcome)

    def _drop(self, waiter):
        waiters = self._waiters.get(waiter.sid)
        if not waiters or waiter not in waiters:
            return False
        waiters.remove(waiter)
        if not waiters:
            del self._waiters[waiter.sid]
        self._waiting -= 1
        self._waiters_by_source.give_back(waiter.share)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        return True

    def _timed_out(self, waiter):
        self._finish(waiter, None)

    def _deadline(self, waiter):
        waiter.timer = None
        self._expire(waiter.sid)

    def _expire(self, sid):
        """The session's deadline passed while it was pending: end it for every node."""
        defer.Deferred.fromCoroutine(self._end_late(sid)).addErrback(
            lambda f: self.log.failure("ending a late session failed", f))

    async def _end_late(self, sid):
        try:
            changed = await self.fail(sid, timed_out())
        except Exception as e:
            for waiter in list(self._waiters.get(sid, ())):
                self._finish(waiter, e)
            return
        if not changed:
            # Completed meanwhile (its message is on the way) or already expired:
            # read it again.
            for waiter in list(self._waiters.get(sid, ())):
                self._read_for(waiter)
