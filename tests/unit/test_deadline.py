"""``ops/deadline.py``: the one timer the three adapters (``CoordinatorUDP``,
``ServerUDP``, the cluster's ``ClusterRelay``) keep around their sans-I/O cores,
under ``task.Clock``."""

from twisted.internet import task

from homechannel.ops.deadline import DeadlineTimer


def make():
    clock = task.Clock()
    fired = []
    return clock, fired, DeadlineTimer(clock, lambda: fired.append(clock.seconds()))


def test_fires_at_the_deadline_and_not_before():
    clock, fired, timer = make()
    timer.schedule(5.0)
    assert timer.when == 5.0
    clock.advance(4.999)
    assert fired == []
    clock.advance(0.001)
    assert fired == [5.0] and timer.when is None
    clock.advance(100.0)
    assert fired == [5.0], "once per schedule"


def test_a_moved_deadline_replaces_the_pending_one():
    """Earlier and later alike: the core's deadline is the truth, so a retransmission
    is neither late (an earlier one) nor early (a later one)."""
    clock, fired, timer = make()
    timer.schedule(5.0)
    timer.schedule(2.0)
    timer.schedule(3.0)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == [3.0]
    clock.advance(10.0)
    assert fired == [3.0]


def test_the_same_deadline_keeps_the_pending_call():
    """The hot path: most calls into a core leave its deadline where it was, and
    then no call is cancelled and made again (within a millisecond)."""
    clock, fired, timer = make()
    timer.schedule(5.0)
    (call,) = clock.getDelayedCalls()
    timer.schedule(5.0)
    timer.schedule(5.0005)
    assert clock.getDelayedCalls() == [call] and call.active()
    clock.advance(5.0)
    assert fired == [5.0]


def test_none_and_cancel_stop_the_timer():
    clock, fired, timer = make()
    timer.schedule(5.0)
    timer.schedule(None)
    assert clock.getDelayedCalls() == [] and timer.when is None
    timer.schedule(5.0)
    timer.cancel()
    clock.advance(10.0)
    assert fired == []


def test_a_past_deadline_fires_on_the_next_turn():
    clock, fired, timer = make()
    clock.advance(10.0)
    timer.schedule(3.0)
    assert fired == []              # never from inside schedule()
    clock.advance(0)
    assert fired == [10.0]


def test_fire_may_schedule_again():
    """What every adapter does: ``poll`` in *fire*, then the next deadline."""
    clock = task.Clock()
    fired = []

    def fire():
        fired.append(clock.seconds())
        if len(fired) < 3:
            timer.schedule(clock.seconds() + 1.0)

    timer = DeadlineTimer(clock, fire)
    timer.schedule(1.0)
    clock.pump([1.0] * 5)
    assert fired == [1.0, 2.0, 3.0]
