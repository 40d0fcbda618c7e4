"""``homechannel forward``'s pipes: each local stream through its own datachannel.

After one :func:`~homechannel.client.session.connect`, :func:`forward` pipes each
local TCP connection (a listener), or stdin/stdout (for ssh's ``ProxyCommand``),
through its own ``app:forward:<n>`` datachannel to a TCP port on the home machine
(docs/protocol.md section 3.6).  :class:`ForwardPipe` is one such channel, with
flow control both ways.
"""

import asyncio
import json
import os
import sys

from homechannel.client.control import wait_open
from homechannel.client.session import connect
from homechannel.errors import HomeChannelError, ProtocolError, RequestTimeout, Unavailable

FORWARD_HIGH = 1024 * 1024       # stop reading the local socket above this many buffered bytes
FORWARD_LOW = 256 * 1024         # ... and read again once the channel has drained to this
FORWARD_CHUNK = 65536            # one datachannel message (the server's frame limit)
FORWARD_MAX_BACKLOG = 16 * 1024 * 1024   # channel bytes the local side does not take


class ForwardRefused(HomeChannelError):
    """The home server refused to open the forward (or closed it with an error)."""


def _forward_error(doc, port):
    code = doc.get("code") if isinstance(doc.get("code"), str) else "error"
    message = doc.get("message") if isinstance(doc.get("message"), str) else ""
    if code == "port-not-allowed":
        return ForwardRefused(f"the home server refused port {port}: {message or code} "
                              f"(add it to apps.forward.ports in the home server's config)")
    if code == "connect-failed":
        return ForwardRefused(f"the home server could not connect to its port {port}: "
                              f"{message or code}")
    return ForwardRefused(f"the home server refused the forward to port {port}: "
                          f"{message or code} ({code})")


def check_forward_port(hello, port):
    """Refuse early, from the hello reply, when *port* is not forwarded."""
    apps = [a for a in (hello.get("apps") or []) if isinstance(a, dict)]
    forward = next((a for a in apps if a.get("name") == "forward"), None)
    if forward is None:
        raise ForwardRefused("the home server does not enable the forward app "
                             "(set apps.forward.enabled = true and ports = [...] in its config)")
    ports = forward.get("ports")
    if isinstance(ports, list) and port not in ports:
        allowed = ", ".join(str(p) for p in ports) or "none"
        raise ForwardRefused(f"the home server does not forward port {port} (allowed: {allowed}); "
                             "add it to apps.forward.ports in the home server's config")


