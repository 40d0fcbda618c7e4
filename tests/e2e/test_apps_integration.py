"""AppHost over real aiortc datachannels (client and server in one loop).

Runs in a loopback-only namespace (tests/netns-run); 127.0.0.1 is advertised
as an ICE host candidate through homechannel.rtc.webrtc.  A private asyncio
reactor (not installed globally) carries the Twisted side.
"""

import asyncio
import hashlib
import json
import os
import time

from homechannel.config import DesktopApp, FilesApp, ForwardApp, ServerApps, TerminalApp
from homechannel.server.apps import AppHost, files
from homechannel.protocol import frames
from homechannel.testing.apps import ClientChannel, connect_pair, private_reactor


def run(body, timeout=120):
    async def main():
        with private_reactor() as reactor:
            pcs = []
            try:
                await asyncio.wait_for(body(reactor, pcs), timeout)
            finally:
                for pc in pcs:
                    await pc.close()

    asyncio.run(main())


async def connect(reactor, pcs, apps, tmp_path):
    host = AppHost(apps, "SERVER-ID", str(tmp_path / "state"), reactor)
    client, server, control = await connect_pair(host)
    pcs += [client, server]
    return client, control


async def open_app(client, label):
    ch = ClientChannel.open(client, label)
    await ch.opened()
    return ch


def test_control_hello_ping_and_refusals(tmp_path, monkeypatch):
    """Hello and ping on the control channel; channels for disabled or unknown apps
    and bad labels get an error and are closed by the home server (after a grace
    period, shortened here: the browser closes them itself on the error)."""
    from homechannel.server.apps import channel

    monkeypatch.setattr(channel, "CLOSE_GRACE", 0.3)
    apps = ServerApps(files=FilesApp(roots=(str(tmp_path),)), desktop=DesktopApp(enabled=False))

    async def body(reactor, pcs):
        client, control = await connect(reactor, pcs, apps, tmp_path)
        control.channel.send(json.dumps({"op": "hello"}))
        hello = await control.recv_json()
        assert hello["op"] == "hello" and hello["server"] == "SERVER-ID"
        assert [a["name"] for a in hello["apps"]] == ["files", "terminal"]
        assert hello["apps"][0] == {"name": "files", "title": "Files", "version": 1, "readOnly": False}
        control.channel.send(json.dumps({"op": "ping", "id": 7}))
        assert await control.recv_json() == {"op": "pong", "id": 7}
        for label, code in [("app:desktop:1", "app-disabled"), ("app:forward:1", "app-disabled"),
                            ("app:nope:1", "unknown-app"), ("weird", "bad-label")]:
            ch = await open_app(client, label)
            err = await ch.recv_json()
            assert err["op"] == "error" and err["code"] == code, err
            await asyncio.wait_for(ch.closed, 10)

    run(body)


async def upload(ch, rid, path, data):
    ch.send_frame(frames.REQ, rid, {"op": "upload", "root": 0, "path": path, "size": len(data)})
    ack = await ch.recv_frame()
    assert ack.type == frames.ACK, ack
    window = ack.body["window"]
    acked = 0
    sent = 0
    result = None
    while result is None:
        while sent < len(data) and sent - acked < window - frames.CHUNK and ch.channel.bufferedAmount < 1 << 20:
            ch.send_frame(frames.DATA, rid, data=data[sent:sent + frames.CHUNK])
            sent += frames.CHUNK
            if sent >= len(data):
                ch.send_frame(frames.END, rid, {"sha256": hashlib.sha256(data).hexdigest()})
        try:
            f = await asyncio.wait_for(ch.queue.get(), 0.05)
        except asyncio.TimeoutError:
            continue
        f = frames.decode(f)
        if f.type == frames.ACK:
            acked = f.body["received"]
        else:
            result = f
    return result


async def download(ch, rid, path, offset=0, stop_after=None):
    ch.send_frame(frames.REQ, rid, {"op": "download", "root": 0, "path": path, "offset": offset})
    head = await ch.recv_frame()
    if head.type == frames.ERR:
        return head, b"", None
    chunks = []
    n = 0
    while True:
        f = await ch.recv_frame()
        if f.type == frames.DATA:
            chunks.append(f.data)
            n += len(f.data)
            if stop_after is not None and n >= stop_after:
                ch.send_frame(frames.CANCEL, rid, {})
                while f.type not in (frames.ERR, frames.END):
                    f = await ch.recv_frame()
                return head, b"".join(chunks), f
        else:
            return head, b"".join(chunks), f


