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
