"""The cluster's Redis implementations of the coordinator's seams, against a real
``redis-server`` started here (Debian package ``redis-server``).

Each test builds two "nodes" (two clients, two ``RedisStore``s) on one Redis, so
what one node writes the other must see: budgets and lockouts hold across
nodes, a session made on one node is answered and waited for on the other, the
directory and pools written by the owning node are read and taken by another,
and offers, notices and refills travel between nodes.  The asyncio code runs
under ``asyncio.run`` with ``LoopClock`` (no Twisted reactor needed)."""

import asyncio
import inspect
import itertools
import os
import time

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from helpers import free_tcp_port, require_module
from services import RedisServer

from homechannel import aio, crypto

from homechannel.protocol.udp import POOL
from homechannel.coordinator.cluster import noderelay
from homechannel.coordinator.cluster.clusterkey import DONE, ClusterKey, MessageRefused
from homechannel.coordinator.interfaces import ILockout, IRateLimiter, IRelay, ISessionStore
from homechannel.testing.coordinator import LoopClock
from homechannel.errors import (BadRequest, CapacityError, NotFound, RequestTimeout,
                                Unavailable)

require_module("redis", "pip install 'homechannel[cluster]' (make venv does it)")
from homechannel.coordinator.cluster import redisrelay, redissessions, redisstore  # noqa: E402
from homechannel.coordinator.cluster.redislimits import RedisLockout, RedisRateLimiter  # noqa: E402


_prefixes = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def get(d):
    """Await a seam's coroutine (started at once, as Twisted code starts one) or a
    Deferred from asyncio."""
    if inspect.iscoroutine(d):
        d = defer.Deferred.fromCoroutine(d)
    return aio.as_future(d)


# The cluster key of the nodes of these tests (each node has its own MessageSeal).
KEY = ClusterKey(os.urandom(32))


class Node:
    """One node's store (own client and connections, the nodes' Redis user of the shipped
    ACL) under a shared key prefix."""

    def __init__(self, redis, prefix, name="a", key=KEY):
        self.store = redisstore.RedisStore(redisstore.connect(redis.url, **redis.options()),
                                           key, prefix=prefix)
        self.clock = LoopClock()
        self.name = name

    async def close(self):
        await get(self.store.close())


def admin(redis):
    """A plain client of the tests' admin user (PTTL: more than the nodes' ACL allows)."""
    import redis as redispy
    return redispy.Redis.from_url(redis.url, **redis.admin_options())


def nodes(server, n=2):
    prefix = f"hc:t{next(_prefixes)}:"
    return [Node(server, prefix, name) for name in "abcdefg"[:n]]


# -- rate limits and lockouts ---------------------------------------------------------


def test_interfaces_are_provided(server):
    async def main():
        (a,) = nodes(server, 1)
        verifyObject(IRateLimiter, RedisRateLimiter(a.store, "x", a.clock, 5))
        verifyObject(ILockout, RedisLockout(a.store, "x", a.clock))
        verifyObject(ISessionStore, redissessions.RedisSessionStore(a.store, a.clock))
        verifyObject(IRelay, redisrelay.ClusterRelay(a.store, "a", FakeUDP(), a.clock))
        await a.close()

    run(main())


def test_a_rate_limit_is_one_budget_for_all_nodes_and_its_keys_expire(server):
    """Two nodes spend one bucket: 5 hits in all (an in-memory limiter per node allows
    8 of the 8 here).  The bucket's key has a TTL: the time until it would be full again."""
    async def main():
        a, b = nodes(server)
        la = RedisRateLimiter(a.store, "connect", a.clock, 5, 60.0)
        lb = RedisRateLimiter(b.store, "connect", b.clock, 5, 60.0)
        results = []
        for i in range(8):
            results.append(await get((la if i % 2 else lb).hit("198.51.100.7")))
        assert results[:5] == [None] * 5
        assert all(r is not None and 0 < r <= 12.5 for r in results[5:])
        assert await get(la.peek("198.51.100.7")) is not None
        assert await get(lb.peek("198.51.100.8")) is None     # another source
        ttl = admin(server).pttl(a.store.hidden_key("rl", "connect", hidden="198.51.100.7"))
        assert 0 < ttl <= 61_000
        # peek makes no entry for a key it has not seen
        assert await get(a.store.call("EXISTS", a.store.hidden_key(
            "rl", "connect", hidden="198.51.100.8"))) == 0
        await a.close()
        await b.close()

    run(main())


