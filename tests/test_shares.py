"""Shares: per-key amounts with a limit, forgotten at zero."""

import pytest

from homechannel.coordinator.shares import Shares


def test_room_take_give_back():
    s = Shares(10)
    assert s.room("a", 10) and not s.room("a", 11)
    s.take("a", 7)
    assert s.held("a") == 7 and s.room("a", 3) and not s.room("a", 4)
    assert s.room("b", 10)          # other keys are not affected
    s.give_back("a", 7)
    assert s.held("a") == 0 and len(s) == 0
    s.take("a", 0)
    s.give_back("a", 0)
    assert len(s) == 0


def test_only_keys_holding_something_are_kept():
    s = Shares(1)
    for i in range(1000):
        s.take(i)
    assert len(s) == 1000
    for i in range(1000):
        s.give_back(i)
    assert len(s) == 0


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        Shares(0)
