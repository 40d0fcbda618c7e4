"""IPv6 end to end, across the NAT topologies of tests/support/nat.py made dual-stack
(``ipv6=True``: IPv6 routed, no NAT, each router's IPv6 firewall letting in only
replies), in the test's own network namespaces.  No TURN anywhere.

The coordinator listens on both families; the home server finds it at a name with
both addresses (``nat.COORDINATOR_NAME``) and registers over IPv6 when it can
(Happy Eyeballs, homechannel/server/eyeballs.py)."""

import re
import time

import nat
from daemons import PASSWORD
from natpeers import SELECTED_PAIR, family_of, native_connect, offer_gets_in, path_of


def registered_from(coordinator, pair):
    """The addresses the coordinator logged the home server registering from."""
    return re.findall(rf"registered {re.escape(pair.server_key.text[:12])} from (\S+)",
                      coordinator.output)


def check_browser_goes_direct_over_ipv6(topo, pair, server, nat_chromium, url=None):
    """Chromium in the client namespace connects; its selected pair and the home
    server's are IPv6 and neither end is a relay."""
    from browser import connect, open_link

    page = nat_chromium(topo, url or pair.url)
    open_link(page, pair)
    connect(page, PASSWORD, timeout=30_000)
    selected = page.evaluate(SELECTED_PAIR)
    assert selected is not None
    assert "relay" not in (selected["local"], selected["remote"]), selected
    assert ":" in selected["localAddress"] and ":" in selected["remoteAddress"], selected
    server.wait_for_log(r"session \S+ connected \(", timeout=10)
    assert "relay" not in path_of(server) and family_of(server) == "IPv6", \
        server.output[-2000:]


def check_native_client_goes_direct_over_ipv6(topo, pair, server, tmp_path, *extra, url=None):
    mark = server.mark()
    status, out, path, err = native_connect(topo, pair, tmp_path, *extra, url=url)
    assert status == 0, err
    assert "ping:" in out
    assert path is not None and "relay" not in path and " over IPv6" in err, err
    server.wait_for_log(r"session \S+ connected \(", since=mark, timeout=10)
    assert family_of(server) == "IPv6"


def test_ds_lite_connects_directly_over_ipv6_where_ipv4_would_need_a_relay(
        topology_factory, tmp_path, twistd, nat_chromium):
    """(a) DS-Lite style: both sides' IPv4 behind symmetric NAT (only a relay could
    join them over IPv4, and there is none), IPv6 routed through stateful firewalls
    that let in nothing but replies.  The home server registers over IPv6; Chromium
    and the native client connect directly over IPv6 (host candidates: the
    firewalls open as both ends send their checks).  How this was shown to fail:
    the same topology with ``ipv6=False`` (``start_nat_pair``): neither connects
    (Chromium times out, the native client gives the no-path advice)."""
    topo = topology_factory(home_nat="symmetric", client_nat="symmetric", ipv6=True)
    pair, coordinator, server = nat.start_dual_stack_pair(twistd, tmp_path, topo)
    assert f"registered with coordinator {nat.COORDINATOR_NAME}:{nat.UDP_PORT} over IPv6 " \
           f"([{nat.PUBLIC_HOST6}]:{nat.UDP_PORT})" in server.output, server.output[-2000:]
    # The coordinator's own line (its output is read as it comes: wait for it).
    m = coordinator.wait_for_log(
        rf"registered {re.escape(pair.server_key.text[:12])} from (\S+)", timeout=10)
    assert m.group(1).startswith(f"[{nat.LAN6['home'][1]}]:"), m.group(0)
    check_browser_goes_direct_over_ipv6(topo, pair, server, nat_chromium)
    check_native_client_goes_direct_over_ipv6(topo, pair, server, tmp_path)


