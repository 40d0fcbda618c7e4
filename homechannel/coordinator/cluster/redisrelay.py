"""The relay of a coordinator cluster: which node owns each home server's UDP
session, the shared challenge pools, and offers, notices and refills relayed
between nodes through Redis.

A home server registers with one node (its UDP session and keys live there,
and keepalives stay there: no Redis round trip per ping).  HTTPS requests
may land on any node.  So:

* :class:`Directory` (the owning node's side) keeps ``<prefix>d:<key id>``,
  a hash ``{n: owning node id, <challenge>: <keyed hash of its expectedAnswer>,
  ...}`` (at most ``udp.POOL`` challenges; ``ClusterKey.pool_entry``: what Redis
  holds cannot check a password guess).  It is written on registration (the pool from
  REGISTER), on a CHALLENGES refresh (replaced) and on a REFILL reply (free
  places filled), through a write-behind queue: writes made in one turn of the
  event loop go out as one pipeline, and writes that fail (Redis is gone) are
  kept and sent again until they succeed.  Every ``refresh`` seconds the
  TTLs of all its servers' entries are extended in batches of
  :data:`REFRESH_BATCH` (never a Redis round trip per keepalive); an entry
  Redis lost (it was restarted empty) is written again and the home server
  asked for fresh challenges.  A server the node forgets (expiry) has its
  entry deleted; an entry of a node that died expires with its TTL, and
  until then :class:`ClusterRelay` treats it as offline (no heartbeat).
* :class:`ClusterRelay` (every node; ``IRelay``, ``async def``, for the broker): the
  server's status and its next challenge (one script, which also checks that
  the owner is alive: ``<prefix>node:<id>`` is its heartbeat, its cluster key's
  fingerprint, set every second and expiring after :data:`NODE_TTL`), taking a challenge atomically (a take
  that leaves the pool short publishes a REFILL to the owner, at most one
  every 2 s per server), and the offer: relayed by the owner's own UDP
  socket, directly when the owner is this node, else as an OFFER message on
  the owner's channel ``<prefix>n:<node id>`` and a RESULT back (see
  :mod:`~homechannel.coordinator.cluster.noderelay`).  NOTICEs go the same way.  The
  home server's ANSWER reaches its owning node, whose broker completes the
  shared session (``redissessions``): the answer goes back through Redis too.
* :class:`NodeLink` holds this node's pub/sub subscription (its own channel
  and the session completions) and its heartbeat, and reconnects by itself.

Every message between nodes is sealed with the cluster key, and opened by
:meth:`NodeLink.deliver` before anything acts on it: whoever reaches Redis can
neither read nor forge nor replay one (``clusterkey.MessageSeal``).
"""

import asyncio
import os
from collections import Counter

from twisted.internet import defer, task
from zope.interface import implementer

from homechannel import crypto

from homechannel.ops.logsafe import Logger
from homechannel.protocol.udp import POOL
from homechannel.coordinator.cluster import noderelay
from homechannel.coordinator.cluster.clusterkey import DONE, NODE, MessageRefused
from homechannel.coordinator.interfaces import IRelay
from homechannel.coordinator.cluster.redisstore import Script
from homechannel.errors import HomeChannelError, ProtocolError, Unavailable
from homechannel.ops.deadline import DeadlineTimer

NODE_TTL = 5.0               # a node whose heartbeat is older is dead
HEARTBEAT = 1.0
REFRESH_BATCH = 1000
REFILL_MARK = 2000           # ms: one REFILL request per server in flight (the refill clears it)
OWNER_CACHE = 5.0            # seconds an owner learned from a status or take is reused
OFFER_DEADLINE = 15.0        # an OFFER relayed to another node must be acknowledged by then

# KEYS: server entry, refill mark.  ARGV: node-key prefix, channel prefix, REFILL message.
# Returns the owner, a challenge and the owner's heartbeat (its cluster key's fingerprint).
STATUS = Script("relay-status", """
local h = redis.call('HGETALL', KEYS[1])
local owner, challenge = false, false
for i = 1, #h, 2 do
  if h[i] == 'n' then owner = h[i + 1] elseif not challenge then challenge = h[i] end
end
if not owner then return false end
local beat = redis.call('GET', ARGV[1] .. owner)
if not beat then return false end
if not challenge and redis.call('SET', KEYS[2], '1', 'NX', 'PX', %d) then
  redis.call('PUBLISH', ARGV[2] .. owner, ARGV[3])
end
return {owner, challenge, beat}
""" % REFILL_MARK)