def test_five_wrong_passwords_spread_over_two_nodes_lock_the_source_out_on_both(server):
    """Failures on node a and node b count together; the lockout doubles; a success
    clears it; half failures (stale challenges) add up; the key expires.  Shown to fail
    with an in-memory ``MemoryLockout`` per node in place of the Redis ones (a scratch copy):
    the fifth failure locks nothing, each node having counted 2 or 3."""
    async def main():
        a, b = nodes(server)
        la = RedisLockout(a.store, "source", a.clock, threshold=5, base=60.0, maximum=3600.0)
        lb = RedisLockout(b.store, "source", b.clock, threshold=5, base=60.0, maximum=3600.0)
        src = "203.0.113.9"
        lengths = [await get((la if i % 2 else lb).failure(src)) for i in range(5)]
        assert lengths == [None] * 4 + [60.0]
        for lock in (la, lb):
            left = await get(lock.check(src))
            assert 55 < left <= 60
        assert await get(la.failure(src)) == 120.0       # doubling once locked out
        ttl = admin(server).pttl(a.store.hidden_key("lo", "source", hidden=src))
        assert 0 < ttl <= (120 + 3600) * 1000
        await get(lb.success(src))
        assert await get(la.check(src)) is None
        other = "203.0.113.10"
        for _ in range(9):
            assert await get(la.failure(other, 0.5)) is None
        assert await get(lb.failure(other, 0.5)) == 60.0
        await a.close()
        await b.close()

    run(main())


# -- sessions -----------------------------------------------------------------------------


class Completions:
    """A node's subscription (``NodeLink``: its channel and the ``done`` channel) feeding
    the session completions to *sessions*."""

    def __init__(self, node, sessions):
        relay = redisrelay.ClusterRelay(node.store, node.name, FakeUDP(), node.clock)
        self.link = redisrelay.NodeLink(node.store, node.name, node.clock, relay, sessions)

    async def __aenter__(self):
        self.link.start()
        while not self.link.subscribed:
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc):
        await get(self.link.stop())


def sessions_for(node, **kw):
    return redissessions.RedisSessionStore(node.store, node.clock, **kw)


SERVER = crypto.IdentityKey.generate().public_raw


def test_a_session_made_on_one_node_is_answered_on_another_and_waited_for_on_a_third(server):
    """The waiting long-poll learns of the answer through pub/sub (it would wait its
    whole timeout without the completion message: there is no polling)."""
    async def main():
        a, b, c = nodes(server, 3)
        sa, sb, sc = sessions_for(a), sessions_for(b), sessions_for(c)
        async with Completions(c, sc):
            await get(sa.create("s" * 22, SERVER, source="192.0.2.1", device="dev1"))
            info = await get(sb.info("s" * 22))
            assert info.server_key == SERVER and info.source == "192.0.2.1" \
                and info.device == "dev1"
            waiting = get(sc.wait("s" * 22, 20.0, "192.0.2.1"))
            await asyncio.sleep(0.2)
            assert sc.waiting == 1
            started = asyncio.get_running_loop().time()
            assert await get(sb.answer("s" * 22, {"status": "answered", "answer": "v=0"}))
            result = await waiting
            assert result == {"status": "answered", "answer": "v=0"}
            assert asyncio.get_running_loop().time() - started < 2.0
            assert sc.waiting == 0
            # The first answer wins; a later poll gets the same result at once.
            assert not await get(sa.answer("s" * 22, {"status": "other"}))
            assert await get(sb.wait("s" * 22, 5.0)) == result
            ttl = admin(server).pttl(a.store.key("s", "s" * 22))
            assert 0 < ttl <= 30_000
        for n in (a, b, c):
            await n.close()

    run(main())


