"""The native client against the real coordinator API and a real Answerer.

The coordinator side -- the real ``CoordinatorWeb``/``Broker`` with an
``AnswererRelay`` (``homechannel.testing.coordinator``) that hands offers
straight to a real ``homechannel.server.peer.Answerer`` instead of UDP --
runs in a subprocess under Twisted's asyncio reactor (this same file, run as
``python tests/e2e/test_client.py serve MODE``), so the suite's reactor choice is
untouched.  MODE tampers on the coordinator's side: ``response-signature``
flips the coordinator's signatures; ``answer-*`` rewrites the home server's
answer on its way.  The client runs here with asyncio.run: real HTTP on
127.0.0.1, real aiortc at both ends; both advertise 127.0.0.1, so it works in
`unshare -n`.
"""

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from homechannel import crypto

from homechannel.cli import client as cli_client
from homechannel.client import session, trust
from homechannel.client.control import ping
from homechannel.errors import AuthenticationError, Forbidden
from homechannel.protocol import connect as flow

from helpers import REPO, SUPPORT


PASSWORD = "correct horse battery staple"


# -- the coordinator (subprocess side) ------------------------------------------


def tamper_answer(mode, payload):
    doc = json.loads(payload)
    if "answer" not in doc:
        return payload
    answer = doc["answer"]
    if mode == "answer-fingerprint":
        fp = next(line for line in answer.splitlines() if line.startswith("a=fingerprint:"))
        value = fp.split(" ", 1)[1]
        doc["answer"] = answer.replace(value, ("CD" if value.startswith("AB") else "AB")
                                       + value[2:])
    elif mode == "answer-sdp":
        doc["answer"] = answer.replace("a=setup:active", "a=setup:passive")
        assert doc["answer"] != answer
    elif mode == "answer-signature":
        sig = bytearray(crypto.b64u_decode(doc["signature"]))
        sig[5] ^= 1
        doc["signature"] = crypto.b64u_encode(bytes(sig))
    return json.dumps(doc).encode()


