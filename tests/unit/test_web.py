"""The coordinator's HTTPS API, driven through the real Klein resource with
treq's StubTreq and a task.Clock.  Every JSON response's signature is checked."""

import json

import pytest
from twisted.internet import task
from zope.interface.verify import verifyObject

from homechannel import crypto
from homechannel.config import CoordinatorWeb as WebConfig
from homechannel.coordinator import web
from homechannel.coordinator.interfaces import IRelay
from homechannel.testing.coordinator import FakeRelay

from webharness import IP_A, IP_B, NOW, Harness, assert_error, fired, settled


@pytest.fixture
def h(tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("<!doctype html><title>HomeChannel</title>")
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "main.js").write_text("export const x = 1;\n")
    (tmp_path / "js" / "apps").mkdir()
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "site.css").write_text("body { margin: 0 }\n")
    (tmp_path.parent / "secret.txt").write_text("secret")
    harness = Harness(tmp_path)
    harness.drive_producers(monkeypatch)
    return harness


# -- fakes conform --------------------------------------------------------


def test_fake_relay_provides_irelay():
    assert verifyObject(IRelay, FakeRelay())


# -- plain routes and headers ------------------------------------------------


def test_healthz_signed_with_security_headers(h):
    resp = h.call("GET", "/healthz")
    assert resp.code == 200 and resp.json == {"ok": True}
    assert resp.header("Content-Security-Policy") == web.CSP.decode()
    assert resp.header("X-Content-Type-Options") == "nosniff"
    assert resp.header("Referrer-Policy") == "no-referrer"
    assert resp.header("Strict-Transport-Security") is None


def test_hsts_only_over_tls(h):
    resp = h.call("GET", "/healthz", scheme="https")
    assert resp.header("Strict-Transport-Security").startswith("max-age=")


def test_hsts_from_trusted_proxy_forwarded_proto(h):
    resp = h.call("GET", "/healthz", headers={"X-Forwarded-Proto": ["https"]})
    assert resp.header("Strict-Transport-Security")


def test_unknown_route_is_signed_json_404(h):
    assert_error(h.call("GET", "/api/nope"), 404, "not-found")
    assert_error(h.call("GET", "/nope"), 404, "not-found")


def test_wrong_method_is_405(h):
    assert_error(h.call("POST", "/healthz"), 405, "method-not-allowed")
    assert_error(h.call("GET", "/api/connect"), 404, "not-found")


def test_config_js(h):
    h2 = Harness(ice_servers=({"urls": "stun:stun.example:3478"},))
    resp = h2.call("GET", "/config.js")
    assert resp.code == 200
    assert resp.header("Content-Type").startswith("text/javascript")
    text = resp.body.decode()
    assert f'export const coordinatorKey = "{h2.identity.text}";' in text
    assert 'export const iceServers = [{"urls": "stun:stun.example:3478"}];' in text


def test_static_files(h):
    resp = h.call("GET", "/")
    assert resp.code == 200 and b"HomeChannel" in resp.body
    assert resp.header("Content-Security-Policy")
    resp = h.call("GET", "/js/main.js")
    assert resp.code == 200 and resp.header("Content-Type").startswith("text/javascript")
    assert resp.header("X-Content-Type-Options") == "nosniff"
    resp = h.call("GET", "/css/site.css")
    assert resp.code == 200 and resp.header("Content-Type").startswith("text/css")


def test_no_directory_listing_or_escape(h):
    for path in ("/js/", "/js/apps/", "/js/../secret.txt", "/js/%2e%2e/secret.txt",
                 "/css/%2e%2e/%2e%2e/secret.txt", "/node_modules/x.js"):
        resp = h.call("GET", path)
        assert resp.code == 404, path
        assert b"secret" not in resp.body and b"main.js" not in resp.body


def test_metrics_are_not_on_the_public_port(h):
    """Counters are for the operator's listener (homechannel.ops.metrics), not the world."""
    h.lookup()
    resp = h.call("GET", "/metrics")
    assert resp.code == 404 and b"lookups" not in resp.body


