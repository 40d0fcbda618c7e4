"""``HOST:PORT`` (homechannel/protocol/hostport.py), the one parser behind the home
server's ``--coordinator`` and ``coordinator.addresses``, ``homechannel migrate --to``
and ``homechannel forward --listen``: names, IPv4 and bracketed IPv6 addresses are
read (IPv6 given back without brackets), an IPv6 address without brackets is refused
with the advice to add them, and each caller keeps its own wording around the hint."""

import pytest
from hypothesis import given, strategies as st

from homechannel.errors import ConfigError
from homechannel.protocol.hostport import (
    IPV6_HINT,
    HostPortError,
    format_host_port,
    parse_host_port,
)


@pytest.mark.parametrize("text,expected", [
    ("coordinator.example.org:7777", ("coordinator.example.org", 7777)),
    ("192.0.2.1:1", ("192.0.2.1", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("[2001:db8::1]:7777", ("2001:db8::1", 7777)),
    ("[::1]:2222", ("::1", 2222)),
    ("[::ffff:192.0.2.1]:80", ("::ffff:192.0.2.1", 80)),
    ("[fe80::1%eth0]:22", ("fe80::1%eth0", 22)),
])
def test_names_ipv4_and_bracketed_ipv6(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text,hint", [
    ("nowhere", ""),
    ("host:", ""),
    ("host:0", ""),
    ("host:65536", ""),
    ("host:-1", ""),
    ("host:12a", ""),
    ("host:\u0662\u0662", ""),          # Arabic-Indic digits: isdigit() says yes
    (":7777", ""),
    ("[::1]", ""),
    ("[::1]:", ""),
    ("2001:db8::1:7777", "in brackets"),
    ("::1", "in brackets"),
    ("2001:db8::1", "in brackets"),
    ("[nonsense]:80", "not an IPv6 address in brackets"),
    ("[192.0.2.1]:80", "not an IPv6 address in brackets"),
    ("[::1:80", "not an IPv6 address in brackets"),
    ("::1]:80", "not an IPv6 address in brackets"),
    ("h\u00e9.example:22", "ASCII"),
    ("a b:22", "not a host name or address"),
    ("host/path:22", "not a host name or address"),
])
def test_mistakes_are_refused_with_a_hint_where_one_helps(text, hint):
    with pytest.raises(HostPortError) as caught:
        parse_host_port(text)
    assert caught.value.hint == hint or hint in caught.value.hint
    if not hint:
        assert caught.value.hint == ""
    assert caught.value.explain("X") == (f"X; {caught.value.hint}" if hint else "X")


def test_none_is_refused():
    with pytest.raises(HostPortError):
        parse_host_port(None)


def test_default_host_and_port_zero_only_when_asked():
    assert parse_host_port(":2222", default_host="127.0.0.1") == ("127.0.0.1", 2222)
    assert parse_host_port("127.0.0.1:0", port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(HostPortError):
        parse_host_port("127.0.0.1:0")


@given(st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
), st.integers(1, 65535))
def test_format_then_parse_round_trips(host, port):
    """What ``format_host_port`` writes (brackets around IPv6) reads back as given."""
    text = format_host_port(host, port)
    assert text.startswith("[") == (":" in host)
    assert parse_host_port(text) == (host, port)


# -- each caller keeps its own wording ---------------------------------------------------


def test_config_addresses():
    from homechannel.config import ServerCoordinator

    cfg = ServerCoordinator(addresses=("[2001:db8::1]:7777", "node.example:7778"))
    assert cfg.candidates() == [("2001:db8::1", 7777), ("node.example", 7778)]
    with pytest.raises(ConfigError, match=r"coordinator.addresses\[0\]: '2001:db8::1:7777' is "
                                          r"not HOST:PORT .*; write an IPv6 address in "
                                          r"brackets"):
        ServerCoordinator(addresses=("2001:db8::1:7777",))


def test_home_server_coordinator_option():
    from twisted.python import usage

    from homechannel.server.tap import Options

    options = Options()
    options.parseOptions(["--coordinator", "[2001:db8::7]:7000"])
    overrides = options.overrides()
    assert (overrides["coordinator.host"], overrides["coordinator.port"]) == ("2001:db8::7", 7000)
    for bad, words in (("2001:db8::7:7000", IPV6_HINT), ("host", "--coordinator must be "
                                                                  "HOST:PORT")):
        options = Options()
        options.parseOptions(["--coordinator", bad])
        with pytest.raises(usage.UsageError) as caught:
            options.overrides()
        assert words in str(caught.value)
        assert str(caught.value).startswith("--coordinator must be HOST:PORT")


def test_migrate_to():
    from clirun import one_clear_line, run

    from homechannel import crypto

    key = crypto.IdentityKey.generate().text
    one_clear_line(run("migrate", "--to", "2001:db8::1:7777", "--key", key),
                   "--to '2001:db8::1:7777': expected HOST:PORT of the new coordinator's UDP",
                   IPV6_HINT)


def test_forward_listen():
    from homechannel.cli.client import parse_listen

    assert parse_listen("[::1]:2222") == ("::1", 2222)
    assert parse_listen(":2222") == ("127.0.0.1", 2222)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match=r"--listen '::1:2222': expected HOST:PORT, e\.g\. "
                                          r"127\.0\.0\.1:2222; write an IPv6 address"):
        parse_listen("::1:2222")
