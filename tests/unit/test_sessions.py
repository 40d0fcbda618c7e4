"""The in-memory session store: completion, waiting, expiry, retention, caps,
and the shares of each source network and each target server."""

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from homechannel.coordinator.interfaces import ISessionStore
from homechannel.coordinator.sessions import MemorySessionStore
from homechannel.errors import BadRequest, CapacityError, NotFound, RequestTimeout, Unavailable
from homechannel.testing.coordinator import at_once

KEY = b"\x04" + b"k" * 64


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


class Store:
    """The store's coroutines as a test calls them: ``wait`` started as a Deferred
    (to fire later, or to cancel), the others run at once (they never wait)."""

    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getattr__(self, name):
        return getattr(self.store, name)

    def wait(self, *args):
        return defer.Deferred.fromCoroutine(self.store.wait(*args))

    def create(self, *args):
        return at_once(self.store.create(*args))

    def info(self, *args):
        return at_once(self.store.info(*args))

    def is_pending(self, *args):
        return at_once(self.store.is_pending(*args))

    def answer(self, *args):
        return at_once(self.store.answer(*args))

    def fail(self, *args):
        return at_once(self.store.fail(*args))


def make(**kw):
    clock = task.Clock()
    kw.setdefault("session_timeout", 60.0)
    kw.setdefault("retention", 30.0)
    return clock, Store(MemorySessionStore(clock, **kw))


def test_interface():
    assert verifyObject(ISessionStore, make()[1].store)


def test_answer_wakes_every_waiter_and_is_retained():
    clock, store = make()
    store.create("s", KEY)
    assert store.info("s").server_key == KEY and store.is_pending("s")
    d1, d2 = store.wait("s", 25), store.wait("s", 25)
    assert store.waiting == 2
    assert store.answer("s", {"answer": 1})
    assert result_of(d1) == result_of(d2) == {"answer": 1}
    assert store.waiting == 0 and not store.is_pending("s")
    assert not store.answer("s", {"answer": 2})  # first answer wins
    assert result_of(store.wait("s", 25)) == {"answer": 1}
    clock.advance(30)
    f = result_of(store.wait("s", 25))
    assert isinstance(f, Failure) and f.check(NotFound)
    assert len(store) == 0
    assert clock.getDelayedCalls() == []


def test_wait_times_out_with_none():
    clock, store = make()
    store.create("s", KEY)
    d = store.wait("s", 25)
    clock.advance(24)
    assert not d.called
    clock.advance(1)
    assert result_of(d) is None and store.waiting == 0


def test_expiry_fails_waiters_with_timeout():
    clock, store = make(session_timeout=10.0)
    store.create("s", KEY)
    d = store.wait("s", 25)
    clock.advance(10)
    f = result_of(d)
    assert f.check(RequestTimeout) and f.value.code == "timeout"
    assert store.waiting == 0


def test_fail():
    clock, store = make()
    store.create("s", KEY)
    d = store.wait("s", 25)
    err = Unavailable("x")
    assert store.fail("s", err)
    assert result_of(d).value is err
    assert not store.fail("s", err) and not store.fail("other", err)


def test_cancelled_wait_is_removed():
    clock, store = make()
    store.create("s", KEY)
    d = store.wait("s", 25)
    d.cancel()
    assert result_of(d).check(defer.CancelledError)
    assert store.waiting == 0
    assert [c for c in clock.getDelayedCalls() if c.active()].__len__() == 1  # only expiry
    assert store.answer("s", {"ok": 1})


def test_caps():
    clock, store = make(max_sessions=2, max_waiters=3, max_waiters_per_session=2)
    store.create("a", KEY)
    store.create("b", KEY)
    with pytest.raises(CapacityError):
        store.create("c", KEY)
    with pytest.raises(BadRequest):
        store.create("a", KEY)
    store.wait("a", 25)
    store.wait("a", 25)
    assert result_of(store.wait("a", 25)).check(CapacityError)  # per session
    store.wait("b", 25)
    assert result_of(store.wait("b", 25)).check(CapacityError)  # in all
    clock.pump([60, 30])
    assert len(store) == 0
    store.create("c", KEY)


def other_key(i):
    return b"\x04" + i.to_bytes(4, "big") * 16


