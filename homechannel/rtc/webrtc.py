"""WebRTC helpers shared by the home server's answerer and the native client.

The one place for what both aiortc sides need: ICE servers from settings
(IPv6 literals included), the peer connection factory, which host addresses to
advertise, the SCTP receive window (and the UDP receive buffers that hold it),
the DTLS certificate the peer actually presented, which candidate pair was used,
and which TURN URL to try next when the first gave no relay.
Nothing here imports aiortc at module import time.

ICE URLs with IPv6 literals
---------------------------

aiortc's URL parser (``aiortc.rtcicetransport.parse_stun_turn_uri``) rejects a
host in brackets: ``stun:[2001:db8::1]:7777`` is "malformed uri", raised when
the peer connection makes its ICE transport.  aioice itself takes an IPv6
server address.  So :func:`ice_servers` hands aiortc such a URL with a stand-in
name for the address (``2001-db8--1.ipv6-literal.homechannel.invalid``: the
address with ``-`` for ``:``, under the reserved ``.invalid`` domain, so it can
never resolve to anything else), and :func:`prepare_gathering` puts the
address back into each ICE connection before it gathers (aioice's
``Connection.stun_server`` and ``turn_server``).  Every caller goes through
these two; ``tests/unit/test_webrtc.py`` fails when aiortc's parser or
aioice's attributes change.  aiortc uses the first STUN URL only, and aioice
asks it only from IPv4 host addresses (an IPv6 host address is its own public
address: no NAT), so :func:`ice_servers` puts a STUN server it can use (a
name or an IPv4 address) first when the list has one.

Which host addresses to advertise
---------------------------------

aioice gathers host candidates from every interface address except loopback
(``aioice.ice.get_host_addresses``), and aiortc has no public knob for it.  The
``webrtc.advertise_addresses`` setting lists extra host addresses (for example
``["127.0.0.1"]`` in a loopback-only test namespace, or one fixed LAN address).
They are added per connection, never by patching aioice's module globals: each
ICE gatherer's ``Connection.get_component_candidates`` (the coroutine that
binds one UDP socket per address and makes a host candidate of it) is wrapped
on that instance only, so every other connection in the process is untouched.
"""

import ipaddress

from homechannel import crypto
from homechannel.errors import ConfigError
from homechannel.protocol.ice import ICE_URL

# The stand-in name aiortc gets for an IPv6 literal (see the module docstring).
LITERAL_SUFFIX = ".ipv6-literal.homechannel.invalid"


def aiortc_url(url):
    """*url* as aiortc's parser takes it: an IPv6 literal host replaced by its
    stand-in name; any other URL unchanged."""
    m = ICE_URL.match(url)
    if m is None or not m["host"].startswith("["):
        return url
    stand_in = m["host"][1:-1].replace(":", "-") + LITERAL_SUFFIX
    return url[:m.start("host")] + stand_in + url[m.end("host"):]


def literal_host(host):
    """The IPv6 address a stand-in name stands for; any other host unchanged."""
    if isinstance(host, str) and host.endswith(LITERAL_SUFFIX):
        return host[:-len(LITERAL_SUFFIX)].replace("-", ":")
    return host


def display_url(url):
    """A URL :func:`ice_servers` gave aiortc, as the user wrote it (for messages)."""
    m = ICE_URL.match(url)
    if m is None or not m["host"].endswith(LITERAL_SUFFIX):
        return url
    return url[:m.start("host")] + f"[{literal_host(m['host'])}]" + url[m.end("host"):]


def _urls(server):
    return server.urls if isinstance(server.urls, list) else [server.urls]


