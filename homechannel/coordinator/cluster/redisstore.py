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
* Key names that count something private (a source network, a device, a
  server) carry its keyed hash (:meth:`RedisStore.hidden_key`), and the store
  holds the node's :class:`~homechannel.coordinator.cluster.clusterkey.MessageSeal`
  (``messages``): see :mod:`~homechannel.coordinator.cluster.clusterkey`.
* A node logs in as a user with a password (:func:`client_options`: and TLS
  that checks Redis's certificate and name), and checks the login once at start
  (:func:`check_login`): a refused password, a Redis that lets anyone in or a
  certificate that does not verify stops the node with advice.
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
from homechannel.coordinator.cluster.clusterkey import MessageSeal
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

    def __init__(self, client, cluster_key, prefix="hc:", timeout=2.0):
        self.client = client
        self.timeout = timeout
        self.prefix = prefix.encode("utf-8") if isinstance(prefix, str) else prefix
        # What Redis never sees (clusterkey.py): the keyed hashes in key names and
        # pools, sealed records, and this node's seal of the messages between nodes.
        self.cluster_key = cluster_key
        self.messages = MessageSeal(cluster_key)
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

    def hidden_key(self, *parts, hidden):
        """A key name for a counter of *hidden* (a source network, a device, a
        server): the prefix, *parts*, and the keyed hash of *hidden*
        (``ClusterKey.pseudonym``), never *hidden* itself."""
        return self.key(*parts, self.cluster_key.pseudonym(hidden))

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


def client_options(cluster, password):
    """redis-py's options for the ``[cluster]`` config *cluster*: the user and its
    *password*, and for ``rediss://`` TLS that always checks Redis's certificate and
    name (against ``redis_tls_ca_file``, or the system's CAs), with the client
    certificate if one is set."""
    options = {"username": cluster.redis_username, "password": password}
    if cluster.redis_url.startswith("rediss://"):
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True,
                       ssl_ca_certs=cluster.redis_tls_ca_file or None)
        if cluster.redis_tls_cert_file:
            options.update(ssl_certfile=cluster.redis_tls_cert_file,
                           ssl_keyfile=cluster.redis_tls_key_file)
    return options


def connect(url, *, max_connections=32, timeout=2.0, **options):
    """A redis-py asyncio client for *url* (``rediss://host:port/db`` for TLS,
    ``redis://``, ``unix:///path``) with *options* (:func:`client_options`), with
    short timeouts so that a lost Redis is noticed in seconds, and no retries of
    its own."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aredis.Redis.from_url(
        url, **options, max_connections=max_connections, socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        health_check_interval=0)


def check_login(url, options, timeout=2.0):
    """Log in to Redis once, at start (blocking: before the reactor runs).

    Raises ``ConfigError`` for what only the operator can fix: a refused user or
    password, a Redis that lets a client in without any password, a certificate
    that does not verify, a user that may not run PING.  Returns a warning (a
    string) for a Redis not reachable yet (the node starts; the API answers 503
    until it is) or for the default user (which may do anything); None when all
    is well.  Nothing here is a command the ACL refuses: Redis's ACL log stays
    empty."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def client(**changes):
        return redis.Redis.from_url(url, **dict(options, **changes), socket_timeout=timeout,
                                    socket_connect_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0))

    what = f"Redis at {url} as user {options.get('username')!r}"
    user, anonymous = client(), client(username=None, password=None)
    try:
        return _check_login(user, anonymous, what, url, options.get("username"))
    finally:
        user.close()
        anonymous.close()


def _check_login(user, anonymous, what, url, username):
    import ssl

    import redis

    from homechannel.errors import ConfigError

    try:
        user.ping()
    except redis.AuthenticationError as e:
        raise ConfigError(f"{what} refused the login ({e}): check cluster.redis_username and "
                          "cluster.redis_password_file against the Redis ACL") from None
    except redis.ResponseError as e:
        raise ConfigError(f"{what} refused PING ({e}): give the user the commands of "
                          "conf/redis/users.acl") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        cause = e
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None or "SSL" in str(e):
            raise ConfigError(f"TLS to {url} failed ({e}): check cluster.redis_tls_ca_file "
                              "(the CA of Redis's certificate), that the certificate names "
                              "the host of cluster.redis_url, and the client certificate if "
                              "Redis asks for one") from None
        return f"{what} is not reachable yet ({e}): the API answers 503 until it is"
    try:
        anonymous.ping()
    except redis.RedisError:
        pass            # NOAUTH: a client must log in
    else:
        raise ConfigError(f"Redis at {url} lets anyone in (its default user needs no "
                          "password): turn it off ('user default off', as "
                          "conf/redis/users.acl does) or give it a password")
    if username == "default":
        return (f"{what}: the default user may do anything to Redis unless you restricted "
                "it; give the nodes the user of conf/redis/users.acl (only the cluster's "
                "keys, channels and commands)")
    return None
