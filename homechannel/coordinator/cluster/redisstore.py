"""The coordinator cluster's connection to Redis: batched commands, Lua
scripts, and one meaning for "Redis is gone".

Every shared table of the cluster (``redissessions``, ``redislimits``,
``redisrelay``) goes through one :class:`RedisStore`.  It runs on asyncio
(redis-py's asyncio client; the cluster's coordinator runs Twisted's asyncio
reactor, and :mod:`homechannel.aio` is the bridge) and hands out Deferreds:

* :meth:`RedisStore.call` (a command) and :meth:`RedisStore.run` (a Lua
  :class:`Script`) queue the command; everything queued in one turn of the
  event loop goes to Redis as **one pipeline** (one write, one round trip),
  however many HTTP requests and UDP events queued it.  Under load this is
  what keeps a Redis command at about a tenth of its cost when sent alone.
* Scripts are sent as ``EVALSHA``; a Redis that does not know one (it was
  restarted) gets ``SCRIPT LOAD`` and the command again.
* Any failure to talk to Redis (refused, reset, timed out, loading its data
  after a restart) fails the command with :data:`UNAVAILABLE`
  (``Unavailable``, HTTP 503, code ``unavailable``), is logged once per
  outage, and flips :attr:`RedisStore.available`; the first command that works
  again flips it back and calls the ``on_recovered`` callbacks (the relay
  writes its directory again).  Nothing retries in a loop here: the callers
  decide (the API returns 503; the relay keeps its writes and flushes them
  later).
"""

import asyncio
import hashlib
import math

from twisted.internet import defer

from homechannel import aio
from homechannel.errors import Unavailable
from homechannel.ops.logsafe import Logger

STORE_UNAVAILABLE = "the coordinator cluster's store is unavailable: try again shortly"

# At most this many pipelines in flight at once (each holds one connection).
MAX_IN_FLIGHT = 8


def unavailable():
    return Unavailable(STORE_UNAVAILABLE, "unavailable")


class Script:
    """A Lua script, called by its SHA-1 (``EVALSHA``)."""

    def __init__(self, name, lua):
        self.name = name
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode("utf-8")).hexdigest()

    def __repr__(self):
        return f"<Script {self.name}>"


class RedisStore:
    """Batched access to one Redis (or a primary behind a proxy) for a node."""

    log = Logger()

    def __init__(self, client, prefix="hc:", timeout=2.0):
        self.client = client
        self.timeout = timeout
        self.prefix = prefix.encode("utf-8") if isinstance(prefix, str) else prefix
        self.available = True
        self.on_recovered = []          # callables, after an outage ends
        self.stats = {"commands": 0, "pipelines": 0, "errors": 0, "outages": 0}
        self._queue = []                # (args, script, Deferred)
        self._scheduled = False
        self._in_flight = 0

    def key(self, *parts):
        """A key name: the prefix and *parts* (bytes or str) joined with ':'."""
        return self.prefix + b":".join(p if isinstance(p, bytes) else str(p).encode("utf-8")
                                       for p in parts)

    # -- commands ------------------------------------------------------------------

    def call(self, *args):
        """Queue one Redis command; a Deferred of its reply."""
        return self._enqueue(args, None)

    def run(self, script, keys=(), args=()):
        """Queue a call of *script*; a Deferred of its reply."""
        return self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def _enqueue(self, args, script):
        d = defer.Deferred()
        self._queue.append((args, script, d))
        if not self._scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return d

    def _flush(self):
        self._scheduled = False
        if not self._queue or self._in_flight >= MAX_IN_FLIGHT:
            return
        batch, self._queue = self._queue, []
        self._in_flight += 1
        d = aio.as_deferred(self._execute(batch))
        d.addErrback(lambda f: self.log.failure("Redis pipeline failed", f))
        d.addBoth(self._done)

    def _done(self, _):
        self._in_flight -= 1
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _execute(self, batch):
        import redis.exceptions as rex

        self.stats["pipelines"] += 1
        self.stats["commands"] += len(batch)
        try:
            replies = await self._pipeline([args for args, _, _ in batch])
            missing = [i for i, r in enumerate(replies)
                       if isinstance(r, rex.NoScriptError)
                       or (isinstance(r, rex.ResponseError) and str(r).startswith("NOSCRIPT"))]
            if missing:
                scripts = {batch[i][1] for i in missing if batch[i][1] is not None}
                for script in scripts:
                    await self.client.execute_command("SCRIPT", "LOAD", script.lua)
                again = await self._pipeline([batch[i][0] for i in missing])
                for i, reply in zip(missing, again):
                    replies[i] = reply
        except (rex.RedisError, OSError, asyncio.TimeoutError) as e:
            self._lost(e)
            for _, _, d in batch:
                d.errback(unavailable())
            # The other pooled connections went to the same Redis: if it restarted they
            # are all dead, and each would fail one more batch.  Start afresh.
            try:
                await self.client.connection_pool.disconnect()
            except Exception:
                pass
            return
        self._working()
        for (args, script, d), reply in zip(batch, replies):
            if isinstance(reply, (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError)):
                self._lost(reply)
                d.errback(unavailable())
            elif isinstance(reply, Exception):
                # A command Redis refused (a bug in a script or a key of the
                # wrong type): never a traceback to a user, but loud here.
                self.stats["errors"] += 1
                self.log.error("Redis refused {what}: {error}",
                               what=script.name if script else args[0], error=str(reply))
                d.errback(unavailable())
            else:
                d.callback(reply)

    async def _pipeline(self, commands):
        """Send *commands* in one write on one pooled connection and read their
        replies (a reply that is an error comes back as the exception).

        redis-py's own Pipeline would do the same with more work per command
        (response callbacks, a timer per reply, retries, metrics): here the
        commands are packed by hiredis when it is there, and one timer covers the
        whole batch."""
        import redis.exceptions as rex

        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command(_pack(commands), check_health=False)
                replies = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except rex.ResponseError as e:
                        replies.append(e)
            return replies
        except BaseException:
            # A batch cut short leaves replies unread: never reuse the connection.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    # -- health ----------------------------------------------------------------------

    def _lost(self, error):
        if self.available:
            self.available = False
            self.stats["outages"] += 1
            self.log.warn("lost the cluster's Redis store ({error}): the API answers 503 "
                          "until it is back", error=str(error) or type(error).__name__)

    def _working(self):
        if self.available:
            return
        self.available = True
        self.log.info("the cluster's Redis store is back")
        for callback in list(self.on_recovered):
            try:
                callback()
            except Exception:
                self.log.failure("recovery callback failed")

    def close(self):
        """Close the client's connections (a Deferred)."""
        return aio.as_deferred(self.client.aclose())


def _pack(commands):
    try:
        from hiredis import pack_command
    except ImportError:                       # pragma: no cover - hiredis is in [cluster]
        from redis.connection import PythonRespSerializer

        packer = PythonRespSerializer(6000, lambda v: v if isinstance(v, bytes)
                                      else str(v).encode("utf-8"))
        return b"".join(b"".join(packer.pack(*args)) for args in commands)
    return b"".join(pack_command(args) for args in commands)


def connect(url, *, password=None, max_connections=32, timeout=2.0):
    """A redis-py asyncio client for *url* (``redis://host:port/db``,
    ``rediss://`` for TLS, ``unix:///path``), with short timeouts so that a
    lost Redis is noticed in seconds, and no retries of its own."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    extra = {"password": password} if password else {}
    return aredis.Redis.from_url(
        url, **extra, max_connections=max_connections, socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        health_check_interval=0)