def test_session_errors_cross_nodes_and_the_deadline_holds(server):
    async def main():
        a, b = nodes(server)
        sa, sb = sessions_for(a, session_timeout=1.0), sessions_for(b, session_timeout=1.0)
        async with Completions(b, sb):
            await get(sa.create("e" * 22, SERVER, source="192.0.2.1"))
            with pytest.raises(BadRequest) as e:
                await get(sb.create("e" * 22, SERVER, source="192.0.2.1"))
            assert e.value.code == "session-exists"
            waiting = get(sb.wait("e" * 22, 10.0))
            await asyncio.sleep(0.1)
            await get(sa.fail("e" * 22, Unavailable("no way", "relay-failed", retry_after=3)))
            with pytest.raises(Unavailable) as e:
                await waiting
            assert e.value.code == "relay-failed" and e.value.retry_after == 3
            with pytest.raises(NotFound):
                await get(sb.wait("x" * 22, 1.0))
            # Not answered by its deadline: 408 timeout for every node.
            await get(sa.create("t" * 22, SERVER, source="192.0.2.1"))
            with pytest.raises(RequestTimeout):
                await get(sb.wait("t" * 22, 10.0))
            with pytest.raises(RequestTimeout):
                await get(sa.wait("t" * 22, 10.0))
            # A wait that ends first answers None (still pending).
            await get(sa.create("p" * 22, SERVER, source="192.0.2.1"))
            assert await get(sb.wait("p" * 22, 0.2)) is None
        await a.close()
        await b.close()

    run(main())


def test_session_shares_hold_across_nodes(server):
    """Two sessions per source network and three per server, counted for the whole
    cluster: node b refuses what node a's sessions already hold."""
    async def main():
        a, b = nodes(server)
        kw = dict(max_sessions_per_source=2, max_sessions_per_server=3, max_sessions=4)
        sa, sb = sessions_for(a, **kw), sessions_for(b, **kw)
        other = crypto.IdentityKey.generate().public_raw
        await get(sa.create("a" * 22, SERVER, source="2001:db8:1:2::1"))
        await get(sb.create("b" * 22, SERVER, source="2001:db8:1:2::2"))
        with pytest.raises(CapacityError, match="from your network"):
            await get(sa.create("c" * 22, SERVER, source="2001:db8:1:2::3"))
        await get(sb.create("d" * 22, SERVER, source="192.0.2.1"))
        with pytest.raises(CapacityError, match="to this home server"):
            await get(sa.create("e" * 22, SERVER, source="192.0.2.2"))
        await get(sa.create("f" * 22, other, source="192.0.2.3"))
        with pytest.raises(CapacityError, match="coordinator is busy"):
            await get(sb.create("g" * 22, other, source="192.0.2.4"))
        await a.close()
        await b.close()

    run(main())


def test_a_wider_ipv6_prefix_is_one_source_with_a_few_shares_across_nodes(server):
    """Per /64 two sessions, so a /56 holds at most 4 x 2 however many of its /64s it
    uses, on any node; another /56 still gets in."""
    async def main():
        a, b = nodes(server)
        kw = dict(max_sessions_per_source=2, max_sessions_per_server=100, max_sessions=100)
        sa, sb = sessions_for(a, **kw), sessions_for(b, **kw)
        made = 0
        for i in range(10):
            for j in range(2):
                store = sa if (i + j) % 2 else sb
                try:
                    await get(store.create(f"{i:02d}{j}".ljust(22, "x"), SERVER,
                                           source=f"2001:db8:0:{i:x}::{j + 1}"))
                    made += 1
                except CapacityError as e:
                    assert "from your network" in str(e)
        assert made == 4 * 2
        await get(sa.create("z" * 22, SERVER, source="2001:db8:0:100::1"))   # another /56
        await a.close()
        await b.close()

    run(main())


# -- the directory, the pools and the relay between nodes ----------------------------------


