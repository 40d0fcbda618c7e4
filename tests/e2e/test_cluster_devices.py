"""Device policies in a coordinator cluster (``cluster/redispolicies.py``), against a real
``redis-server``: the policy a home server tells the node it is registered with is what
every node's broker checks device tokens against, it goes when the server is forgotten
there, and a refresh writes it again after Redis lost it."""

import asyncio

import pytest
from twisted.internet import defer

from helpers import require_module
from services import RedisServer

from homechannel import aio, crypto
from homechannel.protocol.connect import DevicePolicy
from homechannel.testing.coordinator import LoopClock

require_module("redis", "pip install 'homechannel[cluster]' (make venv does it)")
from homechannel.coordinator.cluster import redisrelay, redisstore  # noqa: E402
from homechannel.coordinator.cluster.clusterkey import ClusterKey  # noqa: E402
from homechannel.coordinator.cluster.redispolicies import PolicyStore  # noqa: E402

SERVER = crypto.IdentityKey.generate()
POLICY = DevicePolicy(9, frozenset({crypto.b64u_encode(b"d" * 16)}))
KEY = ClusterKey(bytes(range(32)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r


def awaited(d):
    return aio.as_future(defer.Deferred.fromCoroutine(d) if asyncio.iscoroutine(d) else d)


def test_every_node_checks_the_policy_its_owner_wrote(server):
    """How this was shown to fail: with ClusterRelay.device_policy answering None (no
    store), node B refused every device token of a server registered with node A."""
    async def main():
        stores = [redisstore.RedisStore(redisstore.connect(server.url, **server.options()),
                                        KEY, prefix="hc:tdp:")
                  for _ in range(2)]
        # Redis itself (its admin): what it loses, and what whoever holds it writes
        admin = redisstore.RedisStore(redisstore.connect(server.url, **server.admin_options()),
                                      KEY, prefix="hc:tdp:")
        stores.append(admin)
        clock = LoopClock()
        owner = PolicyStore(stores[0], clock, ttl=60)
        other = redisrelay.ClusterRelay(stores[1], "b", None, clock,
                                        policies=PolicyStore(stores[1], clock))
        try:
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            await awaited(owner.set(SERVER.id, POLICY))
            assert await awaited(other.device_policy(SERVER.public_raw)) == POLICY
            await awaited(admin.call("FLUSHALL"))          # Redis lost it
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            await awaited(owner.refresh())
            assert await awaited(other.device_policy(SERVER.public_raw)) == POLICY
            ttl = await awaited(admin.call("PTTL", owner.key(SERVER.id)))
            assert 0 < ttl <= 60_000
            await awaited(owner.set(SERVER.id, DevicePolicy(9)))   # the last one revoked
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            await awaited(owner.set(SERVER.id, POLICY))
            await awaited(owner.forget(SERVER.id))
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            await awaited(admin.call("SET", owner.key(SERVER.id), b"garbage"))
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            # Redis cannot write a policy (one in the clear) or move one to another server
            await awaited(admin.call("SET", owner.key(SERVER.id), POLICY.encode()))
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            stranger = crypto.IdentityKey.generate()
            await awaited(owner.set(stranger.id, POLICY))
            moved = await awaited(admin.call("GET", owner.key(stranger.id)))
            await awaited(admin.call("SET", owner.key(SERVER.id), moved))
            assert await awaited(other.device_policy(SERVER.public_raw)) is None
            assert other._policies.stats["malformed"] == 3   # garbage, in the clear, moved
        finally:
            for store in stores:
                await awaited(store.close())

    asyncio.run(asyncio.wait_for(main(), 30))
