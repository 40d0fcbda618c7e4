"""Across real NATs: kernel NAT (nftables) between the coordinator, the home
server and the client, in the test's own network namespaces (tests/support/nat.py).

Configs carry no ICE settings unless a test says so: the coordinator's own
STUN (on its registry UDP port) is what makes the cone case work.
"""

import contextlib
import sys
import time

import pytest

import nat
from helpers import require_tool
from daemons import PASSWORD
from natpeers import SELECTED_PAIR, native_connect, offer_gets_in, path_of


def test_stun_answer_through_nat_with_coturns_client(topology_factory, tmp_path, twistd):
    """An independent STUN client (coturn's turnutils_stunclient) behind each NAT
    learns the router's public address from the coordinator, on the registry port
    and on the extra udp.stun_port; malformed STUN is a counted drop and the
    coordinator keeps answering."""
    stunclient = require_tool("turnutils_stunclient", "coturn")
    topo = topology_factory()
    pair, coordinator, server = nat.start_nat_pair(twistd, tmp_path, topo,
                                                   coordinator={"udp": {"stun_port": 3479}})
    for side, port in (("client", nat.UDP_PORT), ("home", nat.UDP_PORT), ("client", 3479)):
        out = topo.run(side, stunclient, "-p", str(port), nat.PUBLIC_HOST).stdout
        assert f"UDP reflexive addr: {topo.public_address[side]}:" in out, out
    # Garbage that looks like STUN, then a good request again.
    garbage = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
               "[s.sendto(b'\\x00\\x01\\x00\\x04\\x21\\x12\\xa4\\x42' + bytes(12) + b'\\x80\\x28', "
               f"('{nat.PUBLIC_HOST}', {nat.UDP_PORT})) for _ in range(3)]")
    topo.run("client", sys.executable, "-c", garbage)
    out = topo.run("client", stunclient, "-p", str(nat.UDP_PORT), nat.PUBLIC_HOST).stdout
    assert f"UDP reflexive addr: {topo.public_address['client']}:" in out
    stats = nat.coordinator_status(pair)["stats"]
    assert stats["dropped.stun-malformed"] == 3
    assert stats["stun-answers"] >= 4


def test_cone_nats_browser_connects_without_ice_settings(topology_factory, tmp_path, twistd,
                                                         nat_chromium):
    """Cone NAT on both sides, no ICE setting anywhere: Chromium connects, over a
    server-reflexive (or host) pair, not a relay.  How this was shown to fail:
    with the coordinator's STUN off (udp.stun = false) nothing connects."""
    from browser import connect, open_link

    topo = topology_factory()
    pair, coordinator, server = nat.start_nat_pair(twistd, tmp_path, topo)
    page = nat_chromium(topo, pair.url)
    open_link(page, pair)
    connect(page, PASSWORD, timeout=30_000)
    selected = page.evaluate(SELECTED_PAIR)
    assert selected is not None
    assert selected["local"] in ("srflx", "prflx", "host"), selected
    assert selected["remote"] in ("srflx", "prflx", "host"), selected
    assert "relay" not in (selected["local"], selected["remote"])
    server.wait_for_log(r"session \S+ connected \(", timeout=10)
    assert "relay" not in path_of(server), server.output[-2000:]


def test_cone_nats_native_client_connects_without_ice_settings(topology_factory, tmp_path,
                                                               twistd):
    """The native client takes its STUN server from the coordinator's signed lookup:
    with no ICE setting anywhere it connects across cone NATs, directly."""
    topo = topology_factory()
    pair, coordinator, server = nat.start_nat_pair(twistd, tmp_path, topo)
    status, out, path, err = native_connect(topo, pair, tmp_path)
    assert status == 0, err
    assert "connected to" in out and "ping:" in out
    assert path is not None and "relay" not in path, err
    assert "relay" not in path_of(server)


# -- keepalive against NAT timeouts -------------------------------------------------------

# The NAT timeout and the keepalive interval are scaled down together by this
# factor, so that "several minutes" of a 30 s NAT timeout take one minute here.
SCALE = 5