class FakeUDP:
    """The owning node's UDP side, recorded (what ``CoordinatorUDP`` provides)."""

    def __init__(self, fail=None):
        self.offers, self.notices, self.refills = [], [], []
        self.fail = fail
        self.answer_handler = None

    def offer_to(self, kid, payload):
        from twisted.internet import defer

        self.offers.append((kid, payload))
        if self.fail:
            return defer.fail(Unavailable(self.fail))
        return defer.succeed(None)

    def notice_to(self, kid, body):
        self.notices.append((kid, body))

    def refill(self, kid):
        self.refills.append(kid)

    def set_answer_handler(self, handler):
        self.answer_handler = handler


class Registry:
    """The two registry calls the directory's refresh makes."""

    def __init__(self, kids):
        self.kids = list(kids)

    def slots(self):
        return range(len(self.kids))

    def key_id(self, slot):
        return self.kids[slot]

    def lookup_key(self, kid):
        return self.kids.index(kid) if kid in self.kids else -1


def pairs(n, tag=0):
    return [(bytes([tag, i]) * 8, bytes([tag, i]) * 16) for i in range(n)]


async def cluster_node(node, udp=None, registry=None):
    udp = udp or FakeUDP()
    relay = redisrelay.ClusterRelay(node.store, node.name, udp, node.clock)
    sessions = sessions_for(node)
    link = redisrelay.NodeLink(node.store, node.name, node.clock, relay, sessions)
    directory = redisrelay.Directory(node.store, node.name, node.clock,
                                     registry or Registry([]), ttl=60.0, refresh=3600.0,
                                     request_refill=udp.refill)
    link.start()
    for _ in range(50):
        if link.subscribed:
            break
        await asyncio.sleep(0.05)
    return relay, udp, directory, link


async def two_nodes(server):
    """Two cluster nodes (each: relay, fake UDP, directory, link) and a server key."""
    a, b = nodes(server)
    server_key = crypto.IdentityKey.generate().public_raw
    return ((a, b), server_key, crypto.key_id(server_key), await cluster_node(a),
            await cluster_node(b))


async def settle():
    await asyncio.sleep(0.2)


async def stop(links, nodes):
    for link in links:
        await get(link.stop())
    for node in nodes:
        await node.close()


def test_directory_and_pools_are_written_by_the_owner_and_taken_by_any_node(server):
    """Atomic takes (of two concurrent takes of one challenge, one wins); a take that
    leaves the pool short asks the owner for a refill; a refill fills free places; an
    owner without a heartbeat is offline; a forgotten server is deleted."""
    async def main():
        (a, b), server_key, kid, (ra, udp_a, dir_a, link_a), (rb, udp_b, dir_b, link_b) = \
            await two_nodes(server)
        assert await get(rb.server_status(server_key)) == (False, None)
        dir_a.pool(kid, pairs(2), True)
        await settle()
        online, challenge = await get(rb.server_status(server_key))
        assert online and challenge in dict(pairs(2))
        ttl = admin(server).pttl(b.store.key("d", kid))
        assert 0 < ttl <= 60_000
        c0, e0 = pairs(2)[0]
        first, second = await asyncio.gather(get(rb.take_challenge(server_key, c0)),
                                             get(ra.take_challenge(server_key, c0)))
        # What the pool held: the keyed hash of e0 (never e0 itself).
        assert sorted([first, second], key=lambda x: x is None) == [
            KEY.pool_entry(kid, c0, e0), None]
        await settle()
        assert udp_a.refills == [kid]          # the owner was asked, once
        dir_a.pool(kid, pairs(3, tag=1), False)  # the REFILL reply fills one free place
        await settle()
        entry = await get(a.store.call("HGETALL", a.store.key("d", kid)))
        assert len(entry) == 1 + POOL and entry[b"n"] == b"a"
        # A made-up challenge takes nothing.
        assert await get(rb.take_challenge(server_key, b"z" * 16)) is None
        # The owner's heartbeat goes: its servers are offline at once for other nodes.
        await get(link_a.stop())
        assert await get(rb.server_status(server_key)) == (False, None)
        link_a.start()
        await settle()
        assert (await get(rb.server_status(server_key)))[0]
        dir_a.forget(kid)
        await settle()
        assert await get(rb.server_status(server_key)) == (False, None)
        await stop((link_a, link_b), (a, b))

    run(main())


