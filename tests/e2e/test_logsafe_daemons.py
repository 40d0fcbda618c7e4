"""Logs a peer cannot forge, end to end: real twistd daemons, the native client.

A signed-in client uploads files whose names carry a line feed and a forged
"audit: accepted login" line, CR and ESC sequences, and a lone surrogate; a
trusted reverse proxy (here a forwarder of our own) passes a forged
``X-Forwarded-For`` that becomes the coordinator's ``source``, which the
coordinator logs (a lockout), relays in the offer (the home server's accepted
login) and in a NOTICE (the home server's refused login).  Each event is one line
of each daemon's log; the forged line never stands alone; nothing is lost.
(The escaping itself: ``tests/unit/test_logsafe.py``.)"""

import asyncio
import socket
import threading

import pytest

from daemons import make_pair
from nativeclient import NativeFiles

from homechannel.client import session
from homechannel.errors import HomeChannelError

pytestmark = pytest.mark.e2e

FORGED = "audit: accepted login, source 6.6.6.6"
NAMES = ["evil\n2024-01-01T00:00:00+0000 [homechannel.audit#info] " + FORGED,
         "erase\r\x1b[2K\x1b[1A" + FORGED, "surrogate-\ud800"]
# The proxy's X-Forwarded-For: scoped IPv6 addresses (the scope is free text to
# Python's ipaddress) with a tab and C1 controls (NEL, 8-bit CSI): Twisted's HTTP
# parser refuses other C0 controls in a header value.
# (No comma: it would split the header into hops.)
SPOOF = "audit: accepted login source 6.6.6.6"
SOURCES = {"accepted": "fe80::1%\x9b2K\t" + SPOOF,
           "refused": "fe80:0:0:100::1%\x85" + SPOOF + "\x9b2K"}


class ForgingProxy:
    """A "trusted reverse proxy" that sets X-Forwarded-For to *xff* (latin-1) on each
    connection's request (urllib sends one request per connection)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.xff = ""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as up:
            head = b""
            while b"\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            line, rest = head.split(b"\r\n", 1)
            up.sendall(line + b"\r\nX-Forwarded-For: " + self.xff.encode("latin-1") +
                       b"\r\n" + rest)
            pump = threading.Thread(target=self._pump, args=(client, up), daemon=True)
            pump.start()
            self._pump(up, client)
            pump.join(5)

    @staticmethod
    def _pump(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.sock.close()


async def upload_all(pair, url):
    """Sign in through *url* and upload a small file under each of NAMES; returns the
    answers, in order."""
    async with NativeFiles(pair, url) as files:
        return [await files.upload(rid, name, b"hello") for rid, name in enumerate(NAMES, 1)]


def lines_with(output, text):
    return [line for line in output.splitlines() if text in line]


def test_peer_chosen_fields_never_forge_a_line_in_either_log(tmp_path, twistd):
    """How this was shown to fail: with ``ops/logsafe.Logger`` emitting its fields
    unescaped, the home server's output had the forged line on its own (after a tab),
    raw CR and ESC bytes, no audit line at all for the name with a lone surrogate
    (the log observer cannot write it as UTF-8).  Before X-Forwarded-For was parsed
    strictly (``ratelimit.canonical_address``), the coordinator's lockout line and the
    home server's login lines carried the proxy's controls (escaped by logsafe; raw
    without it); now they name the proxy itself."""
    pair = make_pair(tmp_path, coordinator_extra={
        "web": {"trusted_proxies": ["127.0.0.1"], "failures_before_lockout": 1}})
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator", timeout=20)
    proxy = ForgingProxy(pair.web_port)
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        proxy.xff = SOURCES["accepted"]
        answers = asyncio.run(asyncio.wait_for(upload_all(pair, url), 90))
        proxy.xff = SOURCES["refused"]

        async def wrong_password():
            await session.connect(url, pair.server_key.text, "not the password",
                                  pair.coordinator_key.text, timeout=30)

        with pytest.raises(HomeChannelError, match="password"):
            asyncio.run(asyncio.wait_for(wrong_password(), 60))
    finally:
        proxy.close()
    assert [kind for kind, _ in answers] == ["RES", "RES", "ERR"], answers
    server.wait_for_log(r"audit: refused login.*refused by the coordinator", timeout=20)
    coordinator.wait_for_log("locked out")

    for daemon in (server, coordinator):
        out = daemon.output
        assert "\r" not in out and "\x1b" not in out and "\x85" not in out
        assert "\x9b" not in out and "\ufffd" not in out
        # Twisted indents a line that was in a field with a tab; none may hold the forgery.
        assert not [line for line in out.splitlines()
                    if (FORGED[:20] in line or SPOOF[:20] in line)
                    and not line.startswith("20")], out
    out = server.output
    uploads = lines_with(out, "audit: file upload")
    assert len(uploads) == 3, out
    assert uploads[0].endswith(
        "audit: file upload 0:evil\\n2024-01-01T00:00:00+0000 [homechannel.audit#info] "
        + FORGED + ", 5 bytes, person owner")
    assert uploads[1].endswith("audit: file upload 0:erase\\r\\x1b[2K\\x1b[1A" + FORGED +
                               ", 5 bytes, person owner")
    assert "surrogate-\\ud800" in uploads[2] and "refused" in uploads[2]
    # The proxy's X-Forwarded-For values are not one IP address in its one spelling
    # (a zone, controls, a forged line), so the coordinator takes neither: each
    # request counts as the proxy's own (ratelimit.canonical_address, issue 17.13), and
    # no byte of them reaches the home server's audit lines or the lockout's key.
    accepted = lines_with(out, "audit: accepted login, session")
    assert len(accepted) == 1 and accepted[0].endswith("source 127.0.0.1, person owner"), \
        accepted
    refused = lines_with(out, "audit: refused login, session")
    assert len(refused) == 1 and "source 127.0.0.1:" in refused[0], refused
    (lockout,) = lines_with(coordinator.output, "locked out")
    assert "locked out 127.0.0.1 for" in lockout