def test_upload_20mb_download_back_resume_and_traversal(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("do not read")
    apps = ServerApps(files=FilesApp(roots=(str(root),)))
    data = os.urandom(20 * 1024 * 1024)
    figures = {}

    async def body(reactor, pcs):
        client, _ = await connect(reactor, pcs, apps, tmp_path)
        ch = await open_app(client, "app:files:1")
        t = time.monotonic()
        res = await upload(ch, 1, "big.bin", data)
        figures["upload MB/s"] = len(data) / (time.monotonic() - t) / 1e6
        assert res.type == frames.RES, res
        assert res.body["sha256"] == hashlib.sha256(data).hexdigest()
        assert (root / "big.bin").read_bytes() == data
        assert os.listdir(root) == ["big.bin"]  # no temp file left

        t = time.monotonic()
        head, got, end = await download(ch, 2, "big.bin")
        figures["download MB/s"] = len(data) / (time.monotonic() - t) / 1e6
        assert head.body["size"] == len(data)
        assert got == data and end.body["sha256"] == hashlib.sha256(data).hexdigest()

        # interrupted download, then resumed from where it stopped
        head, first, err = await download(ch, 3, "big.bin", stop_after=3 * 1024 * 1024)
        assert err.type == frames.ERR and err.body["code"] == "cancelled"
        head, rest, end = await download(ch, 4, "big.bin", offset=len(first))
        assert first + rest == data
        assert hashlib.sha256(first + rest).hexdigest() == end.body["sha256"]

        ch.send_frame(frames.REQ, 5, {"op": "list", "root": 0, "path": "../"})
        err = await ch.recv_frame()
        assert err.type == frames.ERR and err.body["code"] == "bad-path"
        head, _, _ = await download(ch, 6, "../secret")
        assert head.body["code"] == "bad-path"
        os.symlink(tmp_path / "secret", root / "link")
        head, _, _ = await download(ch, 7, "link")
        assert head.body["code"] == "outside-root"

    run(body)
    print(figures)


def test_upload_broken_by_channel_close_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    apps = ServerApps(files=FilesApp(roots=(str(root),)))

    async def body(reactor, pcs):
        client, _ = await connect(reactor, pcs, apps, tmp_path)
        ch = await open_app(client, "app:files:1")
        ch.send_frame(frames.REQ, 1, {"op": "upload", "root": 0, "path": "x.bin", "size": 5_000_000})
        assert (await ch.recv_frame()).type == frames.ACK
        for _ in range(10):
            ch.send_frame(frames.DATA, 1, data=os.urandom(frames.CHUNK))
        for _ in range(100):
            if any(n.startswith(files.TEMP_PREFIX) for n in os.listdir(root)):
                break
            await asyncio.sleep(0.05)
        assert os.listdir(root), "expected the temp file while uploading"
        ch.channel.close()
        for _ in range(200):
            if not os.listdir(root):
                break
            await asyncio.sleep(0.05)
        assert os.listdir(root) == []

    run(body)


def test_forward_pipe_to_allowed_port_only(tmp_path):
    from twisted.internet import protocol

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data.upper())

    async def body(reactor, pcs):
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        allowed = port.getHost().port
        apps = ServerApps(forward=ForwardApp(enabled=True, ports=(allowed,)))
        client, _ = await connect(reactor, pcs, apps, tmp_path)
        ch = await open_app(client, "app:forward:1")
        ch.channel.send(json.dumps({"op": "open", "port": allowed}))
        assert await ch.recv_json() == {"op": "open", "port": allowed}
        ch.channel.send(b"hello pipe")
        got = b""
        while len(got) < 10:
            got += await ch.recv()
        assert got == b"HELLO PIPE"
        ch2 = await open_app(client, "app:forward:2")
        ch2.channel.send(json.dumps({"op": "open", "port": allowed + 1}))
        err = await ch2.recv_json()
        assert err["code"] == "port-not-allowed"
        port.stopListening()

    run(body)