def test_offers_notices_and_refills_travel_to_the_owning_node(server):
    async def main():
        (a, b), server_key, kid, (ra, udp_a, dir_a, link_a), (rb, udp_b, dir_b, link_b) = \
            await two_nodes(server)
        dir_a.pool(kid, pairs(2), True)
        await settle()
        # From node b: relayed through Redis to a, whose UDP sends it; RESULT back.
        await get(rb.send_offer(server_key, b'{"offer": 1}'))
        assert udp_a.offers == [(kid, b'{"offer": 1}')] and udp_b.offers == []
        # From node a itself: straight to its UDP.
        await get(ra.send_offer(server_key, b'{"offer": 2}'))
        assert udp_a.offers[-1] == (kid, b'{"offer": 2}')
        await get(rb.notify(server_key, b'{"event":"login-failed"}'))
        await settle()
        assert udp_a.notices == [(kid, b'{"event":"login-failed"}')]
        # The home server does not acknowledge: node b's Deferred fails with the reason.
        udp_a.fail = "the home server did not acknowledge the offer"
        with pytest.raises(Unavailable, match="did not acknowledge") as e:
            await get(rb.send_offer(server_key, b'{"offer": 3}'))
        assert e.value.code == "relay-failed"
        # The owner is gone (nobody on its channel): fails at once, not after a timeout.
        link_a._task.cancel()
        await settle()
        rb._owners.clear()
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable, match="node is gone"):
            await get(rb.send_offer(server_key, b'{"offer": 4}'))
        assert asyncio.get_running_loop().time() - started < 2
        # Garbage on a node's channel is counted and dropped: unsealed, or sealed but
        # malformed inside.
        await get(b.store.call("PUBLISH", rb.channel(), b"Xjunk"))
        await get(b.store.call("PUBLISH", rb.channel(), rb._sealed(noderelay.refill(b"short"))))
        await settle()
        assert rb.stats["messages-dropped"] == 1 and link_b.dropped == {"malformed": 1}
        await stop((link_a, link_b), (a, b))

    run(main())


def test_the_directory_writes_again_what_redis_lost_and_what_failed(server, tmp_path):
    """Redis restarted empty, whether or not the node noticed the restart (a quick
    restart is often invisible: the client just reconnects): the refresh finds the
    owner's entries gone, writes them again and asks the home servers for fresh
    challenges.  Redis down: commands fail with a clear 503, writes made meanwhile are
    kept and sent once it is back, and the first command that works marks the store
    available again.

    Every step waits for the state it is about, never for time to pass: an earlier
    version asserted that a PING right after a restart failed, which a machine fast
    enough to finish the restart first never saw (the pooled connection was replaced
    silently), so it failed every time there."""
    async def main():
        own = RedisServer(tmp_path).start()
        a = Node(own, "hc:r:")
        kids = [bytes([i]) * 16 for i in range(3)]
        reg = Registry(kids)
        ra, udp_a, dir_a, link_a = await cluster_node(a, registry=reg)
        for kid in kids[:2]:
            dir_a.pool(kid, pairs(2), True)
        await written(a, kids[:2])
        # 1. A restart (noticed or not): each refresh pass either finds the entries
        # gone and writes them again, or meets the dead connection (503) and leaves
        # them for the next pass.  One pass after another until all three are back.
        own.restart()
        for _ in range(5):
            await get(dir_a.refresh())
            if dir_a.stats["recreated"] >= 3:
                break
        assert dir_a.stats["recreated"] == 3
        assert sorted(udp_a.refills) == sorted(kids)   # all three were lost (or never written)
        assert a.store.available
        await written(a, kids)
        # 2. Down: a clear 503, and the store knows.
        own.stop()
        with pytest.raises(Unavailable) as e:
            await get(a.store.call("PING"))
        assert e.value.code == "unavailable" and e.value.status == 503
        assert "store is unavailable" in str(e.value)
        assert not a.store.available
        # A registration meanwhile is kept (its write fails and is queued again)...
        dir_a.pool(kids[2], pairs(2, tag=7), True)
        while not dir_a.stats["write-retries"]:
            await asyncio.sleep(0.02)
        # ... and written once Redis is back; the first command that works says so.
        own.start()
        entry = await written(a, kids[2:])
        assert a.store.available
        assert entry[b"n"] == b"a" and pairs(2, tag=7)[0][0] in entry
        await get(link_a.stop())
        dir_a.stop()
        await a.close()
        own.stop()

    run(main())


