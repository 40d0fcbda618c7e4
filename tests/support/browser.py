"""Chromium helpers shared by the end-to-end tests and bench/: ``start_pair`` (a
coordinator and a home server running and registered), ``open_link`` (the connect
link opened and the server added), ``connect`` / ``connect_error`` (the password
typed and Connect clicked), ``open_session`` (the whole flow), ``check_node_modules``,
``CAPTURE_CHANNELS`` (an init script that records the page's datachannels), and
``CAPTURE_CSP_VIOLATIONS`` with ``csp_violations`` (what the page's
Content-Security-Policy refused)."""

import os
import tomllib
import urllib.error
import urllib.request

import pytest

from helpers import REPO, write_toml
from daemons import PASSWORD, make_pair

NODE_MODULES = os.path.join(REPO, "static", "node_modules")

# Records every Content-Security-Policy violation in the page (window.__cspViolations:
# "directive blocked-URI"), so a test that walks the UI can show the policy lets the
# client do all it does.
CAPTURE_CSP_VIOLATIONS = """
(() => {
  window.__cspViolations = [];
  document.addEventListener("securitypolicyviolation",
    (e) => window.__cspViolations.push(`${e.effectiveDirective} ${e.blockedURI}`));
})();
"""


# Refused by design: xterm.js's <style> elements (terminal.js mirrors their text into a
# constructed stylesheet, which style-src 'self' allows).
XTERM_INLINE_STYLES = "style-src-elem inline"


def csp_violations(page, expected=(XTERM_INLINE_STYLES,)):
    """What the page's policy refused since it loaded (``CAPTURE_CSP_VIOLATIONS``),
    but for the *expected* refusals."""
    return [v for v in page.evaluate("window.__cspViolations") if v not in expected]


# Captures every RTCDataChannel the page creates (window.__hcChannels), so a test
# can use the control channel without a hook in main.js.
CAPTURE_CHANNELS = """
(() => {
  const orig = RTCPeerConnection.prototype.createDataChannel;
  window.__hcChannels = [];
  RTCPeerConnection.prototype.createDataChannel = function (...args) {
    const ch = orig.apply(this, args);
    window.__hcChannels.push(ch);
    return ch;
  };
})();
"""



def start_pair(twistd, tmp_path, coordinator_udp=None, coordinator_web=None, **kw):
    """make_pair + both daemons started and registered; returns (pair, coordinator, server).

    *coordinator_udp* and *coordinator_web* update the coordinator's ``[udp]`` and
    ``[web]`` tables (e.g. a short expiry, an ssl: listen).
    """
    pair = make_pair(tmp_path, **kw)
    if coordinator_udp or coordinator_web:
        with open(pair.coordinator_config, "rb") as f:
            cfg = tomllib.load(f)
        cfg["udp"].update(coordinator_udp or {})
        cfg["web"].update(coordinator_web or {})
        write_toml(pair.coordinator_config, cfg)
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator", timeout=20)
    return pair, coordinator, server


def check_node_modules(pair):
    """The apps load xterm.js and noVNC from /node_modules/ (static/node_modules,
    served by the coordinator): fail clearly when they are not there."""
    if not os.path.isdir(NODE_MODULES):
        pytest.fail("static/node_modules is missing: run 'make npm' "
                    "(cd static && npm install --no-audit --no-fund --no-package-lock)")
    probe = pair.url + "/node_modules/@xterm/xterm/lib/xterm.mjs"
    try:
        with urllib.request.urlopen(probe, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/javascript"), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        pytest.fail(f"the coordinator does not serve {probe}: {e}")


def open_link(page, pair, name="Home"):
    """Open the connect link and add the server (the "Add this server?" card)."""
    page.goto(pair.link)
    page.get_by_role("heading", name="Add this server?").wait_for()
    card = page.locator("#add-link")
    card.get_by_label("Name").fill(name)
    card.get_by_role("button", name="Add server").click()
    page.get_by_label("Password").wait_for()


def connect(page, password=PASSWORD, timeout=30_000):
    """Type the password, click Connect and wait for the session view."""
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Connect").click()
    page.get_by_role("button", name="Disconnect").wait_for(timeout=timeout)


def connect_error(page, timeout=30_000):
    """Wait for the connect error box; return (kind, text)."""
    box = page.locator("#connect-error")
    box.wait_for(state="visible", timeout=timeout)
    return box.get_attribute("data-kind"), box.inner_text()


def open_session(page, pair, password=PASSWORD):
    """The whole flow: link, add, password, connect."""
    check_node_modules(pair)
    open_link(page, pair)
    connect(page, password)
