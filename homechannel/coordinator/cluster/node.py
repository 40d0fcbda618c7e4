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

from collections import Counter
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
    policies: object = None

    def dropped(self):
        """What came from Redis and was not acted on, by reason (the metrics): messages
        that did not open (``bad-mac``, ``stale``, ``replayed``, ...), opened messages
        that did not parse (``malformed``), session records that did not open."""
        counts = Counter(self.link.dropped)
        counts.update(self.sessions.dropped)
        counts["malformed"] += self.relay.stats["messages-dropped"]
        return counts

    def make_limiter(self, clock, name, limit, period, burst=None):
        """The cluster's budget, held on this node alone as well (``LocalCeiling``)."""
        from homechannel.coordinator.cluster.redislimits import LocalCeiling, RedisRateLimiter
        from homechannel.coordinator.ratelimit import MemoryRateLimiter
        return LocalCeiling(RedisRateLimiter(self.store, name, clock, limit, period, burst=burst),
                            MemoryRateLimiter(clock, limit, period, burst=burst))

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
            if self.node.policies is not None:
                self.node.policies.start()

    def stopService(self):
        super().stopService()
        self.node.directory.stop()
        if self.node.policies is not None:
            self.node.policies.stop()
        self.node.relay.stop()
        d = self.node.link.stop()
        d.addBoth(lambda _: self.node.store.close())
        d.addErrback(lambda f: None)
        return d


def read_password(path):
    """Redis's password: the first line of *path*, a file group and others cannot
    read (``cluster.redis_password_file``)."""
    return keyfiles.read_private_line(path, "cluster.redis_password_file",
                                      "write Redis's password there (one line, mode 0600)")


def build(cfg, reactor, udp, rv):
    """The cluster seams of this node: relay, sessions, limiters, and its service.
    Blocks to log in to Redis once (at start, before the reactor runs): a refused
    login or certificate stops the node with advice."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError("[cluster] needs redis-py: pip install 'homechannel[cluster]'") \
            from None
    from homechannel.coordinator.cluster import redisrelay, redisstore
    from homechannel.coordinator.cluster.clusterkey import ClusterKey
    from homechannel.coordinator.cluster.redispolicies import PolicyStore
    from homechannel.coordinator.cluster.redissessions import RedisSessionStore

    c = cfg.cluster
    key = ClusterKey(keyfiles.load_cluster_key(c.key_file))
    password = read_password(c.redis_password_file)
    options = redisstore.client_options(c, password)
    warning = redisstore.check_login(c.redis_url, options)
    if warning:
        log.warn("{warning}", warning=warning)
    store = redisstore.RedisStore(redisstore.connect(c.redis_url, **options), key,
                                  prefix=c.key_prefix)
    ttl = 2 * cfg.udp.expiry + c.directory_refresh
    policies = PolicyStore(store, reactor, ttl=ttl, refresh=c.directory_refresh)
    udp.set_policy_store(policies)
    relay = redisrelay.ClusterRelay(store, c.node_id, udp, reactor, policies=policies)
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
    store.on_recovered.append(policies.refresh)
    link = redisrelay.NodeLink(store, c.node_id, reactor, relay, sessions)
    node = ClusterNode(store, relay, sessions, directory, link, None, policies)
    node.service = ClusterService(node, reactor)
    log.info("cluster node {node}: Redis {url} as {user}, keys {prefix}*, cluster key "
             "fingerprint {fingerprint}", node=c.node_id, url=c.redis_url,
             user=c.redis_username, prefix=c.key_prefix, fingerprint=key.fingerprint)
    return node