# -- server lookup -----------------------------------------------------------


def test_lookup_online(h):
    resp = h.call("GET", f"/api/servers/{h.server_id}")
    assert resp.code == 200
    doc = resp.json
    assert doc["server"] == h.server_id and doc["online"] is True and doc["time"] == NOW
    challenge = crypto.b64u_decode(doc["challenge"])
    assert challenge in h.relay.servers[h.home.public_raw]["pool"]


def test_lookup_offline(h):
    other = crypto.IdentityKey.generate()
    resp = h.call("GET", f"/api/servers/{other.text}")
    assert resp.code == 200 and resp.json["online"] is False and resp.json["challenge"] is None


def test_lookup_empty_pool_gives_null_challenge(h):
    h.relay.empty_pool(h.home.public_raw)
    resp = h.call("GET", f"/api/servers/{h.server_id}")
    assert resp.json["online"] is True and resp.json["challenge"] is None


@pytest.mark.parametrize("bad", ["abc", "A" * 87, "!!!!", crypto.b64u_encode(b"\x04" + b"\0" * 64)])
def test_lookup_bad_id(h, bad):
    assert_error(h.call("GET", f"/api/servers/{bad}"), 400, "bad-server-id")


def test_lookup_rate_limited_per_ip(h):
    limit = 2 * h.config.per_ip_per_minute
    for _ in range(limit):
        assert h.call("GET", f"/api/servers/{h.server_id}").code == 200
    resp = h.call("GET", f"/api/servers/{h.server_id}")
    assert_error(resp, 429, "rate-limited")
    assert int(resp.header("Retry-After")) >= 1
    # Another source is unaffected.
    assert h.call("GET", f"/api/servers/{h.server_id}", ip=IP_B).code == 200
    h.clock.advance(60)
    assert h.call("GET", f"/api/servers/{h.server_id}").code == 200


# -- connect -----------------------------------------------------------------


def test_connect_relays_offer_and_long_poll_gets_answer(h):
    resp, body = h.connect()
    assert resp.code == 202 and resp.json == {"session": body["session"]}
    [(server_key, payload, _)] = h.relay.offers
    assert server_key == h.home.public_raw
    assert json.loads(payload) == {**{k: body[k] for k in ("session", "challenge", "proof",
                                                            "offer")}, "source": IP_A}

    path = f"/api/sessions/{body['session']}"
    d = h.start("GET", path)
    assert not settled(d)
    h.relay.answer(h.home.public_raw, h.answer_payload(body["session"]))
    resp = h.finish(d, path)
    assert resp.code == 200
    assert resp.json == {"session": body["session"], "status": "answered",
                         "answer": "v=0\r\nanswer\r\n", "time": NOW,
                         "signature": crypto.b64u_encode(b"s" * 64)}
    # A retried poll still gets the result for a while; later it is forgotten.
    assert h.call("GET", path).json["status"] == "answered"
    h.clock.advance(31)
    assert_error(h.call("GET", path), 404, "unknown-session")


def test_challenge_is_single_use(h):
    challenge = h.lookup()
    resp, _ = h.connect(challenge=challenge)
    assert resp.code == 202
    resp, _ = h.connect(challenge=challenge)
    assert_error(resp, 403, "stale-challenge")


def test_challenge_consumed_by_wrong_answer(h):
    challenge = h.lookup()
    resp, _ = h.connect(challenge=challenge, password_key=b"x" * 32)
    assert_error(resp, 403, "wrong-password")
    # The home server is told, so that it logs every failed login.
    assert [(k, r) for k, _, r in h.relay.failures] == [(h.home.public_raw, "wrong-password")]
    resp, _ = h.connect(challenge=challenge)
    assert_error(resp, 403, "stale-challenge")


def test_unknown_challenge_is_stale(h):
    resp, _ = h.connect(challenge=b"c" * 16)
    assert_error(resp, 403, "stale-challenge")
    assert h.relay.offers == []


def test_connect_offline(h):
    challenge = h.lookup()
    h.relay.remove_server(h.home.public_raw)
    resp, _ = h.connect(challenge=challenge)
    assert_error(resp, 404, "offline")


