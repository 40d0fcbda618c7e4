"""The coordinator's HTTP limits, with real sockets: a LimitedSite listening on
127.0.0.1 in this process (the reactor runs under pytest-twisted), and raw TCP
(or TLS) clients that send exactly the bytes a hostile client would.

Each test says which check it proves; each was shown to fail with that check
disabled in a scratch copy of ``homechannel/coordinator/httpserver.py``."""

import io
import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, ssl, task
from twisted.web import resource, server

from helpers import self_signed_cert

from homechannel import crypto
from homechannel.config import CoordinatorWeb
from homechannel.coordinator.httpserver import LimitedSite

IDENTITY = crypto.IdentityKey.generate()


class Recorder(resource.Resource):
    """Answers at once, except ``GET /wait`` (a long-poll, answered by the test)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies = []      # (type of request.content, body)
        self.waiting = []

    def render_POST(self, request):
        self.bodies.append((type(request.content), request.content.read()))
        return b"posted"

    def render_GET(self, request):
        if request.path == b"/wait":
            self.waiting.append(request)
            return server.NOT_DONE_YET
        return b"ok"

    def answer_waiting(self):
        for request in self.waiting:
            request.write(b"answered")
            request.finish()
        self.waiting = []


class Client(protocol.Protocol):
    """Collects what the server sends; ``closed`` fires when the connection ends."""

    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()
        self.lost_at = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost_at = time.monotonic()
        self.closed.callback(self.data)

    def send(self, data):
        self.transport.write(data)


class Server:
    def __init__(self, limits, tls=None):
        self.resource = Recorder()
        self.site = LimitedSite(self.resource, limits, identity=IDENTITY, reactor=reactor)
        self.tls = tls
        self.clients = []
        self.port = None

    async def start(self):
        if self.tls:
            ep = endpoints.serverFromString(
                reactor, f"ssl:0:interface=127.0.0.1:privateKey={self.tls[0]}:certKey={self.tls[1]}")
        else:
            ep = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await ep.listen(self.site)
        return self

    async def connect(self, source="127.0.0.1"):
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port,
                                          bindAddress=(source, 0))
        if self.tls:
            ep = endpoints.wrapClientTLS(ssl.CertificateOptions(verify=False), ep)
        client = await endpoints.connectProtocol(ep, Client())
        self.clients.append(client)
        return client

    async def stop(self):
        for c in self.clients:
            if c.transport is not None and not c.closed.called:
                c.transport.abortConnection()
        for c in self.clients:
            await closed(c, 10)
        await self.port.stopListening()


async def closed(client, timeout=20.0):
    """What the server sent, once the connection is closed (fails after *timeout*)."""
    d = defer.Deferred()
    client.closed.addBoth(lambda r: (d.called or d.callback(r), r)[1])
    d.addTimeout(timeout, reactor)
    return await d


async def sleep(seconds):
    await task.deferLater(reactor, seconds, lambda: None)


async def trickled(client, byte, every=0.1):
    """Send *byte* every *every* seconds until the server closes; what it sent."""
    trickle = task.LoopingCall(lambda: client.transport.write(byte))
    trickle.start(every)
    try:
        return await closed(client)
    finally:
        trickle.stop()


async def until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await sleep(0.02)


def status_of(data):
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def json_of(data, path):
    """The JSON body of a response, after checking the coordinator's signature."""
    head, body = data.split(b"\r\n\r\n", 1)
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"Connection"] == b"close"
    assert headers[b"Content-Type"] == b"application/json"
    signature = crypto.b64u_decode(headers[b"X-HomeChannel-Signature"].decode())
    crypto.verify(IDENTITY.public_raw, signature, crypto.response_signature_message(path, body))
    return json.loads(body)


def limits(**kw):
    kw.setdefault("header_timeout", 5.0)
    kw.setdefault("body_timeout", 5.0)
    kw.setdefault("idle_timeout", 5.0)
    return CoordinatorWeb(**kw)