def serve(mode):
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    import dataclasses

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web import server

    from homechannel import aio
    from homechannel.config import CoordinatorWeb as WebConfig
    from homechannel.config import ServerWebRTC
    from homechannel.coordinator import web
    from homechannel.testing.coordinator import AnswererRelay
    from homechannel.server.challenges import ChallengeSource
    from homechannel.server.peer import Answerer

    from fake_apphost import FakeAppHost

    stdout = sys.stdout     # Twisted's logging redirects sys.stdout
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    aio.require_asyncio_reactor(reactor)
    coordinator_key = crypto.IdentityKey.generate()
    server_key = crypto.IdentityKey.generate()
    K = crypto.derive_password_key(PASSWORD, server_key.public_raw)
    challenges = ChallengeSource(K)
    config = dataclasses.replace(ServerWebRTC(), advertise_addresses=("127.0.0.1",))
    answerer = Answerer(server_key, K, challenges, config, FakeAppHost(server_key.text), reactor)
    relay = AnswererRelay(server_key.public_raw, answerer, challenges,
                          tamper=lambda payload: tamper_answer(mode, payload))
    if mode == "response-signature":
        sign = coordinator_key.sign
        coordinator_key.sign = lambda data: bytes([sign(data)[0] ^ 1]) + sign(data)[1:]
    app = web.CoordinatorWeb(coordinator_key, relay, WebConfig(), reactor)
    port = reactor.listenTCP(0, server.Site(app.resource()), interface="127.0.0.1")
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
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [REPO, SUPPORT, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen([sys.executable, __file__, "serve", mode], cwd=REPO, env=env,
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
        pc, control, hello = await session.connect(
            info["url"], info["server"], password,
            coordinator_key=kwargs.pop("coordinator_key", info["coordinator_key"]),
            advertise_addresses=("127.0.0.1",), timeout=20, connect_timeout=15, **kwargs)
        try:
            rtt = await ping(control, 3)
            return hello, rtt, pc.connectionState
        finally:
            await pc.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_connect_hello_and_ping(coordinator):
    info = coordinator()
    hello, rtt, state = connect(info)
    assert hello.pop("device").startswith("hcdev2.")
    assert hello == {"op": "hello", "server": info["server"], "apps": ["forward"]}
    assert 0 < rtt < 5
    assert state == "connected"


def test_coordinator_key_from_config_js(coordinator):
    info = coordinator()
    notes = []
    hello, _, _ = connect(info, coordinator_key=None, notify=notes.append)
    assert hello["server"] == info["server"]
    assert info["coordinator_key"] in notes[0] and "--coordinator-key" in notes[0]


def test_coordinator_key_is_remembered_per_url_and_a_changed_one_is_refused(coordinator,
                                                                            tmp_path):
    """Trust on first use, kept: the key from /config.js is remembered per URL (mode
    0600) once it verified a response; a later /config.js with another key is refused
    before any API call, until --coordinator-key accepts the new one; a pinned key
    that verifies nothing is never remembered.  How this was shown to fail: with the
    comparison in ``trusted_coordinator_key`` disabled, the changed-key connect
    succeeded (as it did before the store); with ``_remember_key`` a no-op, nothing
    was kept; with ``verified`` set before the signature check, the wrong pinned key
    was kept."""
    info = coordinator()
    url, key = info["url"], info["coordinator_key"]
    known = trust.KnownCoordinators(str(tmp_path / "state" / "coordinators.json"))
    notes = []
    connect(info, coordinator_key=None, coordinators=known, notify=notes.append)
    assert known.get(url) == key
    assert os.stat(known.path).st_mode & 0o777 == 0o600
    assert key in notes[0] and "on first use" in notes[0] and known.path in notes[0]
    notes.clear()
    connect(info, coordinator_key=None, coordinators=known, notify=notes.append)
    assert not any("trusting" in note for note in notes)

    # This client trusted another key for this URL before: the one /config.js now
    # publishes is refused (the coordinator was replaced, or someone plays it).
    before = crypto.IdentityKey.generate().text
    known.put(url, before)
    with pytest.raises(AuthenticationError, match="now publishes the key") as e:
        connect(info, coordinator_key=None, coordinators=known)
    assert e.value.code == "coordinator-key-changed"
    assert key in str(e.value) and before in str(e.value)
    assert f"--coordinator-key {key}" in str(e.value)
    assert known.get(url) == before
    log = (tmp_path / "coordinator-honest.log").read_text()
    assert log.count("/api/connect") == 2     # the refused run sent no offer, no answer

    # A wrong pinned key verifies nothing and is not remembered; the right one is.
    with pytest.raises(AuthenticationError, match="not signed by the coordinator key"):
        connect(info, coordinator_key=crypto.IdentityKey.generate().text, coordinators=known)
    assert known.get(url) == before
    connect(info, coordinator_key=key, coordinators=known)
    assert known.get(url) == key
    connect(info, coordinator_key=None, coordinators=known)


def test_plain_http_to_another_machine_is_refused_before_any_request():
    """How this was shown to fail: the old client fetched http://192.0.2.1/config.js
    (and here, in a namespace without that network, failed only to reach it)."""
    from homechannel.errors import ConfigError

    with pytest.raises(ConfigError, match=r"plain http:// .* use https://"):
        asyncio.run(session.connect("http://192.0.2.1:8080", crypto.IdentityKey.generate().text,
                                   PASSWORD))


def test_wrong_password_is_a_clear_error(coordinator):
    info = coordinator()
    with pytest.raises(Forbidden, match="wrong password"):
        connect(info, password="not the password")


def test_device_token_is_kept_and_used_and_its_wrong_password_is_refused_at_home(
        coordinator, tmp_path):
    """After a sign-in the client enrols its device key (a 0600 file) and keeps the home
    server's token (mode 0600) for this coordinator URL and server; the next connect
    takes the device path, signed by that key (no coordinator challenge, no answer check
    there): the home server then checks the proof itself, and a wrong password is
    refused there."""
    info = coordinator()
    store = trust.DeviceStore(str(tmp_path / "devices.json"))
    connect(info, devices=store)
    token = store.token(info["url"], info["server"])
    assert token and token.startswith("hcdev2.")
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o600"
    [key_file] = (tmp_path / "device-keys").iterdir()
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    assert store.token("https://other.example", info["server"]) is None

    hello, _, state = connect(info, devices=store)
    assert state == "connected"
    log = (tmp_path / "coordinator-honest.log").read_text()
    assert len(re.findall(r"login accepted: session \S+ from 127.0.0.1 \(device ", log)) == 1
    assert store.token(info["url"], info["server"]) != token      # renewed on every sign-in

    with pytest.raises(Forbidden, match="bad-proof"):
        connect(info, password="not the password", devices=store)
    log = (tmp_path / "coordinator-honest.log").read_text()
    assert "login refused" in log and "the password proof does not verify" in log


def test_a_copied_token_without_its_key_falls_back_to_the_password(coordinator, tmp_path):
    """17.4/17.5: a token copied to another client (another key) cannot sign: the
    coordinator refuses its device path (bad-device, counted against the source, not the
    device), the client says so and signs in with the password in the same connect, and
    enrols its own key.  The owner's device path still works afterwards.  How this was
    shown to fail: before device keys the copy was accepted on the device path."""
    info = coordinator()
    owner = trust.DeviceStore(str(tmp_path / "owner" / "devices.json"))
    connect(info, devices=owner)
    copy = trust.DeviceStore(str(tmp_path / "thief" / "devices.json"))
    copy.keep(info["url"], info["server"], owner.token(info["url"], info["server"]))
    notes = []
    hello, _, state = connect(info, devices=copy, notify=notes.append)
    assert state == "connected"
    assert any("no longer accepts this device's token" in n for n in notes), notes
    mine = copy.token(info["url"], info["server"])
    assert mine != owner.token(info["url"], info["server"])
    assert flow.DeviceToken.verify(crypto.parse_server_id(info["server"]), mine,
                                   time.time()).key == copy.device_key(info["server"]).public_raw
    hello, _, state = connect(info, devices=owner)
    assert state == "connected"
    log = (tmp_path / "coordinator-honest.log").read_text()
    assert len(re.findall(r"login accepted: session \S+ from 127.0.0.1 \(device ", log)) == 1


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
    with pytest.raises(AuthenticationError, match="not signed by the home server"):
        connect(info)


def test_main_connect_prints_apps_and_ping(coordinator, tmp_path, capsys):
    info = coordinator()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    out = io.StringIO()
    status = cli_client.main_connect([
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
    status = cli_client.main_connect([
        "--server", f"{info['url']}/#server={info['server']}",
        "--coordinator-key", info["coordinator_key"], "--password-file", str(password_file),
        "--advertise-address", "127.0.0.1"], out=io.StringIO())
    assert status == 1
    assert "wrong password" in capsys.readouterr().err


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])


# -- ICE servers on the command line -------------------------------------------------


def _ice_args(tmp_path, *argv):
    import argparse

    from homechannel.cli.client import _common_options
    p = argparse.ArgumentParser()
    _common_options(p)
    return p.parse_args(["--server", "x", *argv])


def test_ice_server_with_turn_credentials(tmp_path):
    from homechannel.cli.client import ice_server_args
    secret = tmp_path / "turn-password"
    secret.write_text("s3cret\n")
    args = _ice_args(tmp_path, "--ice-server", "stun:stun.example:3478",
                     "--ice-server", "turn:turn.example:3478?transport=udp",
                     "--ice-username", "alice", "--ice-credential-file", str(secret))
    assert ice_server_args(args) == (
        {"urls": "stun:stun.example:3478"},
        {"urls": "turn:turn.example:3478?transport=udp", "username": "alice",
         "credential": "s3cret"})


@pytest.mark.parametrize("argv,message", [
    (["--ice-server", "turn:t.example:3478"], "needs --ice-username and --ice-credential-file"),
    (["--ice-server", "http://t.example"], "not a STUN or TURN URL"),
    (["--ice-username", "bob"], "need --ice-server"),
])
def test_bad_ice_server_arguments_are_clear_errors(tmp_path, argv, message):
    from homechannel.cli.client import ice_server_args
    from homechannel.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        ice_server_args(_ice_args(tmp_path, *argv))


def test_no_path_advice_names_the_relay_and_its_ports():
    from homechannel.client.control import no_path_advice
    text = no_path_advice(30)
    assert "TURN" in text and "[turn]" in text and "3478" in text and "--ice-server" in text


# -- the package's shape ---------------------------------------------------------------


def test_the_client_never_imports_the_cli_nor_twisted():
    """``homechannel.client`` and every module in it, imported in a fresh interpreter,
    load neither ``homechannel.cli`` (the command line is built on the client, not the
    other way round) nor Twisted (the client is pure asyncio).  How this was shown to
    fail: with ``import homechannel.cli`` added to ``client/trust.py`` (as the client
    once imported ``cli.read_secret_line``), the first list is not empty."""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import homechannel.client as c\n"
        "names = [m.name for m in pkgutil.iter_modules(c.__path__, c.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps([names, sorted(sys.modules)]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    names, loaded = json.loads(r.stdout)
    assert {"homechannel.client.session", "homechannel.client.forward"} <= set(names)
    assert [m for m in loaded if m == "homechannel.cli" or m.startswith("homechannel.cli.")] \
        == []
    assert [m for m in loaded if m == "twisted" or m.startswith("twisted.")] == []
