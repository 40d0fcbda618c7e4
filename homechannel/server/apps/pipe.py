"""A byte pipe between one app channel and one local service's connection.

Used by the desktop app (VNC) and the forward app (any allowed port).  The
connection is made by :meth:`.localservice.LocalService.connect`, which checks
who owns the service's socket before a byte goes either way.

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
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from homechannel import errors
from homechannel.ops.logsafe import Logger
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
    """Bytes between one ChannelLink and one connection to *service* (a
    :class:`~.localservice.LocalService`; *to_thread* runs its owner check)."""

    def __init__(self, link, reactor, service, to_thread, connect_timeout=10, receive_buffer=None):
        self.link = link
        self.reactor = reactor
        self.service = service
        self.what = service.what
        self.to_thread = to_thread
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
        d = self.service.connect(self.reactor, protocol.Factory.forProtocol(
            lambda: _PipeProtocol(self)), self.to_thread, timeout=self.timeout)
        d.addErrback(self._connect_failed)
        return d

    def _connect_failed(self, failure):
        where = self.service.where
        if failure.check(errors.HomeChannelError):     # the owner check refused it
            log.warn("{what} at {where}: {err}", what=self.what, where=where,
                     err=failure.value)
            exc = failure.value
        else:
            log.info("{what}: cannot connect to {where}: {err}", what=self.what, where=where,
                     err=failure.getErrorMessage())
            exc = errors.Unavailable(f"the home server cannot reach {self.what} at {where} "
                                     f"({failure.getErrorMessage()}); is it running?",
                                     "connect-failed")
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
        address = self.service.address
        send_status(self.link, "open", **({"port": address[2]} if address[0] == "tcp" else {}))
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
        send_error_and_close(self.link, errors.Unavailable(f"{self.what} is not reading; closing the pipe", "backlog"))
        if self.transport is not None:
            self.transport.abortConnection()

    def channel_closed(self):
        if self.transport is not None:
            self.transport.loseConnection()
