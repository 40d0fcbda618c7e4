"""One UDP port for both families (homechannel/ops/dualstack.py), on real sockets in
this loopback-only namespace (the reactor runs under pytest-twisted): a protocol
behind ``listen_udp(..., "::")`` hears IPv4 and IPv6 peers, sees an IPv4 peer as
IPv4 (never ``::ffff:``), and answers both; and the web endpoint strings that get
``interface=::``."""

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.protocol import DatagramProtocol

from homechannel.ops import dualstack
from homechannel.protocol.hostport import ip_family, unmapped


class Echo(DatagramProtocol):
    """Records each datagram's source and answers it with b"re:" + data."""

    def __init__(self):
        self.sources = []
        self.stopped = False

    def datagramReceived(self, data, addr):
        self.sources.append(addr)
        self.transport.write(b"re:" + data, addr)

    def stopProtocol(self):
        self.stopped = True


def _ask(family, host, port, data):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind((host, 0))
        s.sendto(data, (host, port))
        reply, _ = s.recvfrom(100)
        return s.getsockname()[1], reply


@pytest_twisted.ensureDeferred
async def test_one_port_hears_and_answers_ipv4_and_ipv6_and_sees_ipv4_as_ipv4():
    """How this was shown to fail: with ``DualStackProtocol`` passing addresses
    through as the socket gives them, the protocol saw ``::ffff:127.0.0.1`` (and
    Twisted's IPv6 port refused to send to a plain IPv4 address)."""
    echo = Echo()
    port = dualstack.listen_udp(reactor, 0, echo, dualstack.BOTH)
    number = port.getHost().port
    try:
        v4_port, v4_reply = await threads.deferToThread(
            _ask, socket.AF_INET, "127.0.0.1", number, b"four")
        v6_port, v6_reply = await threads.deferToThread(
            _ask, socket.AF_INET6, "::1", number, b"six")
    finally:
        await port.stopListening()
    assert (v4_reply, v6_reply) == (b"re:four", b"re:six")
    assert echo.sources == [("127.0.0.1", v4_port), ("::1", v6_port)]
    assert echo.stopped and echo.transport is None


def test_other_interfaces_are_twisteds_own():
    """How this was shown to fail: with every interface made a dual-stack socket, the
    port listened on ``::``."""
    echo = Echo()
    port = dualstack.listen_udp(reactor, 0, echo, "127.0.0.1")
    try:
        assert port.getHost().host == "127.0.0.1" and echo.transport is port
    finally:
        port.stopListening()


def test_a_taken_port_is_cannot_listen():
    """As Twisted's own ports say it (the daemons' start-up error).  How this was
    shown to fail: without the ``except OSError`` the bind error came out raw."""
    from twisted.internet.error import CannotListenError

    first = dualstack.listen_udp(reactor, 0, Echo(), dualstack.BOTH)
    try:
        with pytest.raises(CannotListenError):
            dualstack.listen_udp(reactor, first.getHost().port, Echo(), dualstack.BOTH)
    finally:
        first.stopListening()


@pytest.mark.parametrize("listen,expected", [
    ("tcp:8080", "tcp:8080:interface=\\:\\:"),
    ("ssl:443:privateKey=k.pem:certKey=c.pem",
     "ssl:443:privateKey=k.pem:certKey=c.pem:interface=\\:\\:"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
    ("tcp:8080:interface=0.0.0.0", "tcp:8080:interface=0.0.0.0"),
    ("unix:/run/hc.sock", "unix:/run/hc.sock"),
])
def test_web_endpoints_without_an_interface_listen_on_both_families(listen, expected):
    """How this was shown to fail: without the ``"interface" in kwargs`` check, an
    endpoint that names its interface got a second one."""
    assert dualstack.both_families(listen, available=lambda: True) == expected
    assert dualstack.both_families(listen, available=lambda: False) == listen


def test_address_helpers():
    """How this was shown to fail: with ``unmapped`` matching ``::ffff:`` in lower case
    only, ``::FFFF:192.0.2.1`` stayed IPv6-mapped."""
    assert unmapped("::ffff:192.0.2.1") == "192.0.2.1"
    assert unmapped("::FFFF:192.0.2.1") == "192.0.2.1"
    assert unmapped("2001:db8::1") == "2001:db8::1" and unmapped("192.0.2.1") == "192.0.2.1"
    assert unmapped("::ffff:zz") == "::ffff:zz"
    assert ip_family("2001:db8::1") == "IPv6" and ip_family("fe80::1%eth0") == "IPv6"
    assert ip_family("192.0.2.1") == "IPv4" and ip_family("::ffff:192.0.2.1") == "IPv4"
    assert ip_family("coordinator.example") is None
