"""The connect flow end to end in Chromium: real twistd coordinator and home
server in the loopback-only namespace; the user opens the connect link, adds
the server, types the password and clicks Connect.

Also the shared browser helpers for tests/test_e2e_apps.py and bench/
(``start_pair``, ``open_link``, ``connect``, ``open_session``)."""

import json
import os
import re
import time
import tomllib
import urllib.error
import urllib.request

import pytest

from helpers import REPO, write_toml
from daemons import PASSWORD, kill, make_pair

NODE_MODULES = os.path.join(REPO, "static", "node_modules")

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


# -- shared helpers ----------------------------------------------------------------


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


# -- the tests --------------------------------------------------------------------------


def test_connect_and_control_round_trip(tmp_path, twistd, chromium_page):
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    pair, coordinator, server = start_pair(twistd, tmp_path)
    open_link(page, pair)
    connect(page)
    assert page.locator("#session-status").inner_text() == "Connected"
    m = server.wait_for_log(r"session (\S+) connected", timeout=10)
    # The control channel answers a ping (main.js already got its hello: the
    # session view appears only after it).
    pong = page.evaluate("""async () => {
      const control = window.__hcChannels.find((c) => c.label === "control");
      if (!control || control.readyState !== "open") return {error: "no open control channel"};
      return await new Promise((resolve) => {
        control.addEventListener("message", (e) => {
          const msg = JSON.parse(e.data);
          if (msg.op === "pong") resolve(msg);
        });
        control.send(JSON.stringify({op: "ping", id: 4242}));
        setTimeout(() => resolve({error: "no pong"}), 5000);
      });
    }""")
    assert pong == {"op": "pong", "id": 4242}
    # The apps the server offers are tabs.
    for tab in ("Files", "Terminal", "Desktop"):
        page.get_by_role("tab", name=tab).wait_for()
    page.get_by_role("button", name="Disconnect").click()
    server.wait_for_log(rf"session {m.group(1)} closed", timeout=15)
    page.get_by_role("button", name="Connect").wait_for()


def test_wrong_password_opens_nothing(tmp_path, twistd, chromium_page):
    page = chromium_page
    page.add_init_script(CAPTURE_CHANNELS)
    pair, coordinator, server = start_pair(twistd, tmp_path)
    open_link(page, pair)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Connect").click()
    kind, text = connect_error(page)
    assert kind == "wrong-password"
    assert "Wrong password" in text
    assert page.locator("#session").is_hidden()
    assert page.evaluate("window.__hcChannels.every((c) => c.readyState !== 'open')")
    time.sleep(0.5)
    assert not re.search(r"session \S+ connected", server.output)
    assert "login accepted" not in server.output


def test_offline_server(tmp_path, twistd, chromium_page):
    page = chromium_page
    pair, coordinator, server = start_pair(
        twistd, tmp_path, coordinator_udp={"expiry": 2.0, "sweep_interval": 0.5},
        keepalive={"interval": 0.5, "jitter": 0.1})
    open_link(page, pair)
    server.stop()
    # The coordinator forgets the silent server after the expiry.
    deadline = time.monotonic() + 15
    lookup = pair.url + "/api/servers/" + pair.server_key.text
    while json.loads(urllib.request.urlopen(lookup, timeout=5).read())["online"]:
        assert time.monotonic() < deadline, "the coordinator did not expire the stopped server"
        time.sleep(0.3)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    kind, text = connect_error(page)
    assert kind == "offline"
    assert "offline" in text
    assert page.locator("#session").is_hidden()


def test_never_registered_server_is_offline(tmp_path, twistd, chromium_page):
    from homechannel import crypto

    page = chromium_page
    pair, coordinator, server = start_pair(twistd, tmp_path)
    other, _ = crypto.IdentityKey.load_or_create(str(tmp_path / "other.key"))
    page.goto(f"{pair.url}/#server={other.text}")
    page.locator("#add-link").get_by_role("button", name="Add server").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    kind, text = connect_error(page)
    assert kind == "offline"


def test_coordinator_restart_recovers_on_retry(tmp_path, twistd, chromium_page):
    page = chromium_page
    pair, coordinator, server = start_pair(twistd, tmp_path,
                                           keepalive={"interval": 1.0, "jitter": 0.1})
    open_link(page, pair)
    kill(coordinator)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Connect").click()
    kind, text = connect_error(page)
    assert kind == "network", (kind, text)
    mark = server.mark()
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("registered " + pair.server_key.text[:12], timeout=20)
    server.wait_for_log("registered with coordinator", since=mark, timeout=10)
    connect(page)  # the same page, the same password field: a retry
    server.wait_for_log(r"session \S+ connected", since=mark, timeout=10)
    assert page.locator("#session-status").inner_text() == "Connected"


# -- the client hosted on another origin (docs/security.md) ----------------------------


def serve_directory(directory):
    """A plain HTTP server for *directory* on 127.0.0.1 (a thread); returns (url, stop)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                              ".js": "text/javascript", ".mjs": "text/javascript"}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()

    return f"http://127.0.0.1:{httpd.server_address[1]}", stop


def test_client_hosted_on_another_origin_connects_through_the_allowed_origin(
        tmp_path, twistd, chromium_page):
    """A copy of static/ served by the owner (another origin, its own config.js pinning the
    coordinator key and naming the coordinator URL) connects through the coordinator's API,
    which allows that origin (web.cors_origins); from an origin not allowed the browser
    cannot use the API at all."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(os.path.join(REPO, "static"), site,
                    ignore=shutil.ignore_patterns("node_modules"))
    url, stop = serve_directory(str(site))
    try:
        pair = make_pair(tmp_path / "pair")
        with open(pair.coordinator_config, "rb") as f:
            cfg = tomllib.load(f)
        cfg["web"]["cors_origins"] = [url]
        write_toml(pair.coordinator_config, cfg)
        (site / "config.js").write_text(
            f'export const coordinatorKey = "{pair.coordinator_key.text}";\n'
            f'export const coordinatorUrl = "{pair.url}";\n'
            'export const iceServers = [];\n')
        coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
        coordinator.wait_for_log("coordinator: UDP")
        server = twistd("homechannel-server", pair.server_config)
        server.wait_for_log("registered with coordinator", timeout=20)

        page = chromium_page
        page.goto(f"{url}/#server={pair.server_key.text}")
        page.get_by_role("heading", name="Add this server?").wait_for()
        page.locator("#add-link").get_by_role("button", name="Add server").click()
        connect(page)
        server.wait_for_log(r"session \S+ connected", timeout=10)

        # The same page from an origin the coordinator does not allow.
        url2, stop2 = serve_directory(str(site))
        try:
            page2 = page.context.new_page()
            page2.goto(f"{url2}/#server={pair.server_key.text}")
            page2.get_by_role("heading", name="Add this server?").wait_for()
            page2.locator("#add-link").get_by_role("button", name="Add server").click()
            page2.get_by_label("Password").fill(PASSWORD)
            page2.get_by_role("button", name="Connect").click()
            kind, _ = connect_error(page2)
            assert kind == "network"
        finally:
            stop2()
    finally:
        stop()