# KEYS: server entry, refill mark.  ARGV: challenge, pool size, channel prefix, REFILL message.
TAKE = Script("relay-take", """
local owner = redis.call('HGET', KEYS[1], 'n')
if not owner then return false end
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e then return {owner, false} end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) - 1 < tonumber(ARGV[2])
    and redis.call('SET', KEYS[2], '1', 'NX', 'PX', %d) then
  redis.call('PUBLISH', ARGV[3] .. owner, ARGV[4])
end
return {owner, e}
""" % REFILL_MARK)

# KEYS: server entry, refill mark.  ARGV: node id, ttl ms, then challenge, expected, ...
SET_POOL = Script("directory-set", """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'n', ARGV[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")

# KEYS: server entry, refill mark.  ARGV: node id, ttl ms, pool size, then challenge,
# expected, ...  The refill arrived: the next short pool may ask again at once.
FILL_POOL = Script("directory-fill", """
redis.call('DEL', KEYS[2])
local owner = redis.call('HGET', KEYS[1], 'n')
if owner and owner ~= ARGV[1] then return 0 end
if not owner then redis.call('HSET', KEYS[1], 'n', ARGV[1]) end
local room = tonumber(ARGV[3]) - (redis.call('HLEN', KEYS[1]) - 1)
local i = 4
while room > 0 and i < #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then room = room - 1 end
  i = i + 2
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")

# KEYS: server entry.  ARGV: node id, ttl ms.  0: missing, 1: extended, 2: another node's.
TOUCH = Script("directory-touch", """
local owner = redis.call('HGET', KEYS[1], 'n')
if not owner then return 0 end
if owner ~= ARGV[1] then return 2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")

FORGET = Script("directory-forget", """
if redis.call('HGET', KEYS[1], 'n') == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
""")


class Directory:
    """The owning node's writes to the shared directory and pools (write-behind)."""

    log = Logger()

    def __init__(self, store, node_id, clock, registry, ttl=180.0, refresh=30.0,
                 request_refill=None, retry=1.0):
        self._store = store
        self._node = node_id.encode("utf-8")
        self._clock = clock
        self._registry = registry
        self._ttl = str(int(ttl * 1000))
        self.refresh_interval = refresh
        self._retry = retry
        self.request_refill = request_refill or (lambda kid: None)
        self._ops = {}                # kid -> [op, ...] not yet written
        self._call = None
        self._flushing = False
        self._refreshing = False
        self._loop = None
        self.stats = {"writes": 0, "write-retries": 0, "refreshed": 0, "recreated": 0}

    def key(self, kid):
        return self._store.key("d", kid)

    # -- events from the node's rendezvous -------------------------------------------

    def pool(self, kid, pairs, replace):
        """A ``PoolUpdated`` event (``CoordinatorUDP.set_directory``): a registration or
        refresh (*replace*) or a refill."""
        if replace:
            self._ops[kid] = [("set", tuple(pairs))]
        else:
            self._ops.setdefault(kid, []).append(("fill", tuple(pairs)))
        self._schedule(0)

    def forget(self, kid):
        """A ``ServerForgotten`` event (``CoordinatorUDP.set_directory``): the server
        expired here, or left."""
        self._ops[kid] = [("forget",)]
        self._schedule(0)

    # -- writing -----------------------------------------------------------------------

    def _schedule(self, delay):
        if self._call is None and not self._flushing:
            self._call = self._clock.callLater(delay, self._flush)

    def _op(self, kid, op):
        keys = [self.key(kid), self._store.key("rf", kid)]
        if op[0] == "forget":
            return self._store.run(FORGET, keys[:1], [self._node])
        # Redis gets a keyed hash of each expectedAnswer, never the value itself.
        entry = self._store.cluster_key.pool_entry
        pool = [x for c, e in op[1] for x in (c, entry(kid, c, e))]
        if op[0] == "set":
            return self._store.run(SET_POOL, keys, [self._node, self._ttl, *pool])
        return self._store.run(FILL_POOL, keys, [self._node, self._ttl, str(POOL), *pool])

    def _flush(self):
        self._call = None
        if not self._ops:
            return
        batch, self._ops = self._ops, {}
        self._flushing = True
        failed = {}
        writes = []
        for kid, ops in batch.items():
            for op in ops:
                d = self._op(kid, op)
                d.addErrback(lambda f, kid=kid, ops=ops: failed.setdefault(kid, ops))
                writes.append(d)
        self.stats["writes"] += len(writes)
        done = defer.DeferredList(writes)
        done.addCallback(lambda _: self._flushed(failed))
        done.addErrback(lambda f: self.log.failure("directory write failed", f))

    def _flushed(self, failed):
        self._flushing = False
        for kid, ops in failed.items():
            newer = self._ops.get(kid)
            if newer and newer[0][0] in ("set", "forget"):
                continue          # superseded
            self._ops[kid] = list(ops) + (newer or [])
        if failed:
            self.stats["write-retries"] += len(failed)
            self._schedule(self._retry)
        elif self._ops:
            self._schedule(0)

    # -- refreshing ------------------------------------------------------------------

    def start(self):
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self.refresh_interval, now=False).addErrback(
            lambda f: self.log.failure("directory refresh stopped", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def refresh(self):
        """Extend the TTL of every entry this node owns (in batches); write
        again the ones Redis lost.  Returns a Deferred (one pass at a time)."""
        if self._refreshing:
            return defer.succeed(None)
        self._refreshing = True
        d = defer.Deferred.fromCoroutine(self._refresh())

        def finished(result):
            self._refreshing = False
            return result

        d.addBoth(finished)
        d.addErrback(lambda f: None if f.check(HomeChannelError) else
                     self.log.failure("directory refresh failed", f))
        return d

    async def _refresh(self):
        reg = self._registry
        kids = [reg.key_id(slot) for slot in reg.slots()]
        for start in range(0, len(kids), REFRESH_BATCH):
            chunk = kids[start:start + REFRESH_BATCH]
            replies = await defer.gatherResults(
                [self._store.run(TOUCH, [self.key(kid)], [self._node, self._ttl])
                 for kid in chunk], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
            for kid, reply in zip(chunk, replies):
                if reply == 0 and kid not in self._ops and reg.lookup_key(kid) >= 0:
                    # Lost (Redis restarted empty): ours again, and fresh challenges.
                    self.stats["recreated"] += 1
                    self._ops[kid] = [("set", ())]
                    self.request_refill(kid)
            self.stats["refreshed"] += len(chunk)
        self._schedule(0)


@implementer(IRelay)
class ClusterRelay:
    """``IRelay`` for the broker of any node, over the shared directory."""

    log = Logger()

    def __init__(self, store, node_id, udp, clock, random_bytes=os.urandom, policies=None):
        """*policies*: the cluster's device policies (``redispolicies.PolicyStore``)."""
        self._store = store
        self._policies = policies
        self.node_id = node_id
        self._node = node_id.encode("utf-8")
        self._udp = udp
        self._clock = clock
        self._owners = {}              # kid -> (node id bytes, when learned)
        self._pending = noderelay.PendingOffers(
            OFFER_DEADLINE, int.from_bytes(random_bytes(6), "big"))
        self._timer = DeadlineTimer(clock, self._expire)
        self._answer_handler = None
        self.stats = {"offers-relayed": 0, "offers-received": 0, "notices-relayed": 0,
                      "refills-asked": 0, "messages-dropped": 0}
        self._node_prefix = store.key("node", "")
        self._channel_prefix = store.key("n", "")
        self._other_keys = set()         # owners found with another cluster key (warned)

    def channel(self, node=None):
        return self._channel_prefix + (self._node if node is None else node)

    def _sealed(self, message):
        """*message* sealed for a node's channel (``clusterkey.MessageSeal``)."""
        return self._store.messages.seal(NODE, message, self._clock.seconds())

    def _publish(self, node, message):
        return self._store.call("PUBLISH", self.channel(node), self._sealed(message))

    # -- IRelay ------------------------------------------------------------------------

    async def server_status(self, server_key):
        kid = crypto.key_id(server_key)
        reply = await self._store.run(
            STATUS, [self._store.key("d", kid), self._store.key("rf", kid)],
            [self._node_prefix, self._channel_prefix, self._sealed(noderelay.refill(kid))])
        if not reply:
            return False, None
        owner, challenge, beat = reply
        self._check_key(owner, beat)
        self._owners[kid] = (owner, self._clock.seconds())
        return True, challenge or None

    def _check_key(self, owner, beat):
        """Say once per node if *owner*'s heartbeat names another cluster key: the two
        cannot open each other's messages, and every offer between them times out."""
        ours = self._store.cluster_key.fingerprint.encode()
        if beat == ours or owner in self._other_keys or len(self._other_keys) >= 100:
            return
        self._other_keys.add(owner)
        self.log.warn("coordinator node {node} holds another cluster key (fingerprint "
                      "{theirs}; this node's is {ours}): the two cannot read each other's "
                      "messages; copy one cluster.key_file to every node",
                      node=owner.decode("utf-8", "replace"),
                      theirs=beat.decode("ascii", "replace"), ours=ours.decode())

    async def take_challenge(self, server_key, challenge):
        kid = crypto.key_id(server_key)
        reply = await self._store.run(
            TAKE, [self._store.key("d", kid), self._store.key("rf", kid)],
            [challenge, str(POOL), self._channel_prefix, self._sealed(noderelay.refill(kid))])
        if not reply:
            return None
        owner, entry = reply
        self._owners[kid] = (owner, self._clock.seconds())
        return entry or None

    def answer_matches(self, server_key, challenge, answer, expected):
        # *expected* is the pool's keyed hash (``Directory``), not the expectedAnswer.
        return self._store.cluster_key.answer_matches(crypto.key_id(server_key), challenge,
                                                      answer, expected)

    async def send_offer(self, server_key, payload):
        kid = crypto.key_id(server_key)
        owner = await self._owner(kid)
        if owner == self._node:
            await self._udp.offer_to(kid, payload)
            return
        d = defer.Deferred()

        def result(ok, message):
            if ok:
                d.callback(None)
            else:
                d.errback(Unavailable(message or "the home server did not acknowledge the "
                                      "offer", "relay-failed"))

        request_id = self._pending.add(result, self._clock.seconds())
        self._reschedule()
        message = noderelay.offer(request_id, self.node_id, kid, payload)
        self.stats["offers-relayed"] += 1

        try:
            receivers = await self._publish(owner, message)
        except HomeChannelError as e:
            self._pending.resolve(request_id, False, str(e))
        else:
            if not receivers:
                self._pending.resolve(request_id, False, "the home server's coordinator "
                                      "node is gone: try again in a few seconds")
        await d     # the owner's RESULT (it may have come already), or the deadline

    async def notify(self, server_key, body):
        """Best effort: a failure is logged, not raised."""
        kid = crypto.key_id(server_key)
        try:
            owner = await self._owner(kid)
            if owner == self._node:
                self._udp.notice_to(kid, body)
                return
            self.stats["notices-relayed"] += 1
            await self._publish(owner, noderelay.notice(kid, body))
        except HomeChannelError as e:
            self.log.info("could not relay a notice: {error}", error=str(e))

    async def device_policy(self, server_key):
        if self._policies is None:
            return None
        return await self._policies.get(crypto.key_id(server_key))

    def set_answer_handler(self, handler):
        # ANSWERs reach the node that owns the server, over its own UDP socket.
        self._answer_handler = handler
        self._udp.set_answer_handler(handler)

    async def _owner(self, kid):
        cached = self._owners.get(kid)
        if cached is not None and self._clock.seconds() - cached[1] < OWNER_CACHE:
            return cached[0]
        if len(self._owners) > 10_000:
            self._owners.clear()
        owner = await self._store.call("HGET", self._store.key("d", kid), "n")
        if owner is None:
            raise Unavailable("the home server is offline", "relay-failed")
        self._owners[kid] = (owner, self._clock.seconds())
        return owner

    # -- messages from other nodes -----------------------------------------------------------

    def received(self, data):
        """A message on this node's channel (opened by ``NodeLink``: it verified)."""
        try:
            msg = noderelay.decode(data)
        except ProtocolError as e:
            self.stats["messages-dropped"] += 1
            self.log.debug("dropped a node message: {error}", error=e)
            return
        if msg.kind == noderelay.OFFER:
            self.stats["offers-received"] += 1
            defer.Deferred.fromCoroutine(self._offer_for(msg)).addErrback(
                lambda f: self.log.info("could not return an offer's result: {error}",
                                        error=f.getErrorMessage()))
        elif msg.kind == noderelay.RESULT:
            self._pending.resolve(msg.id, msg.ok, msg.payload.decode("utf-8", "replace"))
        elif msg.kind == noderelay.NOTICE:
            self._udp.notice_to(msg.kid, msg.payload)
        elif msg.kind == noderelay.REFILL:
            self.stats["refills-asked"] += 1
            self._udp.refill(msg.kid)

    async def _offer_for(self, msg):
        """An OFFER from another node: to the home server registered here, and its
        RESULT back to that node."""
        try:
            await self._udp.offer_to(msg.kid, msg.payload)
            reply = noderelay.result(msg.id, True)
        except Exception as e:
            reply = noderelay.result(msg.id, False, str(e))
        await self._publish(msg.sender.encode("utf-8"), reply)

    def _reschedule(self):
        self._timer.schedule(self._pending.next_deadline())

    def _expire(self):
        self._pending.expire(self._clock.seconds())
        self._reschedule()

    def stop(self):
        self._timer.cancel()
        self._pending.fail_all("the coordinator is stopping")


class NodeLink:
    """This node's subscription (its channel and session completions) and heartbeat."""

    log = Logger()

    def __init__(self, store, node_id, clock, relay, sessions):
        self._store = store
        self.node_id = node_id
        self._clock = clock
        self._relay = relay
        self._sessions = sessions
        # The heartbeat names this node's cluster key (``ClusterRelay._check_key``).
        self._info = store.cluster_key.fingerprint.encode()
        self._channels = {relay.channel(): (NODE, relay.received),
                          sessions.channel: (DONE, sessions.completed)}
        self._task = None
        self._heartbeat = None
        self.subscribed = False
        self.stats = {"messages": 0, "resubscribed": 0}
        self.dropped = Counter()          # reason -> messages not acted on

    def deliver(self, channel, data):
        """Open a message from *channel* and hand it to its handler; one that does not
        open (forged, replayed, stale: ``clusterkey.MessageRefused``) is a counted drop."""
        purpose, handler = self._channels[channel]
        try:
            message = self._store.messages.open(purpose, data, self._clock.seconds())
        except MessageRefused as e:
            self.dropped[e.reason] += 1
            self.log.debug("dropped a cluster message on {channel}: {error}",
                           channel=channel.decode("utf-8", "replace"), error=str(e))
            return
        handler(message)

    def start(self):
        self._task = asyncio.ensure_future(self._listen())
        self._heartbeat = task.LoopingCall(self.beat)
        self._heartbeat.clock = self._clock
        self._heartbeat.start(HEARTBEAT, now=True).addErrback(
            lambda f: self.log.failure("heartbeat stopped", f))

    def beat(self):
        d = self._store.call("SET", self._store.key("node", self.node_id), self._info,
                             "PX", str(int(NODE_TTL * 1000)))
        d.addErrback(lambda f: None if f.check(HomeChannelError) else
                     self.log.failure("heartbeat failed", f))
        return d

    async def _listen(self):
        import redis.exceptions as rex

        while True:
            pubsub = self._store.client.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                if self.subscribed is None:
                    self.stats["resubscribed"] += 1
                    self.log.info("subscribed again to the cluster's channels")
                self.subscribed = True
                async for msg in pubsub.listen():
                    if msg.get("type") != "message":
                        continue
                    self.stats["messages"] += 1
                    if msg["channel"] in self._channels:
                        try:
                            self.deliver(msg["channel"], msg["data"])
                        except Exception:
                            self.log.failure("handling a cluster message failed")
                raise rex.ConnectionError("the subscription ended")
            except asyncio.CancelledError:
                raise
            except (rex.RedisError, OSError, asyncio.TimeoutError) as e:
                if self.subscribed:
                    self.log.warn("lost the cluster's subscription ({error}); subscribing "
                                  "again", error=str(e) or type(e).__name__)
                self.subscribed = None
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    def stop(self):
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._task is not None:
            self._task.cancel()
        # Others see this node as gone at once, not after NODE_TTL.
        return self._store.call("DEL", self._store.key("node", self.node_id)).addErrback(
            lambda f: None)

