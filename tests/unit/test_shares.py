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


def test_a_56_or_a_48_is_one_source_with_a_few_shares():
    """An IPv6 /64 key counts in its /56 (4 shares) and its /48 (16 shares): whoever holds a
    /56 fills 4 shares however many /64s it uses, a /48 16 (per /64 alone, one
    /56 would be 256 sources).  IPv4 keys and other keys have no wider tiers."""
    from homechannel.coordinator.ratelimit import source_key

    shares = Shares(10)
    took = 0
    for i in range(256):                                   # every /64 of one /56
        key = source_key(f"2001:db8:0:{i:x}::1")
        while shares.room(key):
            shares.take(key)
            took += 1
    assert took == 4 * 10
    other_56 = source_key("2001:db8:0:100::1")             # same /48, another /56
    assert shares.room(other_56)
    for j in range(1, 4):                                   # three more /56s of the /48
        for i in range(256):
            key = source_key(f"2001:db8:0:{j * 256 + i:x}::1")
            while shares.room(key):
                shares.take(key)
                took += 1
    assert took == 16 * 10                                  # the /48 is full ...
    assert not shares.room(source_key("2001:db8:0:ff00::1"))
    assert shares.room(source_key("2001:db8:1::1"))        # ... another /48 is not
    assert shares.room("192.0.2.1") and shares.room(b"server key")
    for i in range(256):                                    # giving back frees the tiers
        key = source_key(f"2001:db8:0:{i:x}::1")
        shares.give_back(key, shares.held(key))
    assert shares.room(source_key("2001:db8:0:ff00::1"))