def test_wrong_password_locks_out_the_source_with_growing_backoff(h):
    threshold = h.config.failures_before_lockout
    for _ in range(threshold):
        resp, _ = h.connect(ip=IP_A, password_key=b"x" * 32)
        assert_error(resp, 403, "wrong-password")
    resp, _ = h.connect(ip=IP_A)  # even the right password is refused while locked out
    assert_error(resp, 429, "locked-out")
    assert int(resp.header("Retry-After")) == 60
    # The owner, from another address, still gets in.
    resp, _ = h.connect(ip=IP_B)
    assert resp.code == 202
    # After the lockout one more failure locks A out for twice as long.
    h.clock.advance(61)
    resp, _ = h.connect(ip=IP_A, password_key=b"x" * 32)
    assert_error(resp, 403, "wrong-password")
    resp, _ = h.connect(ip=IP_A)
    assert_error(resp, 429, "locked-out")
    assert int(resp.header("Retry-After")) == 120
    resp, _ = h.connect(ip=IP_B)
    assert resp.code == 202


def test_success_resets_failures(h):
    for _ in range(h.config.failures_before_lockout - 1):
        h.connect(password_key=b"x" * 32)
    assert h.connect()[0].code == 202
    for _ in range(h.config.failures_before_lockout - 1):
        assert h.connect(password_key=b"x" * 32)[0].code == 403
    assert h.connect()[0].code == 202


def test_connect_rate_limited_per_ip(h):
    h2 = Harness(trusted_proxies=("127.0.0.1",), per_ip_per_minute=3)
    for _ in range(3):
        assert h2.connect()[0].code == 202
    challenge = h2.lookup(ip=IP_B)
    resp = h2.call("POST", "/api/connect", ip=IP_A, body=h2.connect_body(challenge))
    assert_error(resp, 429, "rate-limited")
    assert resp.header("Retry-After")
    assert h2.connect(ip=IP_B)[0].code == 202


def test_connect_rate_limited_per_server(h):
    h2 = Harness(trusted_proxies=("127.0.0.1",), per_server_per_minute=2)
    assert h2.connect(ip="192.0.2.1")[0].code == 202
    assert h2.connect(ip="192.0.2.2")[0].code == 202
    resp, _ = h2.connect(ip="192.0.2.3")
    assert_error(resp, 429, "rate-limited")


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2]", b"\xff\xfe", json.dumps({"server": 1}).encode(),
])
def test_connect_malformed_body(h, body):
    assert_error(h.call("POST", "/api/connect", body=body), 400, "bad-request")


@pytest.mark.parametrize("field,value", [
    ("session", "short"), ("session", "x" * 21 + "!"), ("session", None),
    ("challenge", "!!"), ("challenge", crypto.b64u_encode(b"c" * 15)),
    ("answer", crypto.b64u_encode(b"a" * 31)), ("proof", None), ("proof", 12),
    ("offer", ""), ("offer", None), ("offer", ["x"]),
])
def test_connect_bad_fields(h, field, value):
    body = h.connect_body(h.lookup())
    body[field] = value
    code = "bad-offer" if field == "offer" else "bad-request"
    assert_error(h.call("POST", "/api/connect", body=body), 400, code)


def test_connect_bad_server_id(h):
    body = h.connect_body(h.lookup(), server="nope")
    assert_error(h.call("POST", "/api/connect", body=body), 400, "bad-server-id")


def test_connect_body_too_large(h):
    body = h.connect_body(h.lookup(), offer="x" * (h.config.max_body + 10))
    assert_error(h.call("POST", "/api/connect", body=body), 413, "too-large")


def test_session_cap(h):
    h2 = Harness(trusted_proxies=("127.0.0.1",), max_sessions=1)
    assert h2.connect()[0].code == 202
    resp, _ = h2.connect()
    assert_error(resp, 503, "busy")


def test_duplicate_session_id(h):
    resp, body = h.connect()
    resp, _ = h.connect(session=body["session"])
    assert_error(resp, 400, "session-exists")