def post_head(length, path=b"/api/connect", extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: " + str(length).encode() + b"\r\n\r\n")


# -- bodies --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_content_length_over_the_limit_is_refused_before_the_body():
    """The client sends only the head (with Expect: 100-continue): the server
    answers 413, signed, and closes, without asking for or reading the body.
    Without the Content-Length check the server waits for the 10 MB."""
    srv = await Server(limits(max_body=1000)).start()
    try:
        c = await srv.connect()
        c.send(post_head(10_000_000, extra=b"Expect: 100-continue\r\n"))
        data = await closed(c)
        assert status_of(data) == 413 and b"100 Continue" not in data
        doc = json_of(data, "/api/connect")
        assert doc["code"] == "too-large" and "1000 bytes" in doc["error"]
        assert srv.resource.bodies == [] and srv.site.stats["too-large"] == 1
        # A body at the limit goes through.
        c = await srv.connect()
        c.send(post_head(1000) + b"x" * 1000)
        await until(lambda: srv.resource.bodies)
        assert srv.resource.bodies == [(io.BytesIO, b"x" * 1000)]
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_chunked_body_is_cut_at_the_limit():
    """A chunked body is counted as it arrives: 413 once it passes the limit,
    the rest is not read and the resource never runs (not even when the final
    chunk arrived in the same read).  Without the count the resource gets
    all 1,500 bytes."""
    srv = await Server(limits(max_body=1000)).start()
    try:
        head = b"POST /api/connect?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"12c\r\n" + b"y" * 300 + b"\r\n"
        c = await srv.connect()
        c.send(head + chunk * 5 + b"0\r\n\r\n")
        data = await closed(c)
        assert status_of(data) == 413
        assert json_of(data, "/api/connect")["code"] == "too-large"
        await sleep(0.1)
        assert srv.resource.bodies == []
        # Under the limit, chunked bodies work (and stay in memory).
        c = await srv.connect()
        c.send(head + chunk * 3 + b"0\r\n\r\n")
        await until(lambda: srv.resource.bodies)
        assert srv.resource.bodies == [(io.BytesIO, b"y" * 900)]
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_bodies_stay_in_memory():
    """Twisted's own Request spools a body over 100 KiB to a temporary file
    (an unlinked file on Linux, invisible in the temp directory); ours keeps
    it in a BytesIO.  The first half of the test shows the default, so this
    test fails if LimitedRequest.gotLength is removed."""
    body = b"z" * 200_000
    plain = Recorder()
    port = reactor.listenTCP(0, server.Site(plain, reactor=reactor), interface="127.0.0.1")
    try:
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        c = await endpoints.connectProtocol(ep, Client())
        c.send(post_head(len(body)) + body)
        await until(lambda: plain.bodies)
        assert plain.bodies[0][0] is not io.BytesIO     # spooled to disk
        c.transport.loseConnection()
        await closed(c)
    finally:
        await port.stopListening()
    srv = await Server(limits(max_body=300_000)).start()
    try:
        c = await srv.connect()
        c.send(post_head(len(body)) + body)
        await until(lambda: srv.resource.bodies)
        assert srv.resource.bodies == [(io.BytesIO, body)]
    finally:
        await srv.stop()


# -- slow clients ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slowloris_head_is_cut_after_the_header_timeout():
    """A head trickling in one byte every 0.1 s never trips the idle timeout;
    the header timeout cuts it (408).  Without it the connection stays open
    as long as the client keeps trickling."""
    srv = await Server(limits(header_timeout=0.6, idle_timeout=5.0)).start()
    try:
        start = time.monotonic()
        c = await srv.connect()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data = await trickled(c, b"a")
        elapsed = c.lost_at - start
        assert 0.55 <= elapsed < 10.0, elapsed
        assert status_of(data) == 408
        assert json_of(data, "/")["code"] == "timeout"
        assert srv.site.stats["header-timeout"] == 1
        # A connection that opens and sends nothing is cut the same way.
        c = await srv.connect()
        assert status_of(await closed(c)) == 408
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_slow_body_is_cut_after_the_body_timeout():
    """A body trickling in is cut body_timeout after its head (408)."""
    srv = await Server(limits(body_timeout=0.6, idle_timeout=5.0)).start()
    try:
        c = await srv.connect()
        c.send(post_head(500))
        start = time.monotonic()
        data = await trickled(c, b"b")
        assert 0.55 <= c.lost_at - start < 10.0
        assert status_of(data) == 408 and srv.site.stats["body-timeout"] == 1
        assert srv.resource.bodies == []
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_closed_but_a_long_poll_is_not():
    """A kept-alive connection idle between requests is closed after
    idle_timeout; a long-poll that waits silently for three times as long is
    answered on its open connection (the idle timeout is off while a request
    is answered, and the header timeout stopped when its head arrived)."""
    srv = await Server(limits(idle_timeout=0.5, header_timeout=0.5)).start()
    try:
        poll = await srv.connect()
        poll.send(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        idle = await srv.connect()
        idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: b"ok" in idle.data)
        await closed(idle)
        assert srv.site.stats["idle-timeout"] == 1
        await sleep(1.5)
        assert not poll.closed.called and len(srv.resource.waiting) == 1
        srv.resource.answer_waiting()
        await until(lambda: b"answered" in poll.data)
        assert status_of(poll.data) == 200
        # A second request on the same connection gets its own header timeout.
        poll.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: poll.data.endswith(b"ok"))
    finally:
        await srv.stop()