async def written(node, kids):
    """Wait until the directory entries of *kids* are in Redis (owned by node "a");
    the last one's fields.  (The test's own 30 s limit ends a wait that never ends.)"""
    entry = None
    for kid in kids:
        while True:
            try:
                entry = await get(node.store.call("HGETALL", node.store.key("d", kid)))
            except Unavailable:
                entry = None
            if entry and entry.get(b"n") == b"a":
                break
            await asyncio.sleep(0.02)
    return entry


def test_an_unreachable_redis_is_a_clear_503(server):
    async def main():
        store = redisstore.RedisStore(redisstore.connect(
            f"redis://127.0.0.1:{free_tcp_port()}/0", timeout=0.5, **server.options()), KEY)
        limiter = RedisRateLimiter(store, "x", LoopClock(), 5)
        with pytest.raises(Unavailable) as e:
            await get(limiter.hit("192.0.2.1"))
        assert e.value.code == "unavailable" and e.value.status == 503
        assert str(e.value) == redisstore.STORE_UNAVAILABLE
        await get(store.close())

    run(main())


# -- whoever reaches Redis -------------------------------------------------------------------
# (docs/security.md, "Redis"): it can read, change and delete every key, and publish on
# every channel, with the admin user's rights here.  Nothing it holds or carries lets it
# check a password guess, read an offer, or make a node act.


class Capture:
    """An admin subscription to every channel of *prefix*: what Redis carries."""

    def __init__(self, redis, prefix):
        import redis.asyncio as aredis
        self.client = aredis.Redis.from_url(redis.url, **redis.admin_options())
        self.prefix = prefix
        self.messages = []

    async def __aenter__(self):
        self.pubsub = self.client.pubsub()
        await self.pubsub.psubscribe(self.prefix + "*")
        self.task = asyncio.ensure_future(self._loop())
        return self

    async def _loop(self):
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                self.messages.append((msg["channel"], msg["data"]))

    async def publish(self, channel, data):
        return await self.client.publish(channel, data)

    async def __aexit__(self, *exc):
        self.task.cancel()
        await self.pubsub.aclose()
        await self.client.aclose()


def test_offers_cross_redis_sealed_and_what_redis_forges_or_replays_is_dropped(server):
    """The OFFER node b relays to node a carries the client's proof and device token: in
    Redis it is sealed (none of it readable), and node a acts on it once.  The attacks of
    issue 17 from Redis: a hand-made OFFER (the format as it was, with a source and device
    of the attacker's choosing), one sealed with another cluster key, the captured OFFER
    published again, a forged NOTICE and REFILL: none reaches the home server; each is a
    counted drop.  How this was shown to fail: with ``NodeLink.deliver`` handing
    ``data`` to the handler unopened and ``ClusterRelay._sealed`` returning the message as
    it is (the messages as they were), the capture showed the proof."""
    async def main():
        (a, b), server_key, kid, (ra, udp_a, dir_a, link_a), (rb, udp_b, dir_b, link_b) = \
            await two_nodes(server)
        dir_a.pool(kid, pairs(2), True)
        await settle()
        payload = b'{"proof":"PROOF-abc","device":"hcdev1.TOKEN","source":"192.0.2.50"}'
        async with Capture(server, a.store.prefix.decode()) as redis:
            await get(rb.send_offer(server_key, payload))
            await settle()
            assert udp_a.offers == [(kid, payload)]
            offer = [data for channel, data in redis.messages if channel == rb.channel(b"a")]
            assert len(offer) == 1
            assert all(b"PROOF" not in d and b"hcdev1" not in d and b"192.0.2" not in d
                       for _, d in redis.messages)
            # The attacks.
            forged = noderelay.offer(7, "b", kid, b'{"source":"6.6.6.6","device":"x"}')
            other = Node(server, a.store.prefix.decode(), "b", key=ClusterKey(os.urandom(32)))
            await redis.publish(ra.channel(), forged)
            await redis.publish(ra.channel(), other.store.messages.seal(b"n", forged,
                                                                        time.time()))
            await redis.publish(ra.channel(), offer[0])                      # replayed
            await redis.publish(ra.channel(), noderelay.notice(kid, b'{"forged":1}'))
            await redis.publish(ra.channel(), noderelay.refill(kid))
            await settle()
            await other.close()
        assert udp_a.offers == [(kid, payload)] and udp_a.notices == [] \
            and udp_a.refills == []
        assert link_a.dropped == {"malformed": 3, "bad-mac": 1, "replayed": 1}
        await stop((link_a, link_b), (a, b))

    run(main())


