"""``homechannel/rtc/webrtc.py``: which TURN URL the native client gathers again with
when the one aiortc used gave no relay candidate (``relay_alternative``)."""

import pytest

from homechannel.rtc import webrtc

UDP = {"urls": "turn:t.example:3478?transport=udp", "username": "u", "credential": "c"}
TCP = {"urls": "turn:t.example:3478?transport=tcp", "username": "u", "credential": "c"}
TLS = {"urls": "turns:t.example:5349?transport=tcp", "username": "u", "credential": "c"}
STUN = "stun:t.example:3478"
HOST_ONLY = "a=candidate:1 1 udp 2130706431 10.2.0.2 5000 typ host\r\n"
WITH_RELAY = HOST_ONLY + "a=candidate:2 1 udp 8015 203.0.113.10 49200 typ relay raddr 0.0.0.0 rport 0\r\n"


def urls(servers):
    return None if servers is None else [s.urls for s in servers]


@pytest.mark.parametrize("entries, sdp, first", [
    ([STUN, UDP, TCP], HOST_ONLY, TCP["urls"]),          # UDP gave none: TCP next
    ([STUN, UDP, TLS], HOST_ONLY, TLS["urls"]),
    ([STUN, UDP, TCP, TLS], HOST_ONLY, TCP["urls"]),     # the first listed other one
    ([STUN, UDP, TCP], WITH_RELAY, None),                # the relay came: nothing to do
    ([STUN, UDP], HOST_ONLY, None),                      # no other transport listed
    ([STUN], HOST_ONLY, None),                           # no TURN at all
    ([STUN, TCP, UDP], HOST_ONLY, UDP["urls"]),          # TCP was used (first): UDP next
    ([STUN, {"urls": [UDP["urls"], TCP["urls"]], "username": "u", "credential": "c"}],
     HOST_ONLY, TCP["urls"]),                            # one entry with both URLs
    ([STUN, {"urls": UDP["urls"]}, TCP], HOST_ONLY, TCP["urls"]),  # no credential: aiortc
                                                        # still picks it, TCP comes next
])
def test_relay_alternative(entries, sdp, first):
    servers = webrtc.ice_servers(entries)
    got = webrtc.relay_alternative(servers, sdp)
    if first is None:
        assert got is None
    else:
        assert urls(got)[0] == first
        assert got[0].username == "u" and got[0].credential == "c"
        assert urls(got)[1:] == urls(servers)      # the rest as they were


# -- IPv6 literals in ICE URLs (aiortc's parser rejects them) ----------------------------


@pytest.mark.parametrize("url", [
    "stun:[2001:db8::1]:7777", "stun:[::1]", "turn:[2001:db8::1]:3478?transport=tcp",
    "turns:[::ffff:192.0.2.1]:5349", "stun:[2001:db8:0:0:1:2:3:4]:1"])
def test_an_ipv6_literal_gets_a_stand_in_that_aiortc_parses_and_back(url):
    """How this was shown to fail: with ``aiortc_url`` returning the URL as it is,
    aiortc's parser raises "malformed uri"."""
    from aiortc.rtcicetransport import parse_stun_turn_uri

    stand_in = webrtc.aiortc_url(url)
    parsed = parse_stun_turn_uri(stand_in)
    assert webrtc.literal_host(parsed["host"]) == url.split("[")[1].split("]")[0]
    assert webrtc.display_url(stand_in) == url


@pytest.mark.parametrize("url", ["stun:t.example:3478", "turn:192.0.2.1:3478?transport=udp",
                                 "not a url"])
def test_names_and_ipv4_are_left_alone(url):
    """How this was shown to fail: with the stand-in made for every bracketless host
    too, a name became a stand-in that never resolves."""
    assert webrtc.aiortc_url(url) == url == webrtc.display_url(url)
    assert webrtc.literal_host("t.example") == "t.example"


def test_a_stun_server_aioice_can_use_goes_first():
    """aiortc uses the first STUN URL only, and aioice asks it from IPv4 host
    addresses only: an IPv6-literal one listed first would leave the IPv4 side
    without a server-reflexive candidate, so a usable one is put first.  How this was
    shown to fail: without that insertion the first STUN URL stayed the IPv6 one."""
    servers = webrtc.ice_servers(["stun:[2001:db8::10]:7777", UDP, "stun:203.0.113.10:7777"])
    assert urls(servers)[0] == "stun:203.0.113.10:7777"
    assert urls(servers)[1:] == [webrtc.aiortc_url("stun:[2001:db8::10]:7777"), UDP["urls"],
                                 "stun:203.0.113.10:7777"]
    only_v6 = webrtc.ice_servers(["stun:[2001:db8::10]:7777"])
    assert urls(only_v6) == [webrtc.aiortc_url("stun:[2001:db8::10]:7777")]
    assert urls(webrtc.ice_servers([STUN, "stun:[::1]:1"])) == [STUN, webrtc.aiortc_url(
        "stun:[::1]:1")]


def test_two_aiortc_peers_connect_over_ipv6_with_ipv6_literal_ice_servers():
    """Both ends with IPv6-literal STUN and TURN URLs (as a coordinator reachable
    only over IPv6 hands out) and ``::1`` as their one host address: the ICE
    connections get the literal addresses back, and the peers connect over IPv6.
    How this was shown to fail: without the stand-in names (``aiortc_url`` returning
    the URL) the peer connection raises "malformed uri"; without advertising ``::1``
    (aioice never offers loopback) nothing connects."""
    import asyncio

    from aiortc import RTCSessionDescription

    entries = ["stun:[::1]:9", {"urls": "turn:[::1]:9?transport=tcp", "username": "u",
                                "credential": "c"}]

    async def main():
        client = webrtc.peer_connection(webrtc.ice_servers(entries))
        server = webrtc.peer_connection(webrtc.ice_servers(entries))
        opened = asyncio.get_running_loop().create_future()
        server.on("datachannel", lambda ch: opened.done() or opened.set_result(ch))
        try:
            client.createDataChannel("control")
            webrtc.prepare_gathering(client, ["::1"])
            for gatherer in webrtc.ice_gatherers(client):
                assert gatherer._connection.stun_server == ("::1", 9)
                assert gatherer._connection.turn_server == ("::1", 9)
                gatherer._connection.turn_server = None   # nothing listens there
            await client.setLocalDescription(await client.createOffer())
            await server.setRemoteDescription(
                RTCSessionDescription(client.localDescription.sdp, "offer"))
            webrtc.prepare_gathering(server, ["::1"])
            for gatherer in webrtc.ice_gatherers(server):
                gatherer._connection.turn_server = None
            await server.setLocalDescription(await server.createAnswer())
            await client.setRemoteDescription(
                RTCSessionDescription(server.localDescription.sdp, "answer"))
            await asyncio.wait_for(opened, 20)
            pair = server.sctp.transport.transport._connection._nominated[1]
            assert pair.local_candidate.host == pair.remote_candidate.host == "::1"
        finally:
            await client.close()
            await server.close()

    asyncio.run(main())
