"""The home server's coordinator links as a pure object (no reactor, no
sockets): resolution requests, migration and the event that has the new target
saved, and the collectors that read the daemons' counters at scrape time."""

import random

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from homechannel import crypto

from homechannel.ops import metrics
from homechannel.config import ServerApps, FilesApp, ServerKeepalive
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.server.apps import AppHost
from homechannel.protocol import frames
from homechannel.testing.apps import FakeChannel
from homechannel.server.challenges import ChallengeSource
from homechannel.server.events import (
    MigrateRefused, MoveFailed, Moved, Moving, Registered, ResolveFailed, ResolveNeeded,
)
from homechannel.server.links import Links
from homechannel.server.udp import start_target

K = b"K" * 32
C1, C2 = ("127.0.0.1", 7001), ("127.0.0.1", 7002)
OTHER = ("127.0.0.1", 7003)


class World:
    """Two coordinators (Rendezvous) and one Links, datagrams passed by hand, host
    names resolved from ``names`` as the links ask (``ResolveNeeded``)."""

    def __init__(self, allow=(C2,)):
        """*allow*: the coordinators (of C1, C2, OTHER) a MIGRATE may move the server to,
        besides the configured one (C1)."""
        self.keys = {C1: crypto.IdentityKey.generate(), C2: crypto.IdentityKey.generate(),
                     OTHER: crypto.IdentityKey.generate()}
        self.coords = {a: Rendezvous(k) for a, k in self.keys.items()}
        self.server = crypto.IdentityKey.generate()
        self.links = Links(self.server, ChallengeSource(K), ServerKeepalive(),
                           ("coordinator-one", C1[1], self.keys[C1].public_raw),
                           random_bytes=random.Random(1).randbytes,
                           allow_migrate=[self.keys[a].public_raw for a in allow])
        self.now = 0.0
        self.events = []       # (link, event), every one the links gave out
        self.names = {"coordinator-one": C1[0]}

    def pump(self, out):
        """Deliver *out*'s datagrams (and the replies, until none is left); act on its
        events."""
        if out is None:
            return
        self.events += out.events
        queue = list(out.datagrams)
        while queue:
            data, addr = queue.pop(0)
            for reply, to in self.coords[addr].receive(data, ("127.0.0.1", 40000),
                                                       self.now).datagrams:
                more = self.links.receive(reply, addr, self.now)
                if more is not None:
                    self.events += more.events
                    queue += more.datagrams
                    self.resolve(more)
        self.resolve(out)

    def resolve(self, out):
        for link, event in out.events:
            if isinstance(event, ResolveNeeded):
                ip = self.names.get(link.host)
                if ip is None:
                    self.pump(self.links.resolve_failed(link, "no such host", self.now))
                else:
                    self.pump(self.links.resolved(link, ip, self.now))

    def run(self, until):
        while True:
            when = self.links.next_deadline()
            if when is None or when > until:
                break
            self.now = max(self.now, when)
            self.pump(self.links.poll(self.now))
        self.now = until


def kinds(world):
    return [type(e) for _, e in world.events]


def moved_to(world):
    """The targets the adapter is told to save (``Moved``), in order."""
    return [link.target for link, e in world.events if isinstance(e, Moved)]


def test_resolution_is_asked_for_and_registration_follows():
    w = World()
    out = w.links.start(0.0)
    assert out.datagrams == []
    ((link, event),) = out.events
    assert event == ResolveNeeded() and link.host == "coordinator-one"
    w.pump(w.links.resolved(link, C1[0], 0.0))
    assert w.links.status()["state"] == "up" and Registered in kinds(w)


def test_migration_has_the_target_saved():
    w = World()
    w.pump(w.links.start(0.0))
    kid = w.server.id
    w.names["coordinator-two"] = C2[0]
    out = w.coords[C1].migrate(kid, "coordinator-two", C2[1], w.keys[C2].public_raw, w.now)
    for data, _ in out.datagrams:
        w.pump(w.links.receive(data, C1, w.now))
    w.run(5.0)
    assert Moving in kinds(w) and Moved in kinds(w)
    assert moved_to(w) == [("coordinator-two", C2[1], w.keys[C2].public_raw)]
    assert w.links.active.name == f"coordinator-two:{C2[1]}" and w.links.moving is None


def test_unresolvable_target_gives_up_after_the_migration_timeout():
    w = World(allow=(C2, OTHER))
    w.pump(w.links.start(0.0))
    out = w.coords[C1].migrate(w.server.id, "nowhere.invalid", 7777,
                               w.keys[OTHER].public_raw, w.now)
    for data, _ in out.datagrams:
        w.pump(w.links.receive(data, C1, w.now))
    w.run(40.0)
    assert ResolveFailed in kinds(w) and MoveFailed in kinds(w)
    assert w.links.moving is None and moved_to(w) == []
    assert w.links.status()["state"] == "up"


def ask_to_move(w, to, key):
    """The active coordinator (C1) sends a MIGRATE to *to* with *key*; run 5 s."""
    host = {C2: "coordinator-two", OTHER: "coordinator-three"}[to]
    w.names[host] = to[0]
    out = w.coords[C1].migrate(w.server.id, host, to[1], key, w.now)
    for data, _ in out.datagrams:
        w.pump(w.links.receive(data, C1, w.now))
    w.run(w.now + 5.0)


