"""ICE servers (homechannel/protocol/ice.py): one validator behind the config's
``ice_servers`` settings, the native client's ``--ice-server`` and the ICE servers a
payload carries (a lookup's, an offer's).  The same mistake is refused in both
flavours: a ConfigError naming the config key for the operator, a ProtocolError
blaming the coordinator for a payload.  STUN and TURN URLs are read as RFC 7064 and
RFC 7065 write them."""

import pytest

from homechannel import config
from homechannel.errors import ConfigError, ProtocolError
from homechannel.protocol import connect, ice


@pytest.mark.parametrize("url", [
    "stun:stun.example.org",
    "stun:stun.example.org:3478",
    "stuns:stun.example.org:5349",
    "stun:192.0.2.1:3478",
    "stun:[2001:db8::1]:3478",
    "stun:[::ffff:192.0.2.1]",
    "turn:turn.example.org",
    "turn:turn.example.org:3478?transport=udp",
    "turn:turn.example.org:3478?transport=tcp",
    "turns:turn.example.org:443?transport=tcp",
    "turn:[2001:db8::2]:3478?transport=udp",
])
def test_urls_as_the_rfcs_write_them(url):
    assert ice.ice_url_problem(url) is None
    entry = {"urls": url, "username": "u", "credential": "c"}
    assert ice.parse_ice_servers([entry]) == (entry,)
    assert ice.check_ice_servers([entry]) == (entry,)


@pytest.mark.parametrize("url,problem", [
    ("http://stun.example.org", "is not a STUN or TURN URL"),
    ("stun:", "is not a STUN or TURN URL"),
    ("stun:user@stun.example.org", "is not a STUN or TURN URL"),
    ("stun:a b", "is not a STUN or TURN URL"),
    ("stun:stun.example.org:1:2", "is not a STUN or TURN URL"),
    ("stun:stun.example.org\n", "is not a STUN or TURN URL"),
    ("STUN:stun.example.org", "is not a STUN or TURN URL"),     # aiortc reads lower case only
    ("turn:t.example?transport=sctp", "is not a STUN or TURN URL"),
    ("stun:2001:db8::1", "is not a STUN or TURN URL"),
    ("stun:stun.example.org:0", "has an invalid port"),
    ("stun:stun.example.org:65536", "has an invalid port"),
    ("stun:[2001:db8:::1]:3478", "malformed IPv6 address"),
    ("stun:[192.0.2.1]:3478", "malformed IPv6 address"),
    ("stun:stun.example.org?transport=udp", "STUN URL with a transport"),
    ("stun:" + "a" * 600, "is longer than 512 characters"),
])
def test_malformed_urls(url, problem):
    if len(url) <= ice.MAX_ICE_TEXT:
        assert problem in ice.ice_url_problem(url)
    with pytest.raises(ConfigError, match=problem):
        ice.parse_ice_servers([url], "webrtc.ice_servers")
    with pytest.raises(ProtocolError, match=problem):
        ice.check_ice_servers([{"urls": url}])


MISTAKES = [
    ({"urls": "http://a"}, "URL 'http://a' is not a STUN or TURN URL"),
    ({"url": "stun:a"}, ": unknown key 'url'"),
    ({"urls": []}, ": urls must be a URL string or a list of them"),
    ({"urls": ["stun:a", 5]}, ": urls must be a URL string or a list of them"),
    ({"urls": "stun:a", "username": 1}, ": username must be a string"),
    ({"urls": "stun:a", "credential": "x" * 513}, ": credential is longer than 512"),
    ({"urls": "turn:t.example:3478"}, ": a TURN server needs username and credential"),
    ({"urls": "turn:t", "username": "u"}, ": a TURN server needs username and credential"),
    (5, " must be a"),
]


@pytest.mark.parametrize("entry,problem", MISTAKES)
def test_one_mistake_two_flavours(entry, problem):
    """The operator's message names the key and the entry; the payload's blames the
    coordinator.  Shown to fail by dropping the TURN credential check from the payload
    flavour (as the payload checker did before the merge): that row then passes."""
    good = {"urls": "stun:stun.example.org:3478"}
    with pytest.raises(ConfigError) as operator:
        ice.parse_ice_servers([good, entry], "webrtc.ice_servers")
    assert str(operator.value).startswith("webrtc.ice_servers[1]"), operator.value
    assert problem in str(operator.value)
    with pytest.raises(ProtocolError) as payload:
        ice.check_ice_servers([good, entry])
    assert not isinstance(payload.value, ConfigError)
    assert str(payload.value).startswith("the coordinator's ICE server"), payload.value
    assert problem in str(payload.value)


def test_what_only_a_config_or_only_a_payload_may_hold():
    """A config may list bare URL strings and any number of servers; a payload has
    objects only, at most MAX_ICE_SERVERS, and None means none."""
    assert ice.parse_ice_servers(["stun:a:1", "stun:b:2"]) == (
        {"urls": "stun:a:1"}, {"urls": "stun:b:2"})
    with pytest.raises(ProtocolError, match="must be an object with urls"):
        ice.check_ice_servers(["stun:a:1"])
    many = [{"urls": f"stun:s{i}.example:3478"} for i in range(ice.MAX_ICE_SERVERS + 1)]
    assert len(ice.parse_ice_servers(many)) == len(many)
    with pytest.raises(ProtocolError, match=f"at most {ice.MAX_ICE_SERVERS} entries"):
        ice.check_ice_servers(many)
    with pytest.raises(ProtocolError, match="must be a list"):
        ice.check_ice_servers({"urls": "stun:a"})
    assert ice.check_ice_servers(None) == ()
    with pytest.raises(ConfigError, match=r"must be a list, e\.g\."):
        ice.parse_ice_servers("stun:a:1", "web.ice_servers")


def test_the_config_and_the_offer_use_it():
    with pytest.raises(ConfigError, match=r"webrtc.ice_servers\[0\] URL 'stun:a\?transport=udp'"):
        config.load_server(overrides={"webrtc.ice_servers": ["stun:a?transport=udp"]})
    with pytest.raises(ConfigError, match=r"turn.urls\[0\]"):
        config.load_coordinator(overrides={"turn.urls": ["stun:a:3478"],
                                           "turn.secret_file": "/x"})
    offer = connect.Offer("A" * 22, b"c" * 16, b"p" * 32, "v=0\r\n",
                          ice_servers=({"urls": ["turn:[::1"], "username": "u",
                                        "credential": "c"},))
    with pytest.raises(ProtocolError, match="the coordinator's ICE server URL"):
        connect.Offer.decode(offer.encode())
