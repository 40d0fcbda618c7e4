"""Test helpers for the apps (public, so other test suites can reuse them).

- :class:`FakeChannel`: an ``RTCDataChannel`` stand-in whose ``bufferedAmount``
  only drains when the test says so (``drain``), and which records what was
  sent.
- :func:`private_reactor`: a started ``AsyncioSelectorReactor`` on the running
  asyncio loop *without* installing it globally, so tests can run aiortc and
  Twisted together inside ``asyncio.run`` whatever reactor pytest installed.
- :func:`connect_pair`: a client ``RTCPeerConnection`` connected to an
  :class:`~homechannel.server.apps.AppHost` in the same loop over loopback ICE
  (127.0.0.1 advertised via :mod:`homechannel.rtc.webrtc`).
- :class:`ClientChannel`: an awaitable client-side view of one channel.
"""

import asyncio
import contextlib
import json

from homechannel.protocol import frames


class FakeChannel:
    def __init__(self, label="app:files:1", readyState="open"):
        self.label = label
        self.readyState = readyState
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.sent = []
        self.sent_bytes = 0
        self.max_buffered = 0
        self._handlers = {}

    def on(self, event, handler=None):
        if handler is None:
            def deco(f):
                self._handlers.setdefault(event, []).append(f)
                return f
            return deco
        self._handlers.setdefault(event, []).append(handler)
        return handler

    def emit(self, event, *args):
        for h in list(self._handlers.get(event, [])):
            h(*args)

    def send(self, data):
        if self.readyState != "open":
            raise RuntimeError("send on a closed channel")
        self.sent.append(data)
        self.sent_bytes += len(data)
        self.bufferedAmount += len(data)
        self.max_buffered = max(self.max_buffered, self.bufferedAmount)

    def drain(self, n=None):
        """Pretend the transport sent *n* bytes (all if None)."""
        before = self.bufferedAmount
        self.bufferedAmount = max(0, before - (before if n is None else n))
        if before > self.bufferedAmountLowThreshold >= self.bufferedAmount:
            self.emit("bufferedamountlow")

    def close(self):
        if self.readyState != "closed":
            self.readyState = "closed"
            self.emit("close")

    def receive(self, message):
        """Deliver *message* as if the peer sent it."""
        self.emit("message", message)

    def frames(self):
        return [frames.decode(m) for m in self.sent if not isinstance(m, str)]


@contextlib.contextmanager
def private_reactor(loop=None):
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    loop = loop or asyncio.get_running_loop()
    reactor = AsyncioSelectorReactor(loop)
    reactor.startRunning(installSignalHandlers=False)
    try:
        yield reactor
    finally:
        if reactor.threadpool is not None:
            reactor.threadpool.stop()
        for selectable in reactor.removeAll():
            with contextlib.suppress(Exception):
                selectable.connectionLost(None)


async def connect_pair(host, timeout=20):
    """Connect an aiortc client to *host* (an AppHost); return ``(client_pc, server_pc)``."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from homechannel.rtc import webrtc

    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    host.attach(server)
    control = client.createDataChannel("control")
    webrtc.advertise_host_addresses(client, ["127.0.0.1"])
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(RTCSessionDescription(client.localDescription.sdp, "offer"))
    webrtc.advertise_host_addresses(server, ["127.0.0.1"])
    await server.setLocalDescription(await server.createAnswer())
    await client.setRemoteDescription(RTCSessionDescription(server.localDescription.sdp, "answer"))
    ch = ClientChannel(control)
    await asyncio.wait_for(ch.opened(), timeout)
    return client, server, ch


class ClientChannel:
    """Queue of messages received on a client-side channel, plus helpers."""

    def __init__(self, channel):
        self.channel = channel
        self.queue = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()
        channel.on("message", self.queue.put_nowait)
        channel.on("close", lambda: self.closed.done() or self.closed.set_result(None))

    @classmethod
    def open(cls, pc, label):
        return cls(pc.createDataChannel(label))

    async def opened(self):
        if self.channel.readyState == "open":
            return
        fut = asyncio.get_running_loop().create_future()
        self.channel.on("open", lambda: fut.done() or fut.set_result(None))
        if self.channel.readyState == "open":
            return
        await fut

    async def recv(self, timeout=10):
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def recv_frame(self, timeout=10):
        while True:
            m = await self.recv(timeout)
            if isinstance(m, str):
                raise AssertionError(f"text message on a framed channel: {m}")
            return frames.decode(m)

    async def recv_json(self, timeout=10):
        m = await self.recv(timeout)
        assert isinstance(m, str), m
        return json.loads(m)

    def send_frame(self, ftype, rid, body=None, data=b""):
        self.channel.send(frames.encode(ftype, rid, body, data))

    async def wait_writable(self, low=256 * 1024):
        while self.channel.bufferedAmount > low:
            await asyncio.sleep(0.005)
