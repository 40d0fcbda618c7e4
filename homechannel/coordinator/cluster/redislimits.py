"""Rate limits and lockouts shared by the nodes of a coordinator cluster.

The same rules as :class:`~homechannel.coordinator.ratelimit.MemoryRateLimiter`
and :class:`~homechannel.coordinator.ratelimit.MemoryLockout` (and the same
interfaces, ``IRateLimiter`` and ``ILockout``, ``async def``), kept in Redis
so that every node counts against one budget: five wrong passwords spread over
two nodes lock the source out on both.  Each operation is one atomic Lua
script (queued on the node's pipeline when the coroutine starts), and every key
carries a TTL (the time after which it would be the same as missing), so
nothing grows without bound.

Keys (``<prefix>`` is ``cluster.key_prefix``, default ``hc:``):

* ``<prefix>rl:<name>:<hash of key>``: a hash ``{t: tokens, ts: last update}``;
  expires when the bucket would be full again.
* ``<prefix>lo:<name>:<hash of key>``: a hash ``{f: failures since the last lockout,
  n: lockouts so far, u: locked until, l: last failure}``; expires
  ``forget_after`` seconds after the later of ``u`` and ``l``.

``<hash of key>`` is the keyed hash of the source network, device or server
(``RedisStore.hidden_key``): Redis holds no address or device id.

Redis can delete these keys (whoever reaches it can): so each node also keeps
every budget in memory (:class:`LocalCeiling`), and a Redis that forgets or
resets the cluster's counts gives at most one budget per node, never more.

Times are the nodes' clocks (Unix seconds, passed to the scripts): keep the
nodes' clocks in sync (NTP), as device challenges already require.
"""

from zope.interface import implementer

from homechannel.coordinator.interfaces import ILockout, IRateLimiter
from homechannel.coordinator.cluster.redisstore import Script

# Numbers cross the Lua boundary as strings: Redis truncates Lua numbers to integers.
BUCKET = Script("bucket", """
local now, cap, rate, peek = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = cap
if b[1] then
  tokens = math.min(cap, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate)
end
if peek == '1' then
  if tokens >= 1 then return false end
  return tostring((1 - tokens) / rate)
end
local retry = false
if tokens >= 1 then tokens = tokens - 1 else retry = tostring((1 - tokens) / rate) end
if b[1] or retry == false then
  redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate * 1000) + 1000)
end
return retry
""")

LOCKOUT_CHECK = Script("lockout-check", """
local now, forget = tonumber(ARGV[1]), tonumber(ARGV[2])
local e = redis.call('HMGET', KEYS[1], 'u', 'l')
if not e[1] then return false end
local u, l = tonumber(e[1]), tonumber(e[2])
if now >= math.max(u, l) + forget then redis.call('DEL', KEYS[1]); return false end
if now >= u then return false end
return tostring(u - now)
""")

LOCKOUT_FAILURE = Script("lockout-failure", """
local now, forget, weight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local threshold, base, max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local e = redis.call('HMGET', KEYS[1], 'f', 'n', 'u', 'l')
local f, n, u = 0, 0, 0
if e[1] and now < math.max(tonumber(e[3]), tonumber(e[4])) + forget then
  f, n, u = tonumber(e[1]), tonumber(e[2]), tonumber(e[3])
end
f = f + weight
local length = false
local limit = threshold
if n > 0 then limit = 1 end
if f >= limit then
  local l = math.min(max, base * 2 ^ math.min(n, 32))
  f, n, u = 0, n + 1, now + l
  length = tostring(l)
end
redis.call('HSET', KEYS[1], 'f', tostring(f), 'n', n, 'u', tostring(u), 'l', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(u, now) + forget - now) * 1000))
return length
""")


def _float(reply):
    return None if reply is None else float(reply)


@implementer(IRateLimiter)
class RedisRateLimiter:
    """A token bucket per key, shared by every node: at most *limit* hits per
    *period* seconds sustained, *burst* (default *limit*) at once."""

    def __init__(self, store, name, clock, limit, period=60.0, burst=None):
        if limit <= 0 or period <= 0:
            raise ValueError("limit and period must be positive")
        self._store = store
        self._name = name
        self._clock = clock
        self._capacity = repr(float(limit if burst is None else max(1, burst)))
        self._rate = repr(float(limit) / float(period))

    def _run(self, key, peek):
        return self._store.run(BUCKET, [self._store.hidden_key("rl", self._name, hidden=key)],
                               [repr(self._clock.seconds()), self._capacity, self._rate, peek])

    async def hit(self, key):
        """None if allowed, else the seconds until it would be."""
        return _float(await self._run(key, "0"))

    async def peek(self, key):
        """What :meth:`hit` would say, without counting anything."""
        return _float(await self._run(key, "1"))


@implementer(ILockout)
class RedisLockout:
    """Failed-answer lockouts with doubling backoff, shared by every node."""

    def __init__(self, store, name, clock, threshold=5, base=60.0, maximum=3600.0,
                 forget_after=None):
        self._store = store
        self._name = name
        self._clock = clock
        self._params = [str(max(1, int(threshold))), repr(float(base)), repr(float(maximum))]
        self._forget = repr(float(maximum if forget_after is None else forget_after))

    def _key(self, key):
        return self._store.hidden_key("lo", self._name, hidden=key)

    async def check(self, key):
        return _float(await self._store.run(LOCKOUT_CHECK, [self._key(key)],
                                            [repr(self._clock.seconds()), self._forget]))

    async def failure(self, key, weight=1.0):
        return _float(await self._store.run(
            LOCKOUT_FAILURE, [self._key(key)],
            [repr(self._clock.seconds()), self._forget, repr(float(weight)), *self._params]))

    async def success(self, key):
        await self._store.call("DEL", self._key(key))


@implementer(IRateLimiter)
class LocalCeiling:
    """A cluster's budget (*shared*, in Redis) that also holds on this node alone
    (*local*, in memory, the same limits): whatever Redis forgets (a restart) or
    is made to forget (a DEL by whoever reaches it), this node allows no more than
    a coordinator of its own would.  In normal operation the local budget never
    binds first: this node's hits are a part of the cluster's."""

    def __init__(self, shared, local):
        self.shared = shared
        self.local = local

    async def hit(self, key):
        retry = await self.shared.hit(key)
        if retry is not None:
            return retry
        return await self.local.hit(key)

    async def peek(self, key):
        shared = await self.shared.peek(key)
        local = await self.local.peek(key)
        if shared is None or local is None:
            return shared if local is None else local
        return max(shared, local)