def test_ipv6_only_home_network_and_a_dual_stack_client(topology_factory, tmp_path, twistd,
                                                        nat_chromium):
    """(b) The home network has no IPv4 at all; the client is dual-stack and reaches
    the coordinator over IPv4 (its URL is the IPv4 one).  The home server's name
    lookup gives both families, IPv4 cannot be sent, and it registers over IPv6;
    Chromium and the native client reach it over IPv6.  How this was shown to fail:
    with the home server resolving IPv4 addresses only (as ``_all_ipv4`` did) it
    never registers (every send fails: network is unreachable)."""
    topo = topology_factory(client_nat="symmetric", ipv6=True, ipv6_only=("home",))
    pair, coordinator, server = nat.start_dual_stack_pair(twistd, tmp_path, topo)
    assert "over IPv6" in server.output
    assert pair.url == f"http://{nat.PUBLIC_HOST}:{nat.WEB_PORT}"
    check_browser_goes_direct_over_ipv6(topo, pair, server, nat_chromium)
    check_native_client_goes_direct_over_ipv6(topo, pair, server, tmp_path)


def test_a_coordinator_reachable_only_at_an_ipv6_literal_url(topology_factory, tmp_path,
                                                             twistd, nat_chromium):
    """(c) The coordinator listens on its IPv6 address only (UDP and web), and its URL
    is the literal ``http://[2001:db8::10]:8080``: the home server registers with
    ``coordinator.host = "2001:db8::10"``; its STUN URL (``stun:[2001:db8::10]:7777``,
    in /config.js, in the signed lookup, in the relayed offer and the home server's
    own, and the native client's ``--ice-server``) reaches Chromium, the native
    client and the home server's aiortc; both clients connect, and
    ``homechannel connect --url http://[...]`` trusts and
    remembers the coordinator key by that URL.  How this was shown to fail: with
    ``webrtc.aiortc_url`` giving aiortc the URL as it is, the home server refuses
    the offer ("unusable offer SDP: malformed uri") and Chromium never connects
    (before this change, too, the home server never registered: "IPv4 port write()
    called with IPv6 address")."""
    import json

    topo = topology_factory(client_nat="symmetric", home_nat="symmetric", ipv6=True)
    pair, coordinator, server = nat.start_nat_pair(
        twistd, tmp_path, topo, host=nat.PUBLIC_HOST6, udp_interface=nat.PUBLIC_HOST6)
    url = f"http://[{nat.PUBLIC_HOST6}]:{nat.WEB_PORT}"
    assert pair.url == url and pair.link.startswith(url + "/#server=")
    assert f"ICE servers for clients: stun:[{nat.PUBLIC_HOST6}]:{nat.UDP_PORT}" in \
        coordinator.output
    assert "over IPv6" in server.output
    check_browser_goes_direct_over_ipv6(topo, pair, server, nat_chromium, url=url)
    stun = f"stun:[{nat.PUBLIC_HOST6}]:{nat.UDP_PORT}"
    check_native_client_goes_direct_over_ipv6(topo, pair, server, tmp_path,
                                              "--ice-server", stun, url=url)
    trusted = json.loads((tmp_path / "client-config" / "homechannel" /
                          "coordinators.json").read_text())
    assert url in json.dumps(trusted), trusted


# The firewall's idle timeout and the keepalive interval are scaled down together.
SCALE = 10


def test_registration_over_ipv6_survives_a_firewall_that_forgets_idle_udp_after_30s(
        topology_factory, tmp_path, twistd):
    """(d) The home router's IPv6 firewall forgets an idle UDP flow after 30 s (3 s
    here, with the keepalive scaled down as much): the keepalive keeps the pinhole
    open, so after three timeouts of quiet the coordinator's offer gets in at once,
    the firewall has dropped nothing the coordinator sent, and the home server is
    still registered once, over IPv6.  How this was shown to fail: with
    keepalive.interval = 12 s (two minutes unscaled) the firewall drops the
    coordinator's datagrams (the offer) and the counter below is not 0."""
    from homechannel.config import ServerKeepalive

    default = ServerKeepalive()
    topo = topology_factory(home_nat="symmetric", udp_timeout=30 / SCALE, ipv6=True)
    dropped = topo.unsolicited_counter("home", nat.PUBLIC_HOST6, nat.UDP_PORT)
    keepalive = {"interval": default.interval / SCALE, "jitter": default.jitter,
                 "challenge_refresh": default.challenge_refresh / SCALE}
    pair, coordinator, server = nat.start_dual_stack_pair(twistd, tmp_path, topo,
                                                          server={"keepalive": keepalive})
    assert "over IPv6" in server.output
    time.sleep(3 * 30 / SCALE)
    offer_gets_in(topo, pair, tmp_path, server, timeout=15)
    assert dropped() == 0
    assert len(registered_from(coordinator, pair)) == 1, coordinator.output[-3000:]
    assert server.output.count("registered with coordinator") == 1
    assert "lost the coordinator" not in server.output and "failed over" not in server.output


