"""A home server with several coordinator nodes (a cluster sharing one key):
when the node it is registered with stops answering, it registers with the
next one within one keepalive interval of the first unanswered ping.  The
real adapters (``ServerUDP``, ``CoordinatorUDP``) joined by the in-memory
network under ``task.Clock``; a node "dies" by having all its traffic dropped."""

from twisted.internet import task

from homechannel import crypto
from homechannel.config import ServerKeepalive, ServerCoordinator
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.coordinator.udp import CoordinatorUDP
from homechannel.server.challenges import ChallengeSource
from homechannel.server.registrant import PING_TIMEOUT
from homechannel.server.udp import ServerUDP
from homechannel.testing.udp import MemoryNetwork

K = b"K" * 32
A = ("10.1.0.1", 7777)
B = ("10.1.0.2", 7777)
C = ("10.1.0.3", 7777)
S = ("192.0.2.7", 40001)
KEEPALIVE = ServerKeepalive(interval=15.0, jitter=0.2)


def cluster(nodes, candidates=None, resolve=None, target=None):
    clock = task.Clock()
    network = MemoryNetwork(clock)
    key = crypto.IdentityKey.generate()          # one key for every node
    coords = {addr: network.attach(CoordinatorUDP(Rendezvous(key), clock), addr)
              for addr in nodes}
    server = ServerUDP(crypto.IdentityKey.generate(), ChallengeSource(K), KEEPALIVE,
                       (*(target or nodes[0]), key.public_raw), clock,
                       candidates=candidates if candidates is not None else nodes,
                       resolve=resolve)
    network.attach(server, S)
    network.run(1.0)
    assert server.registered and server.active.addr == (target or nodes[0])
    return clock, network, coords, server


def registered_with(coord):
    return coord.rv.registry.count


def kill(network, addr):
    network.blocked.add(addr)


def test_a_dead_node_is_replaced_within_one_keepalive_of_the_first_unanswered_ping():
    """Measured from the first ping the dead node leaves unanswered: registered with the
    next node within one keepalive interval (in fact PING_TIMEOUT and a round trip).
    Without the failover the server would keep retrying the dead node for ever."""
    clock, network, coords, server = cluster([A, B])
    kill(network, A)
    sent_before = network.sent
    # Find the first ping after the death: the first datagram the server sends.
    while network.sent == sent_before:
        network.run(0.05)
    first_unanswered = clock.seconds()
    while server.active.addr != B or not server.registered:
        network.run(0.05)
        assert clock.seconds() - first_unanswered < KEEPALIVE.interval, "no failover"
    took = clock.seconds() - first_unanswered
    assert took <= PING_TIMEOUT + 1.0
    assert registered_with(coords[B]) == 1
    assert server.moving is None
    # And it stays there: pings are answered by B.
    network.run(60.0)
    assert server.active.addr == B and server.registered


def test_a_dead_next_node_is_skipped():
    """A dies, B is dead too: C within the failover timeout after B did not answer."""
    clock, network, coords, server = cluster([A, B, C])
    kill(network, A)
    kill(network, B)
    network.run(15.0 * 1.2 + PING_TIMEOUT + 12.0 + 2.0)
    assert server.active.addr == C and server.registered
    assert registered_with(coords[C]) == 1


def test_without_other_nodes_the_server_stays_and_retries():
    clock, network, coords, server = cluster([A], candidates=[A])
    kill(network, A)
    network.run(60.0)
    assert server.moving is None and server.active.addr == A and not server.registered
    network.blocked.clear()
    network.run(70.0)
    assert server.registered and server.active.addr == A


def test_one_name_with_several_addresses_fails_over_between_them():
    nodes = [A, B]

    def resolve(host):
        assert host == "coordinator.example"
        return [A[0], B[0]]

    clock = task.Clock()
    network = MemoryNetwork(clock)
    key = crypto.IdentityKey.generate()
    coords = {addr: network.attach(CoordinatorUDP(Rendezvous(key), clock), addr)
              for addr in nodes}
    server = ServerUDP(crypto.IdentityKey.generate(), ChallengeSource(K), KEEPALIVE,
                       ("coordinator.example", 7777, key.public_raw), clock,
                       candidates=[("coordinator.example", 7777)], resolve=resolve)
    network.attach(server, S)
    network.run(1.0)
    assert server.active.addr == A and server.registered
    kill(network, A)
    network.run(15.0 * 1.2 + PING_TIMEOUT + 2.0)
    assert server.active.addr == B and server.registered
    assert registered_with(coords[B]) == 1


def test_the_list_is_parsed_and_checked():
    import pytest

    from homechannel.errors import ConfigError

    cfg = ServerCoordinator(addresses=("a.example:7777", "[2001:db8::1]:7778"))
    assert cfg.candidates() == [("a.example", 7777), ("2001:db8::1", 7778)]
    assert ServerCoordinator(host="h", port=1).candidates() == [("h", 1)]
    for bad in ("a.example", "a.example:0", ":7777", "a:b"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            ServerCoordinator(addresses=(bad,))
