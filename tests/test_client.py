"""The native client against a fake coordinator and a real Answerer.

The coordinator side (a small twisted.web resource that signs every response
and relays offers straight to a homechannel.server.peer.Answerer) runs in a
subprocess under Twisted's asyncio reactor -- this same file, run as
``python tests/test_client.py serve MODE`` -- so the suite's reactor choice is
untouched.  The client runs here with asyncio.run: real HTTP on 127.0.0.1,
real aiortc at both ends.  Both advertise 127.0.0.1, so it works in `unshare -n`.
"""

import asyncio
import io
import json
import os
import subprocess
import sys

import pytest

from homechannel import client, crypto
from homechannel.errors import AuthenticationError, Forbidden

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PASSWORD = "correct horse battery staple"


# -- the fake coordinator (subprocess side) ------------------------------------


def serve(mode):
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    import dataclasses

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web import resource, server

    from homechannel import aio
    from homechannel.config import ServerWebRTC
    from homechannel.server.peer import Answerer

    sys.path.insert(0, HERE)
    from test_peer import FakeAppHost, FakeChallenges

    stdout = sys.stdout     # Twisted's logging redirects sys.stdout
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    aio.require_asyncio_reactor(reactor)
    coordinator_key = crypto.IdentityKey.generate()
    server_key = crypto.IdentityKey.generate()
    K = crypto.derive_password_key(PASSWORD, server_key.public_raw)
    challenges = FakeChallenges()
    config = dataclasses.replace(ServerWebRTC(), advertise_addresses=("127.0.0.1",))
    answerer = Answerer(server_key, K, challenges, config, FakeAppHost(server_key.text), reactor)

    expected = {}       # challenge -> expectedAnswer, as the real coordinator keeps them
    answers = {}        # session -> Deferred of the (possibly tampered) answer document

    def tamper_answer(doc):
        answer = doc["answer"]
        if mode == "answer-fingerprint":
            fp = crypto.sdp_fingerprint(answer)
            doc["answer"] = answer.replace(fp, "AB:" + fp[3:] if not fp.startswith("AB")
                                           else "CD:" + fp[3:])
        elif mode == "answer-sdp":
            doc["answer"] = answer.replace("a=setup:active", "a=setup:passive")
            assert doc["answer"] != answer
        elif mode == "answer-signature":
            sig = bytearray(crypto.b64u_decode(doc["signature"]))
            sig[5] ^= 1
            doc["signature"] = crypto.b64u_encode(bytes(sig))
        return doc

    class Coordinator(resource.Resource):
        isLeaf = True

        def send(self, request, status, doc):
            body = json.dumps(doc).encode()
            signature = coordinator_key.sign(
                crypto.response_signature_message(request.path.decode(), body))
            if mode == "response-signature":
                signature = bytes([signature[0] ^ 1]) + signature[1:]
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"X-HomeChannel-Signature", crypto.b64u_encode(signature).encode())
            return body

        def render_GET(self, request):
            path = request.path.decode()
            if path == "/config.js":
                return f'export const coordinatorKey = "{coordinator_key.text}";\n'.encode()
            if path == f"/api/servers/{server_key.text}":
                challenge = challenges.issue()
                expected[challenge] = crypto.sha256(crypto.challenge_answer(K, challenge))
                return self.send(request, 200, {
                    "server": server_key.text, "online": True,
                    "challenge": crypto.b64u_encode(challenge), "time": int(reactor.seconds())})
            if path.startswith("/api/sessions/") and path[14:] in answers:
                def done(doc):
                    request.write(self.send(request, *doc))
                    request.finish()
                answers[path[14:]].addCallback(done)
                return server.NOT_DONE_YET
            return self.send(request, 404, {"error": "no such page", "code": "not-found"})

        def render_POST(self, request):
            if request.path != b"/api/connect":
                return self.send(request, 404, {"error": "no such page", "code": "not-found"})
            req = json.loads(request.content.read())
            challenge = crypto.b64u_decode(req["challenge"])
            good = expected.pop(challenge, None)
            if mode != "skip-answer-check" and (
                    good is None or not crypto.check_answer(
                        crypto.b64u_decode(req["answer"]), good)):
                return self.send(request, 403, {"error": "wrong password",
                                                "code": "wrong-password"})
            payload = json.dumps({k: req[k] for k in ("session", "challenge", "proof",
                                                      "offer")}).encode()

            def relayed(reply):
                doc = json.loads(reply)
                if "error" in doc:
                    return 403, {"error": doc["message"], "code": doc["error"]}
                doc = tamper_answer(doc)
                return 200, {"status": "answered", "answer": doc["answer"],
                             "time": doc["time"], "signature": doc["signature"]}

            answers[req["session"]] = answerer.handle_offer(payload).addCallback(relayed)
            return self.send(request, 202, {"session": req["session"]})

    port = reactor.listenTCP(0, server.Site(Coordinator()), interface="127.0.0.1")
    print(json.dumps({"url": f"http://127.0.0.1:{port.getHost().port}",
                      "server": server_key.text, "coordinator_key": coordinator_key.text}),
          file=stdout, flush=True)
    reactor.run()


