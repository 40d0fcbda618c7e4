"""The real DatagramProtocol adapters joined in memory under task.Clock:
the relay seam, migration (success and failure) and failover persistence."""

import json
import os

import pytest
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from homechannel import crypto

from homechannel.protocol import connect
from homechannel.config import ServerKeepalive
from homechannel.coordinator.interfaces import IRelay
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.coordinator.udp import CoordinatorUDP
from homechannel.errors import Unavailable
from homechannel.server.challenges import ChallengeSource
from homechannel.server.udp import ServerUDP, load_failover
from homechannel.testing.coordinator import at_once
from homechannel.testing.threads import ManualThreads
from homechannel.testing.udp import MemoryNetwork

K = b"K" * 32
C1 = ("127.0.0.1", 7001)
C2 = ("127.0.0.1", 7002)
S = ("127.0.0.1", 40001)


class EchoAnswerer:
    def __init__(self):
        self.offers = []

    def handle_offer(self, payload):
        self.offers.append(payload)
        return b"answer to " + payload


@pytest.fixture
def net(tmp_path):
    clock = task.Clock()
    network = MemoryNetwork(clock)
    keys = {C1: crypto.IdentityKey.generate(), C2: crypto.IdentityKey.generate()}
    coords = {}
    for addr, key in keys.items():
        coords[addr] = network.attach(CoordinatorUDP(Rendezvous(key), clock), addr)
    server_key = crypto.IdentityKey.generate()
    answerer = EchoAnswerer()
    failover = str(tmp_path / "failover-coordinator.json")
    # Keys a MIGRATE may move the server to (coordinator.allow_migrate): C2's, and two
    # that no coordinator here has.
    others = [crypto.IdentityKey.generate() for _ in range(2)]
    allowed = [keys[C2].public_raw] + [k.public_raw for k in others]

    def start_server(target=None):
        target = target or (C1[0], C1[1], keys[C1].public_raw)
        srv = ServerUDP(server_key, ChallengeSource(K), ServerKeepalive(), target, clock,
                        answerer, failover, allow_migrate=allowed,
                        pinned=keys[C1].public_raw)
        return network.attach(srv, S)

    server = start_server()
    network.run(1.0)
    return dict(clock=clock, network=network, keys=keys, coords=coords, server=server,
                server_key=server_key, answerer=answerer, failover=failover,
                start_server=start_server, others=others)


def test_relay_provides_the_interface(net):
    verifyObject(IRelay, net["coords"][C1])


def test_relay_offer_and_answer_through_adapters(net):
    relay = net["coords"][C1]
    server_key = net["server_key"]
    assert net["server"].registered
    online, challenge = at_once(relay.server_status(server_key.public_raw))
    assert online and len(challenge) == 16
    answers = []
    relay.set_answer_handler(lambda key, payload: answers.append((key, payload)))
    d = defer.Deferred.fromCoroutine(relay.send_offer(server_key.public_raw, b"offer" * 500))
    net["network"].run(2.0)
    assert d.called
    assert answers == [(server_key.id, b"answer to " + b"offer" * 500)]
    expected = at_once(relay.take_challenge(server_key.public_raw, challenge))
    assert crypto.check_answer(crypto.challenge_answer(K, challenge), expected)
    assert at_once(relay.take_challenge(server_key.public_raw, challenge)) is None
    net["network"].run(2.0)      # the pool is refilled over UDP
    assert len(relay.rv.registry.pool(relay.rv.registry.lookup_key(server_key.id))) == 2


def test_offer_to_unknown_server_fails(net):
    relay = net["coords"][C1]
    d = defer.Deferred.fromCoroutine(
        relay.send_offer(crypto.IdentityKey.generate().public_raw, b"x"))
    f = []
    d.addErrback(f.append)
    assert f and f[0].check(Unavailable)


def test_migration_success_persists_and_survives_restart(net):
    server, network = net["server"], net["network"]
    old, new = net["coords"][C1], net["coords"][C2]
    old.migrate(net["server_key"].public_raw, C2[0], C2[1], net["keys"][C2].public_raw)
    network.run(3.0)
    assert server.active.name == f"{C2[0]}:{C2[1]}"
    assert new.rv.registry.lookup_key(net["server_key"].id) >= 0
    doc = json.load(open(net["failover"]))
    assert doc["port"] == C2[1]
    assert load_failover(net["failover"]) == (C2[0], C2[1], net["keys"][C2].public_raw)
    # The old coordinator forgets the server once it stops pinging.
    network.run(120.0)
    old.rv.expire(net["clock"].seconds(), 90.0)
    assert old.rv.registry.lookup_key(net["server_key"].id) == -1
    assert new.rv.registry.lookup_key(net["server_key"].id) >= 0
    # After a restart the server uses the persisted target.
    network.detach(S)
    restarted = net["start_server"](load_failover(net["failover"]))
    network.run(2.0)
    assert restarted.registered and restarted.active.name == f"{C2[0]}:{C2[1]}"


