"""Token-bucket rate limits and the per-source lockout."""

from twisted.internet import task
from zope.interface.verify import verifyObject

from homechannel.coordinator.interfaces import ILockout, IRateLimiter
from homechannel.coordinator.ratelimit import (
    MemoryLockout,
    MemoryRateLimiter,
    RateLimiter,
)
from homechannel.testing.coordinator import at_once


def test_interfaces():
    clock = task.Clock()
    assert verifyObject(IRateLimiter, MemoryRateLimiter(clock, 5))
    assert verifyObject(ILockout, MemoryLockout(clock))


def test_the_seam_spends_the_same_buckets():
    """MemoryRateLimiter (the connect flow's seam) counts in its RateLimiter: a peek
    counts nothing and makes no entry."""
    clock = task.Clock()
    limiter = MemoryRateLimiter(clock, limit=2, period=60.0)
    assert at_once(limiter.peek("a")) is None and len(limiter) == 0
    assert [at_once(limiter.hit("a")) for _ in range(3)] == [None, None, 30.0]
    assert at_once(limiter.peek("a")) == 30.0 and limiter.buckets.hit("a") == 30.0
    clock.advance(30)
    assert at_once(limiter.peek("a")) is None
    assert at_once(limiter.hit("a")) is None


def test_rate_limiter_burst_and_refill():
    clock = task.Clock()
    limiter = RateLimiter(clock, limit=3, period=60.0)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    retry = limiter.hit("a")
    assert retry == 20.0  # one token every 20 s
    assert limiter.hit("b") is None  # keys are independent
    clock.advance(19.9)
    assert limiter.hit("a") is not None
    clock.advance(0.2)
    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None


def test_rate_limiter_refused_hits_are_not_counted():
    clock = task.Clock()
    limiter = RateLimiter(clock, limit=1, period=10.0)
    assert limiter.hit("a") is None
    for _ in range(100):
        assert limiter.hit("a") is not None
    clock.advance(10)
    assert limiter.hit("a") is None


def test_rate_limiter_table_is_capped():
    clock = task.Clock()
    limiter = RateLimiter(clock, limit=1, period=60.0, max_keys=100)
    for i in range(1000):
        limiter.hit(i)
    assert len(limiter) == 100


def test_lockout_doubles_and_is_capped():
    clock = task.Clock()
    lockout = MemoryLockout(clock, threshold=3, base=10.0, maximum=35.0)
    assert at_once(lockout.failure("a")) is None
    assert at_once(lockout.failure("a")) is None
    assert at_once(lockout.check("a")) is None
    assert at_once(lockout.failure("a")) == 10.0
    assert at_once(lockout.check("a")) == 10.0
    assert at_once(lockout.check("b")) is None  # other sources are never affected
    clock.advance(10)
    assert at_once(lockout.check("a")) is None
    assert at_once(lockout.failure("a")) == 20.0
    clock.advance(20)
    assert at_once(lockout.failure("a")) == 35.0
    clock.advance(35)
    assert at_once(lockout.failure("a")) == 35.0


def test_lockout_forgets_after_good_behaviour_and_on_success():
    clock = task.Clock()
    lockout = MemoryLockout(clock, threshold=2, base=10.0, maximum=100.0, forget_after=100.0)
    at_once(lockout.failure("a"))
    assert at_once(lockout.failure("a")) == 10.0
    clock.advance(10 + 100)
    assert at_once(lockout.failure("a")) is None  # a fresh start
    at_once(lockout.success("a"))
    assert len(lockout) == 0


def test_lockout_table_is_capped():
    clock = task.Clock()
    lockout = MemoryLockout(clock, max_keys=10)
    for i in range(100):
        at_once(lockout.failure(i))
    assert len(lockout) == 10


def test_source_key_groups_an_ipv6_64_and_keeps_ipv4_addresses_apart():
    from homechannel.coordinator.ratelimit import lockout_key, source_key

    assert source_key("2001:db8:1:2:3:4:5:6") == source_key("2001:db8:1:2::ffff") \
        == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert lockout_key("2001:db8:1:3::1") == lockout_key("2001:db8:1:2::1") == "2001:db8:1::/56"
    assert source_key("192.0.2.1") == "192.0.2.1" != source_key("192.0.2.2")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("unknown") == "unknown"
