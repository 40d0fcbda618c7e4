"""The home server's coordinator links as a pure object (no reactor, no
sockets): resolution requests, migration and the event that has the new target
saved, and the collectors that read the daemons' counters at scrape time."""

import random

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
    MoveFailed, Moved, Moving, Registered, ResolveFailed, ResolveNeeded,
)
from homechannel.server.links import Links

K = b"K" * 32
C1, C2 = ("127.0.0.1", 7001), ("127.0.0.1", 7002)


class World:
    """Two coordinators (Rendezvous) and one Links, datagrams passed by hand, host
    names resolved from ``names`` as the links ask (``ResolveNeeded``)."""

    def __init__(self):
        self.keys = {C1: crypto.IdentityKey.generate(), C2: crypto.IdentityKey.generate()}
        self.coords = {a: Rendezvous(k) for a, k in self.keys.items()}
        self.server = crypto.IdentityKey.generate()
        self.links = Links(self.server, ChallengeSource(K), ServerKeepalive(),
                           ("coordinator-one", C1[1], self.keys[C1].public_raw),
                           random_bytes=random.Random(1).randbytes)
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
    w = World()
    w.pump(w.links.start(0.0))
    out = w.coords[C1].migrate(w.server.id, "nowhere.invalid", 7777,
                               crypto.IdentityKey.generate().public_raw, w.now)
    for data, _ in out.datagrams:
        w.pump(w.links.receive(data, C1, w.now))
    w.run(40.0)
    assert ResolveFailed in kinds(w) and MoveFailed in kinds(w)
    assert w.links.moving is None and moved_to(w) == []
    assert w.links.status()["state"] == "up"


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