def test_migration_to_unreachable_coordinator_stays(net):
    server, network = net["server"], net["network"]
    bogus = net["others"][0]
    net["coords"][C1].migrate(net["server_key"].public_raw, "127.0.0.1", 7999, bogus.public_raw)
    network.run(40.0)
    assert server.moving is None
    assert server.active.name == f"{C1[0]}:{C1[1]}"
    assert server.registered
    with pytest.raises(FileNotFoundError):
        open(net["failover"])
    network.run(60.0)   # still alive with the old one: pings answered
    slot = net["coords"][C1].rv.registry.lookup_key(net["server_key"].id)
    assert slot >= 0


def test_migration_to_impostor_key_stays(net):
    """A target whose key does not match the coordinator there is refused."""
    server, network = net["server"], net["network"]
    wrong = net["others"][1]
    net["coords"][C1].migrate(net["server_key"].public_raw, C2[0], C2[1], wrong.public_raw)
    network.run(40.0)
    assert server.active.name == f"{C1[0]}:{C1[1]}"
    assert net["coords"][C2].rv.registry.lookup_key(net["server_key"].id) == -1


def test_coordinator_restart_through_adapters(net):
    network, clock = net["network"], net["clock"]
    network.detach(C1)
    fresh = network.attach(CoordinatorUDP(Rendezvous(net["keys"][C1]), clock), C1)
    network.run(35.0)
    assert fresh.rv.registry.lookup_key(net["server_key"].id) >= 0
    assert net["server"].registered


def test_failed_login_is_reported_to_the_home_server(net):
    from twisted.logger import globalLogPublisher
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        at_once(net["coords"][C1].notify(net["server_key"].public_raw,
                                         connect.failure_notice("198.51.100.7",
                                                                "wrong-password")))
        net["network"].run(1.0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    failed = [e for e in seen if e.get("audit") == "login"]
    assert len(failed) == 1
    assert failed[0]["log_format"].startswith("audit: refused login")
    assert failed[0]["source"] == "198.51.100.7" and "wrong-password" in failed[0]["detail"]
    assert net["server"].failed_logins == 1
    assert net["coords"][C1].rv.stats["notices"] == 1


def test_migration_to_an_unresolvable_name_gives_up(tmp_path):
    from twisted.internet import defer

    clock = task.Clock()
    network = MemoryNetwork(clock)
    key = crypto.IdentityKey.generate()
    coord = network.attach(CoordinatorUDP(Rendezvous(key), clock), C1)
    server_key = crypto.IdentityKey.generate()

    def resolve(host):
        if host == "127.0.0.1":
            return host
        return defer.fail(OSError("no such host"))

    target_key = crypto.IdentityKey.generate().public_raw
    srv = network.attach(ServerUDP(server_key, ChallengeSource(K), ServerKeepalive(),
                                   (C1[0], C1[1], key.public_raw), clock, EchoAnswerer(),
                                   str(tmp_path / "f.json"), resolve=resolve,
                                   allow_migrate=[target_key]), S)
    network.run(1.0)
    coord.migrate(server_key.public_raw, "nowhere.invalid", 7777, target_key)
    network.run(45.0)
    assert srv.moving is None
    assert srv.active.name == f"{C1[0]}:{C1[1]}" and srv.registered


# -- events dispatched by the adapters ------------------------------------------------


class DirectoryRecorder:
    """The two calls a cluster's directory (``redisrelay.Directory``) gets from the
    coordinator's UDP side, recorded; *kind* "sync", "deferred" or "async" for what
    its methods return (the directory's methods are becoming ``async def``)."""

    def __init__(self, kind="sync"):
        self.kind = kind
        self.calls = []

    def _result(self):
        from twisted.internet import defer

        if self.kind == "deferred":
            return defer.succeed(None)
        if self.kind == "async":
            async def done():
                return None
            return done()
        return None

    def pool(self, kid, pairs, replace):
        self.calls.append(("pool", kid, len(pairs), replace))
        return self._result()

    def forget(self, kid):
        self.calls.append(("forget", kid))
        return self._result()


@pytest.mark.parametrize("kind", ["sync", "deferred", "async"])
def test_pool_and_expiry_events_reach_the_cluster_directory(kind):
    """Registration sets the pool (replace), a consumed challenge brings a REFILL
    (filled, not replaced), expiry forgets the server: each reaches the directory
    through ``set_directory``, whatever its methods return."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    key = crypto.IdentityKey.generate()
    coord = CoordinatorUDP(Rendezvous(key), clock, expiry=90.0)
    directory = DirectoryRecorder(kind)
    coord.set_directory(directory)
    network.attach(coord, C1)
    server_key = crypto.IdentityKey.generate()
    network.attach(ServerUDP(server_key, ChallengeSource(K), ServerKeepalive(),
                             (C1[0], C1[1], key.public_raw), clock), S)
    network.run(1.0)
    assert directory.calls == [("pool", server_key.id, 2, True)]
    challenge = at_once(coord.server_status(server_key.public_raw))[1]
    assert at_once(coord.take_challenge(server_key.public_raw, challenge)) is not None
    network.run(1.0)
    assert directory.calls[1:] == [("pool", server_key.id, 2, False)]
    network.detach(S)
    network.run(100.0)
    assert directory.calls[-1] == ("forget", server_key.id)


def test_a_server_that_leaves_is_forgotten_by_the_cluster_directory_at_once():
    """A stopping home server says BYE: the node forgets it at once, and so does the
    cluster's directory (other nodes then see it offline at once, not when its entry's
    TTL runs out).  How this was shown to fail: without the ServerForgotten event on
    BYE the directory heard nothing until expiry."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    key = crypto.IdentityKey.generate()
    coord = CoordinatorUDP(Rendezvous(key), clock, expiry=90.0)
    directory = DirectoryRecorder("sync")
    coord.set_directory(directory)
    network.attach(coord, C1)
    server_key = crypto.IdentityKey.generate()
    server = ServerUDP(server_key, ChallengeSource(K), ServerKeepalive(),
                       (C1[0], C1[1], key.public_raw), clock)
    network.attach(server, S)
    network.run(1.0)
    assert directory.calls == [("pool", server_key.id, 2, True)]
    server.leave()
    network.run(1.0)
    assert directory.calls[-1] == ("forget", server_key.id)