def ice_servers(entries):
    """ICE server settings (RTCIceServer dicts or URL strings) to aiortc objects.

    aiortc uses only the first STUN and the first TURN entry, and aioice
    silently drops a TURN entry without credentials.  IPv6 literals get their
    stand-in names (:func:`aiortc_url`; :func:`prepare_gathering` restores them),
    and a STUN URL aioice can use goes first (the module docstring)."""
    from aiortc import RTCIceServer

    servers = []
    for entry in entries or ():
        if isinstance(entry, str):
            entry = {"urls": entry}
        urls = entry["urls"]
        urls = aiortc_url(urls) if isinstance(urls, str) else [aiortc_url(u) for u in urls]
        servers.append(RTCIceServer(urls=urls, username=entry.get("username"),
                                    credential=entry.get("credential")))
    stun = [u for server in servers for u in _urls(server) if u.startswith("stun:")]
    usable = next((u for u in stun if LITERAL_SUFFIX not in u), None)
    if usable is not None and stun[0] != usable:
        servers.insert(0, RTCIceServer(urls=usable))
    return servers


def prepare_gathering(pc, addresses=()):
    """Ready *pc*'s ICE connections to gather: IPv6 literals of ICE servers back in
    place of their stand-in names, and the extra host *addresses* advertised
    (:func:`advertise_host_addresses`).  Call it where that one must be called."""
    for gatherer in ice_gatherers(pc):
        connection = gatherer._connection  # aioice.Connection; no public accessor exists
        for name in ("stun_server", "turn_server"):
            server = getattr(connection, name)
            if server is not None and literal_host(server[0]) != server[0]:
                setattr(connection, name, (literal_host(server[0]), server[1]))
    advertise_host_addresses(pc, addresses)


def relay_alternative(servers, sdp):
    """ICE servers to gather again with, when the TURN URL aiortc used gave no relay.

    aioice uses one TURN URL: the first usable one (``connection_kwargs``).  When the
    local description *sdp* has no relay candidate from it (a network that lets no
    UDP out, or nothing to that port) and a later URL reaches the relay over another
    transport (``?transport=tcp``, ``turns:``), the servers with that one first;
    otherwise None.  Browsers try every TURN URL themselves."""
    from aiortc import RTCIceServer
    from aiortc.rtcicetransport import connection_kwargs

    def transport(kwargs):
        return (kwargs["turn_transport"], kwargs["turn_ssl"]) if "turn_server" in kwargs else None

    used = transport(connection_kwargs(list(servers)))
    if used is None or " typ relay" in sdp:
        return None
    for server in servers:
        for url in _urls(server):
            alternative = RTCIceServer(urls=url, username=server.username,
                                       credential=server.credential)
            try:
                other = transport(connection_kwargs([alternative]))
            except ValueError:
                continue
            if other is not None and other != used:
                return [alternative, *servers]
    return None


def peer_connection(servers):
    """A new RTCPeerConnection with exactly these (aiortc) ICE servers, never the
    default public STUN server, whose SDP carries one sha-256 fingerprint.

    aiortc lists its certificate's sha-256, sha-384 and sha-512 fingerprints;
    HomeChannel accepts exactly one fingerprint attribute per SDP
    (``protocol.sdp.fingerprint``), so each certificate of this connection is
    told to list only its sha-256 one.  aiortc has no public knob: the
    certificates are the connection's own (made in its constructor), and only
    their instance attribute is replaced.
    """
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(servers)))
    for certificate in getattr(pc, "_RTCPeerConnection__certificates", ()):
        fingerprints = certificate.getFingerprints
        certificate.getFingerprints = lambda _all=fingerprints: [
            f for f in _all() if f.algorithm == "sha-256"]
    return pc


# The SCTP receive window this end advertises (bytes).  aiortc advertises 1 MiB, so
# a peer may have at most 1 MiB unacknowledged on the way here: an upload from a
# browser is capped at 1 MiB per round trip (10 MB/s at 100 ms), whatever the link
# carries.  2 MiB lifts that cap to 20 MB/s at 100 ms, about what aiortc (pure
# Python) receives on a quiet machine.  Not more: the window also bounds how much
# data aiortc holds out of order after a loss, and aiortc's reassembly and SACK
# bookkeeping cost grows with the square of that (a linear scan per chunk, a sort
# of every out-of-order TSN per packet).  With 8 MiB, a new connection's first
# upload, whose slow start overshoots, ran at 0.2-0.5 MB/s instead of 4 while
# aiortc ground through it (docs/performance.md, "Over a WAN link").
RECEIVE_WINDOW = 2 * 1024 * 1024