def test_relay_failure_reported_by_long_poll(h):
    h.relay.auto_ack = False
    resp, body = h.connect()
    path = f"/api/sessions/{body['session']}"
    d = h.start("GET", path)
    h.relay.offers[0][2].errback(web.Unavailable("no ack"))
    assert_error(h.finish(d, path), 503, "relay-failed")


def test_the_home_servers_busy_refusal_reaches_the_client_as_fields(h):
    """A home server's busy refusal says what holds its slots as fields (its cap and each
    session's state and age), which the coordinator passes on beside the message, so
    that the browser never parses the message.  Shown to fail with the broker mapping a
    refusal by code and message only (``refusal_error(answer.error, answer.message)``):
    the JSON then has no slots or sessions.  Malformed fields make the whole refusal
    malformed (a ProtocolError: the coordinator drops it, counted)."""
    from homechannel.errors import ProtocolError
    from homechannel.protocol import connect

    resp, body = h.connect()
    path = f"/api/sessions/{body['session']}"
    d = h.start("GET", path)
    holders = (connect.SlotHolder("connected", 75), connect.SlotHolder("connecting", 2))
    h.relay.answer(h.home.public_raw, connect.Answer.refusal(
        body["session"], connect.BUSY, "all 2 session slots are in use: connected 75 s "
        "from 198.51.100.7; connecting 2 s", slots=2, holders=holders).encode())
    resp = h.finish(d, path)
    assert_error(resp, 503, "busy")
    assert resp.json["slots"] == 2
    assert resp.json["sessions"] == [{"state": "connected", "age": 75},
                                     {"state": "connecting", "age": 2}]
    assert "session slots are in use" in resp.json["error"]

    payload = json.loads(connect.Answer.refusal("A" * 22, connect.BUSY, "x", slots=1,
                                                holders=holders[:1]).encode())
    assert connect.Answer.decode(json.dumps(payload).encode()).holders == holders[:1]
    for damage in ({"sessions": [{"state": "connected", "age": 1, "source": "x"}]},
                   {"sessions": [{"state": "idle", "age": 1}]}, {"slots": "1"},
                   {"slots": True}, {"error": "bad-proof"}, {"sessions": "connected 1 s"},
                   {"sessions": [{"state": "connected", "age": 1}] * 17}):
        with pytest.raises(ProtocolError):
            connect.Answer.decode(json.dumps(dict(payload, **damage)).encode())


def test_unexpected_error_is_a_terse_500(h):
    async def boom(server_key):
        raise RuntimeError("secret internals")

    h.relay.server_status = boom
    resp = h.call("GET", f"/api/servers/{h.server_id}")
    assert resp.code == 500
    assert resp.json == {"error": "internal error", "code": "internal"}
    assert b"secret internals" not in resp.body


# -- long-poll ---------------------------------------------------------------


def test_long_poll_pending_then_expired_then_forgotten(h):
    resp, body = h.connect()
    path = f"/api/sessions/{body['session']}"
    d = h.start("GET", path)
    h.clock.advance(h.config.long_poll_timeout - 1)
    assert not settled(d)
    h.clock.advance(1)
    resp = h.finish(d, path)
    assert resp.code == 200 and resp.json == {"session": body["session"], "status": "pending"}

    d = h.start("GET", path)
    h.clock.advance(h.config.long_poll_timeout)
    assert h.finish(d, path).json["status"] == "pending"
    d = h.start("GET", path)
    h.clock.advance(h.config.session_timeout - 2 * h.config.long_poll_timeout - 1)
    assert not settled(d)
    h.clock.advance(1)
    assert_error(h.finish(d, path), 408, "timeout")
    assert_error(h.call("GET", path), 408, "timeout")
    h.clock.advance(60)
    assert_error(h.call("GET", path), 404, "unknown-session")


def test_long_poll_unknown_and_malformed(h):
    assert_error(h.call("GET", "/api/sessions/" + "A" * 22), 404, "unknown-session")
    assert_error(h.call("GET", "/api/sessions/short"), 400, "bad-session")


