"""The private internals of aiortc, aioice, pyOpenSSL and Twisted that HomeChannel
wraps or reads, checked on the installed libraries themselves.

``rtc/webrtc.py`` and ``rtc/icechecks.py`` reach into aiortc and aioice where they
have no public knob, and ``coordinator/httpserver.py`` and ``coordinator/tap.py``
use two of Twisted's private attributes.  ``setup.cfg`` bounds those libraries to
the releases this was checked with; when one is lifted, each test here names the
internal that changed (``INTERNAL`` in the failure message), instead of a connect
that fails somewhere later for no visible reason."""

import asyncio
import inspect
import socket

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def has(obj, name):
    """``obj.name`` exists (also when it is None), or fail naming the internal."""
    if inspect.ismodule(obj):
        where = obj.__name__
    else:
        cls = obj if inspect.isclass(obj) else type(obj)
        where = f"{cls.__module__}.{cls.__qualname__}"
    assert hasattr(obj, name), f"INTERNAL {where}.{name} is gone: see where homechannel " \
                               "uses it"
    return getattr(obj, name)


def parameters(function, *names):
    got = list(inspect.signature(function).parameters)
    for name in names:
        assert name in got, f"INTERNAL {function.__qualname__} has no parameter {name!r} " \
                            f"(it has {got})"


# -- aiortc -----------------------------------------------------------------------------


def test_aiortc_peer_connection_certificates():
    """``webrtc.peer_connection``: ``RTCPeerConnection.__certificates`` (name-mangled)
    holds the connection's own ``RTCCertificate``s, whose ``getFingerprints`` we
    replace on the instance to list sha-256 only."""
    from aiortc import RTCCertificate

    from homechannel.rtc import webrtc

    async def main():
        pc = webrtc.peer_connection([])
        try:
            certificates = has(pc, "_RTCPeerConnection__certificates")
            assert certificates and all(isinstance(c, RTCCertificate) for c in certificates), \
                "INTERNAL RTCPeerConnection.__certificates is not a list of RTCCertificate"
            algorithms = [f.algorithm for c in certificates for f in c.getFingerprints()]
            assert algorithms == ["sha-256"], \
                f"INTERNAL RTCCertificate.getFingerprints not replaced: {algorithms}"
        finally:
            await pc.close()

    asyncio.run(main())


def test_aiortc_connection_kwargs():
    """``webrtc.relay_alternative``: ``aiortc.rtcicetransport.connection_kwargs`` turns
    ICE servers into aioice's keyword arguments (the TURN URL it picks)."""
    from aiortc import RTCIceServer
    from aiortc import rtcicetransport

    connection_kwargs = has(rtcicetransport, "connection_kwargs")
    got = connection_kwargs([RTCIceServer("turns:t.example:5349?transport=tcp", "u", "c")])
    for key in ("turn_server", "turn_transport", "turn_ssl"):
        assert key in got, f"INTERNAL connection_kwargs() has no {key!r}: {sorted(got)}"
    assert (got["turn_transport"], got["turn_ssl"]) == ("tcp", True)


def test_aiortc_rejects_ipv6_literals_and_takes_the_stand_in_names():
    """``webrtc.ice_servers`` gives aiortc a stand-in name for an IPv6 literal because
    ``parse_stun_turn_uri`` rejects a host in brackets ("malformed uri"), and
    ``webrtc.prepare_gathering`` puts the address back into the aioice
    ``Connection``'s ``stun_server`` and ``turn_server`` (read when it gathers).  When
    aiortc learns IPv6 literals this fails, and the stand-in names can go.  How this
    was shown to fail: without setting ``stun_server`` after the constructor, the
    gathering below has no server-reflexive candidate."""
    from aioice import Connection
    from aiortc import RTCIceServer
    from aiortc import rtcicetransport

    from homechannel.rtc import webrtc

    parse = has(rtcicetransport, "parse_stun_turn_uri")
    for url in ("stun:[2001:db8::1]:7777", "turn:[2001:db8::1]:3478?transport=udp"):
        with pytest.raises(ValueError, match="malformed uri"):
            parse(url)
            pytest.fail(f"aiortc now parses {url}: the stand-in names of rtc/webrtc.py "
                        "(aiortc_url, prepare_gathering) are no longer needed")
    kwargs = has(rtcicetransport, "connection_kwargs")([
        RTCIceServer(webrtc.aiortc_url("stun:[2001:db8::1]:7777")),
        RTCIceServer(webrtc.aiortc_url("turn:[2001:db8::2]:3478?transport=udp"), "u", "c")])
    assert webrtc.literal_host(kwargs["stun_server"][0]) == "2001:db8::1"
    assert webrtc.literal_host(kwargs["turn_server"][0]) == "2001:db8::2"
    connection = Connection(ice_controlling=False, **kwargs)
    assert has(connection, "stun_server") == kwargs["stun_server"]
    assert has(connection, "turn_server") == kwargs["turn_server"]

    async def gather_with_the_address_put_back():
        # A real STUN server (the coordinator's responder) on loopback; the connection
        # is made with a stand-in and gets the address afterwards, as prepare_gathering
        # does: its server-reflexive candidate shows the attribute is read when it gathers.
        from collections import Counter

        from homechannel.coordinator.stun import StunResponder

        responder = StunResponder(Counter())

        class Stun(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                for reply, to in responder.receive(data, addr, 0.0):
                    self.transport.sendto(reply, to)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Stun, local_addr=("127.0.0.1", 0))
        ice = Connection(ice_controlling=False, stun_server=(
            webrtc.aiortc_url("stun:[::1]:9").split(":")[1], 9))
        ice.stun_server = ("127.0.0.1", transport.get_extra_info("sockname")[1])
        try:
            candidates = await ice.get_component_candidates(component=1,
                                                            addresses=["127.0.0.1"])
        finally:
            await ice.close()
            transport.close()
        return [c.type for c in candidates]

    assert "srflx" in asyncio.run(gather_with_the_address_put_back()), \
        "INTERNAL Connection.stun_server set after the constructor is no longer used " \
        "when it gathers"