def test_redis_holds_no_expected_answer_address_device_or_result_it_can_use(server):
    """After a session, pools, budgets and lockouts for a source and a device: no value
    or key name in Redis holds the expectedAnswer, the source address, the device id, the
    server key or the answer; a pool entry is the keyed hash of its expectedAnswer.  How
    this was shown to fail: with ``Directory._op`` storing ``e`` (as before) the
    expectedAnswer was found among the values; with ``RedisRateLimiter`` naming its key
    with ``store.key`` (as before) the source address was in a key name."""
    async def main():
        (a, b), server_key, kid, (ra, udp_a, dir_a, link_a), (rb, udp_b, dir_b, link_b) = \
            await two_nodes(server)
        source, device = "203.0.113.99", "dev-SECRET-id"
        dir_a.pool(kid, pairs(2, tag=9), True)
        sa = sessions_for(a)
        await get(sa.create("h" * 22, server_key, source=source, device=device))
        await get(sa.answer("h" * 22, {"status": "answered", "answer": "v=0 ANSWER-SDP"}))
        await get(RedisRateLimiter(a.store, "connect", a.clock, 5).hit(source))
        await get(RedisLockout(a.store, "device", a.clock).failure(device))
        await settle()
        admin_client = admin(server)
        dump = b""
        for name in admin_client.keys(a.store.prefix + b"*"):
            kind = admin_client.type(name)
            dump += name + b"\n"
            if kind == b"hash":
                for k, v in admin_client.hgetall(name).items():
                    dump += k + b"=" + v + b"\n"
            elif kind == b"zset":
                dump += b" ".join(admin_client.zrange(name, 0, -1)) + b"\n"
            else:
                dump += admin_client.get(name) + b"\n"
        for secret in (source.encode(), device.encode(), b"ANSWER-SDP", server_key,
                       crypto.b64u_encode(server_key).encode()) + tuple(
                           e for _, e in pairs(2, tag=9)):
            assert secret not in dump, secret
        entry = admin_client.hgetall(a.store.key("d", kid))
        c, e = pairs(2, tag=9)[0]
        assert entry[c] == KEY.pool_entry(kid, c, e)
        await stop((link_a, link_b), (a, b))

    run(main())