def test_waiter_cap(h):
    h2 = Harness(trusted_proxies=("127.0.0.1",), max_waiters=1)
    _, body = h2.connect()
    path = f"/api/sessions/{body['session']}"
    first = h2.start("GET", path)
    assert_error(h2.call("GET", path), 503, "busy")
    h2.clock.advance(25)
    assert h2.finish(first, path).json["status"] == "pending"


def test_answer_from_another_server_is_ignored(h):
    resp, body = h.connect()
    intruder = crypto.IdentityKey.generate()
    path = f"/api/sessions/{body['session']}"
    d = h.start("GET", path)
    h.relay.answer(intruder.public_raw, h.answer_payload(body["session"], answer="evil"))
    assert not settled(d)
    assert h.web.metrics["answers_wrong_server"] == 1
    h.relay.answer(h.home.public_raw, h.answer_payload(body["session"]))
    assert h.finish(d, path).json["answer"] == "v=0\r\nanswer\r\n"
    # A second answer does not replace the first.
    h.relay.answer(h.home.public_raw, h.answer_payload(body["session"], answer="late"))
    assert h.call("GET", path).json["answer"] == "v=0\r\nanswer\r\n"


@pytest.mark.parametrize("payload", [
    b"\xff", b"[]", b"{}", b'{"session": 5}', b'{"session": "' + b"Q" * 22 + b'"}',
])
def test_malformed_answers_are_dropped(h, payload):
    resp, body = h.connect()
    h.relay.answer(h.home.public_raw, payload)
    h.relay.answer(h.home.public_raw, h.answer_payload(body["session"], time="now"))
    path = f"/api/sessions/{body['session']}"
    d = h.start("GET", path)
    assert not settled(d)
    h.clock.advance(25)
    assert h.finish(d, path).json["status"] == "pending"


@pytest.mark.parametrize("code,status", [
    ("bad-proof", 403), ("unknown-challenge", 403), ("busy", 503), ("internal", 503),
    ("something-else", 503),
])
def test_home_server_refusal(h, code, status):
    resp, body = h.connect()
    h.relay.answer(h.home.public_raw, json.dumps(
        {"session": body["session"], "error": code, "message": "no"}).encode())
    resp = h.call("GET", f"/api/sessions/{body['session']}")
    assert_error(resp, status, code if code != "something-else" else "refused")


# -- CORS and source addresses -------------------------------------------------


def test_cors_allowed_and_refused_origins():
    h = Harness(cors_origins=("https://app.example",), trusted_proxies=("127.0.0.1",))
    resp = h.call("GET", "/healthz", headers={"Origin": ["https://app.example"]})
    assert resp.header("Access-Control-Allow-Origin") == "https://app.example"
    assert "X-HomeChannel-Signature" in resp.header("Access-Control-Expose-Headers")
    assert resp.header("Vary") == "Origin"
    resp = h.call("GET", "/healthz", headers={"Origin": ["https://evil.example"]})
    assert resp.header("Access-Control-Allow-Origin") is None
    resp = h.call("GET", "/healthz", headers={"Origin": ["https://app.example.evil"]})
    assert resp.header("Access-Control-Allow-Origin") is None

    pre = {"Origin": ["https://app.example"], "Access-Control-Request-Method": ["POST"]}
    resp = h.call("OPTIONS", "/api/connect", headers=pre)
    assert resp.code == 204
    assert resp.header("Access-Control-Allow-Origin") == "https://app.example"
    assert "POST" in resp.header("Access-Control-Allow-Methods")
    assert "Content-Type" in resp.header("Access-Control-Allow-Headers")
    pre["Origin"] = ["https://evil.example"]
    resp = h.call("OPTIONS", "/api/connect", headers=pre)
    assert_error(resp, 403, "cors")
    assert resp.header("Access-Control-Allow-Origin") is None


def test_no_cors_by_default(h):
    resp = h.call("GET", "/healthz", headers={"Origin": ["https://app.example"]})
    assert resp.header("Access-Control-Allow-Origin") is None


