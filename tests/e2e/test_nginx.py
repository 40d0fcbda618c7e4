"""HTTPS behind nginx, with the example configuration conf/nginx/homechannel.conf
as shipped (only names, ports and paths substituted): nginx terminates TLS with
a certificate from a local test CA, the coordinator listens on loopback tcp
with ``web.trusted_proxies``, Chromium connects through nginx, and the
coordinator sees the browser's address from X-Forwarded-For (the browser comes
from ::1, nginx from 127.0.0.1).  The slowloris test adds the example firewall,
conf/nftables/homechannel.nft (its ports substituted), in the test's namespace."""

import base64
import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import time

import pytest

from helpers import CHROMIUM_ARGS, REPO, free_tcp_port, require_tool
from daemons import PASSWORD
from browser import start_pair
from testca import TestCA
from slowloris import Slowloris, assert_served_during, timed_get

NAME = "coordinator.test"
# As an operator sizes it (conf/nginx/homechannel.conf): well above what one source may
# hold (64 connections, each with one to the coordinator), scaled down for a test.
WORKER_CONNECTIONS = 128
ATTACK = 400        # slow connections from one address: well over WORKER_CONNECTIONS


def render(example, *, https_port, http_port, upstream, certs, webroot):
    text = example
    subs = [
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen [::]:443 ssl;", f"listen [::1]:{https_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", f"listen [::1]:{http_port};"),
        ("/etc/letsencrypt/live/hc.example.org/", certs + "/"),
        ("hc.example.org", NAME),
        ("http://127.0.0.1:8080", f"http://127.0.0.1:{upstream}"),
        ("/var/www/html", webroot),
    ]
    for old, new in subs:
        assert old in text, f"the example no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


@pytest.fixture
def nginx(tmp_path):
    exe = require_tool("/usr/sbin/nginx", "nginx")
    procs = []

    def start(site_conf):
        prefix = tmp_path / "nginx"
        prefix.mkdir(exist_ok=True)
        (prefix / "site.conf").write_text(site_conf)
        (prefix / "nginx.conf").write_text(f"""
user root;
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections {WORKER_CONNECTIONS}; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include /etc/nginx/mime.types;
    include {prefix}/site.conf;
}}
""")
        check = subprocess.run([exe, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                "-e", "stderr"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        p = subprocess.Popen([exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                              "-e", "stderr"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return prefix

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        print("--- nginx ---\n" + p.stdout.read().decode("utf-8", "replace"))


@pytest.fixture
def firewall():
    """``load(https_port, http_port)``: conf/nftables/homechannel.nft as shipped, with
    its ports replaced, in this test's network namespace; removed at teardown."""
    exe = require_tool("nft", "nftables")
    loaded = []

    def load(https_port, http_port):
        text = open(os.path.join(REPO, "conf", "nftables", "homechannel.nft")).read()
        assert "tcp dport { 80, 443 }" in text, "the example changed: update this test"
        text = text.replace("tcp dport { 80, 443 }", f"tcp dport {{ {http_port}, {https_port} }}")
        subprocess.run([exe, "-f", "-"], input=text, text=True, check=True, timeout=30)
        loaded.append(True)

    yield load
    if loaded:
        subprocess.run([exe, "delete", "table", "inet", "homechannel"], timeout=30)


def spki_hash(cert):
    from cryptography.hazmat.primitives import serialization
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def behind_example_nginx(tmp_path, twistd, nginx, firewall=None):
    """The coordinator (and a home server) on loopback tcp, trusting nginx (127.0.0.1)
    only, behind nginx with the example as shipped (and the example firewall, given
    the *firewall* fixture); returns (pair, coordinator, server, the HTTPS port, the
    test CA, the leaf certificate)."""
    https_port, http_port = free_tcp_port(), free_tcp_port()
    if firewall is not None:
        firewall(https_port, http_port)
    pair, coordinator, server = start_pair(twistd, tmp_path, coordinator_web={
        "public_url": f"https://{NAME}:{https_port}", "trusted_proxies": ["127.0.0.1"]})

    ca = TestCA()
    key_pem, chain_pem, leaf = ca.issue([NAME], serial=77)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "privkey.pem").write_bytes(key_pem)
    (certs / "fullchain.pem").write_bytes(chain_pem)
    webroot = tmp_path / "www"
    webroot.mkdir()
    example = open(os.path.join(REPO, "conf", "nginx", "homechannel.conf")).read()
    nginx(render(example, https_port=https_port, http_port=http_port,
                 upstream=pair.web_port, certs=str(certs), webroot=str(webroot)))
    deadline = time.monotonic() + 15
    while True:     # nginx is listening
        try:
            socket.create_connection(("127.0.0.1", https_port), 1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
    return pair, coordinator, server, https_port, ca, leaf


def test_chromium_through_nginx_with_trusted_proxies(tmp_path, twistd, nginx):
    path = require_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    pair, coordinator, server, https_port, _, leaf = behind_example_nginx(tmp_path, twistd,
                                                                         nginx)

    link = f"https://{NAME}:{https_port}/#server={pair.server_key.text}"
    args = CHROMIUM_ARGS + [
        f"--host-resolver-rules=MAP {NAME} [::1]",
        # Trust exactly the test certificate (Chromium has no test CA in its store).
        f"--ignore-certificate-errors-spki-list={spki_hash(leaf)}",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=args)
        try:
            page = browser.new_page()
            page.on("console", lambda msg: print(f"[browser {msg.type}] {msg.text}"))
            page.goto(link)
            assert page.evaluate("window.isSecureContext") is True
            assert page.evaluate("location.protocol") == "https:"
            page.get_by_role("heading", name="Add this server?").wait_for()
            card = page.locator("#add-link")
            card.get_by_label("Name").fill("Home")
            card.get_by_role("button", name="Add server").click()
            # A wrong password first: the coordinator reports the failed login to the
            # home server with the source it saw, which must be the browser's (::1).
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Connect").click()
            page.locator("#connect-error").wait_for(state="visible", timeout=30_000)
            m = server.wait_for_log(r"audit: refused login, session -, source (\S+):", timeout=15)
            assert m.group(1) == "::1", m.group(0)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Connect").click()
            page.get_by_role("button", name="Disconnect").wait_for(timeout=60_000)
            server.wait_for_log(r"session \S+ connected", timeout=15)
        finally:
            browser.close()
    access = (tmp_path / "nginx" / "access.log").read_text()
    assert re.search(r"^::1 .*POST /api/connect", access, re.M), access


def _tls(https_port, ca):
    """A TLS connection to nginx on 127.0.0.1, checked against the test CA."""
    context = ssl.create_default_context(cadata=ca.root_pem.decode())
    sock = socket.create_connection(("127.0.0.1", https_port), timeout=30)
    return context.wrap_socket(sock, server_hostname=NAME)


class _Client(http.client.HTTPSConnection):
    """Keep-alive HTTPS to nginx on 127.0.0.1 (as coordinator.test), test CA checked."""

    def __init__(self, https_port, ca):
        super().__init__(NAME, https_port, timeout=30)
        self.ca = ca

    def connect(self):
        self.sock = _tls(self.port, self.ca)

    def get(self, path):
        """(status, whether the coordinator signed the response)."""
        self.request("GET", path)
        response = self.getresponse()
        response.read()
        return response.status, response.getheader("X-HomeChannel-Signature") is not None


def test_example_limits_requests_in_progress_and_api_rate_per_client(tmp_path, twistd, nginx):
    """The coordinator exempts its trusted proxy from the per-source connection cap,
    so the example enforces it: with 64 requests in progress from one address (POSTs
    whose bodies have not arrived) the 65th is refused with nginx's 429, and served
    again once one ends; and a burst of API requests beyond 40 is refused by nginx
    (429 without the coordinator's signature) before the coordinator sees it, while
    pages are not rate-limited.  How this was shown to fail: with the example before
    the limits, the 65th request was served (200); with only the limit_req line taken
    out, the lookups went on until the coordinator's own (signed) 429 at the 61st."""
    pair, coordinator, server, https_port, ca, _ = behind_example_nginx(tmp_path, twistd,
                                                                       nginx)
    held = []
    try:
        for _ in range(64):
            conn = _tls(https_port, ca)
            conn.sendall(f"POST /held HTTP/1.1\r\nHost: {NAME}\r\nContent-Type: "
                         "application/json\r\nContent-Length: 100\r\n\r\n".encode())
            held.append(conn)
        deadline = time.monotonic() + 10
        while True:     # refused once nginx has read every held request's head
            status = _Client(https_port, ca).get("/healthz")[0]
            if status == 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 429
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            status = _Client(https_port, ca).get("/healthz")[0]
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
    finally:
        for conn in held:
            conn.close()

    time.sleep(4.5)     # the burst allowance refills (10 a second)
    conn = _Client(https_port, ca)
    pages = [conn.get("/healthz")[0] for _ in range(100)]
    start = time.monotonic()
    got = []
    while (429, False) not in got and len(got) < 200:
        got.append(conn.get(f"/api/servers/{pair.server_key.text}"))
    took = time.monotonic() - start
    conn.close()
    assert pages == [200] * 100      # pages are not rate-limited
    assert got[-1] == (429, False), got      # nginx's refusal, not the coordinator's
    passed = got[:-1]
    assert passed == [(200, True)] * len(passed), got
    # the first and a burst of 40, plus what 10 a second refilled meanwhile
    assert 41 <= len(passed) <= 41 + 10 * took + 2, (len(passed), took)


def test_a_slowloris_from_one_address_does_not_stop_another(tmp_path, twistd, nginx,
                                                            firewall):
    """400 TLS connections from 127.0.0.2, each sending a request head a byte at a
    time (and opened again whenever one is cut or refused), against nginx with 256
    worker connections: 127.0.0.3 is still answered at once, because the example
    firewall lets one source hold 64 connections, counted from the SYN (which nginx's
    limit_conn cannot: it counts only requests whose head has been read), and nginx
    cuts each slow head after 5 s (``client_header_timeout``).  How this was shown to
    fail: without the firewall (the site file alone, before or after its timeouts),
    the attack held every worker connection and 127.0.0.3 got no answer; with the
    firewall but the example's timeouts before (nginx's 60 s), the slow heads were
    held as long as they trickled."""
    pair, coordinator, server, https_port, ca, _ = behind_example_nginx(
        tmp_path, twistd, nginx, firewall)
    victim_tls = ssl.create_default_context(cadata=ca.root_pem.decode())
    attack_tls = ssl.create_default_context()
    attack_tls.check_hostname = False
    attack_tls.verify_mode = ssl.CERT_NONE
    attack = Slowloris(https_port, "127.0.0.2", ATTACK, tls=attack_tls,
                       server_hostname=NAME).start()
    try:
        attack.wait_in_full_swing()
        assert_served_during(attack, https_port, "127.0.0.3", tls=victim_tls,
                             server_hostname=NAME)
        assert attack.holding <= 64, attack.holding
        # Slow heads are cut, not held: none lives past the 5 s head timeout (+ slack).
        time.sleep(7.0)
        assert attack.cut > 0 and attack.held_now() < 7.0, (attack.cut, attack.held_now())
        assert timed_get(https_port, "127.0.0.3", tls=victim_tls,
                         server_hostname=NAME)[0] == 200
    finally:
        attack.stop()
