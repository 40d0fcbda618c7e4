"""``python_connect``: the native client (``homechannel.client.session.connect``) opens a
session to a running pair's home server with the pair's password, from a thread of
its own, and closes it; returns the server's hello and the connection's state.
``NativeFiles``: the files app over such a session (asyncio), for end-to-end tests
of what the home server does with uploads."""

import asyncio
import concurrent.futures

from daemons import PASSWORD

from homechannel.client import session
from homechannel.client.control import wait_open
from homechannel.protocol import frames


def python_connect(pair, devices=None):
    async def main():
        pc, control, hello = await session.connect(
            pair.url, pair.server_key.text, PASSWORD, pair.coordinator_key.text,
            advertise_addresses=("127.0.0.1",), timeout=30, connect_timeout=15,
            devices=devices)
        try:
            return hello, pc.connectionState
        finally:
            await pc.close()

    # A thread of its own: while Playwright's sync API is active, this thread
    # counts as running an asyncio loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(main(), 90)).result()


class NativeFiles:
    """``async with NativeFiles(pair, url)`` signs in (through *url*, default the
    pair's) and opens ``app:files:1``; ``upload`` sends one file."""

    def __init__(self, pair, url=None):
        self.pair, self.url = pair, url or pair.url
        self.pc = self.channel = self.replies = None

    async def __aenter__(self):
        self.pc, _, _ = await session.connect(
            self.url, self.pair.server_key.text, PASSWORD, self.pair.coordinator_key.text,
            advertise_addresses=("127.0.0.1",), timeout=30, connect_timeout=15)
        self.channel = self.pc.createDataChannel("app:files:1")
        self.replies = asyncio.Queue()
        self.channel.on("message", lambda m: self.replies.put_nowait(frames.decode(m)))
        await wait_open(self.channel, 15)
        return self

    async def __aexit__(self, *exc):
        await self.pc.close()

    async def upload(self, rid, path, data, timeout=30):
        """Upload *data* to *path* in root 0 as request *rid*; ``(type name, body)`` of
        the answer (RES, or ERR before or after the go-ahead)."""
        self.channel.send(frames.encode(frames.REQ, rid, {"op": "upload", "root": 0,
                                                          "path": path, "size": len(data)}))
        frame = await asyncio.wait_for(self.replies.get(), timeout)
        if frame.type != frames.ACK:
            return frames.TYPES[frame.type], frame.body
        window, acked = frame.body["window"], 0
        for sent in range(0, len(data), frames.CHUNK):
            chunk = data[sent:sent + frames.CHUNK]
            while sent + len(chunk) - acked > window:       # the flow-control window
                frame = await asyncio.wait_for(self.replies.get(), timeout)
                if frame.type != frames.ACK:
                    return frames.TYPES[frame.type], frame.body
                acked = frame.body["received"]
            self.channel.send(frames.encode(frames.DATA, rid, data=chunk))
        self.channel.send(frames.encode(frames.END, rid, {}))
        while frame.type == frames.ACK:
            frame = await asyncio.wait_for(self.replies.get(), timeout)
        return frames.TYPES[frame.type], frame.body