def test_registration_survives_30s_nat_udp_timeout(topology_factory, tmp_path, twistd):
    """A home router that forgets idle UDP mappings after 30 s, and picks a new random
    port for each new one (so a mapping that expired shows as a new address and a
    re-registration): the default keepalive holds the mapping for five minutes and
    offers still get in.  Timeout and interval are both scaled down by SCALE.

    How this was shown to fail: with keepalive.interval = 7 s (35 s unscaled, above
    the timeout) the coordinator sees the server re-register from new ports."""
    from homechannel.config import ServerKeepalive

    default = ServerKeepalive()
    topo = topology_factory(home_nat="symmetric", udp_timeout=30 / SCALE)
    keepalive = {"interval": default.interval / SCALE, "jitter": default.jitter,
                 "challenge_refresh": default.challenge_refresh / SCALE}
    pair, coordinator, server = nat.start_nat_pair(twistd, tmp_path, topo,
                                                   server={"keepalive": keepalive})
    time.sleep(300 / SCALE)
    assert coordinator.output.count("registered " + pair.server_key.text[:12]) == 1, \
        coordinator.output[-3000:]
    assert "lost the coordinator" not in server.output
    assert "registering again" not in server.output       # an UNKNOWN, a lost link
    assert "stopped answering" not in server.output
    offer_gets_in(topo, pair, tmp_path, server, timeout=30)


def test_recovers_quickly_after_the_home_routers_address_changes(
        topology_factory, tmp_path, twistd, nat_chromium):
    """The home router gets a new public address (every mapping gone): the next
    keepalive meets an UNKNOWN reply and re-registers, so the outage is at most one
    keepalive interval (15 s by default, 18 s with jitter; 4 s here, so the test does
    not wait a whole default interval) plus a handshake; then a browser connects
    again."""
    from homechannel.config import ServerKeepalive

    from browser import connect, open_link

    keepalive = ServerKeepalive(interval=4.0)
    topo = topology_factory()
    pair, coordinator, server = nat.start_nat_pair(
        twistd, tmp_path, topo,
        server={"keepalive": {"interval": keepalive.interval, "jitter": keepalive.jitter}})
    mark = server.mark()
    t0 = time.monotonic()
    new = topo.change_public_address("home")
    server.wait_for_log("registered with coordinator", since=mark,
                        timeout=keepalive.interval * (1 + keepalive.jitter) + 15)
    outage = time.monotonic() - t0
    print(f"re-registered {outage:.1f} s after the home router's address changed")
    assert outage <= keepalive.interval * (1 + keepalive.jitter) + 5
    coordinator.wait_for_log(rf"registered {pair.server_key.text[:12]} from {new}:", timeout=5)
    page = nat_chromium(topo, pair.url)
    open_link(page, pair)
    connect(page, PASSWORD, timeout=30_000)


# -- symmetric NAT: TURN -------------------------------------------------------------------

TURN_SECRET = "nat-test-turn-secret-0123456789abcdef"


@pytest.fixture
def turn_pair(topology_factory, tmp_path, twistd):
    """A symmetric client NAT and coturn (shared secret) on the public host, with the
    README's relay policy (private and local peers denied, no TCP relays); TURN is
    configured only at the coordinator.  Yields (topology, pair, coordinator, server)."""
    with _turn_pair(topology_factory(client_nat="symmetric"), tmp_path, twistd) as made:
        yield made


@contextlib.contextmanager
def _turn_pair(topo, tmp_path, twistd):
    from services import coturn, readme_coturn_policy

    secret = tmp_path / "turn-secret"
    secret.write_text(TURN_SECRET + "\n")
    secret.chmod(0o600)                   # the coordinator refuses a secret others read
    (tmp_path / "coturn").mkdir()
    with coturn(tmp_path / "coturn", TURN_SECRET, listen=nat.PUBLIC_HOST,
                prefix=topo.exec_prefix("pub"), extra=readme_coturn_policy()):
        pair, coordinator, server = nat.start_nat_pair(
            twistd, tmp_path, topo, coordinator={"turn": {
                "urls": [f"turn:{nat.PUBLIC_HOST}:3478?transport=udp",
                         f"turn:{nat.PUBLIC_HOST}:3478?transport=tcp"],
                "secret_file": str(secret)}})
        yield topo, pair, coordinator, server