def test_one_source_network_fills_only_its_share_of_sessions():
    """A flood from many addresses of one IPv6 /64, to many servers (throwaway
    keys), gets its share of the table; another source, and the owner's
    server, still get a session.  Without the per-source share the flood
    fills the whole table and the last create raises busy."""
    clock, store = make(max_sessions=50, max_sessions_per_source=10, max_sessions_per_server=40)
    made = refused = 0
    for i in range(40):
        try:
            store.create(f"flood{i}", other_key(i), f"2001:db8:bad:1::{i:x}")
            made += 1
        except CapacityError as e:
            assert e.code == "busy" and "your network" in str(e)
            refused += 1
    assert (made, refused) == (10, 30)
    # Another address of the same /64 is the same source...
    with pytest.raises(CapacityError):
        store.create("again", KEY, "2001:db8:bad:1:ffff::1")
    # ...a neighbouring /64 and an IPv4 client are not.
    store.create("owner", KEY, "2001:db8:bad:2::1")
    store.create("other", KEY, "192.0.2.1")
    # The share comes back when the sessions are forgotten, not before.
    clock.advance(60)   # expired: still kept for retries
    with pytest.raises(CapacityError):
        store.create("later", KEY, "2001:db8:bad:1::1")
    clock.advance(30)   # forgotten
    store.create("later", KEY, "2001:db8:bad:1::1")


def test_one_target_server_fills_only_its_share_of_sessions():
    """Connects to one (the attacker's own) server from many sources fill
    only that server's share; sessions to another server still start.
    Disabling the per-server check (in a scratch copy) fails this test."""
    clock, store = make(max_sessions=50, max_sessions_per_source=10, max_sessions_per_server=5)
    for i in range(5):
        store.create(f"s{i}", other_key(1), f"192.0.2.{i}")
    with pytest.raises(CapacityError) as e:
        store.create("s5", other_key(1), "192.0.2.99")
    assert "this home server" in str(e.value)
    store.create("owner", KEY, "192.0.2.99")
    # Completing a session frees the server's share only once it is forgotten.
    assert store.answer("s0", {"ok": 1})
    with pytest.raises(CapacityError):
        store.create("s5", other_key(1), "192.0.2.99")
    clock.advance(30)
    store.create("s5", other_key(1), "192.0.2.99")


def test_one_source_network_fills_only_its_share_of_waiters():
    """Long-polls from one /64 wait up to its share; another source's poll
    still waits.  Each poll that ends (answer, timeout, cancel) gives its
    place back.  Disabling the per-source check, or the give-back, fails
    this test."""
    clock, store = make(max_waiters=100, max_waiters_per_source=6)
    for i in range(10):
        store.create(f"s{i}", KEY, "203.0.113.1")
    polls = [store.wait(f"s{i}", 25, f"2001:db8:bad:1::{i}") for i in range(10)]
    refused = [p for p in polls if p.called]
    assert len(refused) == 4 and all(result_of(p).check(CapacityError) for p in refused)
    assert store.waiting == 6
    owner = store.wait("s0", 25, "2001:db8:900d::1")
    assert not owner.called and store.waiting == 7
    # Every way a poll ends gives its place back.
    polls[0].cancel()
    assert store.answer("s1", {"ok": 1})
    clock.advance(25)
    assert store.waiting == 0
    again = [store.wait(f"s{i}", 25, "2001:db8:bad:1::1") for i in range(2, 10)]
    assert sum(not p.called for p in again) == 6
    assert all(result_of(p).check(CapacityError) for p in again if p.called)
    assert len(store._waiters_by_source) == 3      # the /64, its /56 and its /48


def test_share_bookkeeping_is_bounded_by_the_table():
    """Counts exist only for sources and servers that hold something."""
    clock, store = make(max_sessions=1000)
    for i in range(300):
        store.create(f"s{i}", other_key(i), f"10.0.{i // 250}.{i % 250}")
        store.wait(f"s{i}", 5, f"10.1.{i // 250}.{i % 250}")
    assert len(store._by_source) == len(store._by_server) == 300
    assert len(store._waiters_by_source) == 300
    clock.pump([5, 60, 30])
    assert len(store) == 0
    assert len(store._by_source) == len(store._by_server) == len(store._waiters_by_source) == 0
