"""DEVICES over the UDP protocol (docs/protocol.md section 1.3): the home server tells
its coordinator its password epoch and enrolled devices after every registration and
whenever they change, acknowledged and retransmitted; the coordinator's table
(``coordinator/devicepolicy.py``) keeps the newest, whatever single datagram is
dropped, duplicated or delayed, and forgets it with the server."""

import random

import pytest

from homechannel import crypto
from homechannel.coordinator.devicepolicy import DevicePolicies
from homechannel.coordinator.events import DevicesUpdated, ServerForgotten
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.errors import ProtocolError
from homechannel.protocol import udp
from homechannel.protocol.connect import MAX_POLICY_DEVICES, DevicePolicy
from homechannel.protocol.events import Output
from homechannel.server.challenges import ChallengeSource
from homechannel.server.registrant import Registrant
from homechannel.testing.udp import LossyWire

ADDR = ("127.0.0.1", 40000)
K = bytes(range(32))
COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()
ENROLLED = DevicePolicy(7, frozenset(crypto.b64u_encode(bytes([i]) * 16) for i in range(3)))
REVOKED = DevicePolicy(7, frozenset(sorted(ENROLLED.devices)[:2]))


def table(w):
    """The coordinator's table after the events the wire recorded (what
    ``CoordinatorUDP`` does with them)."""
    policies = DevicePolicies()
    for e in w.coordinator_events:
        if isinstance(e, DevicesUpdated):
            policies.update(e.kid, e.session, e.generation, e.policy)
    return policies


def scenario(plan=None):
    rv = Rendezvous(COORDINATOR)
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K), rng=random.Random(7),
                     devices=ENROLLED.encode())
    w = LossyWire(rv, plan=plan)
    w.add(ADDR, reg)
    while reg.state != "up":
        w.run(w.now + 0.001)
    # A revocation while the first DEVICES (sent on registering) is still on its way.
    w.send_from_server(ADDR, reg.set_devices(REVOKED.encode(), w.now))
    w.run(60.0)
    return w, rv, reg


def _length():
    return scenario()[0].count


LENGTH = _length()


def test_the_policy_is_told_after_registering_and_when_it_changes():
    w, rv, reg = scenario()
    updates = [e for e in w.coordinator_events if isinstance(e, DevicesUpdated)]
    assert [u.policy for u in updates] == [ENROLLED, REVOKED]
    assert [u.generation for u in updates] == [1, 2]
    assert table(w).get(SERVER.id) == REVOKED
    assert rv.stats["devices"] == 2


@pytest.mark.parametrize("n", range(5, LENGTH + 1))
@pytest.mark.parametrize("action", ["drop", "dup", "delay"])
def test_the_newest_policy_wins_whatever_single_datagram_goes_wrong(n, action):
    """A dropped DEVICES is sent again, a duplicated or late copy of the first one
    never undoes the revocation (its generation is older).  How this was shown to fail:
    with the generation ignored by the table, dropping the first DEVICES (its
    retransmission then arrives after the revocation) left the revoked device allowed."""
    w, rv, reg = scenario(plan={n: action})
    assert reg.state == "up"
    assert table(w).get(SERVER.id) == REVOKED


def test_a_new_registration_starts_the_generations_again():
    """After the coordinator restarts (or the server registers again) the generation
    counts from 1 again; the table takes it because the registration (its keys) is new."""
    policies = DevicePolicies()
    assert policies.update(SERVER.id, b"a" * 8, 5, ENROLLED)
    assert not policies.update(SERVER.id, b"a" * 8, 4, REVOKED)       # late: ignored
    assert policies.update(SERVER.id, b"b" * 8, 1, REVOKED)           # new registration
    assert policies.get(SERVER.id) == REVOKED
    assert policies.update(SERVER.id, b"b" * 8, 2, DevicePolicy(7))
    assert policies.get(SERVER.id) is None        # nothing enrolled: no token accepted
    policies.forget(SERVER.id)
    assert len(policies) == 0


def test_the_policy_format():
    full = DevicePolicy(2**32 - 1, frozenset(crypto.b64u_encode(i.to_bytes(16, "big"))
                                             for i in range(MAX_POLICY_DEVICES)))
    body = udp.devices(1, full.encode())
    assert DevicePolicy.decode(udp.parse_devices(body)[1]) == full
    # The largest DEVICES still fits one datagram, sealed and padded.
    assert len(udp.seal_data(b"k" * 32, 1, udp.inner(udp.DEVICES, 1, body))) <= udp.MAX_DATAGRAM
    for bad in (b"", b"\0\0\0\1\1", full.encode()[:-1], full.encode()[:4] + b"\x41"):
        with pytest.raises(ProtocolError):
            DevicePolicy.decode(bad)
    with pytest.raises(ValueError):
        DevicePolicy(1, frozenset(crypto.b64u_encode(i.to_bytes(16, "big"))
                                  for i in range(MAX_POLICY_DEVICES + 1))).encode()


def test_a_malformed_devices_message_is_a_counted_drop():
    w, rv, reg = scenario()
    slot = rv.registry.lookup_key(SERVER.id)
    rx, tx = rv.registry.keys(slot)
    bad = udp.seal_data(rx, 10_000, udp.inner(udp.DEVICES, 9, b"\0\0\0\9\0\0\0\1\3"),
                        udp.MIN_SERVER_DATAGRAM)
    out = rv.receive(bad, ADDR, w.now)
    assert out.datagrams == [] and out.events == ()
    assert rv.stats["dropped.malformed"] == 1


def test_the_coordinator_adapter_keeps_and_forgets_policies():
    """CoordinatorUDP answers the broker's ``device_policy`` from DEVICES, and forgets a
    server's policy with the server (a cluster's store is told both)."""
    from twisted.internet import task

    from homechannel.coordinator.udp import CoordinatorUDP
    from homechannel.testing.coordinator import at_once

    class Store:
        def __init__(self):
            self.calls = []

        def set(self, kid, policy):
            self.calls.append(("set", kid, policy))

        def forget(self, kid):
            self.calls.append(("forget", kid))

    rv = Rendezvous(COORDINATOR)
    adapter = CoordinatorUDP(rv, task.Clock())
    store = Store()
    adapter.set_policy_store(store)
    w = LossyWire(rv)
    w.add(ADDR, Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(K),
                           devices=ENROLLED.encode()))
    w.run(5.0)
    adapter._send(Output([], tuple(w.coordinator_events), None))
    assert at_once(adapter.device_policy(SERVER.public_raw)) == ENROLLED
    adapter._send(Output([], (ServerForgotten(SERVER.id),), None))
    assert at_once(adapter.device_policy(SERVER.public_raw)) is None
    assert store.calls == [("set", SERVER.id, ENROLLED), ("forget", SERVER.id)]
