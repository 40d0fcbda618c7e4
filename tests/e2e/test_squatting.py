"""Local services cannot be squatted, end to end: real twistd daemons, the native
client, a real Xtigervnc on a UNIX socket, and a throwaway local user ("the squatter")
who listens where the services should be while they do not run: on the desktop's
socket path (in a directory anyone may write to) and on a TCP port >= 1024 that is
both the terminal's sshd port and a forwarded port.  Each app is refused before a
byte is sent, and says whose socket it is; the squatter receives nothing.  When the
squatter is gone and Xtigervnc (the home server's own user's) listens at that path,
the desktop app works: the channel carries the RFB greeting.  (The check itself:
``tests/unit/test_localservice.py``.)"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from daemons import PASSWORD, make_pair
from helpers import free_tcp_port
from services import local_user, xtigervnc

from homechannel.client import forward, session
from homechannel.client.control import wait_open
from homechannel.protocol import frames

pytestmark = pytest.mark.e2e

SQUATTER = r"""
import os, socket, sys, threading
port, path, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tcp = socket.create_server(("127.0.0.1", port))
unix = socket.socket(socket.AF_UNIX)
unix.bind(path)
unix.listen(8)
def serve(listener):
    while True:
        conn, _ = listener.accept()
        def read(conn=conn):
            with conn, open(log, "ab") as f:
                try:
                    while data := conn.recv(4096):
                        f.write(data)
                        f.flush()
                except OSError:
                    pass
        threading.Thread(target=read, daemon=True).start()
threading.Thread(target=serve, args=(unix,), daemon=True).start()
print("listening", flush=True)
serve(tcp)
"""


@pytest.fixture
def shared():
    """A directory anyone may create sockets in (as /tmp is), private to this test."""
    where = tempfile.mkdtemp(prefix="hc-squat-", dir="/tmp")
    os.chmod(where, 0o1777)
    yield where
    subprocess.run(["rm", "-rf", where], check=False)


def first_messages(pair, label, request=None, count=1, timeout=15):
    """Sign in, open channel *label* (send *request* as a REQ frame first, if any) and
    return the first *count* messages the home server sends on it."""
    async def main():
        pc, _, _ = await session.connect(pair.url, pair.server_key.text, PASSWORD,
                                         pair.coordinator_key.text,
                                         advertise_addresses=("127.0.0.1",), timeout=30)
        try:
            channel = pc.createDataChannel(label)
            got = asyncio.Queue()
            channel.on("message", got.put_nowait)
            await wait_open(channel, 15)
            if request is not None:
                channel.send(frames.encode(frames.REQ, 1, request))
            return [await asyncio.wait_for(got.get(), timeout) for _ in range(count)]
        finally:
            await pc.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


async def forward_open(pair, port):
    pc, _, _ = await session.connect(pair.url, pair.server_key.text, PASSWORD,
                                     pair.coordinator_key.text,
                                     advertise_addresses=("127.0.0.1",), timeout=30)
    try:
        await forward.ForwardPipe(pc, 1, port).open(15)
    finally:
        await pc.close()


def test_the_squatter_gets_nothing_and_the_real_vnc_server_works(tmp_path, twistd, shared):
    """How this was shown to fail: with ``LocalService.check`` passing every socket, the
    desktop channel opened to the squatter's socket, and the terminal sent its SSH
    version string to the squatter and then waited for sshd's (the test timed out)."""
    port, path = free_tcp_port(), os.path.join(shared, "vnc.sock")
    received = os.path.join(shared, "squatter.log")
    pair = make_pair(tmp_path, server_extra={"apps": {
        "desktop": {"endpoint": f"unix:{path}"},
        "terminal": {"port": port},
        "forward": {"enabled": True, "ports": [port]}}})
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator", timeout=20)

    with local_user("hcsq") as user:
        squatter = subprocess.Popen(
            ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
             sys.executable, "-c", SQUATTER, str(port), path, received],
            stdout=subprocess.PIPE, text=True)
        try:
            assert squatter.stdout.readline().strip() == "listening"
            [desktop] = first_messages(pair, "app:desktop:1")
            [terminal] = first_messages(pair, "app:terminal:1", {
                "op": "open", "cols": 80, "rows": 24, "username": "alice"})
            with pytest.raises(forward.ForwardRefused) as refused:
                asyncio.run(asyncio.wait_for(forward_open(pair, port), 60))
            time.sleep(0.5)     # anything sent would have reached the squatter's log by now
        finally:
            squatter.kill()
            squatter.wait(5)
        assert not os.path.exists(received) or open(received, "rb").read() == b""

        doc = json.loads(desktop)
        assert doc["op"] == "error" and doc["code"] == "owner-mismatch", doc
        assert doc["message"].startswith(
            f"refused to use the VNC server at {path}: its socket belongs to {user} (uid ")
        assert f"add \"{user}\" to apps.desktop owners" in doc["message"]
        # The terminal shows the refusal on screen (a DATA frame), then ERR.
        text = frames.decode(terminal).data.decode()
        assert f"refused to use sshd at 127.0.0.1:{port}: its socket belongs to {user}" in text
        assert f"refused to use local port {port} at 127.0.0.1:{port}: its socket belongs " \
               f"to {user}" in str(refused.value)
        assert "(owner-mismatch)" in str(refused.value)
    assert server.output.count("its socket belongs to hcsq") == 3, server.output

    # The real VNC server, the home server's own user's, at the same path: it works.
    os.unlink(path)
    with xtigervnc(unix_path=path):
        status, banner = first_messages(pair, "app:desktop:1", count=2)
    assert json.loads(status) == {"op": "open"}
    assert bytes(banner) == b"RFB 003.008\n"
