"""Pending connect sessions: created by ``POST /api/connect``, completed by
the home server's answer (or an error), waited for by long-polls.

:class:`ISessionStore` is the seam a shared (Redis) store will implement
later.  :class:`MemorySessionStore` keeps everything in this process:

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
from zope.interface import Interface, implementer

from homechannel.coordinator.ratelimit import source_key
from homechannel.coordinator.shares import Shares
from homechannel.errors import BadRequest, CapacityError, NotFound, RequestTimeout
from homechannel.ops.logsafe import Logger


class ISessionStore(Interface):
    """:class:`MemorySessionStore` answers at once (raising its errors);
    ``redissessions.RedisSessionStore`` (a cluster) returns Deferreds of the
    same values and errors.  ``wait`` is a Deferred in both."""

    def create(session_id, server_key, source=None, device=None):
        """Start a pending session for the server with raw key *server_key*,
        asked for by the client address *source* (and device id *device* if
        it came with a device token).

        Raises ``BadRequest`` (code ``session-exists``) if *session_id* is in
        use and ``CapacityError`` (code ``busy``) if the table, the share of
        the source's network or the server's share of it is full (a missing
        *source* counts as one source, "unknown")."""

    def info(session_id):
        """The :class:`SessionInfo` of *session_id* (server key, source,
        device), or None if it is unknown or forgotten."""

    def is_pending(session_id):
        """True while the session waits for its answer."""

    def wait(session_id, timeout, source=None):
        """A Deferred that fires with the session's result dict once it is
        answered, with None if *timeout* seconds pass first, or fails with
        the ``HomeChannelError`` the session ended with (``NotFound`` for an
        unknown session, ``CapacityError`` if too many are waiting, in all,
        for the session or from the network of the client address *source*).
        Cancelling it stops the wait."""

    def answer(session_id, result):
        """Complete a pending session with *result* (a JSON-able dict).
        Returns False (and changes nothing) if it is unknown or complete."""

    def fail(session_id, error):
        """Complete a pending session with the exception *error*.
        Returns False if it is unknown or already complete."""


@dataclass(frozen=True)
class SessionInfo:
    server_key: bytes
    source: str = None
    device: str = None


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

    def create(self, session_id, server_key, source=None, device=None):
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

    def info(self, session_id):
        session = self._sessions.get(session_id)
        return None if session is None else session.info

    def is_pending(self, session_id):
        session = self._sessions.get(session_id)
        return session is not None and not session.done

    def wait(self, session_id, timeout, source=None):
        session = self._sessions.get(session_id)
        if session is None:
            return defer.fail(NotFound("unknown or forgotten session: connect again", "unknown-session"))
        if session.done:
            return self._outcome(session)
        if (self._waiting >= self._max_waiters
                or len(session.waiters) >= self._max_waiters_per_session):
            return defer.fail(CapacityError("too many requests are waiting: try again shortly", "busy"))
        share = _share_key(source)
        if not self._waiters_by_source.room(share):
            return defer.fail(CapacityError("too many requests from your network are waiting: "
                                            "try again shortly", "busy"))

        entry = []

        def cancel(d):
            self._drop_waiter(session, entry)

        d = defer.Deferred(cancel)
        timer = self._clock.callLater(timeout, self._wait_timed_out, session, entry)
        entry.extend([d, timer, share])
        session.waiters.append(entry)
        self._waiting += 1
        self._waiters_by_source.take(share)
        return d

    def answer(self, session_id, result):
        return self._complete(session_id, result, None)

    def fail(self, session_id, error):
        return self._complete(session_id, None, error)

    # -- internals --

    @staticmethod
    def _outcome(session):
        if session.error is not None:
            return defer.fail(session.error)
        return defer.succeed(session.result)

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
        self._finish(session_id, session, None, RequestTimeout("the home server did not answer in time: check that it is "
            "running and try again", "timeout"))

    def _forget(self, session_id):
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._by_source.give_back(session.share)
            self._by_server.give_back(session.info.server_key)


def _share_key(source):
    return source_key(source if source is not None else "unknown")
