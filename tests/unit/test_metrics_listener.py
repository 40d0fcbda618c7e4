"""The Prometheus listener both daemons run (``homechannel.ops.metrics.service``),
listening for real on 127.0.0.1 in this process (the reactor runs under
pytest-twisted), with raw sockets (in threads) sending what a browser tricked by
DNS rebinding, or a slow or greedy client, would send."""

import socket
import time

import pytest_twisted
from prometheus_client import CollectorRegistry, Counter
from twisted.internet import reactor, task, threads

from homechannel.config import CoordinatorWeb
from homechannel.ops import metrics


def exchange(port, data, source="127.0.0.1", timeout=10.0):
    """Send *data* from *source*, then read until the server closes: what it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0)) as s:
        try:
            s.sendall(data)
        except ConnectionResetError:    # refused at once: closed before this was sent
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def get(host, path=b"/metrics"):
    head = b"GET " + path + b" HTTP/1.1\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    return head + b"Connection: close\r\n\r\n"


def status_of(data):
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


async def listening(**kw):
    registry = CollectorRegistry(auto_describe=False)
    Counter("scrapes_seen", "A counter to find in the text.", registry=registry).inc()
    service = metrics.service("tcp:0:interface=127.0.0.1", registry, reactor, **kw)
    service.startService()
    while service.port is None:
        await task.deferLater(reactor, 0.01, lambda: None)
    return service, service.port.getHost().port


@pytest_twisted.ensureDeferred
async def test_only_a_host_naming_the_listener_gets_the_metrics():
    """DNS rebinding: a page from rebind.example whose name now resolves to 127.0.0.1
    sends ``Host: rebind.example:PORT``; it gets 421 and no metrics.  An address, a
    bracketed IPv6 address, localhost and a configured name get them; no Host or a
    malformed one is a 400.  How this was shown to fail: with the listener before
    (a plain ``Site`` over the metrics resource), every one of these got 200 and the
    metrics."""
    service, port = await listening(allowed_hosts=("Prom.Internal.",))
    try:
        p = str(port).encode()
        answers = {}
        for host in (b"rebind.example:" + p, b"rebind.example", b"127.0.0.1.nip.io:" + p,
                     b"localhost.rebind.example", b"127.0.0.1:" + p, b"127.0.0.1",
                     b"[::1]:" + p, b"localhost:" + p, b"LOCALHOST.", b"prom.internal:" + p,
                     b"PROM.INTERNAL", None, b"", b"127.0.0.1:x", b"::1:" + p, b"[::1",
                     b"[nope]:" + p, b"caf\xc3\xa9.example"):
            answers[host] = await threads.deferToThread(exchange, port, get(host))
        refused = {h: status_of(a) for h, a in answers.items() if b"scrapes_seen" not in a}
        assert refused == {
            b"rebind.example:" + p: 421, b"rebind.example": 421,
            b"127.0.0.1.nip.io:" + p: 421, b"localhost.rebind.example": 421,
            None: 400, b"": 400, b"127.0.0.1:x": 400, b"::1:" + p: 400, b"[::1": 400,
            b"[nope]:" + p: 400, b"caf\xc3\xa9.example": 400}
        assert all(status_of(a) == 200 for h, a in answers.items() if h not in refused)
        assert service.site.resource.refused == len(refused)
        # Two Host lines are refused too.
        two = await threads.deferToThread(exchange, port, get(b"127.0.0.1", b"/metrics")
                                          .replace(b"\r\n\r\n", b"\r\nHost: rebind.example"
                                                   b"\r\n\r\n"))
        assert status_of(two) == 400
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_listener_has_connection_caps_and_a_header_timeout():
    """The listener is a LimitedSite: one source's connections over its share are
    closed at once, while another source is served, and a request head trickling in
    is cut (408) after the header timeout.  How this was shown to fail: with the plain
    ``Site`` of before, the third connection from 127.0.0.2 was served (and with
    that check taken out, the trickling head was never cut: the 10 s bound was hit)."""
    limits = CoordinatorWeb(max_connections=10, max_connections_per_source=2, header_timeout=0.5,
                            body_timeout=0.5, idle_timeout=5.0)
    service, port = await listening(limits=limits)
    held = []
    try:
        def hold():
            s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                         source_address=("127.0.0.2", 0))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(s)

        def trickle_until_closed(s):
            start = time.monotonic()
            s.settimeout(0.1)
            while time.monotonic() - start < 10:
                try:
                    s.sendall(b"a")
                    data = s.recv(65536)
                    return data, time.monotonic() - start
                except socket.timeout:
                    continue
                except OSError:
                    break
            return b"", time.monotonic() - start

        await threads.deferToThread(hold)
        await threads.deferToThread(hold)
        while service.site.connections < 2:
            await task.deferLater(reactor, 0.01, lambda: None)
        over = await threads.deferToThread(exchange, port, get(b"127.0.0.1"), "127.0.0.2")
        assert over == b"" and service.site.stats["refused-source-connections"] == 1
        other = await threads.deferToThread(exchange, port, get(b"127.0.0.1"), "127.0.0.3")
        assert b"scrapes_seen" in other
        data, took = await threads.deferToThread(trickle_until_closed, held[0])
        assert status_of(data) == 408 and took < 5.0, (data, took)
        assert service.site.stats["header-timeout"] >= 1
    finally:
        for s in held:
            s.close()
        await service.stopService()
