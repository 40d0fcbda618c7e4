"""A malicious coordinator cannot get between the client and the home server.

DESIGN.md "End to end" and docs/security.md: the offer carries a password
proof over the SHA-256 of the exact offer SDP, and the home server accepts only
one datachannel media section with exactly one sha-256 fingerprint (DTLS stacks
check the fingerprints of the section they use, in any hash and any case); the
answer is signed by the home server over the session, the challenge, the offer
hash, both fingerprints, the time and the answer SDP.  Here the coordinator is
the real one (``homechannel.coordinator.tap.makeService``: Klein API, broker,
UDP registry and relay) with tampering hooks (tests/support/evil_coordinator.py)
switched per attempt through a mode file; the home server is a real ``twistd
homechannel-server``; the clients are real Chromium and
``homechannel.client.session.connect``.

Each rewrite is one row of the matrix, tried by both clients:

* **offer rewrites** (:data:`evil_coordinator.REWRITES`): a second media
  section before or after the real one, extra fingerprints (sha-1/384/512,
  upper- and mixed-case attributes, session level), a replaced fingerprint, a
  BUNDLE group change, an ``a=setup`` flip, swapped ICE credentials, moved or
  injected candidates.  The home server refuses every one before it consumes
  the challenge or creates a peer connection.  Rewrites that break the shape are
  refused as a bad offer (the shape check, ``protocol.sdp.fingerprint`` in
  ``server/peer.py``); the others as a proof that does not verify (the proof
  binds the offer hash, ``crypto.check_proof``).  The test asserts the
  specific reason per row, so each check is needed: shown in a scratch copy of
  the tree, with the shape check replaced by "the first sha-256 line" the
  shape rows fail (they are refused for the proof instead), and with the proof
  check removed the shape-keeping rows fail (the home server answers them).
* **answer rewrites**: the same rewrites on the home server's answer.  The
  home server signed the untouched answer; Chromium (``checkAnswer`` in
  ``static/js/connect.js``) and the native client (``connect.check_answer``)
  refuse every one before using it: with the browser's ``checkAnswer``
  replaced by reading the fingerprint line, the first row fails (the browser
  applies the rewritten answer and ends in "ICE failed" instead of refusing
  with ``server-signature``).

``honest`` is the control in each test: the same harness, relaying unchanged,
connects, so a refusal below is caused by the rewrite.
"""

import os
import re
import sys
import time

import tomllib

import pytest

import evil_coordinator
from helpers import SUPPORT, Twistd, write_toml
from daemons import PASSWORD, make_pair
from browser import CAPTURE_CHANNELS, connect_error, open_link
from nativeclient import python_connect

from homechannel.errors import AuthenticationError, HomeChannelError

EVIL = os.path.join(SUPPORT, "evil_coordinator.py")

SHAPE_KEEPING = {name for name, (_, keeps) in evil_coordinator.REWRITES.items() if keeps}


@pytest.fixture
def evil(tmp_path, twistd):
    """(pair, evil coordinator, home server, set_mode), all running and registered.

    Limits are raised so the matrix's many attempts from one address are not
    rate-limited or locked out (that is tested elsewhere), and the home server
    keeps the sessions the clients abandon only briefly."""
    pair = make_pair(tmp_path, server_extra={"webrtc": {"max_sessions": 64,
                                                        "connect_timeout": 8.0}})
    with open(pair.coordinator_config, "rb") as f:
        cfg = tomllib.load(f)
    cfg["web"].update(per_ip_per_minute=10_000, per_server_per_minute=10_000,
                      per_server_per_day=100_000, per_device_per_minute=10_000,
                      failures_before_lockout=10_000)
    write_toml(pair.coordinator_config, cfg)
    mode_file = tmp_path / "evil-mode"
    mode_file.write_text("honest")
    coordinator = Twistd("evil-coordinator", pair.coordinator_config)
    coordinator.cmd = [sys.executable, EVIL, "--mode-file", str(mode_file),
                       "--config", pair.coordinator_config]
    coordinator.start()
    try:
        coordinator.wait_for_log("evil coordinator running")
        coordinator.wait_for_log("coordinator: UDP")
        server = twistd("homechannel-server", pair.server_config)
        server.wait_for_log("registered with coordinator", timeout=20)
        yield pair, coordinator, server, mode_file.write_text
    finally:
        status = coordinator.stop()
        print(f"--- evil coordinator (exit status {status}) ---\n{coordinator.output}")


def browser_attempt(page):
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    return connect_error(page)


def tampered_session(coordinator, since, mode, where):
    return coordinator.wait_for_log(
        rf"evil: rewrote the {where} with {re.escape(mode)} in session (\S+)",
        since=since).group(1)


def assert_refused_at_home(server, sid, rewrite, device=False):
    """The home server refused session *sid* for the reason this rewrite calls for: on
    the device path (*device*) the device key's signature over the offer breaks first."""
    if rewrite in SHAPE_KEEPING and device:
        why = (rf"login refused: session {re.escape(sid)} from \S+: device token refused: "
               r"the device's signature does not verify")
    elif rewrite in SHAPE_KEEPING:
        why = rf"login refused: session {re.escape(sid)} from \S+: the password proof does not"
    else:
        why = rf"login refused: session {re.escape(sid)}: bad offer: the offer SDP"
    server.wait_for_log(why, timeout=10)
    assert not re.search(rf"login accepted: session {re.escape(sid)}\b", server.output)
    assert not re.search(rf"session {re.escape(sid)} connected", server.output)