def test_forwarded_for_ignored_from_untrusted_peer():
    h = Harness(trusted_proxies=(), failures_before_lockout=1)
    # The peer (127.0.0.1) is not a trusted proxy: X-Forwarded-For is ignored,
    # so a failure "from" A locks out the peer, and "B" is the same peer.
    resp, _ = h.connect(ip=IP_A, password_key=b"x" * 32)
    assert_error(resp, 403, "wrong-password")
    resp, _ = h.connect(ip=IP_B)
    assert_error(resp, 429, "locked-out")


class _Req:
    def __init__(self, peer, xff):
        self._peer = peer
        from twisted.web.http_headers import Headers
        self.requestHeaders = Headers({b"X-Forwarded-For": xff} if xff else {})

    def getClientAddress(self):
        from twisted.internet.address import IPv4Address
        return IPv4Address("TCP", self._peer, 1234)


@pytest.mark.parametrize("peer,xff,expected", [
    ("10.0.0.1", [b"1.2.3.4"], "1.2.3.4"),
    ("10.0.0.1", [b"6.6.6.6, 1.2.3.4"], "1.2.3.4"),            # spoofed left part ignored
    ("10.0.0.1", [b"1.2.3.4, 10.0.0.2"], "1.2.3.4"),           # chain of trusted proxies
    ("10.0.0.1", [b"6.6.6.6", b"1.2.3.4"], "1.2.3.4"),         # several header lines
    ("10.0.0.1", [b"garbage"], "10.0.0.1"),
    ("10.0.0.1", None, "10.0.0.1"),
    ("10.0.0.1", [b"10.0.0.2"], "10.0.0.1"),
    ("192.0.2.9", [b"1.2.3.4"], "192.0.2.9"),                  # untrusted peer
    # One spelling for each address: what keys the limits and goes to the home server.
    ("10.0.0.1", [b"2001:DB8:0:0::1"], "2001:db8::1"),
    ("10.0.0.1", [b"::ffff:1.2.3.4"], "1.2.3.4"),
    ("10.0.0.1", [b" 1.2.3.4 "], "1.2.3.4"),
    # Anything but exactly one address is a broken header: the peer.
    ("10.0.0.1", [b"fe80::1%eth0"], "10.0.0.1"),
    ("10.0.0.1", [b"fe80::1%\x1b[2J"], "10.0.0.1"),
    ("10.0.0.1", [b"fe80::1%0"], "10.0.0.1"),
    ("10.0.0.1", [b"1.2.3.4:5678"], "10.0.0.1"),
    ("10.0.0.1", [b"[2001:db8::1]"], "10.0.0.1"),
    ("10.0.0.1", [b"2001:db8::/64"], "10.0.0.1"),
    ("10.0.0.1", [b"01.2.3.4"], "10.0.0.1"),
    ("10.0.0.1", [b"1.2.3.4\x85"], "10.0.0.1"),
    ("10.0.0.1", [b""], "10.0.0.1"),
    ("10.0.0.1", [b"1.2.3.4, fe80::1%eth0"], "10.0.0.1"),       # the right-most decides
    ("10.0.0.1", [b"fe80::1%eth0, 1.2.3.4"], "1.2.3.4"),        # left of it: never read
    # A dual-stack listener (web.listen on "::") reports IPv4 peers IPv4-mapped: they
    # are IPv4 to the rate limits, the logs and the home server's audit.
    ("::ffff:192.0.2.9", None, "192.0.2.9"),
    ("::ffff:10.0.0.1", [b"::ffff:1.2.3.4"], "1.2.3.4"),
    ("2001:db8::9", None, "2001:db8::9"),
])
def test_source_address(peer, xff, expected):
    """How the odd spellings were shown to fail: with the parser before them
    (``str(ipaddress.ip_address(hop.strip()))``), every zone (``%eth0``, ``%0``, the
    escape sequence) came back as sent, also as the right-most hop after a good one,
    ``::ffff:1.2.3.4`` stayed IPv4-mapped, and ``1.2.3.4\\x85`` was taken as
    ``1.2.3.4`` (``str.strip`` takes NEL for whitespace)."""
    w = web.CoordinatorWeb(crypto.IdentityKey.generate(), FakeRelay(),
                           WebConfig(trusted_proxies=("10.0.0.1", "10.0.0.2")), task.Clock())
    assert w.source_address(_Req(peer, xff)) == expected


