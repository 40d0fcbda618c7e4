"""The coordinator's web resource driven in memory, shared by the unit tests of its
HTTP API: ``Harness`` (the real ``CoordinatorWeb`` with a ``FakeRelay``, treq's
``StubTreq`` and a ``task.Clock``; every JSON response's signature is checked),
``assert_error``, ``fired`` (the result of a Deferred that has fired), ``settled``
(whether it has), and the values the requests use (``PASSWORD_KEY``, ``NOW``,
``IP_A``, ``IP_B``, ``OFFER_SDP``)."""

import json

from treq.testing import StubTreq
from twisted.internet import _producer_helpers, task
from twisted.python.failure import Failure

from homechannel import crypto
from homechannel.config import CoordinatorWeb as WebConfig
from homechannel.coordinator import web
from homechannel.testing.coordinator import FakeRelay

PASSWORD_KEY = bytes(range(32))  # stands in for PBKDF2(password, server key)
NOW = 1_700_000_000
IP_A = "198.51.100.1"
IP_B = "203.0.113.7"
OFFER_SDP = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
             "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
             "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n")


def fired(d):
    """The result of a Deferred that must already have fired."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def settled(d):
    """Whether the response (status, headers and body) is complete."""
    out = []
    d.addBoth(lambda r: (out.append(r), r)[1])
    return bool(out)


class Response:
    def __init__(self, code, headers, body):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name):
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    @property
    def json(self):
        return json.loads(self.body)


class Harness:
    def __init__(self, tmp_path=None, **overrides):
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.identity = crypto.IdentityKey.generate()
        self.home = crypto.IdentityKey.generate()
        self.server_id = self.home.text
        self.relay = FakeRelay()
        self.relay.add_server(self.home.public_raw, PASSWORD_KEY)
        settings = dict(trusted_proxies=("127.0.0.1",))
        settings.update(overrides)
        self.config = WebConfig(**settings)
        static_dir = str(tmp_path) if tmp_path is not None else None
        self.web = web.CoordinatorWeb(self.identity, self.relay, self.config, self.clock,
                                      static_dir=static_dir)
        self.stub = StubTreq(self.web.resource())
        self._counter = 0
        self.cooperator_clock = task.Clock()

    def drive_producers(self, monkeypatch):
        """Run twisted.web's pull producers (static.File) on a test clock."""
        coop = task.Cooperator(scheduler=lambda f: self.cooperator_clock.callLater(0, f),
                               started=True)
        monkeypatch.setattr(_producer_helpers, "cooperate", coop.cooperate)

    # -- requests --

    def start(self, method, path, ip=IP_A, body=None, headers=None, scheme="http"):
        hdrs = {"X-Forwarded-For": [ip]} if ip else {}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = ["application/json"]
        hdrs.update(headers or {})
        d = self.stub.request(method, f"{scheme}://coordinator.test{path}", headers=hdrs,
                              data=body)

        def read(resp):
            return resp.content().addCallback(
                lambda content: Response(resp.code, resp.headers, content))

        d.addCallback(read)
        self.stub.flush()
        return d

    def finish(self, d, path):
        for _ in range(10):  # static.File streams with a (cooperator-driven) producer
            self.stub.flush()
            self.cooperator_clock.advance(0)
            if settled(d):
                break
        resp = fired(d)
        if resp.header("Content-Type") == "application/json":
            self.check_signature(resp, path.split("?")[0])
        return resp

    def call(self, method, path, **kwargs):
        return self.finish(self.start(method, path, **kwargs), path)

    def check_signature(self, resp, path):
        sig = resp.header("X-HomeChannel-Signature")
        assert sig, "unsigned response"
        crypto.verify(self.identity.public_raw, crypto.b64u_decode(sig),
                      crypto.response_signature_message(path, resp.body))

    # -- the connect flow --

    def lookup(self, ip=IP_A):
        resp = self.call("GET", f"/api/servers/{self.server_id}", ip=ip)
        assert resp.code == 200, resp.body
        return crypto.b64u_decode(resp.json["challenge"])

    def new_session(self):
        self._counter += 1
        return crypto.b64u_encode(self._counter.to_bytes(16, "big"))

    def connect_body(self, challenge, password_key=PASSWORD_KEY, session=None, **extra):
        doc = {
            "server": self.server_id,
            "session": session or self.new_session(),
            "challenge": crypto.b64u_encode(challenge),
            "answer": crypto.b64u_encode(crypto.challenge_answer(password_key, challenge)),
            "proof": crypto.b64u_encode(b"p" * 32),
            "offer": OFFER_SDP,
        }
        doc.update(extra)
        return doc

    def connect(self, ip=IP_A, password_key=PASSWORD_KEY, challenge=None, **extra):
        if challenge is None:
            challenge = self.lookup(ip)
        body = self.connect_body(challenge, password_key, **extra)
        return self.call("POST", "/api/connect", ip=ip, body=body), body

    def answer_payload(self, session, **extra):
        doc = {"session": session, "answer": "v=0\r\nanswer\r\n", "time": NOW,
               "signature": crypto.b64u_encode(b"s" * 64)}
        doc.update(extra)
        return json.dumps(doc).encode()


def assert_error(resp, status, code):
    assert resp.code == status, (resp.code, resp.body)
    doc = resp.json
    assert doc["code"] == code, doc
    assert isinstance(doc["error"], str) and doc["error"]
    assert "Traceback" not in resp.body.decode()