def test_aioice_connection_methods_we_wrap_or_call():
    """``icechecks`` wraps ``Connection.check_incoming`` on an instance and calls
    ``check_state`` and ``check_start_task``; ``webrtc.advertise_host_addresses`` wraps
    ``get_component_candidates`` and calls it with keywords; both read
    ``_check_list`` and ``_nominated``; ``CandidatePair`` has the fields we read."""
    from aioice import Connection
    from aioice.ice import CandidatePair

    connection = Connection(ice_controlling=False)
    assert isinstance(has(connection, "_check_list"), list)
    assert isinstance(has(connection, "_nominated"), dict)
    parameters(Connection.check_incoming, "message", "addr", "protocol")
    parameters(Connection.check_state, "pair", "state")
    parameters(Connection.check_start_task, "pair")
    parameters(Connection.get_component_candidates, "component", "addresses", "timeout")
    assert inspect.iscoroutinefunction(Connection.get_component_candidates), \
        "INTERNAL Connection.get_component_candidates is no longer a coroutine"
    for state in ("IN_PROGRESS", "WAITING"):
        has(CandidatePair.State, state)
    pair = CandidatePair(object(), object())
    for name in ("task", "protocol", "state"):
        has(pair, name)
    for name in ("remote_addr", "local_candidate", "remote_candidate"):
        assert name in dir(CandidatePair) or hasattr(pair, name), \
            f"INTERNAL CandidatePair.{name} is gone"