def test_the_client_page_is_read_once_and_again_on_reload(h, tmp_path):
    """``GET /`` answers the index.html read at start, without touching the disk: a
    changed or deleted file shows only after ``reload_client`` (SIGHUP); a client that
    is missing then is the signed 404 it is when missing at start.  Shown to fail with
    the file read on every request again (the change shows at once)."""
    page = tmp_path / "index.html"
    page.write_text("<!doctype html><title>changed</title>")
    resp = h.call("GET", "/")
    assert resp.code == 200 and b"HomeChannel" in resp.body
    h.web.reload_client()
    assert b"changed" in h.call("GET", "/").body
    page.unlink()
    assert b"changed" in h.call("GET", "/").body
    h.web.reload_client()
    resp = h.call("GET", "/")
    assert_error(resp, 404, "not-found")
    assert resp.json["error"] == "the browser client is not installed"
    missing = Harness(tmp_path)
    assert_error(missing.call("GET", "/"), 404, "not-found")


@pytest.mark.parametrize("forwarded,expected", [
    ("fe80::1%eth0", "127.0.0.1"),
    ("fe80::1%\x1b[1A\x1b[2K", "127.0.0.1"),
    ("::FFFF:198.51.100.1", "198.51.100.1"),
])
def test_odd_forwarded_addresses_never_reach_the_home_server_nor_the_limits(forwarded,
                                                                            expected):
    """A zone or another spelling in X-Forwarded-For (through a trusted proxy) never
    reaches the failed-login NOTICE, the offer's ``source`` (both go to the home
    server, which logs them), or the per-source limits: the request counts as the
    proxy's own (a broken header), or as the address in its one spelling.  How this
    was shown to fail: with the parser before ``canonical_address``, the NOTICE and
    the offer carried ``fe80::1%eth0`` and the escape sequence as sent, and the mapped
    address as ``::ffff:198.51.100.1``."""
    h = Harness(failures_before_lockout=1)
    resp, _ = h.connect(ip=forwarded, password_key=b"x" * 32)
    assert_error(resp, 403, "wrong-password")
    assert [source for _, source, _ in h.relay.failures] == [expected]
    # The lockout fell on that source: the proxy's own address (or the canonical one)
    # is now locked out, whatever it is written as.
    resp, _ = h.connect(ip=expected)
    assert_error(resp, 429, "locked-out")
    h2 = Harness()
    resp, _ = h2.connect(ip=forwarded)
    assert resp.code == 202
    offer = json.loads(h2.relay.offers[0][1])
    assert offer["source"] == expected


def test_bundled_client_is_served(monkeypatch):
    h = Harness()
    h.drive_producers(monkeypatch)
    resp = h.call("GET", "/")
    assert resp.code == 200 and b'<script type="module" src="/js/main.js">' in resp.body
    for path in ("/js/main.js", "/js/api.js", "/js/crypto.js", "/js/config.js",
                 "/js/webrtc.js", "/js/servers.js", "/css/site.css"):
        assert h.call("GET", path).code == 200, path


@pytest.mark.parametrize("entry,peer", [("127.0.0.0/8", "127.0.0.1"),
                                        ("0:0:0:0:0:0:0:1", "::1"),
                                        ("::ffff:127.0.0.1", "127.0.0.1")])
def test_trusted_proxies_match_networks_and_any_spelling(entry, peer):
    """A trusted proxy written as a network or in another spelling is trusted (once
    these matched nobody, so every client behind the proxy was the proxy's address and one
    stranger's wrong passwords locked everyone out)."""
    from homechannel.coordinator.ratelimit import TrustedProxies

    assert peer in TrustedProxies([entry])
    assert "192.0.2.1" not in TrustedProxies([entry])
    if peer != "127.0.0.1":
        return                                     # the harness's proxy is 127.0.0.1
    h = Harness(trusted_proxies=(entry,))
    for _ in range(h.config.failures_before_lockout):
        resp, _ = h.connect(ip="198.51.100.66", password_key=bytes(32))
    resp, _ = h.connect(ip="192.0.2.10")          # the owner, another address behind the proxy
    assert resp.code == 202, resp.body