# -- connection caps ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connections_over_the_cap_are_closed_at_once():
    """With max_connections open, the next connection is closed at once
    (nothing sent, nothing read), while a long-poll already open is still
    answered; a place frees when a connection closes.  Without the cap the
    fourth connection stays open."""
    srv = await Server(limits(max_connections=3, max_connections_per_source=10)).start()
    try:
        poll = await srv.connect()
        poll.send(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        others = [await srv.connect(), await srv.connect()]
        await until(lambda: srv.site.connections == 3)
        extra = await srv.connect()
        assert await closed(extra, 5.0) == b""
        assert srv.site.stats["refused-connections"] == 1
        await until(lambda: srv.resource.waiting)
        srv.resource.answer_waiting()
        await until(lambda: b"answered" in poll.data)
        others[0].transport.loseConnection()
        await closed(others[0])
        await until(lambda: srv.site.connections == 2)
        again = await srv.connect()
        again.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: b"ok" in again.data)
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_one_source_holds_at_most_its_share_of_connections():
    """127.0.0.1 holds max_connections_per_source connections; its next one is
    closed at once while 127.0.0.2 (another source) still connects.  A
    trusted proxy is many clients: it is exempt.  Without the per-source cap
    the third connection from 127.0.0.1 stays open."""
    srv = await Server(limits(max_connections=50, max_connections_per_source=2,
                              trusted_proxies=("127.0.0.3",))).start()
    try:
        mine = [await srv.connect(), await srv.connect()]
        await until(lambda: srv.site.connections == 2)
        extra = await srv.connect()
        assert await closed(extra, 5.0) == b""
        assert srv.site.stats["refused-source-connections"] == 1
        other = await srv.connect("127.0.0.2")
        other.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: b"ok" in other.data)
        proxied = [await srv.connect("127.0.0.3") for _ in range(5)]
        await until(lambda: srv.site.connections == 8)
        assert not any(c.closed.called for c in mine + proxied)
    finally:
        await srv.stop()
    assert srv.site.connections == 0 and len(srv.site._by_source) == 0


@pytest_twisted.ensureDeferred
async def test_a_source_behind_a_trusted_proxy_holds_at_most_its_share_of_requests():
    """The proxy is exempt from the connection cap, so the requests it carries count
    against the source X-Forwarded-For names while they are answered: with two
    long-polls waiting for 198.51.100.7 (and for two addresses of one IPv6 /64), the
    next is refused with a signed 503 busy on the proxy's connection, which stays
    open, while another source and the proxy's own requests (no header, as health
    checks) are served; once the long-polls end, the source is served again.
    How this was shown to fail: without ``LimitedSite.getResourceFor``'s count, the
    third long-poll waited like the others (``waiting`` grew to 3)."""
    srv = await Server(limits(max_connections_per_source=2,
                              trusted_proxies=("127.0.0.3",))).start()

    def get(path, source=None):
        xff = b"X-Forwarded-For: " + source.encode() + b"\r\n" if source else b""
        return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + xff + b"\r\n"

    try:
        for sources in (["198.51.100.7"] * 3, ["2001:db8::1", "2001:db8::2", "2001:db8::3"]):
            polls = []
            for source in sources[:2]:
                polls.append(await srv.connect("127.0.0.3"))
                polls[-1].send(get(b"/wait", source))
            await until(lambda: len(srv.resource.waiting) == 2)
            over = await srv.connect("127.0.0.3")
            over.send(get(b"/wait", sources[2]))
            await until(lambda: b"\r\n\r\n{" in over.data)
            assert status_of(over.data) == 503
            head, body = over.data.split(b"\r\n\r\n", 1)
            signature = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n")
                             if line.lower().startswith(b"x-homechannel-signature: "))
            crypto.verify(IDENTITY.public_raw, crypto.b64u_decode(signature.decode()),
                          crypto.response_signature_message("/wait", body))
            assert json.loads(body)["code"] == "busy"
            assert len(srv.resource.waiting) == 2
            # The proxy's connection is kept: another source and the proxy's own go on it.
            over.data = b""
            over.send(get(b"/", "203.0.113.9") + get(b"/"))
            await until(lambda: over.data.count(b"ok") == 2)
            assert not over.closed.called
            srv.resource.answer_waiting()
            for poll in polls:
                await until(lambda: b"answered" in poll.data)
            over.data = b""
            over.send(get(b"/", sources[2]))
            await until(lambda: over.data.endswith(b"ok"))
        assert srv.site.stats["refused-source-requests"] == 2
    finally:
        await srv.stop()
    assert len(srv.site._forwarded) == 0


# -- the same over TLS -------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path):
    return self_signed_cert(tmp_path)


@pytest_twisted.ensureDeferred
async def test_limits_hold_behind_a_tls_endpoint(tls_files):
    """Under an ssl: endpoint (the site is wrapped by Twisted's TLS factory)
    the caps close connections at once, the body limit answers 413 and the
    header timeout (TLS handshake included) still cuts a silent client."""
    srv = await Server(limits(max_body=1000, max_connections=2, header_timeout=0.8),
                       tls=tls_files).start()
    try:
        c = await srv.connect()
        c.send(post_head(5000))
        data = await closed(c)
        assert status_of(data) == 413 and json_of(data, "/api/connect")["code"] == "too-large"
        ok = await srv.connect()
        ok.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: b"ok" in ok.data)
        silent = await srv.connect()
        await until(lambda: srv.site.connections == 2)
        extra = await srv.connect()
        assert await closed(extra, 5.0) == b""
        assert srv.site.stats["refused-connections"] == 1
        assert status_of(await closed(silent)) == 408
    finally:
        await srv.stop()