def run_pair(prepare_server, check):
    """Two aiortc peers over loopback (a control channel, host candidates on
    127.0.0.1): ``prepare_server(server)`` runs after the offer is applied and before
    the answer is made, ``await check(client, server)`` once the channel is open."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from homechannel.rtc import webrtc

    async def main():
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        opened = asyncio.get_running_loop().create_future()
        server.on("datachannel", lambda channel: opened.done() or opened.set_result(channel))
        try:
            client.createDataChannel("control")
            webrtc.advertise_host_addresses(client, ["127.0.0.1"])
            await client.setLocalDescription(await client.createOffer())
            await server.setRemoteDescription(
                RTCSessionDescription(client.localDescription.sdp, "offer"))
            webrtc.advertise_host_addresses(server, ["127.0.0.1"])
            prepare_server(server)
            await server.setLocalDescription(await server.createAnswer())
            await client.setRemoteDescription(
                RTCSessionDescription(server.localDescription.sdp, "answer"))
            await asyncio.wait_for(opened, 20)
            await check(client, server)
        finally:
            await client.close()
            await server.close()

    asyncio.run(main())


def test_the_internals_at_work_in_a_real_connection():
    """Two aiortc peers over loopback: the gatherers' ``_connection`` is aioice's
    ``Connection`` and calls our instance wrappers (the host address we advertise is
    gathered, ``check_incoming`` is looked up on the instance); after DTLS,
    ``RTCDtlsTransport._ssl`` gives the peer's certificate
    (``get_peer_certificate(as_cryptography=True)``) and
    ``RTCIceTransport._connection._nominated`` the pair used."""
    from aioice import Connection

    from homechannel.rtc import icechecks, webrtc

    incoming = []

    def prepare(server):
        for gatherer in webrtc.ice_gatherers(server):
            connection = has(gatherer, "_connection")
            assert isinstance(connection, Connection), \
                "INTERNAL RTCIceGatherer._connection is not an aioice Connection"
            icechecks.prompt_connection(connection)
            wrapped = connection.check_incoming

            def check_incoming(message, addr, protocol, _wrapped=wrapped):
                incoming.append(addr)
                _wrapped(message, addr, protocol)

            connection.check_incoming = check_incoming

    async def check(client, server):
        assert "127.0.0.1" in server.localDescription.sdp, \
            "INTERNAL Connection.get_component_candidates: the advertised address " \
            "was not gathered"
        assert incoming, "INTERNAL aioice no longer calls check_incoming on the " \
                         "instance (our wrapper never ran)"
        dtls = server.sctp.transport
        has(dtls, "_ssl")
        has(dtls.transport, "_connection")
        has(dtls.transport._connection, "_nominated")
        presented = webrtc.remote_fingerprint(server)
        expected = [f.value for f in client.sctp.transport.getLocalParameters().fingerprints
                    if f.algorithm == "sha-256"]
        assert presented is not None and presented.lower() in [e.lower() for e in expected],\
            "INTERNAL RTCDtlsTransport._ssl: the peer's certificate cannot be read"
        assert webrtc.selected_pair(server) == ("host", "host"), \
            "INTERNAL RTCIceTransport._connection._nominated: no pair found"

    run_pair(prepare, check)


def test_aiortc_sctp_receive_window():
    """``webrtc.set_receive_window``: ``RTCSctpTransport._advertised_rwnd`` is the
    window aiortc advertises in its INIT / INIT ACK (and SACKs) while the association
    is CLOSED (``_association_state``, ``State``).  Checked on the wire: the offerer
    sets the window the answerer advertised as its ``_ssthresh`` (RFC 4960 7.2.1).
    The UDP sockets (aioice's ``Connection._protocols``) get receive buffers twice
    the window (the kernel reports twice that again; run as root here, so
    ``SO_RCVBUFFORCE`` is allowed).  Once the association started it is refused.
    How this was shown to fail: with the assignment in ``set_receive_window`` left
    out, the peer saw 1048576; without ``raise_socket_buffers``, the buffers were
    aioice's 524288."""
    from aiortc.rtcsctptransport import RTCSctpTransport

    from homechannel.rtc import webrtc

    has(RTCSctpTransport, "State")
    has(RTCSctpTransport.State, "CLOSED")
    size = 3 * 1024 * 1024 + 5

    def prepare(server):
        assert isinstance(has(server.sctp, "_advertised_rwnd"), int), \
            "INTERNAL RTCSctpTransport._advertised_rwnd is not an int"
        has(server.sctp, "_association_state")
        webrtc.set_receive_window(server, size)

    async def check(client, server):
        seen = has(client.sctp, "_ssthresh")
        assert seen == size, f"INTERNAL RTCSctpTransport._advertised_rwnd: the peer saw " \
                             f"a window of {seen}, not the {size} set"
        for gatherer in webrtc.ice_gatherers(server):
            protocols = has(has(gatherer, "_connection"), "_protocols")
            sizes = [p.transport.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF) for p in protocols]
            assert sizes and min(sizes) >= 4 * size, \
                f"INTERNAL aioice Connection._protocols: UDP receive buffers {sizes}"
        with pytest.raises(RuntimeError, match="after the SCTP association started"):
            webrtc.set_receive_window(server, size)

    run_pair(prepare, check)


def test_pyopenssl_peer_certificate_as_cryptography():
    from OpenSSL import SSL

    parameters(SSL.Connection.get_peer_certificate, "as_cryptography")


# -- Twisted ----------------------------------------------------------------------------


def test_twisted_http_channel_aborting_call():
    """``httpserver.LimitedChannel`` sets ``HTTPChannel._abortingCall`` (as Twisted does
    after a timeout) and relies on ``connectionLost`` cancelling it, and on
    ``forceAbortClient`` and ``abortTimeout``."""
    from twisted.internet import task
    from twisted.internet.testing import StringTransport
    from twisted.web import http

    channel = http.HTTPChannel()
    assert has(channel, "_abortingCall") is None
    has(channel, "forceAbortClient")
    has(channel, "abortTimeout")
    clock = task.Clock()
    channel.callLater = clock.callLater
    channel.makeConnection(StringTransport())
    call = channel._abortingCall = clock.callLater(15, lambda: None)
    channel.connectionLost(None)
    assert not call.active(), "INTERNAL HTTPChannel.connectionLost no longer cancels " \
                              "_abortingCall"


def test_twisted_http_channel_path_of_the_request_line():
    """``httpserver.LimitedChannel`` reads ``HTTPChannel._path`` (the request line's
    path, while the request arrives) to sign its 408 and 413 answers."""
    from twisted.internet.testing import StringTransport
    from twisted.web import http

    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /api/connect?x=1 HTTP/1.1\r\n")
    assert getattr(channel, "_path", None) == b"/api/connect?x=1", \
        "INTERNAL HTTPChannel._path is not the request line's path"
    channel.connectionLost(None)


def test_twisted_endpoint_service_raise_synchronously():
    """``coordinator/tap.py`` sets ``StreamServerEndpointService._raiseSynchronously``
    (as ``strports.service`` does), so that a port that cannot be bound stops the
    daemon at start instead of being logged."""
    from twisted.application import internet
    from twisted.internet import defer

    class Refusing:
        def listen(self, factory):
            return defer.fail(OSError("address in use"))

    service = internet.StreamServerEndpointService(Refusing(), None)
    has(service, "_raiseSynchronously")
    service._raiseSynchronously = True
    with pytest.raises(OSError):
        service.privilegedStartService()
