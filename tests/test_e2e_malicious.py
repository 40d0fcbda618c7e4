"""A malicious coordinator cannot get between the browser and the home server.

DESIGN.md, "End to end": the offer carries a password proof over the client's
DTLS fingerprint (checked by the home server) and the answer is signed by the
home server over both fingerprints and the answer SDP (checked by the browser
and by the native client).  Here the coordinator is the real one
(``homechannel.coordinator.tap.makeService``: Klein API, UDP registry and
relay) with a tampering hook (tests/evil_coordinator.py) that rewrites the SDP
it relays; the home server is a real ``twistd homechannel-server``; the
clients are real Chromium and ``homechannel.client.connect``.

Each ``honest`` case is the control: the same harness, relaying unchanged,
connects.  So a refusal below is caused by the rewrite, and removing the check
that catches it makes the test fail.  Verified in scratch copies of the tree:
without the home server's proof check (``crypto.check_proof`` in
``server/peer.py``) the two offer tests fail (the server answers; the browser
then refuses the signature instead); without ``checkAnswer`` in
``static/js/main.js`` the two browser answer tests fail (a timeout, not a
refusal); without the signature check in ``client.connect`` the two native
answer tests fail (with the candidates moved it even connects, through
peer-reflexive candidates)."""

import asyncio
import os
import re
import sys
import time

import pytest

from conftest import Twistd
from daemons import PASSWORD, make_pair
from test_e2e_browser import CAPTURE_CHANNELS, connect_error, open_link

from homechannel import client
from homechannel.errors import AuthenticationError, Forbidden

HERE = os.path.dirname(os.path.abspath(__file__))
EVIL = os.path.join(HERE, "evil_coordinator.py")

REFUSED_PROOF = r"login refused: session (\S+): the password proof does not verify"


@pytest.fixture
def evil_pair(tmp_path, twistd):
    """start(mode) -> (pair, evil coordinator, home server), all running and registered."""
    started = []

    def start(mode):
        pair = make_pair(tmp_path)
        evil = Twistd("evil-coordinator", pair.coordinator_config)
        evil.cmd = [sys.executable, EVIL, mode, "--config", pair.coordinator_config]
        evil.start()
        started.append(evil)
        evil.wait_for_log("evil coordinator running, mode " + mode)
        evil.wait_for_log("coordinator: UDP")
        server = twistd("homechannel-server", pair.server_config)
        server.wait_for_log("registered with coordinator", timeout=20)
        return pair, evil, server

    yield start
    for t in started:
        status = t.stop()
        print(f"--- evil coordinator (exit status {status}) ---\n{t.output}")


def never_connected(page, server, seconds=1.0):
    """The browser shows no session and opened no channel; the server saw no connection."""
    time.sleep(seconds)
    # (index.html has "Connected" in the hidden #session card: it must stay hidden.)
    assert page.locator("#session").is_hidden()
    assert not page.locator("#session-status").is_visible()
    assert not page.get_by_role("button", name="Disconnect").is_visible()
    assert page.evaluate("window.__hcChannels.every((c) => c.readyState !== 'open')")
    assert not re.search(r"session \S+ connected", server.output)


# -- Chromium ---------------------------------------------------------------------------


def test_browser_control_honest_relay_connects(evil_pair, chromium_page):
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    pair, evil, server = evil_pair("honest")
    open_link(page, pair)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    page.get_by_role("button", name="Disconnect").wait_for(timeout=30_000)
    assert page.locator("#session-status").inner_text() == "Connected"
    server.wait_for_log(r"session \S+ connected", timeout=10)
    assert "evil: rewrote" not in evil.output


def test_browser_offer_fingerprint_rewritten_is_refused_by_the_home_server(
        evil_pair, chromium_page):
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    pair, evil, server = evil_pair("offer-fingerprint")
    open_link(page, pair)
    page.get_by_label("Password").fill(PASSWORD)   # the right password
    page.get_by_role("button", name="Connect").click()
    kind, text = connect_error(page)
    tampered = evil.wait_for_log(r"evil: rewrote 1 fingerprint\(s\) in the offer of session "
                                 r"(\S+)").group(1)
    # The home server refused it, and logged why.
    refused = server.wait_for_log(REFUSED_PROOF, timeout=10).group(1)
    assert refused == tampered
    assert "login accepted" not in server.output
    # The browser says so.
    assert kind == "bad-proof"
    assert "The home server refused the connection" in text
    never_connected(page, server)


@pytest.mark.parametrize("mode,what", [("answer-fingerprint", "fingerprint"),
                                       ("answer-candidate", "candidate")])
def test_browser_answer_rewritten_is_refused_by_the_browser(evil_pair, chromium_page, mode,
                                                            what):
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    pair, evil, server = evil_pair(mode)
    open_link(page, pair)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    kind, text = connect_error(page)
    tampered = evil.wait_for_log(rf"evil: rewrote [1-9]\d* {what}\(s\) in the answer of "
                                 r"session (\S+)").group(1)
    # The home server accepted the (untouched) offer and signed its answer ...
    server.wait_for_log(rf"login accepted: session {re.escape(tampered)} answered")
    # ... and the browser refused the altered answer before using it.
    assert kind == "server-signature"
    assert "The answer is not signed by the home server you added" in text
    never_connected(page, server)


# -- the native client ---------------------------------------------------------------------


def python_connect(pair):
    async def main():
        pc, control, hello = await client.connect(
            pair.url, pair.server_key.text, PASSWORD, pair.coordinator_key.text,
            advertise_addresses=("127.0.0.1",), timeout=30, connect_timeout=15)
        try:
            return hello, pc.connectionState
        finally:
            await pc.close()

    return asyncio.run(asyncio.wait_for(main(), 90))


def test_python_client_control_honest_relay_connects(evil_pair):
    pair, evil, server = evil_pair("honest")
    hello, state = python_connect(pair)
    assert hello["server"] == pair.server_key.text and state == "connected"
    server.wait_for_log(r"session \S+ connected", timeout=10)


def test_python_client_offer_fingerprint_rewritten_is_refused(evil_pair):
    pair, evil, server = evil_pair("offer-fingerprint")
    with pytest.raises(Forbidden, match=r"bad-proof"):
        python_connect(pair)
    tampered = evil.wait_for_log(r"evil: rewrote 1 fingerprint\(s\) in the offer of session "
                                 r"(\S+)").group(1)
    assert server.wait_for_log(REFUSED_PROOF, timeout=10).group(1) == tampered
    assert "login accepted" not in server.output


@pytest.mark.parametrize("mode,what", [("answer-fingerprint", "fingerprint"),
                                       ("answer-candidate", "candidate")])
def test_python_client_answer_rewritten_is_refused(evil_pair, mode, what):
    pair, evil, server = evil_pair(mode)
    with pytest.raises(AuthenticationError,
                       match=rf"not signed by home server {re.escape(pair.server_key.text)}.*"
                             r"altered on the way"):
        python_connect(pair)
    evil.wait_for_log(rf"evil: rewrote [1-9]\d* {what}\(s\) in the answer")
    server.wait_for_log(r"login accepted: session \S+ answered")
    time.sleep(1.0)
    assert not re.search(r"session \S+ connected", server.output)
