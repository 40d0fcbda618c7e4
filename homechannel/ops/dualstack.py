"""Listening on both IP families at once: the dual-stack UDP port and web endpoints.

Both daemons listen for UDP on ``::`` by default: one IPv6 socket with
``IPV6_V6ONLY`` off, which also sends and receives IPv4 (as IPv4-mapped IPv6
addresses, ``::ffff:192.0.2.1``).  Twisted's IPv6 UDP port would refuse to send to
an IPv4 address, and everything above the socket (registry, rate limits, logs,
STUN) should see an IPv4 peer as IPv4, so :func:`listen_udp` puts a thin
translation between the socket and the protocol: addresses coming in are
``unmapped``, IPv4 addresses going out are mapped.  The protocol never knows.

Where the host has no IPv6 at all (a kernel without it), ``::`` falls back to
``0.0.0.0`` (IPv4 only) and says so.

A ``tcp:`` or ``ssl:`` web endpoint without ``interface=`` listens on every
address of both families (:func:`both_families` adds ``interface=::``; Linux's
default ``net.ipv6.bindv6only = 0`` makes that socket take IPv4 too).
"""

import errno
import socket

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from homechannel.ops.logsafe import Logger

from homechannel.ops import endpoints
from homechannel.protocol.hostport import unmapped

log = Logger()

BOTH = "::"            # the interface that means "IPv6 and IPv4"
ANY_IPV4 = "0.0.0.0"


def ipv6_available() -> bool:
    """Whether this host can make an IPv6 socket (False on a kernel without IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::", 0))
    except OSError:
        return False
    return True


def _mapped(host: str) -> str:
    """The address to give a dual-stack socket: IPv4 as IPv4-mapped IPv6."""
    return host if ":" in host else "::ffff:" + host


class _MappingTransport:
    """The port as the protocol sees it: ``write`` maps IPv4 destinations."""

    def __init__(self, port):
        self._port = port

    def write(self, data, addr=None):
        if addr is None:
            return self._port.write(data)
        return self._port.write(data, (_mapped(addr[0]), addr[1]))

    def __getattr__(self, name):
        return getattr(self._port, name)


class DualStackProtocol(DatagramProtocol):
    """Between a dual-stack socket and *inner*, which sees IPv4 peers as IPv4."""

    noisy = False

    def __init__(self, inner):
        self.inner = inner

    def logPrefix(self):
        return self.inner.__class__.__name__

    def startProtocol(self):
        self.inner.makeConnection(_MappingTransport(self.transport))

    def stopProtocol(self):
        self.inner.doStop()

    def datagramReceived(self, data, addr):
        self.inner.datagramReceived(data, (unmapped(addr[0]), addr[1]))

    def connectionRefused(self):
        self.inner.connectionRefused()


def listen_udp(reactor, port, protocol, interface=BOTH):
    """Listen for UDP on *interface* (``::``: both families) and *port*; returns the
    Twisted port.  Any other interface is Twisted's ``listenUDP``."""
    if interface != BOTH:
        return reactor.listenUDP(port, protocol, interface=interface)
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError as e:
        if e.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise CannotListenError(interface, port, e) from None
        log.warn("no IPv6 on this host: UDP port {port} listens on IPv4 only", port=port)
        return reactor.listenUDP(port, protocol, interface=ANY_IPV4)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((BOTH, port))
        sock.setblocking(False)
        return reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6,
                                         DualStackProtocol(protocol))
    except OSError as e:
        raise CannotListenError(interface, port, e) from None
    finally:
        sock.close()        # the reactor has its own copy of the descriptor


class UDPServer(service.Service):
    """``internet.UDPServer`` with :func:`listen_udp`: binds at privileged start."""

    def __init__(self, reactor, port, protocol, interface=BOTH):
        self.reactor, self.port, self.protocol, self.interface = (reactor, port, protocol,
                                                                  interface)
        self._port = None

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._port = listen_udp(self.reactor, self.port, self.protocol, self.interface)

    def startService(self):
        service.Service.startService(self)
        if self._port is None:
            self._port = listen_udp(self.reactor, self.port, self.protocol, self.interface)

    def stopService(self):
        service.Service.stopService(self)
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()


def both_families(listen: str, available=ipv6_available) -> str:
    """A ``tcp:``/``ssl:`` server endpoint string without ``interface=`` listens on
    ``::`` (both families) when the host has IPv6; anything else is unchanged."""
    kind, args, kwargs = endpoints.split(listen)
    if kind not in ("tcp", "ssl") or "interface" in kwargs or not available():
        return listen
    return listen + ":interface=" + endpoints.quote(BOTH)
