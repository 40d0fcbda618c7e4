"""The registry of home servers: a dict model, address takeover, index growth,
the record layout, and the interface its users rely on."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st
from zope.interface.verify import verifyObject

from homechannel.coordinator.interfaces import IRegistry
from homechannel.coordinator.registry import RECORD, Registry, pack_addr, unpack_addr
from homechannel.errors import CapacityError

KEY = bytes(32)


def kid(i):
    return hashlib.sha256(i.to_bytes(4, "big")).digest()[:16]


def test_provides_iregistry():
    assert verifyObject(IRegistry, Registry())


def test_record_size():
    # bench/registry_memory.py's figures rest on this size: change it knowingly.
    assert RECORD == 228


def test_addr_packing():
    for addr in (("127.0.0.1", 1), ("::1", 65535), ("2001:db8::5", 80)):
        assert unpack_addr(pack_addr(addr)) == addr


@given(st.lists(st.tuples(st.sampled_from("aar"), st.integers(0, 60), st.integers(0, 12)),
                max_size=300))
@settings(max_examples=80, deadline=None)
def test_registry_matches_a_dict_model(ops):
    """Registrations, re-registrations from new addresses, address takeovers
    (another key registers from an address in use) and removals, against a
    dict of key id -> address."""
    reg = Registry(epoch=0.0)
    model = {}
    for op, i, a in ops:
        k = kid(i)
        addr = ("10.0.0.%d" % (a % 4), 1000 + a)
        if op == "a":
            for other, held in list(model.items()):
                if held == addr and other != k:
                    del model[other]
            reg.register(k, addr, KEY, KEY, 1.0)
            model[k] = addr
        elif k in model:
            reg.remove(reg.lookup_key(k))
            del model[k]
        assert reg.count == len(model)
    for k, addr in model.items():
        slot = reg.lookup_key(k)
        assert slot >= 0 and reg.addr(slot) == addr and reg.lookup_addr(addr) == slot
        assert reg.key_id(slot) == k
    for i in range(61):
        if kid(i) not in model:
            assert reg.lookup_key(kid(i)) == -1
    assert sorted(reg.slots()) == sorted(reg.lookup_key(k) for k in model)


def test_address_takeover_removes_the_previous_holder():
    """A NAT mapping moved: another server registers from an address in use."""
    reg = Registry(epoch=0.0)
    a = reg.register(kid(1), ("192.0.2.1", 4000), KEY, KEY, 1.0)
    reg.set_pool(a, [(b"c" * 16, b"e" * 32)])
    b = reg.register(kid(2), ("192.0.2.1", 4000), b"r" * 32, b"t" * 32, 2.0)
    assert reg.count == 1
    assert reg.lookup_key(kid(1)) == -1
    assert reg.lookup_addr(("192.0.2.1", 4000)) == b == reg.lookup_key(kid(2))
    # The new server got the freed slot, zeroed: nothing of the old one is left.
    assert b == a and reg.pool(b) == []
    assert reg.keys(b) == (b"r" * 32, b"t" * 32)


def test_reregistration_moves_the_address_and_keeps_the_slot():
    reg = Registry(epoch=0.0)
    slot = reg.register(kid(1), ("192.0.2.1", 4000), KEY, KEY, 1.0)
    reg.seal(slot, b"x")
    assert reg.register(kid(1), ("2001:db8::1", 5000), b"n" * 32, KEY, 2.0) == slot
    assert reg.lookup_addr(("192.0.2.1", 4000)) == -1
    assert reg.lookup_addr(("2001:db8::1", 5000)) == slot
    assert reg.keys(slot)[0] == b"n" * 32
    assert reg.accept_counter(slot, 0)   # a new session: a fresh replay window


def test_indexes_grow_past_their_initial_size():
    reg = Registry(epoch=0.0)
    n = 3000
    for i in range(n):
        reg.register(kid(i), ("10.%d.%d.1" % (i >> 8, i & 255), 1), KEY, KEY, 1.0)
    assert reg._by_key.capacity >= 2 * n and reg._by_addr.capacity >= 2 * n
    for i in range(0, n, 2):
        reg.remove(reg.lookup_key(kid(i)))
    for i in range(n):
        slot = reg.lookup_key(kid(i))
        addr = ("10.%d.%d.1" % (i >> 8, i & 255), 1)
        assert (slot >= 0) == (i % 2 == 1)
        assert reg.lookup_addr(addr) == slot
    assert reg.count == n // 2


def test_lookup_of_an_unparsable_address_is_a_miss():
    reg = Registry()
    assert reg.lookup_addr(("fe80::1%eth0", 1)) == -1
    assert reg.lookup_addr(("not an ip", 1)) == -1


def test_registry_cap_refuses_new_servers():
    reg = Registry(max_servers=2)
    reg.register(b"a" * 16, ("10.0.0.1", 1), KEY, KEY, 0)
    reg.register(b"b" * 16, ("10.0.0.2", 1), KEY, KEY, 0)
    with pytest.raises(CapacityError):
        reg.register(b"c" * 16, ("10.0.0.3", 1), KEY, KEY, 0)
    reg.register(b"a" * 16, ("10.0.0.9", 1), KEY, KEY, 0)  # re-register is fine


def test_registry_expiry_is_incremental():
    reg = Registry(epoch=0.0)
    for i in range(100):
        reg.register(bytes([i]) * 16, ("10.0.0.1", i + 1), KEY, KEY, 0.0)
    assert reg.expire(200.0, 90.0, budget=30) == 30
    assert reg.expire(200.0, 90.0, budget=1000) == 70
    assert reg.count == 0