def test_a_session_record_redis_changed_or_moved_is_never_used(server):
    """Redis can end a session (delete it, or write a result): the node refuses a result
    or an info it did not seal for that session (a 503, counted), and a forged completion
    on the done channel is dropped while the genuine answer still arrives.  How this was
    shown to fail: with ``_info_aad`` not naming the session (``b"info "``), session y's
    info moved onto x was read as x's."""
    async def main():
        a, b = nodes(server)
        sa, sb = sessions_for(a), sessions_for(b)
        await get(sa.create("x" * 22, SERVER, source="192.0.2.1"))
        await get(sa.create("y" * 22, SERVER, source="192.0.2.2", device="d2"))
        db = admin(server)
        async with Completions(b, sb) as completions:
            waiting = get(sb.wait("x" * 22, 20.0))
            await asyncio.sleep(0.2)
            # A completion Redis made up, in the format as it was: not a sealed message.
            with pytest.raises(MessageRefused):
                b.store.messages.open(DONE, b"x" * 22 + b' a {"answer":"evil"}', time.time())
            db.publish(sb.channel, b"x" * 22 + b' a {"answer":"evil"}')
            await asyncio.sleep(0.2)
            assert completions.link.dropped == {"malformed": 1} and not waiting.done()
            await get(sa.answer("x" * 22, {"answer": "genuine"}))
            assert await waiting == {"answer": "genuine"}
        # The stored records: y's sealed info moved onto x, x's result onto y.
        x, y = a.store.key("s", "x" * 22), a.store.key("s", "y" * 22)
        db.hset(x, "i", db.hget(y, "i"))
        db.hset(y, mapping={"st": "a", "r": db.hget(x, "r")})
        assert await get(sb.info("x" * 22)) is None
        with pytest.raises(Unavailable):
            await get(sb.wait("y" * 22, 5.0))
        # A pending session whose deadline Redis made a word: a 503, not a crash.
        await get(sa.create("z" * 22, SERVER, source="192.0.2.3"))
        db.hset(a.store.key("s", "z" * 22), "dl", "soon")
        assert not await get(sb.is_pending("z" * 22))
        with pytest.raises(Unavailable):
            await get(sb.wait("z" * 22, 5.0))
        assert sb.dropped == {"bad-record": 3}
        await a.close()
        await b.close()

    run(main())


def test_budgets_redis_forgets_still_hold_on_each_node(server):
    """Whoever reaches Redis can DEL the budget keys (or restart Redis): each node's
    budget then still holds in its memory, so the cluster allows at most one budget per
    node, never an unbounded number.  How this was shown to fail: with the local budget
    of ``ClusterNode.make_limiter`` unbounded (Redis's alone deciding, as before), the
    peek after the DEL allowed the hit."""
    from homechannel.coordinator.cluster.node import ClusterNode

    async def main():
        (a,) = nodes(server, 1)
        node = ClusterNode(a.store, None, None, None, None, None)
        limiter = node.make_limiter(a.clock, "server-minute", 3, 60.0)
        kid = b"s" * 16
        assert [await get(limiter.hit(kid)) for _ in range(3)] == [None] * 3
        assert await get(limiter.hit(kid)) is not None
        db = admin(server)
        db.delete(*db.keys(a.store.prefix + b"rl:*"))
        assert await get(limiter.shared.peek(kid)) is None      # Redis forgot ...
        assert await get(limiter.peek(kid)) is not None           # ... this node did not
        assert await get(limiter.hit(kid)) is not None
        await a.close()

    run(main())


def test_a_node_with_another_cluster_key_is_named_once(server):
    """Nodes with different key files cannot open each other's messages (every offer
    between them would time out): a node finds the other key in the heartbeat of the node
    owning a server, and says so once, naming both fingerprints.  How this was shown to
    fail: without the ``_check_key`` call in ``server_status`` nothing was logged."""
    from twisted.logger import globalLogPublisher

    events = []

    def observer(event):
        if "another cluster key" in event.get("log_format", ""):
            events.append(event)

    async def main():
        prefix = f"hc:t{next(_prefixes)}:"
        a, b = Node(server, prefix, "a"), Node(server, prefix, "b", ClusterKey(os.urandom(32)))
        server_key = crypto.IdentityKey.generate().public_raw
        ra, _, _, link_a = await cluster_node(a)
        rb, _, dir_b, link_b = await cluster_node(b)
        dir_b.pool(crypto.key_id(server_key), pairs(2), True)
        await settle()
        for _ in range(3):
            assert (await get(ra.server_status(server_key)))[0]
        await stop((link_a, link_b), (a, b))

    globalLogPublisher.addObserver(observer)
    try:
        run(main())
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(events) == 1
    assert events[0]["node"] == "b" and events[0]["ours"] == KEY.fingerprint
    assert events[0]["theirs"] not in ("", KEY.fingerprint)
