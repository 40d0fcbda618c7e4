"""The registry's open-addressing index on its own: collisions, wrap-around,
growth, removal past other keys, and a randomized comparison against a dict.

The keys live in a plain list (slot -> key), as they live in the registry's
slab; weak hash functions force the collisions a keyed hash makes rare."""

import pytest
from hypothesis import given, settings, strategies as st

from homechannel.coordinator.slotindex import SlotIndex


class Store:
    """Slot -> key storage and an index over it, with a chosen hash."""

    def __init__(self, hash_of, capacity=8):
        self.keys = {}
        self.index = SlotIndex(self.keys.__getitem__, hash_of, capacity=capacity)
        self.hash_of = hash_of

    def add(self, key, slot):
        self.keys[slot] = key
        self.index.insert(key, slot)

    def remove(self, key):
        slot = self.index.find(key)
        removed = self.index.remove(key)
        if removed:
            del self.keys[slot]
        return removed

    def check(self):
        """Every stored entry is reachable from its home without a gap, and
        nothing else is in the table."""
        table, mask = self.index._table, self.index._mask
        seen = set()
        for pos, v in enumerate(table):
            if not v:
                continue
            key = self.keys[v - 1]
            i = self.hash_of(key) & mask
            while i != pos:
                assert table[i], f"gap between the home of {key!r} and its position"
                i = (i + 1) & mask
            seen.add(v - 1)
        assert seen == set(self.keys)
        assert self.index.count == len(self.keys) == len(self.index)
        for slot, key in self.keys.items():
            assert self.index.find(key) == slot


def test_capacity_must_be_a_power_of_two():
    for bad in (0, 4, 12, 1000):
        with pytest.raises(ValueError):
            SlotIndex(lambda s: s, hash, capacity=bad)
    assert SlotIndex(lambda s: s, hash, capacity=16).capacity == 16


def test_all_keys_colliding():
    s = Store(lambda k: 3, capacity=16)
    for n, key in enumerate("abcdef"):
        s.add(key, n)
    s.check()
    assert s.index.find("z") == -1
    # Removing from the middle of the chain probes past other keys first,
    # then shifts the rest of the chain back.
    assert s.remove("c") and s.remove("a")
    s.check()
    assert [s.index.find(k) for k in "abcdef"] == [-1, 1, -1, 3, 4, 5]
    assert not s.remove("c") and not s.remove("zz")
    for key in "bdef":
        assert s.remove(key)
    s.check()
    assert s.index.count == 0 and all(v == 0 for v in s.index._table)


def test_chains_wrap_around_the_end_of_the_table():
    # Homes at the last positions: the chain continues at position 0.
    s = Store(lambda k: 15 if k.startswith("x") else 14, capacity=16)
    for n, key in enumerate(["x1", "x2", "y1", "x3", "y2"]):
        s.add(key, n)
    table = s.index._table
    assert table[15] and table[0] and table[1]   # wrapped
    s.check()
    # Removing at the end shifts wrapped entries back across the boundary...
    assert s.remove("x1")
    s.check()
    # ...and an entry whose home is 14 never moves before its home.
    assert s.remove("y1")
    s.check()
    assert s.remove("x2") and s.remove("x3")
    s.check()
    assert s.index.find("y2") == 4


def test_entries_are_not_moved_before_their_home():
    # Two separate chains that touch: removing from the first must not pull
    # the second chain's head in front of its home.
    homes = {"a": 2, "b": 2, "c": 3, "d": 4}
    s = Store(homes.__getitem__, capacity=8)
    for n, key in enumerate("abcd"):
        s.add(key, n)
    assert s.remove("a")
    s.check()
    assert s.remove("c")
    s.check()


def test_grows_when_half_full():
    s = Store(hash, capacity=8)
    for n in range(4):
        s.add(f"k{n}", n)
    assert s.index.capacity == 8
    s.add("k4", 4)
    assert s.index.capacity == 16
    for n in range(5, 200):
        s.add(f"k{n}", n)
    assert s.index.capacity == 512 and s.index.nbytes == 512 * 4
    s.check()


def test_growth_keeps_colliding_chains():
    s = Store(lambda k: k % 3, capacity=8)
    for n in range(40):
        s.add(n * 7, n)
    s.check()
    for n in range(0, 40, 3):
        assert s.remove(n * 7)
    s.check()


def test_matches_is_used_instead_of_building_keys():
    keys = ["a", "b"]
    calls = []

    def matches(slot, key):
        calls.append(slot)
        return keys[slot] == key

    index = SlotIndex(keys.__getitem__, lambda k: 0, capacity=8, matches=matches)
    index.insert("a", 0)
    index.insert("b", 1)
    assert index.find("b") == 1 and calls == [0, 1]
    assert index.remove("b") and index.find("b") == -1


@given(st.lists(st.tuples(st.sampled_from("iir"), st.integers(0, 40)), max_size=400),
       st.sampled_from([lambda k: 0, lambda k: k % 5, lambda k: k * 7 + 3, hash]))
@settings(max_examples=150, deadline=None)
def test_matches_a_dict(ops, hash_of):
    """Random inserts and removals against a dict, with weak hashes (long
    chains, wrap-around) and from the smallest table (several growths)."""
    s = Store(hash_of, capacity=8)
    model = {}
    next_slot = 0
    for op, key in ops:
        if op == "i":
            if key in model:
                continue
            s.add(key, next_slot)
            model[key] = next_slot
            next_slot += 1
        else:
            assert s.remove(key) == (key in model)
            model.pop(key, None)
        assert s.index.count == len(model)
    s.check()
    for key in range(41):
        assert s.index.find(key) == model.get(key, -1)