def test_a_failing_directory_is_logged_and_the_udp_side_goes_on():
    from twisted.logger import globalLogPublisher

    class Broken(DirectoryRecorder):
        def pool(self, kid, pairs, replace):
            raise RuntimeError("redis is gone")

    clock = task.Clock()
    network = MemoryNetwork(clock)
    key = crypto.IdentityKey.generate()
    coord = CoordinatorUDP(Rendezvous(key), clock)
    coord.set_directory(Broken())
    network.attach(coord, C1)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        server = network.attach(ServerUDP(crypto.IdentityKey.generate(), ChallengeSource(K),
                                          ServerKeepalive(), (C1[0], C1[1], key.public_raw),
                                          clock), S)
        network.run(1.0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert server.registered
    failures = [e for e in seen if e.get("log_failure") is not None]
    assert [e["log_format"] for e in failures] == ["the cluster directory failed"]
    assert failures[0]["log_failure"].check(RuntimeError)


def test_a_completed_move_is_saved_off_the_reactor(tmp_path):
    """The failover file is written by *to_thread* (the reactor's thread pool in the
    daemon), after the move: nothing is written on the reactor's side."""
    clock = task.Clock()
    network = MemoryNetwork(clock)
    keys = {C1: crypto.IdentityKey.generate(), C2: crypto.IdentityKey.generate()}
    coords = {a: network.attach(CoordinatorUDP(Rendezvous(k), clock), a)
              for a, k in keys.items()}
    threads = ManualThreads()
    failover = str(tmp_path / "failover-coordinator.json")
    server_key = crypto.IdentityKey.generate()
    server = network.attach(ServerUDP(server_key, ChallengeSource(K), ServerKeepalive(),
                                      (C1[0], C1[1], keys[C1].public_raw), clock,
                                      failover_path=failover, to_thread=threads,
                                      allow_migrate=[keys[C2].public_raw]), S)
    network.run(1.0)
    coords[C1].migrate(server_key.public_raw, C2[0], C2[1], keys[C2].public_raw)
    network.run(3.0)
    assert server.active.name == f"{C2[0]}:{C2[1]}"
    assert len(threads.jobs) == 1 and not os.path.exists(failover)
    threads.finish_all()
    assert load_failover(failover) == (C2[0], C2[1], keys[C2].public_raw)


def test_a_failed_save_is_logged_with_the_reason(tmp_path):
    from twisted.logger import LogLevel, globalLogPublisher

    clock = task.Clock()
    network = MemoryNetwork(clock)
    keys = {C1: crypto.IdentityKey.generate(), C2: crypto.IdentityKey.generate()}
    coords = {a: network.attach(CoordinatorUDP(Rendezvous(k), clock), a)
              for a, k in keys.items()}
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    server_key = crypto.IdentityKey.generate()
    network.attach(ServerUDP(server_key, ChallengeSource(K), ServerKeepalive(),
                             (C1[0], C1[1], keys[C1].public_raw), clock,
                             failover_path=str(blocker / "failover.json"),
                             allow_migrate=[keys[C2].public_raw]), S)
    network.run(1.0)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        coords[C1].migrate(server_key.public_raw, C2[0], C2[1], keys[C2].public_raw)
        network.run(3.0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    errors = [e for e in seen if e.get("log_level") == LogLevel.error]
    assert [e["log_format"] for e in errors] == [
        "could not save the failover coordinator {name}: {err}"]
    assert errors[0]["name"] == f"{C2[0]}:{C2[1]}"