class ForwardPipe:
    """One ``app:forward:<n>`` channel piped to a local (reader, writer) stream pair.

    Local → channel: the reader is not read while the channel buffers more than
    *high* bytes; reading resumes on ``bufferedamountlow`` (at *low*).  Channel →
    local: written to the writer; if the local side stops taking bytes and more
    than FORWARD_MAX_BACKLOG pile up, the pipe is closed.  EOF or an error on
    either side closes the other.
    """

    def __init__(self, pc, instance, port, *, high=FORWARD_HIGH, low=FORWARD_LOW,
                 notify=None):
        self.port = port
        self.high = high
        self.notify = notify or (lambda message: None)
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.error = None
        self.writer = None
        self.early = []
        self.drained = asyncio.Event()
        self.drained.set()
        self.bytes_in = self.bytes_out = 0
        self.channel = pc.createDataChannel(f"app:forward:{instance}")
        self.channel.bufferedAmountLowThreshold = low
        self.channel.on("message", self._on_message)
        self.channel.on("bufferedamountlow", self.drained.set)
        self.channel.on("close", self._on_close)

    # -- channel events --

    def _on_message(self, message):
        if isinstance(message, str):
            try:
                doc = json.loads(message)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                self._fail(ProtocolError("the home server sent a malformed status message"))
            elif doc.get("op") == "open" and not self.opened.done():
                self.opened.set_result(None)
            elif doc.get("op") == "error":
                self._fail(_forward_error(doc, self.port))
            return
        if not self.opened.done():
            self._fail(ProtocolError("the home server sent bytes before opening the forward"))
            return
        self.bytes_in += len(message)
        if self.writer is None:
            self.early.append(bytes(message))
            return
        self._write(message)

    def _write(self, data):
        if self.writer.is_closing():
            return
        self.writer.write(data)
        transport = self.writer.transport
        if transport is not None and transport.get_write_buffer_size() > FORWARD_MAX_BACKLOG:
            self._fail(ForwardRefused("the local side is not reading; closing the forward"))
            self.channel.close()

    def _fail(self, error):
        if self.error is None:
            self.error = error
        if not self.opened.done():
            self.opened.set_exception(error)

    def _on_close(self):
        self.drained.set()
        if not self.opened.done():
            self.opened.set_exception(self.error or ForwardRefused(
                "the home server closed the forward channel before it opened"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- running --

    async def open(self, timeout=15.0):
        """Wait for the channel, ask for the port, wait for the server's ``open``."""
        await wait_open(self.channel, timeout)
        self.channel.send(json.dumps({"op": "open", "port": self.port}))
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), timeout)
        except asyncio.TimeoutError:
            self.channel.close()
            raise RequestTimeout(f"the home server did not open port {self.port} within "
                                 f"{timeout:g} s") from None
        except BaseException:
            self.channel.close()
            raise

    async def run(self, reader, writer):
        """Pipe until either side closes; raise the server's error if it sent one."""
        self.writer = writer
        early, self.early = self.early, []
        for data in early:
            self._write(data)
        pump = asyncio.ensure_future(self._pump(reader))
        try:
            await asyncio.wait([pump, self.closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, ConnectionError, OSError):
                pass
            if self.channel.readyState not in ("closing", "closed"):
                self.channel.close()   # queued messages are still sent before the reset
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self.error is not None:
            raise self.error

    async def _pump(self, reader):
        channel = self.channel
        while channel.readyState == "open":
            if channel.bufferedAmount > self.high:
                self.drained.clear()
                if channel.bufferedAmount > self.high:
                    await self.drained.wait()
                continue
            data = await reader.read(FORWARD_CHUNK)
            if not data or channel.readyState != "open":
                return
            self.bytes_out += len(data)
            channel.send(data)


class _Forwarder:
    """One connected peer connection; opens one forward channel per local stream."""

    def __init__(self, pc, port, notify):
        self.pc = pc
        self.port = port
        self.notify = notify
        self.count = 0
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        pc.on("connectionstatechange", self._state)

    def _state(self):
        if self.pc.connectionState in ("failed", "closed") and not self.lost.done():
            self.lost.set_result(self.pc.connectionState)

    async def pipe(self, reader, writer, timeout=15.0):
        self.count += 1
        pipe = ForwardPipe(self.pc, self.count, self.port, notify=self.notify)
        try:
            await pipe.open(timeout)
        except BaseException:
            writer.close()
            raise
        await pipe.run(reader, writer)
        return pipe


async def _stdio_streams():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=FORWARD_CHUNK * 4)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin,
        os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def forward(kwargs, port, listen=None, stdio=False, ready=None):
    """Connect once, then forward ``--stdio`` or every connection to *listen*."""
    notify = kwargs.get("notify") or (lambda message: None)
    pc, control, hello = await connect(**kwargs)
    try:
        check_forward_port(hello, port)
        forwarder = _Forwarder(pc, port, notify)
        if stdio:
            reader, writer = await _stdio_streams()
            await forwarder.pipe(reader, writer)
            return
        host, lport = listen
        active = set()

        async def handle(reader, writer):
            peer = writer.get_extra_info("peername")
            task = asyncio.current_task()
            active.add(task)
            try:
                pipe = await forwarder.pipe(reader, writer)
                notify(f"forward {pipe.channel.label} from {peer} closed "
                       f"({pipe.bytes_out} bytes out, {pipe.bytes_in} bytes in)")
            except HomeChannelError as e:
                notify(f"forward from {peer}: {e}")
            except Exception as e:  # pragma: no cover - a bug; keep serving others
                notify(f"forward from {peer} failed: {e!r}")
            finally:
                active.discard(task)

        server = await asyncio.start_server(handle, host, lport)
        try:
            bound = server.sockets[0].getsockname()
            notify(f"forwarding {bound[0]}:{bound[1]} to port {port} on the home server "
                   f"{kwargs['server_id'][:12]}...")
            if ready is not None:
                ready(bound)
            state = await forwarder.lost
            raise Unavailable(f"the connection to the home server was lost ({state})")
        finally:
            server.close()
            for task in list(active):
                task.cancel()
    finally:
        await pc.close()
