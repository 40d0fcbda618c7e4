"""The in-memory session store: completion, waiting, expiry, retention, caps."""

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from homechannel.coordinator.sessions import ISessionStore, MemorySessionStore
from homechannel.errors import BadRequest, CapacityError, NotFound, RequestTimeout, Unavailable

KEY = b"\x04" + b"k" * 64


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def make(**kw):
    clock = task.Clock()
    kw.setdefault("session_timeout", 60.0)
    kw.setdefault("retention", 30.0)
    return clock, MemorySessionStore(clock, **kw)


def test_interface():
    assert verifyObject(ISessionStore, make()[1])


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