def set_receive_window(pc, size=RECEIVE_WINDOW, too_small=None) -> None:
    """Advertise an SCTP receive window of *size* bytes on *pc*, and give its UDP
    sockets a receive buffer that holds it.

    Call it once the SCTP transport exists and before it starts (as for
    ``advertise_host_addresses``: for an answerer after ``setRemoteDescription``,
    for an offerer after ``createDataChannel``).  aiortc has no knob: its
    ``RTCSctpTransport`` keeps the window it advertises (in INIT, INIT ACK and every
    SACK) in ``_advertised_rwnd``, a counter that received data lowers and
    delivered messages raise again; before the association starts it holds the
    initial window.  Raises RuntimeError if aiortc changed that
    (``tests/unit/test_library_internals.py`` checks it on the installed aiortc).

    The window counts only what aiortc has read from its socket.  What the peer
    sends within it first waits in the UDP socket's receive buffer, which aioice
    sets to 256 KiB; a burst larger than that while aiortc (pure Python) is busy is
    dropped by the kernel (``RcvbufErrors`` in ``/proc/net/snmp``), and the
    sender's congestion control takes each drop for congestion.  So the buffer is
    raised to twice *size* (see :func:`raise_socket_buffers`): the kernel counts a
    1,200-byte datagram as about twice that (its buffer overhead), so this holds a
    whole window of payload.  Where the kernel gives less (``SO_RCVBUF`` is capped
    by the ``net.core.rmem_max`` sysctl unless the process may force it),
    ``too_small(got, wanted)`` is called, in bytes."""
    sctp = pc.sctp
    if sctp is None:
        raise RuntimeError("set_receive_window() called before the SCTP transport exists")
    current = getattr(sctp, "_advertised_rwnd", None)
    if not isinstance(current, int):
        raise RuntimeError("aiortc's RTCSctpTransport has no integer _advertised_rwnd any "
                           "more: the receive window cannot be raised (see "
                           "homechannel/rtc/webrtc.py, set_receive_window)")
    if sctp._association_state != sctp.State.CLOSED:
        raise RuntimeError("set_receive_window() called after the SCTP association started")
    sctp._advertised_rwnd = int(size)
    for gatherer in ice_gatherers(pc):
        if gatherer.state != "new":
            raise RuntimeError("set_receive_window() called after ICE gathering started")
        connection = gatherer._connection  # aioice.Connection; no public accessor exists
        original = connection.get_component_candidates

        async def get_component_candidates(component, addresses, timeout=5,
                                           _original=original, _connection=connection):
            candidates = await _original(component=component, addresses=addresses,
                                         timeout=timeout)
            got = raise_socket_buffers(_connection, 2 * size)
            if got and min(got) < 4 * size and too_small is not None:
                too_small(min(got) // 2, 2 * size)
            return candidates

        connection.get_component_candidates = get_component_candidates


SO_RCVBUFFORCE = 33  # Linux (asm-generic/socket.h); Python's socket module lacks it


def raise_socket_buffers(connection, size) -> list:
    """Give the UDP sockets of the aioice *connection* (its ``_protocols``, host and
    relay) a receive buffer of *size* bytes: ``SO_RCVBUFFORCE`` where the process
    may (root, CAP_NET_ADMIN), else ``SO_RCVBUF``, which the kernel caps at the
    ``net.core.rmem_max`` sysctl.  Returns the sizes the kernel reports (twice what
    it was given, for its bookkeeping)."""
    import socket

    got = []
    for protocol in getattr(connection, "_protocols", ()):
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.type != socket.SOCK_DGRAM:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        got.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return got


def remote_fingerprint(pc):
    """The sha-256 fingerprint of the DTLS certificate the peer actually presented,
    or None before the DTLS handshake completed.

    aiortc checks the certificate against *every* fingerprint the remote SDP
    lists for the section it uses; HomeChannel binds exactly one, so each end
    compares the certificate itself with the one it bound (docs/security.md).
    aiortc has no public accessor: this reads the pyOpenSSL connection of the
    SCTP transport's DTLS transport.
    """
    sctp = getattr(pc, "sctp", None)
    dtls = getattr(sctp, "transport", None)
    ssl = getattr(dtls, "_ssl", None)
    if ssl is None or getattr(dtls, "state", None) not in ("connected", "closed"):
        return None
    certificate = ssl.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding

    return crypto.certificate_fingerprint(certificate.public_bytes(Encoding.DER))


def _nominated(pc):
    """aioice's nominated candidate pair of *pc*'s data transport, or None."""
    sctp = getattr(pc, "sctp", None)
    ice = getattr(getattr(getattr(sctp, "transport", None), "transport", None),
                  "_connection", None)
    pair = None
    for check in getattr(ice, "_nominated", {}).values() if ice is not None else ():
        pair = check
    return pair


def selected_pair(pc):
    """``"host"``/``"srflx"``/``"prflx"``/``"relay"`` of the local and remote
    candidates of the nominated pair, e.g. ``("host", "srflx")``, or None."""
    pair = _nominated(pc)
    if pair is None:
        return None
    return pair.local_candidate.type, pair.remote_candidate.type


def selected_family(pc):
    """``"IPv6"`` or ``"IPv4"``: the family of the nominated pair, or None."""
    from homechannel.protocol.hostport import ip_family

    pair = _nominated(pc)
    return ip_family(pair.remote_candidate.host) if pair is not None else None


def describe_path(pc):
    """The path a connection took, for a log line: ``host/srflx over IPv6``."""
    pair = selected_pair(pc)
    if pair is None:
        return "unknown"
    family = selected_family(pc)
    return "/".join(pair) + (f" over {family}" if family else "")


def parse_addresses(addresses) -> tuple:
    """Validate a list of IP address strings; return them as a normalised tuple."""
    if isinstance(addresses, str):
        raise ConfigError("webrtc.advertise_addresses must be a list of IP addresses, "
                          f"e.g. [{addresses!r}]")
    result = []
    for text in addresses or ():
        try:
            address = str(ipaddress.ip_address(text))
        except (ValueError, TypeError):
            raise ConfigError(f"webrtc.advertise_addresses: {text!r} is not an IP address") from None
        if address not in result:
            result.append(address)
    return tuple(result)


def ice_gatherers(pc):
    """The ICE gatherers of *pc* (its SCTP transport and its transceivers), each once."""
    seen = []
    transports = []
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for transceiver in pc.getTransceivers():
        transports.append(transceiver.sender.transport)
    for dtls in transports:
        if dtls is None:
            continue
        gatherer = dtls.transport.iceGatherer
        if all(gatherer is not g for g in seen):
            seen.append(gatherer)
    return seen


def advertise_host_addresses(pc, addresses) -> None:
    """Make *pc* also gather host candidates on *addresses*.

    Call it after the transports exist and before gathering starts: for an
    answerer after ``setRemoteDescription``, for an offerer after
    ``createDataChannel``; in both cases before ``setLocalDescription``.
    Calling it again on the same connection does not add the addresses twice.
    """
    extra = parse_addresses(addresses)
    if not extra:
        return
    for gatherer in ice_gatherers(pc):
        if gatherer.state != "new":
            raise RuntimeError("advertise_host_addresses() called after ICE gathering started")
        connection = gatherer._connection  # aioice.Connection; no public accessor exists
        if getattr(connection, "_homechannel_extra_addresses", None) is not None:
            connection._homechannel_extra_addresses = extra
            continue
        connection._homechannel_extra_addresses = extra
        original = connection.get_component_candidates

        async def get_component_candidates(component, addresses, timeout=5,
                                           _original=original, _connection=connection):
            merged = list(addresses)
            for address in _connection._homechannel_extra_addresses:
                if address not in merged:
                    merged.append(address)
            return await _original(component=component, addresses=merged, timeout=timeout)

        connection.get_component_candidates = get_component_candidates