def test_symmetric_nat_browser_and_native_client_connect_through_turn(turn_pair, tmp_path,
                                                                      nat_chromium):
    """Behind a symmetric NAT no direct path exists; with coturn configured only at the
    coordinator, Chromium and the native client connect through the relay.  How this
    was shown to fail: without [turn] at the coordinator neither connects (Chromium
    reports ICE failure, the native client gives the no-path advice)."""
    from browser import connect, open_link

    topo, pair, coordinator, server = turn_pair
    page = nat_chromium(topo, pair.url)
    open_link(page, pair)
    connect(page, PASSWORD, timeout=45_000)
    selected = page.evaluate(SELECTED_PAIR)
    assert "relay" in (selected["local"], selected["remote"]), selected
    server.wait_for_log(r"session \S+ connected \(", timeout=10)
    assert "relay" in path_of(server), server.output[-2000:]

    mark = server.mark()
    status, out, path, err = native_connect(topo, pair, tmp_path)
    assert status == 0, err
    assert path is not None and "relay" in path, err
    server.wait_for_log(r"session \S+ connected \(", since=mark, timeout=10)
    assert "relay" in path_of(server)


def test_symmetric_home_nat_the_home_server_relays(topology_factory, tmp_path, twistd,
                                                   nat_chromium):
    """The home server behind a symmetric NAT, and a client whose network lets no TURN
    out (its router drops port 3478): only the home server's own relay can join them,
    so this shows that the home server uses the TURN credential the coordinator sends
    it with the offer.  Chromium and the native client both connect, the home server's
    side of the pair being a relay candidate.  How this was shown to fail: with the
    home server's ICE servers taken from its config only (the relayed offer's
    ice_servers ignored), Chromium does not connect (ICE fails)."""
    from browser import connect, open_link

    topo = topology_factory(home_nat="symmetric")
    topo.block_outbound("client", 3478)
    with _turn_pair(topo, tmp_path, twistd) as (topo, pair, coordinator, server):
        page = nat_chromium(topo, pair.url)
        open_link(page, pair)
        connect(page, PASSWORD, timeout=45_000)
        server.wait_for_log(r"session \S+ connected \(", timeout=10)
        assert path_of(server)[0] == "relay", server.output[-2000:]
        selected = page.evaluate(SELECTED_PAIR)
        assert selected["local"] != "relay" and selected["remote"] in ("relay", "prflx"), \
            selected

        mark = server.mark()
        status, out, path, err = native_connect(topo, pair, tmp_path)
        assert status == 0, err
        assert path is not None and path[0] != "relay", err
        server.wait_for_log(r"session \S+ connected \(", since=mark, timeout=10)
        assert path_of(server)[0] == "relay", server.output[-2000:]


def test_a_network_without_udp_connects_through_turn_over_tcp(topology_factory, tmp_path,
                                                              twistd, nat_chromium):
    """The client's network lets no UDP out at all (only TCP, as some corporate and
    guest networks): Chromium and the native client connect through coturn over TCP,
    from the coordinator's TURN URLs (udp first, tcp second).  aiortc uses one TURN
    URL, so the native client gathers again with the TCP one when the UDP one gave no
    relay (``webrtc.relay_alternative``).  How this was shown to fail: without that
    second gathering the native client gives the no-path advice."""
    from browser import connect, open_link

    topo = topology_factory()
    topo.block_outbound("client", protocols=("udp",))
    with _turn_pair(topo, tmp_path, twistd) as (topo, pair, coordinator, server):
        page = nat_chromium(topo, pair.url)
        open_link(page, pair)
        connect(page, PASSWORD, timeout=45_000)
        selected = page.evaluate(SELECTED_PAIR)
        assert selected["local"] == "relay" and selected["relayProtocol"] == "tcp", selected

        mark = server.mark()
        status, out, path, err = native_connect(topo, pair, tmp_path)
        assert status == 0, err
        assert "trying turn:203.0.113.10:3478?transport=tcp" in err, err
        assert path is not None and path[0] == "relay", err
        server.wait_for_log(r"session \S+ connected \(", since=mark, timeout=10)


def test_symmetric_nats_on_both_sides_connect_through_turn(topology_factory, tmp_path,
                                                           twistd):
    """Both behind symmetric NATs, TURN only at the coordinator: the native client
    connects through a relay (no direct pair exists).  How this was shown to fail:
    without [turn] at the coordinator it gives the no-path advice."""
    topo = topology_factory(home_nat="symmetric", client_nat="symmetric")
    with _turn_pair(topo, tmp_path, twistd) as (topo, pair, coordinator, server):
        status, out, path, err = native_connect(topo, pair, tmp_path)
        assert status == 0, err
        assert path is not None and "relay" in path, err
        server.wait_for_log(r"session \S+ connected \(", timeout=10)
        assert "relay" in path_of(server)
