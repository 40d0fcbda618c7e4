"""A byte pipe between one app channel and one local TCP connection.

Used by the desktop app (VNC) and the forward app (any allowed port).

Flow control: bytes from TCP go out on the channel while its buffered amount
is below ``ChannelLink.high``; above it the TCP transport is paused (it is the
link's registered producer), so a slow browser slows the TCP peer.  Bytes
from the browser are written to TCP; if the TCP side stops draining and more
than ``MAX_BACKLOG`` bytes pile up, the pipe is closed with an error rather
than growing without bound (browsers also stop sending while their own
``bufferedAmount`` is high).
"""

import socket

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from homechannel import errors
from homechannel.protocol import frames
from homechannel.server.apps.channel import send_error_and_close, send_status

log = Logger()

MAX_BACKLOG = 8 * 1024 * 1024
MAX_EARLY = 1024 * 1024  # browser bytes buffered before the TCP connection is up


class _PipeProtocol(protocol.Protocol):
    def __init__(self, pipe):
        self.pipe = pipe

    def connectionMade(self):
        self.pipe.tcp_connected(self.transport)

    def dataReceived(self, data):
        self.pipe.tcp_data(data)

    def connectionLost(self, reason):
        self.pipe.tcp_lost(reason)


@implementer(IPushProducer)
class TCPPipe:
    """Bytes between one ChannelLink and one TCP connection."""

    def __init__(self, link, reactor, host, port, what, connect_timeout=10, receive_buffer=None):
        self.link = link
        self.reactor = reactor
        self.host = host
        self.port = port
        self.what = what
        self.timeout = connect_timeout
        self.receive_buffer = receive_buffer  # SO_RCVBUF of the TCP socket (None: the kernel's)
        self.transport = None
        self.early = []
        self.early_bytes = 0
        self.tcp_paused = False  # the TCP transport asked us (the browser side) to stop
        self.backlog = 0
        self.closing = False
        link.on_close(self.channel_closed)

    def connect(self):
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _PipeProtocol(self)))
        d.addErrback(self._connect_failed)
        return d

    def _connect_failed(self, failure):
        log.info("{what}: cannot connect to {host}:{port}: {err}", what=self.what,
                 host=self.host, port=self.port, err=failure.getErrorMessage())
        exc = errors.Unavailable(f"the home server cannot reach the {self.what} at {self.host}:{self.port} "
                               f"({failure.getErrorMessage()}); is it running?", "connect-failed")
        self.closing = True
        send_error_and_close(self.link, exc)

    # -- TCP side -------------------------------------------------------------

    def tcp_connected(self, transport):
        if self.link.closed:
            transport.loseConnection()
            return
        self.transport = transport
        if self.receive_buffer is not None:
            transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                             self.receive_buffer)
        transport.registerProducer(self, True)
        self.link.registerProducer(transport, True)
        send_status(self.link, "open", port=self.port)
        early, self.early = self.early, []
        for data in early:
            self.transport.write(data)

    def tcp_data(self, data):
        view = memoryview(data)
        for i in range(0, len(data), frames.MAX_FRAME):
            self.link.send(bytes(view[i:i + frames.MAX_FRAME]))

    def tcp_lost(self, reason):
        self.transport = None
        self.link.unregisterProducer()
        if not self.link.closed:
            self.link.close()

    # -- IPushProducer, called by the TCP transport about browser→TCP bytes --

    def pauseProducing(self):
        self.tcp_paused = True
        self.backlog = 0

    def resumeProducing(self):
        self.tcp_paused = False
        self.backlog = 0

    def stopProducing(self):
        pass

    # -- channel side ------------------------------------------------------------

    def channel_data(self, data):
        if isinstance(data, str) or self.closing:
            return  # text is signalling, handled by the app; nothing after an error
        if self.transport is None:
            self.early_bytes += len(data)
            if self.early_bytes > MAX_EARLY:
                self._overflow()
            else:
                self.early.append(bytes(data))
            return
        if self.tcp_paused:
            self.backlog += len(data)
            if self.backlog > MAX_BACKLOG:
                self._overflow()
                return
        self.transport.write(bytes(data))

    def _overflow(self):
        log.info("{what}: closing, {n} bytes backlog", what=self.what, n=self.backlog)
        self.closing = True
        send_error_and_close(self.link, errors.Unavailable(f"the {self.what} is not reading; closing the pipe", "backlog"))
        if self.transport is not None:
            self.transport.abortConnection()

    def channel_closed(self):
        if self.transport is not None:
            self.transport.loseConnection()