def test_offer_rewrites_are_refused_by_the_home_server(evil, chromium_page):
    pair, coordinator, server, set_mode = evil
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    # Control: both clients connect through the honest relay.
    open_link(page, pair)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    page.get_by_role("button", name="Disconnect").wait_for(timeout=30_000)
    page.get_by_role("button", name="Disconnect").click()
    assert python_connect(pair)[1] == "connected"
    assert len(re.findall(r"login accepted", server.output)) == 2

    for mode in evil_coordinator.OFFER_MODES:
        rewrite = mode.split("-", 1)[1]
        set_mode(mode)
        # The browser (its device token from the control connect: the device path; once
        # refused, it tries the password path by itself, and enrols again on success).
        # Chromium in a loopback-only namespace offers no candidates (it connects
        # through peer-reflexive ones), so there are none to move in its offer.
        if rewrite != "move-candidates":
            since = coordinator.mark()
            kind, text = browser_attempt(page)
            sid = tampered_session(coordinator, since, mode, "offer")
            assert_refused_at_home(server, sid, rewrite, device=True)
            if rewrite in SHAPE_KEEPING:
                # The device path refused (bad-device): the browser tried the password path
                # by itself, which the coordinator rewrote too.
                again = coordinator.wait_for_log(
                    rf"evil: rewrote the offer with {re.escape(mode)} in session "
                    rf"(?!{re.escape(sid)})(\S+)", since=since).group(1)
                assert_refused_at_home(server, again, rewrite)
            assert kind == ("bad-proof" if rewrite in SHAPE_KEEPING else "bad-offer"), (mode, text)
        # The native client (no device token: the coordinator's challenge pool).
        since = coordinator.mark()
        expected = "bad-proof" if rewrite in SHAPE_KEEPING else "bad-offer"
        with pytest.raises(HomeChannelError) as refused:
            python_connect(pair)
        assert refused.value.code == expected, (mode, refused.value)
        sid = tampered_session(coordinator, since, mode, "offer")
        assert_refused_at_home(server, sid, rewrite)
    # No peer connection was ever made for a rewritten offer.
    assert len(re.findall(r"login accepted", server.output)) == 2
    assert page.evaluate("window.__hcChannels.filter((c) => c.readyState === 'open').length") == 0


def test_answer_rewrites_are_refused_by_chromium_and_the_native_client(evil, chromium_page):
    pair, coordinator, server, set_mode = evil
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    open_link(page, pair)
    for mode in evil_coordinator.ANSWER_MODES:
        set_mode(mode)
        since, server_since = coordinator.mark(), server.mark()
        kind, text = browser_attempt(page)
        sid = tampered_session(coordinator, since, mode, "answer")
        # The home server accepted the untouched offer and signed its answer ...
        server.wait_for_log(rf"login accepted: session {re.escape(sid)} from", since=server_since)
        # ... and the browser refused the altered answer before using it.
        assert kind == "server-signature", (mode, text)
        assert "The answer is not signed by the home server you added" in text

        since = coordinator.mark()
        with pytest.raises(AuthenticationError, match=r"not signed by the home server you added"
                                                      r".*altered on the way"):
            python_connect(pair)
        sid2 = tampered_session(coordinator, since, mode, "answer")
        server.wait_for_log(rf"login accepted: session {re.escape(sid2)} from")
    time.sleep(1.0)
    # Nothing ever connected, and no channel opened in the browser.
    assert not re.search(r"session \S+ connected", server.output)
    assert page.evaluate("window.__hcChannels.every((c) => c.readyState !== 'open')")
    assert page.locator("#session").is_hidden()

    # Control: the same harness connects once the coordinator is honest.
    set_mode("honest")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    page.get_by_role("button", name="Disconnect").wait_for(timeout=30_000)
    assert python_connect(pair)[1] == "connected"


FAKE_REMOTE_CERTIFICATE = """
(() => {
  const orig = RTCPeerConnection.prototype.getStats;
  RTCPeerConnection.prototype.getStats = async function (...args) {
    const stats = await orig.apply(this, args);
    const out = new Map();
    for (const [id, r] of stats) {
      const copy = { ...r };
      if (r.type === "certificate") copy.fingerprint = "5A:" + String(r.fingerprint).slice(3);
      out.set(id, copy);
    }
    return out;
  };
})();
"""


def test_clients_refuse_a_dtls_certificate_other_than_the_signed_one(evil, chromium_page,
                                                                     monkeypatch):
    """After DTLS, each client compares the certificate the home server presented with
    the fingerprint the home server signed, and closes the connection with a visible
    error on a mismatch.  DTLS itself already checks the certificate against the answer
    SDP, so the mismatch is staged on the client: Chromium's getStats() is made to report
    another remote certificate, and the native client's reading of the peer certificate
    (``webrtc.remote_fingerprint``) is replaced.  Without ``checkRemoteCertificate`` in
    ``static/js/main.js`` / the check in ``client.session._attempt`` the clients connect and
    this fails."""
    pair, coordinator, server, set_mode = evil
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    page.add_init_script(FAKE_REMOTE_CERTIFICATE)
    open_link(page, pair)
    kind, text = browser_attempt(page)
    assert kind == "server-certificate", text
    assert "presented a different encryption certificate" in text
    assert page.locator("#session").is_hidden()
    page.wait_for_function("window.__hcChannels.every((c) => c.readyState !== 'open')")

    from homechannel.rtc import webrtc
    monkeypatch.setattr(webrtc, "remote_fingerprint", lambda pc: ":".join(["5A"] * 32))
    with pytest.raises(AuthenticationError, match="presented a DTLS certificate") as refused:
        python_connect(pair)
    assert refused.value.code == "server-certificate"