def test_a_move_to_a_key_not_allowed_is_refused_with_the_reason():
    """coordinator.allow_migrate empty: the MIGRATE is acknowledged with the reason
    (so the coordinator stops asking, and logs why), nothing is registered there and
    nothing is saved.  Shown to fail with the check removed (every key allowed, as
    before allow_migrate): the server moved, and the new key replaced the pinned one."""
    w = World(allow=())
    w.pump(w.links.start(0.0))
    ask_to_move(w, C2, w.keys[C2].public_raw)
    refused = [e for _, e in w.events if isinstance(e, MigrateRefused)]
    assert [(e.port, e.public_key) for e in refused] == [(C2[1], w.keys[C2].public_raw)]
    assert Moving not in kinds(w) and moved_to(w) == []
    assert w.coords[C2].registry.count == 0
    assert w.coords[C1].stats["migrate-refused"] == 1 and not w.coords[C1]._out
    status = w.links.status()
    assert status["state"] == "up" and status["coordinator"] == f"coordinator-one:{C1[1]}"
    assert status["pin_overridden"] is False


def test_a_move_to_an_allowed_key_overrides_the_pin_and_says_so():
    w = World(allow=(C2,))
    w.pump(w.links.start(0.0))
    assert w.links.status()["pin_overridden"] is False
    ask_to_move(w, C2, w.keys[C2].public_raw)
    assert moved_to(w) == [("coordinator-two", C2[1], w.keys[C2].public_raw)]
    assert w.coords[C1].stats["migrate-acked"] == 1
    status = w.links.status()
    assert status["pin_overridden"] is True
    assert status["coordinator_key"] == crypto.b64u_encode(w.keys[C2].public_raw)
    # A move onwards from there needs the list too; back to the configured key does not.
    assert w.links.active.registrant.may_move_to == w.links.may_move_to
    out = w.coords[C2].migrate(w.server.id, "coordinator-three", OTHER[1],
                               w.keys[OTHER].public_raw, w.now)
    for data, _ in out.datagrams:
        w.pump(w.links.receive(data, C2, w.now))
    assert MigrateRefused in kinds(w)


def test_a_move_that_keeps_the_pinned_key_needs_no_permission():
    """Another address of the pinned coordinator (the same key): allowed with an empty
    allow_migrate, and the pin is not overridden."""
    w = World(allow=())
    same = w.keys[C1]
    w.coords[OTHER] = Rendezvous(same)
    w.pump(w.links.start(0.0))
    ask_to_move(w, OTHER, same.public_raw)
    assert moved_to(w) == [("coordinator-three", OTHER[1], same.public_raw)]
    assert w.links.status()["pin_overridden"] is False


@pytest.mark.parametrize("saved, allowed, expected", [
    (None, (), ("configured", None)),
    ("pinned", (), ("saved", "moved")),
    ("other", ("other",), ("saved", "overridden")),
    ("other", (), ("configured", "not-allowed")),
])
def test_the_failover_file_is_used_only_for_an_allowed_key(saved, allowed, expected):
    """At start: the saved move is followed for the pinned key or a listed one, and
    ignored for any other (taking a key off allow_migrate takes the server back).
    Shown to fail with the check removed (any saved key used, as before)."""
    keys = {"pinned": b"P" * 65, "other": b"O" * 65}
    configured = [("coordinator.example", 7777), ("node2.example", 7777)]
    file = None if saved is None else ("moved.example", 7001, keys[saved])
    target, candidates, why = start_target(file, configured, keys["pinned"],
                                           [keys[a] for a in allowed])
    where, reason = expected
    assert why == reason
    if where == "configured":
        assert target == ("coordinator.example", 7777, keys["pinned"])
        assert candidates == configured
    else:
        assert target == file
        assert candidates == (configured if saved == "pinned" else [])


def parse(registry):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(generate_latest(registry).decode())
            for s in fam.samples}


def test_server_collector_reads_app_traffic_and_logins():
    host = AppHost(ServerApps(files=FilesApp(roots=("/nonexistent",))), "id", "/tmp", None)
    channel = FakeChannel("app:files:1")
    host.channel_opened(channel)
    channel.emit("message", frames.encode(frames.REQ, 1, {"op": "roots"}))

    class Udp:
        failed_logins = 2

        def status(self):
            return {"state": "up", "coordinator": "c:1", "registrations": 3, "lost": 1}

    class Answerer:
        logins_accepted, logins_refused, live_sessions = 4, 5, 1

    got = parse(metrics.registry_for(metrics.ServerCollector(Udp(), Answerer(), host)))
    sent = sum(len(m) for m in channel.sent)
    assert got[("homechannel_server_app_bytes_total",
                (("app", "files"), ("direction", "out")))] == sent > 0
    assert got[("homechannel_server_app_bytes_total",
                (("app", "files"), ("direction", "in")))] > 0
    assert got[("homechannel_server_coordinator_up", (("coordinator", "c:1"),))] == 1
    assert got[("homechannel_server_logins_total", (("result", "accepted"),))] == 4
    assert got[("homechannel_server_logins_total", (("result", "refused"),))] == 5
    assert got[("homechannel_server_live_sessions", ())] == 1
