"""Building one node of a coordinator cluster (``[cluster]`` in the config).

The coordinator tap calls :func:`build` when ``cluster.redis_url`` is set and
hands the result's seams to the broker instead of the in-memory ones::

    node = cluster.build(cfg, reactor, udp, rv)
    broker = Broker(node.relay, cfg.web, reactor, sessions=node.sessions,
                    make_limiter=node.make_limiter, make_lockout=node.make_lockout)
    node.service.setServiceParent(top)

Everything here runs on Twisted's asyncio reactor (the tap installs it) with
redis-py's asyncio client.  Why redis-py and not txredisapi: redis-py is
Redis's own, maintained client, with releases for every Redis version, TLS,
ACLs, RESP3 and a C parser (hiredis); txredisapi, the Twisted-native one, has
had no release since 2022 and lags behind Redis.  The price is asyncio, which
the home server already runs on (aiortc), bridged in one module
(:mod:`homechannel.aio`).
"""

from dataclasses import dataclass

from twisted.application import service

from homechannel import keyfiles
from homechannel.errors import ConfigError
from homechannel.ops.logsafe import Logger

log = Logger()


@dataclass
class ClusterNode:
    store: object
    relay: object
    sessions: object
    directory: object
    link: object
    service: object

    def make_limiter(self, clock, name, limit, period, burst=None):
        from homechannel.coordinator.cluster.redislimits import RedisRateLimiter
        return RedisRateLimiter(self.store, name, clock, limit, period, burst=burst)

    def make_lockout(self, clock, name, threshold, base, maximum):
        from homechannel.coordinator.cluster.redislimits import RedisLockout
        return RedisLockout(self.store, name, clock, threshold=threshold, base=base,
                            maximum=maximum)


class ClusterService(service.Service):
    """Starts the node's subscription, heartbeat and directory refresh; on stop,
    tells the other nodes at once (its heartbeat key is deleted)."""

    def __init__(self, node, clock):
        self.node = node
        self._clock = clock

    def startService(self):
        super().startService()
        # Once the event loop runs (the store queues its commands on it).
        self._clock.callLater(0, self._start)

    def _start(self):
        if self.running:
            self.node.link.start()
            self.node.directory.start()

    def stopService(self):
        super().stopService()
        self.node.directory.stop()
        self.node.relay.stop()
        d = self.node.link.stop()
        d.addBoth(lambda _: self.node.store.close())
        d.addErrback(lambda f: None)
        return d


def read_password(path):
    """Redis's password from *path* (surrounding whitespace ignored), a file group
    and others cannot read; None without a path."""
    if not path:
        return None
    data = keyfiles.read_private_file(path, "cluster.redis_password_file",
                                      "write Redis's password there (one line, mode 0600)")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"cluster.redis_password_file {path} is not UTF-8 text") from None


def build(cfg, reactor, udp, rv):
    """The cluster seams of this node: relay, sessions, limiters, and its service."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError("[cluster] needs redis-py: pip install 'homechannel[cluster]'") \
            from None
    from homechannel.coordinator.cluster import redisrelay, redisstore
    from homechannel.coordinator.cluster.redissessions import RedisSessionStore

    c = cfg.cluster
    client = redisstore.connect(c.redis_url, password=read_password(c.redis_password_file))
    store = redisstore.RedisStore(client, prefix=c.key_prefix)
    relay = redisrelay.ClusterRelay(store, c.node_id, udp, reactor)
    web = cfg.web
    sessions = RedisSessionStore(
        store, reactor, session_timeout=web.session_timeout,
        retention=max(30.0, web.long_poll_timeout + 5.0), max_sessions=web.max_sessions,
        max_waiters=web.max_waiters, max_sessions_per_source=web.max_sessions_per_source,
        max_sessions_per_server=web.max_sessions_per_server,
        max_waiters_per_source=web.max_waiters_per_source)
    directory = redisrelay.Directory(
        store, c.node_id, reactor, rv.registry, ttl=2 * cfg.udp.expiry + c.directory_refresh,
        refresh=c.directory_refresh, request_refill=udp.refill)
    udp.set_directory(directory)
    store.on_recovered.append(directory.refresh)
    link = redisrelay.NodeLink(store, c.node_id, reactor, relay, sessions)
    node = ClusterNode(store, relay, sessions, directory, link, None)
    node.service = ClusterService(node, reactor)
    log.info("cluster node {node}: Redis {url}, keys {prefix}*", node=c.node_id,
             url=_safe_url(c.redis_url), prefix=c.key_prefix)
    return node


def _safe_url(url):
    """The URL without a password in it (for the log)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=("***@" + netloc))
    return urllib.parse.urlunsplit(parts)