# -- the coordinator's defaults, in the loopback-only namespace ---------------------------


def stun_mapped(family, host, port):
    """The XOR-MAPPED-ADDRESS a STUN Binding request from a *family* socket on *host*
    gets from *host*:*port*, and that socket's own address."""
    import os
    import socket

    from aioice import stun

    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST,
                           transaction_id=os.urandom(12))
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind((host, 0))
        s.sendto(bytes(request), (host, port))
        data, _ = s.recvfrom(1500)
        return stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"], s.getsockname()[:2]


def test_the_default_coordinator_serves_both_families(tmp_path, twistd):
    """The coordinator with the default ``udp.interface`` ("::") and a web endpoint
    without ``interface=``: one home server registers over IPv4 (127.0.0.1), another
    over IPv6 (::1); STUN answers each family with its own XOR-MAPPED-ADDRESS; the
    web answers on both; ``homechannel status`` and the home server's metrics say
    which family each registered over.  How this was shown to fail: with
    ``udp.interface = "0.0.0.0"`` (the old default) the IPv6 server never registers
    and the IPv6 STUN request gets no answer."""
    import json
    import socket
    import subprocess
    import sys
    import urllib.request

    from daemons import make_pair, scrape
    from helpers import free_tcp_port, write_toml

    from homechannel.testing import local

    web = free_tcp_port()
    pair = make_pair(tmp_path, web_port=web, udp_interface="::",
                     coordinator_extra={"web": {"listen": f"tcp:{web}"}})
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    assert f"coordinator: UDP [::]:{pair.udp_port} (IPv6 and IPv4)" in coordinator.output
    # A second home server, with an identity of its own, at the coordinator's ::1.
    sdir = tmp_path / "server6"
    sdir.mkdir()
    key = local.server_keys(str(sdir / "server.key"), str(sdir / "password.json"), PASSWORD)
    metrics6 = free_tcp_port()
    config6 = write_toml(str(tmp_path / "server6.toml"), local.server_config(
        str(sdir), coordinator_key_text=pair.coordinator_key.text, udp_port=pair.udp_port,
        web_port=web, host="::1", metrics_port=metrics6))
    servers = {"IPv4": (twistd("homechannel-server", pair.server_config), pair.server_config),
               "IPv6": (twistd("homechannel-server", config6), config6)}
    for family, (server, _) in servers.items():
        server.wait_for_log(f"registered with coordinator .* over {family}", timeout=20)
    coordinator.wait_for_log(rf"registered {key.text[:12]} from \[::1\]:", timeout=5)
    coordinator.wait_for_log(rf"registered {pair.server_key.text[:12]} from 127\.0\.0\.1:",
                             timeout=5)

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        mapped, own = stun_mapped(family, host, pair.udp_port)
        assert mapped == own
        url = f"http://{'[::1]' if ':' in host else host}:{web}/healthz"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200

    for family, (server, config) in servers.items():
        out = subprocess.run([sys.executable, "-m", "homechannel.cli", "status", "--config",
                              config], capture_output=True, text=True, timeout=60)
        assert f"registered over {family} (" in out.stdout, out.stdout + out.stderr
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "homechannel.cli", "status", "--config", config, "--json"],
            capture_output=True, text=True, timeout=60).stdout)
        assert status["family"] == family
    samples = scrape(metrics6)
    family = "homechannel_server_coordinator_family"
    assert samples[(family, (("family", "IPv6"),))] == 1
    assert samples[(family, (("family", "IPv4"),))] == 0
