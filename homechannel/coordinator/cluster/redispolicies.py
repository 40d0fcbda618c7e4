"""The device policies of a cluster's home servers in Redis: what every node's broker
checks a device token against (``broker``; ``connect.DevicePolicy``: the password
epoch and the enrolled devices a home server tells over UDP, DEVICES).

``<prefix>dp:<key id>`` holds ``DevicePolicy.encode()`` of a server that has enrolled
devices, written by the node the server is registered with (the owner: its
``CoordinatorUDP`` calls :meth:`PolicyStore.set` and :meth:`PolicyStore.forget`),
with a TTL (the directory's), written again every ``refresh`` seconds while the
server stays registered there, so that an entry of a node that died goes with it.
A write that fails (Redis is gone) is made again at the next refresh; meanwhile the
door check may refuse a good token (its client signs in with the password) or
accept a stale one (the home server, which checks every token itself, refuses it).
The value is sealed with the cluster key (``ClusterKey.seal_record``, bound to the
key id): Redis cannot forge a policy or move one to another server; it can delete one
or put back an older one of the same server, which changes what the door lets
through, never what the home server accepts (it checks every token itself).
"""

from twisted.internet import defer, task

from homechannel.errors import HomeChannelError, ProtocolError
from homechannel.protocol.connect import DevicePolicy
from homechannel.ops.logsafe import Logger


class PolicyStore:
    log = Logger()

    def __init__(self, store, clock, ttl=180.0, refresh=30.0):
        self._store = store
        self._clock = clock
        self._ttl = str(int(ttl * 1000))
        self.refresh_interval = refresh
        self._owned = {}                # kid -> encoded policy (this node's servers)
        self._loop = None
        self.stats = {"writes": 0, "write-failures": 0, "malformed": 0}

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
        d = self._store.call("SET", self.key(kid), sealed, "PX", self._ttl)
        return d.addErrback(self._failed)

    def _delete(self, kid):
        return self._store.call("DEL", self.key(kid)).addErrback(self._failed)

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
