"""The device policies of a cluster's home servers in Redis: what every node's broker
checks a device token against (``broker``; ``connect.DevicePolicy``: the password
epoch and the enrolled devices a home server tells over UDP, DEVICES).

``<prefix>dp:<key id>`` holds ``DevicePolicy.encode()`` of a server that has enrolled
devices, written by the node the server is registered with (the owner: its
``CoordinatorUDP`` calls :meth:`PolicyStore.set` and :meth:`PolicyStore.forget`),
with a TTL (the directory's), written again every ``refresh`` seconds while the
server stays registered there, so that an entry of a node that died goes with it.
Only the owner writes or deletes it: a script checks that the directory entry
(``hc:d:<key id>``) names this node (or is missing), so a node the server has left,
which keeps the server until it expires there, neither writes its stale policy over
the new owner's (a revoked device let through at the door) nor deletes it (every
device refused until the next refresh).
A write that fails (Redis is gone) is made again at the next refresh; meanwhile the
door check may refuse a good token (its client signs in with the password) or
accept a stale one (the home server, which checks every token itself, refuses it).
The value is sealed with the cluster key (``ClusterKey.seal_record``, bound to the
key id): Redis cannot forge a policy or move one to another server; it can delete one
or put back an older one of the same server, which changes what the door lets
through, never what the home server accepts (it checks every token itself).
"""

from twisted.internet import defer, task

from homechannel.coordinator.cluster.redisstore import Script
from homechannel.errors import HomeChannelError, ProtocolError
from homechannel.protocol.connect import DevicePolicy
from homechannel.ops.logsafe import Logger

# The writes of the node the server is registered with, and only of it: a node the
# server left (it keeps it until it expires there) must neither write its stale policy
# over the new owner's nor delete it.  The directory entry (``hc:d:<key id>``, field
# ``n``) names the owner; with no entry (not written yet, or lost) the writer is taken
# for the owner.
# KEYS: policy, directory entry.  ARGV: node id, sealed policy, ttl ms.
# 1: written, 2: another node's server (nothing written).
POLICY_SET = Script("policy-set", """
local owner = redis.call('HGET', KEYS[2], 'n')
if owner and owner ~= ARGV[1] then return 2 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
""")

# KEYS: policy, directory entry.  ARGV: node id.  1: deleted, 2: another node's server.
POLICY_DEL = Script("policy-del", """
local owner = redis.call('HGET', KEYS[2], 'n')
if owner and owner ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 1
""")


class PolicyStore:
    log = Logger()

    def __init__(self, store, clock, node_id, ttl=180.0, refresh=30.0):
        self._store = store
        self._node = node_id.encode("utf-8")
        self._clock = clock
        self._ttl = str(int(ttl * 1000))
        self.refresh_interval = refresh
        self._owned = {}                # kid -> encoded policy (this node's servers)
        self._loop = None
        self.stats = {"writes": 0, "write-failures": 0, "malformed": 0, "not-owner": 0}

    def key(self, kid):
        return self._store.key("dp", kid)

    # -- the owning node's writes ---------------------------------------------------

    def set(self, kid, policy):
        """A server registered here told a new policy (``DevicesUpdated``)."""
        if policy.devices:
            self._owned[kid] = policy.encode()
            return self._write(kid)
        self._owned.pop(kid, None)
        return self._delete(kid)

    def forget(self, kid):
        """The server was forgotten here (expired, left)."""
        self._owned.pop(kid, None)
        return self._delete(kid)

    def _write(self, kid):
        self.stats["writes"] += 1
        sealed = self._store.cluster_key.seal_record(_aad(kid), self._owned[kid])
        d = self._store.run(POLICY_SET, self._keys(kid), [self._node, sealed, self._ttl])
        return d.addCallback(self._written, kid).addErrback(self._failed)

    def _delete(self, kid):
        d = self._store.run(POLICY_DEL, self._keys(kid), [self._node])
        return d.addCallback(self._written, kid).addErrback(self._failed)

    def _keys(self, kid):
        return [self.key(kid), self._store.key("d", kid)]

    def _written(self, reply, kid):
        if reply == 2:
            # The server is registered with another node now: its policy is that
            # node's to write; this node stops refreshing its own.
            self.stats["not-owner"] += 1
            self._owned.pop(kid, None)

    def _failed(self, failure):
        self.stats["write-failures"] += 1
        if not failure.check(HomeChannelError):
            self.log.failure("writing a device policy failed", failure)

    def refresh(self):
        """Write every policy of this node's servers again (a new TTL; one lost or
        failed is back)."""
        return defer.DeferredList([self._write(kid) for kid in list(self._owned)])

    def start(self):
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self.refresh_interval, now=False).addErrback(
            lambda f: self.log.failure("device policy refresh stopped", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    # -- every node's reads -------------------------------------------------------------

    async def get(self, kid):
        """The server's ``DevicePolicy``, or None (none told, or not readable)."""
        raw = await self._store.call("GET", self.key(kid))
        if raw is None:
            return None
        try:
            return DevicePolicy.decode(self._store.cluster_key.open_record(_aad(kid),
                                                                           bytes(raw)))
        except ProtocolError:
            self.stats["malformed"] += 1
            return None


def _aad(kid):
    return b"dp:" + (kid.encode() if isinstance(kid, str) else kid)