# -- the tests (pytest side) ----------------------------------------------------


@pytest.fixture
def coordinator(tmp_path):
    procs = []

    def start(mode="honest"):
        log = open(tmp_path / f"coordinator-{mode}.log", "w")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, __file__, "serve", mode], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=log, text=True)
        procs.append((proc, log))
        line = _readline(proc, 30)
        if not line:
            proc.wait(10)
            raise AssertionError("fake coordinator did not start:\n"
                                 + (tmp_path / f"coordinator-{mode}.log").read_text())
        return json.loads(line)

    yield start
    for proc, log in procs:
        proc.terminate()
        proc.wait(10)
        log.close()


def _readline(proc, timeout):
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            return ""
    return proc.stdout.readline()


def connect(info, password=PASSWORD, **kwargs):
    async def main():
        pc, control, hello = await client.connect(
            info["url"], info["server"], password,
            coordinator_key=kwargs.pop("coordinator_key", info["coordinator_key"]),
            advertise_addresses=("127.0.0.1",), timeout=20, connect_timeout=15, **kwargs)
        try:
            rtt = await client.ping(control, 3)
            return hello, rtt, pc.connectionState
        finally:
            await pc.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_connect_hello_and_ping(coordinator):
    info = coordinator()
    hello, rtt, state = connect(info)
    assert hello == {"op": "hello", "server": info["server"], "apps": ["forward"]}
    assert 0 < rtt < 5
    assert state == "connected"


def test_coordinator_key_from_config_js(coordinator):
    info = coordinator()
    notes = []
    hello, _, _ = connect(info, coordinator_key=None, notify=notes.append)
    assert hello["server"] == info["server"]
    assert info["coordinator_key"] in notes[0] and "--coordinator-key" in notes[0]


def test_wrong_password_is_a_clear_error(coordinator):
    info = coordinator()
    with pytest.raises(Forbidden, match="wrong password"):
        connect(info, password="not the password")


def test_home_server_refuses_a_bad_proof_even_if_the_coordinator_lets_it_through(coordinator):
    info = coordinator("skip-answer-check")
    with pytest.raises(Forbidden, match="bad-proof"):
        connect(info, password="not the password")


def test_wrong_coordinator_key_is_refused(coordinator):
    info = coordinator()
    other = crypto.IdentityKey.generate().text
    with pytest.raises(AuthenticationError, match="not signed by the coordinator key"):
        connect(info, coordinator_key=other)


def test_tampered_coordinator_signature_is_refused(coordinator):
    info = coordinator("response-signature")
    with pytest.raises(AuthenticationError, match="not signed by the coordinator key"):
        connect(info)


@pytest.mark.parametrize("mode", ["answer-fingerprint", "answer-sdp", "answer-signature"])
def test_answer_altered_by_the_coordinator_is_refused(coordinator, mode):
    info = coordinator(mode)
    with pytest.raises(AuthenticationError, match="not signed by home server"):
        connect(info)


def test_main_connect_prints_apps_and_ping(coordinator, tmp_path, capsys):
    info = coordinator()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    out = io.StringIO()
    status = client.main_connect([
        "--url", info["url"], "--server", info["server"],
        "--coordinator-key", info["coordinator_key"], "--password-file", str(password_file),
        "--advertise-address", "127.0.0.1"], out=out)
    assert status == 0, capsys.readouterr().err
    text = out.getvalue()
    assert "apps: forward" in text and "ping: " in text


def test_main_connect_wrong_password_exits_1(coordinator, tmp_path, capsys):
    info = coordinator()
    password_file = tmp_path / "password"
    password_file.write_text("nope\n")
    status = client.main_connect([
        "--server", f"{info['url']}/#server={info['server']}",
        "--coordinator-key", info["coordinator_key"], "--password-file", str(password_file),
        "--advertise-address", "127.0.0.1"], out=io.StringIO())
    assert status == 1
    assert "wrong password" in capsys.readouterr().err


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
