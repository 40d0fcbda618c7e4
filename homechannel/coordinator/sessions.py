"""Pending connect sessions: created by ``POST /api/connect``, completed by
the home server's answer (or an error), waited for by long-polls.

:class:`MemorySessionStore` is the in-memory
:class:`~homechannel.coordinator.interfaces.ISessionStore` (``async def``;
``cluster.redissessions`` is the cluster's).  It keeps everything in this
process, and its coroutines finish at once except :meth:`~MemorySessionStore.wait`:

* every session has a deadline (``session_timeout``); a session that is not
  completed by then ends with ``RequestTimeout`` (code ``timeout``);
* a completed (or expired) session is kept for ``retention`` seconds so a
  long-poll that was retried after a network hiccup still gets the result,
  and then forgotten (later polls get 404);
* the number of sessions, of waiting long-polls in all and of waiting
  long-polls per session are capped (``CapacityError``, 503); inside those
  caps, each source network (``ratelimit.source_key``: IPv6 /64, IPv4
  address) and each target server has its share of the sessions, and each
  source its share of the waiting long-polls, so that one source (or one
  attacker's throwaway server) cannot fill a table for everybody else.  A
  session holds its shares until it is forgotten (after its retention).

Timers use the injected clock (``IReactorTime.callLater``); tests pass
``task.Clock``.
"""

from dataclasses import dataclass

from twisted.internet import defer
from zope.interface import implementer

from homechannel.coordinator.interfaces import ISessionStore
from homechannel.coordinator.ratelimit import source_key
from homechannel.coordinator.shares import Shares
from homechannel.errors import BadRequest, CapacityError, NotFound, RequestTimeout
from homechannel.ops.logsafe import Logger


@dataclass(frozen=True)
class SessionInfo:
    server_key: bytes
    source: str | None = None
    device: str | None = None


class _Session:
    __slots__ = ("info", "share", "done", "result", "error", "waiters", "timer")

    def __init__(self, info, share):
        self.info = info
        self.share = share      # the source network it counts against
        self.done = False
        self.result = None
        self.error = None
        self.waiters = []
        self.timer = None


@implementer(ISessionStore)
class MemorySessionStore:
    log = Logger()

    def __init__(self, clock, session_timeout=60.0, retention=30.0, max_sessions=10_000,
                 max_waiters=10_000, max_waiters_per_session=4, max_sessions_per_source=100,
                 max_sessions_per_server=100, max_waiters_per_source=100):
        self._clock = clock
        self._session_timeout = session_timeout
        self._retention = retention
        self._max_sessions = max_sessions
        self._max_waiters = max_waiters
        self._max_waiters_per_session = max_waiters_per_session
        self._sessions = {}
        self._waiting = 0
        # Shares, keyed by source network and by the target's raw key.
        self._by_source = Shares(max_sessions_per_source)
        self._by_server = Shares(max_sessions_per_server)
        self._waiters_by_source = Shares(max_waiters_per_source)

    def __len__(self):
        return len(self._sessions)

    @property
    def waiting(self):
        return self._waiting

    async def create(self, session_id, server_key, source=None, device=None):
        if session_id in self._sessions:
            raise BadRequest("this session id is already in use: start a new attempt",
                        "session-exists")
        if len(self._sessions) >= self._max_sessions:
            raise CapacityError("the coordinator is busy: try again in a minute", "busy")
        share = _share_key(source)
        if not self._by_source.room(share):
            raise CapacityError("too many connect attempts from your network are in "
                                "progress: try again in a minute", "busy")
        if not self._by_server.room(server_key):
            raise CapacityError("too many connect attempts to this home server are in "
                                "progress: try again in a minute", "busy")
        self._by_source.take(share)
        self._by_server.take(server_key)
        session = self._sessions[session_id] = _Session(
            SessionInfo(server_key, source, device), share)
        session.timer = self._clock.callLater(self._session_timeout, self._expire, session_id)

    async def info(self, session_id):
        session = self._sessions.get(session_id)
        return None if session is None else session.info

    async def is_pending(self, session_id):
        session = self._sessions.get(session_id)
        return session is not None and not session.done

    async def wait(self, session_id, timeout, source=None):
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound("unknown or forgotten session: connect again", "unknown-session")
        if session.done:
            if session.error is not None:
                raise session.error.with_traceback(None)   # kept: no traceback to grow
            return session.result
        if (self._waiting >= self._max_waiters
                or len(session.waiters) >= self._max_waiters_per_session):
            raise CapacityError("too many requests are waiting: try again shortly", "busy")
        share = _share_key(source)
        if not self._waiters_by_source.room(share):
            raise CapacityError("too many requests from your network are waiting: "
                                "try again shortly", "busy")

        entry = []

        def cancel(d):
            self._drop_waiter(session, entry)

        d = defer.Deferred(cancel)
        timer = self._clock.callLater(timeout, self._wait_timed_out, session, entry)
        entry.extend([d, timer, share])
        session.waiters.append(entry)
        self._waiting += 1
        self._waiters_by_source.take(share)
        return await d

    async def answer(self, session_id, result):
        return self._complete(session_id, result, None)

    async def fail(self, session_id, error):
        return self._complete(session_id, None, error)

    # -- internals --

    def _drop_waiter(self, session, entry):
        try:
            session.waiters.remove(entry)
        except ValueError:
            return False
        self._waiting -= 1
        self._waiters_by_source.give_back(entry[2])
        timer = entry[1]
        if timer.active():
            timer.cancel()
        return True

    def _wait_timed_out(self, session, entry):
        if self._drop_waiter(session, entry):
            entry[0].callback(None)

    def _complete(self, session_id, result, error):
        session = self._sessions.get(session_id)
        if session is None or session.done:
            return False
        self._finish(session_id, session, result, error)
        return True

    def _finish(self, session_id, session, result, error):
        session.done = True
        session.result = result
        session.error = error
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = self._clock.callLater(self._retention, self._forget, session_id)
        waiters, session.waiters = session.waiters, []
        for d, timer, share in waiters:
            self._waiting -= 1
            self._waiters_by_source.give_back(share)
            if timer.active():
                timer.cancel()
            if error is not None:
                d.errback(error)
            else:
                d.callback(result)

    def _expire(self, session_id):
        session = self._sessions.get(session_id)
        if session is None or session.done:
            return
        session.timer = None
        self._finish(session_id, session, None, timed_out())

    def _forget(self, session_id):
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._by_source.give_back(session.share)
            self._by_server.give_back(session.info.server_key)


def timed_out():
    """How a session not answered by its deadline ends (here and in a cluster)."""
    return RequestTimeout("the home server did not answer in time: check that it is "
                          "running and try again", "timeout")


def _share_key(source):
    return source_key(source if source is not None else "unknown")