@pytest.mark.parametrize("entry", ["localhost", "127.0.0.1/33", "", 5])
def test_trusted_proxies_that_are_not_addresses_are_a_config_error(entry):
    from homechannel import config
    from homechannel.errors import ConfigError

    with pytest.raises(ConfigError, match="web.trusted_proxies"):
        config._build(config.CoordinatorConfig, {"web": {"trusted_proxies": [entry]}}, "")


# -- the connect flow's routes without Klein ----------------------------------------


def test_a_held_request_is_cancelled_when_its_client_goes_away():
    """A held ``POST /api/connect?wait`` and a long-poll whose client disconnects stop
    waiting at once (their waiter places are given back), on the routes dispatched
    without Klein as Klein did.  Shown to fail with the cancel removed from
    ``CoordinatorWeb._run`` (the second waiter is refused as busy)."""
    h = Harness(max_waiters=1)
    _, body = h.connect()
    path = f"/api/sessions/{body['session']}"
    first = h.start("GET", path)
    assert h.web.sessions.waiting == 1
    first.cancel()      # the client closes its connection
    h.stub.flush()
    assert h.web.sessions.waiting == 0
    second = h.start("GET", path)
    h.relay.answer(h.home.public_raw, h.answer_payload(body["session"]))
    assert h.finish(second, path).json["status"] == "answered"

    challenge = h.lookup()
    held = h.start("POST", "/api/connect?wait=10", body=h.connect_body(challenge))
    assert h.web.sessions.waiting == 1
    held.cancel()
    h.stub.flush()
    assert h.web.sessions.waiting == 0


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/api/servers/{id}", None),
    ("GET", "/api/servers/AAAA", None),
    ("GET", "/api/sessions/" + "A" * 22, None),
    ("GET", "/api/sessions/short", None),
    ("POST", "/api/connect", b"{"),
    ("POST", "/api/connect?wait=5", b"[]"),
    ("POST", "/api/connect?wait=x", b"{}"),
])
def test_direct_routes_answer_as_klein_does(h, method, path, body):
    """The connect flow's routes, dispatched without Klein, answer exactly what their
    Klein routes answer (status, headers but the signature, which is randomised, body)."""
    path = path.replace("{id}", h.server_id)
    headers = {"Content-Type": ["application/json"]} if body is not None else {}
    direct = h.call(method, path, body=body, headers=headers)
    h.web._direct = lambda request: None
    via_klein = h.call(method, path, body=body, headers=headers)
    assert (direct.code, direct.body) == (via_klein.code, via_klein.body)

    def headers_of(resp):
        return sorted((k, v) for k, v in resp.headers.getAllRawHeaders()
                      if k not in (b"X-Homechannel-Signature", b"Date"))

    assert headers_of(direct) == headers_of(via_klein)


@pytest.mark.parametrize("path", ["/api/servers/{id}/", "/api//servers/{id}",
                                  "/api/servers/%41{id}", "/api/sessions/A%41"])
def test_other_forms_of_the_direct_paths_go_to_klein(h, path):
    """Only the plain form of a direct route is taken from Klein: a trailing slash,
    doubled slashes or a percent escape are matched (or refused) by werkzeug as before."""
    path = path.replace("{id}", h.server_id)

    def get():
        d = h.start("GET", path)
        h.stub.flush()
        return fired(d)

    calls = []
    direct = h.web._direct
    h.web._direct = lambda request: calls.append(direct(request))
    get()
    assert calls[0] is None     # (werkzeug may redirect to the plain form, then direct)
    h.web._direct = lambda request: None
    expected = get()
    h.web._direct = direct
    got = get()
    assert (got.code, got.body) == (expected.code, expected.body)
