"""TURN against a real coturn: it accepts a minted credential and refuses an
expired or forged one; the coordinator starts with string ICE servers and [turn];
and the README's peer policy keeps the relay off private and local peers.  (The
credentials themselves: test_turn.py.)"""

import asyncio

import pytest

from turncreds import SECRET, minter

from homechannel import crypto

SERVER_KEY = crypto.IdentityKey.generate().public_raw


async def allocate(port, username, credential):
    """A TURN allocation with aioice's client; returns the relayed address."""
    from aioice import turn as aioice_turn

    transport, protocol = await aioice_turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=("127.0.0.1", port), username=username,
        password=credential, lifetime=600, channel_refresh_time=300)
    try:
        return transport.get_extra_info("related_address"), transport.get_extra_info("sockname")
    finally:
        transport.close()


def test_coturn_accepts_minted_and_refuses_expired_or_forged(tmp_path):
    """How this was shown to fail: with the HMAC over a different string, or
    with coturn started without use-auth-secret, the first allocation fails."""
    from aioice.stun import TransactionFailed

    from services import coturn

    with coturn(tmp_path, SECRET.decode()) as port:
        import time
        good = minter(now=time.time()).mint(SERVER_KEY, "c")
        _, relayed = asyncio.run(allocate(port, good["username"], good["credential"]))
        assert relayed[0] == "127.0.0.1"

        expired = minter(now=time.time() - 700).mint(SERVER_KEY, "c")   # expired 100 s ago
        with pytest.raises(TransactionFailed, match="401"):
            asyncio.run(allocate(port, expired["username"], expired["credential"]))

        forged = minter(now=time.time(), secret=b"not-the-secret-at-all!").mint(SERVER_KEY, "c")
        with pytest.raises(TransactionFailed, match="401"):
            asyncio.run(allocate(port, forged["username"], forged["credential"]))

        future = minter(now=time.time()).mint(SERVER_KEY, "c")
        with pytest.raises(TransactionFailed, match="401"):   # username changed, same password
            asyncio.run(allocate(port, "9" + future["username"], future["credential"]))


def test_coordinator_starts_with_string_ice_servers_and_turn(tmp_path, twistd):
    """A string entry in web.ice_servers used to crash the coordinator at start; now
    strings and tables both work, [turn] is announced, and /config.js stays public."""
    import json
    import urllib.request

    from helpers import free_tcp_port, free_udp_port, write_toml

    secret = tmp_path / "turn-secret"
    secret.write_text(SECRET.decode() + "\n")
    secret.chmod(0o600)                   # the coordinator refuses a secret others read
    web_port = free_tcp_port()
    cfg = write_toml(tmp_path / "c.toml", {
        "state_dir": str(tmp_path),
        "udp": {"interface": "127.0.0.1", "port": free_udp_port()},
        "web": {"listen": f"tcp:{web_port}:interface=127.0.0.1",
                "ice_servers": ["stun:stun.example:3478", {"urls": "stun:other.example"}]},
        "admin": {"listen": ""},
        "turn": {"urls": ["turn:turn.example:3478?transport=udp"],
                 "secret_file": str(secret)},
    })
    coordinator = twistd("homechannel-coordinator", cfg)
    coordinator.wait_for_log("coordinator: UDP")
    coordinator.wait_for_log(rf"starting on {web_port}\b")  # the web port listens
    coordinator.wait_for_log(r"TURN: turn:turn.example:3478\?transport=udp")
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/config.js", timeout=10) as r:
        text = r.read().decode()
    ice = json.loads(text.split("export const iceServers = ", 1)[1].split(";\n", 1)[0])
    assert ice == [{"urls": "stun:stun.example:3478"}, {"urls": "stun:other.example"}]
    assert "turn:" not in text and "credential" not in text


# -- the README's coturn policy against a real coturn --------------------------------------

DENIED = ["0.1.2.3", "10.1.2.3", "100.64.0.1", "100.127.255.254", "127.0.0.2",
          "169.254.169.254", "172.16.0.1", "172.31.255.254", "192.168.1.1"]
ALLOWED = ["198.51.100.7", "203.0.113.5", "100.128.0.1", "172.32.0.1", "11.0.0.1",
           "169.255.0.1"]
DENIED6 = ["::1", "fc00::5", "fd12:3456::1", "fe80::1", "febf::1", "::ffff:10.0.0.1",
           "::ffff:198.51.100.7", "64:ff9b::a00:1", "64:ff9b:1::c0a8:1"]
ALLOWED6 = ["2001:db8::1", "2a00:1450::1", "fec0::1"]


async def _turn_client(host, port, entry, transport="udp"):
    """An aioice TURN client protocol (not yet allocated) for coturn at host:port."""
    from aioice import turn as aioice_turn

    loop = asyncio.get_running_loop()
    args = dict(username=entry["username"], password=entry["credential"], lifetime=600,
                channel_refresh_time=300)
    if transport == "tcp":
        _, proto = await loop.create_connection(
            lambda: aioice_turn.TurnClientTcpProtocol((host, port), **args), host, port)
    else:
        _, proto = await loop.create_datagram_endpoint(
            lambda: aioice_turn.TurnClientUdpProtocol((host, port), **args),
            remote_addr=(host, port))
    return proto


async def _outcome(proto, request):
    """200, or the TURN error code coturn answered *request* with."""
    from aioice import stun

    try:
        await proto.request_with_retry(request)
        return 200
    except stun.TransactionFailed as e:
        return e.response.attributes["ERROR-CODE"][0]


async def _permissions(host, port, entry, peers):
    """{peer: 200 or error code} for a CreatePermission to each peer, on one allocation."""
    from aioice import stun

    proto = await _turn_client(host, port, entry)
    await proto.connect()
    try:
        out = {}
        for peer in peers:
            request = stun.Message(message_method=stun.Method.CREATE_PERMISSION,
                                   message_class=stun.Class.REQUEST)
            request.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
            out[peer] = await _outcome(proto, request)
        return out
    finally:
        proto.refresh_task.cancel()
        proto.transport.close()


async def _tcp_allocation(host, port, entry):
    """The outcome of an Allocate for a TCP relay (RFC 6062), over TCP."""
    from aioice import stun

    proto = await _turn_client(host, port, entry, "tcp")
    try:
        request = stun.Message(message_method=stun.Method.ALLOCATE,
                               message_class=stun.Class.REQUEST)
        request.attributes["LIFETIME"] = 600
        request.attributes["REQUESTED-TRANSPORT"] = 6 << 24      # TCP
        return await _outcome(proto, request)
    finally:
        proto.transport.close()


def test_readme_coturn_policy_keeps_the_relay_off_private_and_local_peers(tmp_path):
    """coturn run with the README's peer policy refuses (403) permissions towards this
    host, the private, carrier-grade NAT, link-local (cloud metadata), IPv6 local and
    NAT64 ranges, and TCP relays (no-tcp-relay: 442), while public peers are allowed.  How
    this was shown to fail: with the README's old policy (RFC 1918 only, TCP relays
    on), 100.64.0.1, 169.254.169.254, fc00::/7, fe80::/10 and ::ffff:10.0.0.1 got
    permissions and the TCP allocation succeeded (coturn 4.6.1 itself denies only
    0.0.0.0/8 and loopback); without the 64:ff9b lines, both NAT64 peers got one."""
    import time

    from services import coturn, readme_coturn_policy

    policy = readme_coturn_policy()
    assert "no-tcp-relay" in policy
    entry = minter(now=time.time()).mint(SERVER_KEY, "c")
    (tmp_path / "v4").mkdir()
    with coturn(tmp_path / "v4", SECRET.decode(), extra=policy) as port:
        got = asyncio.run(_permissions("127.0.0.1", port, entry, DENIED + ALLOWED))
        assert got == {**{p: 403 for p in DENIED}, **{p: 200 for p in ALLOWED}}
        assert asyncio.run(_tcp_allocation("127.0.0.1", port, entry)) == 442
    (tmp_path / "v6").mkdir()
    with coturn(tmp_path / "v6", SECRET.decode(), listen="::1",
                extra=[*policy, "allocation-default-address-family=keep"]) as port:
        got = asyncio.run(_permissions("::1", port, entry, DENIED6 + ALLOWED6))
        assert got == {**{p: 403 for p in DENIED6}, **{p: 200 for p in ALLOWED6}}


# -- the relay's own address and the quotas (17.3) -------------------------------------------

RELAY = "198.51.100.77"       # this test's "public address" of the relay host (on lo)


@pytest.fixture
def relay_address():
    """*RELAY* on this namespace's loopback interface, as a relay host's public address."""
    import subprocess

    from helpers import require_tool

    ip = require_tool("ip", "iproute2")
    subprocess.run([ip, "addr", "add", f"{RELAY}/32", "dev", "lo"], check=True)
    try:
        yield RELAY
    finally:
        subprocess.run([ip, "addr", "del", f"{RELAY}/32", "dev", "lo"], check=False)


def test_readme_coturn_policy_keeps_the_relay_off_its_own_host_and_holds_quotas(
        tmp_path, relay_address):
    """coturn on a "public" address, with the README's policy as written (its own-address
    line naming that address): a permission towards the relay host itself is refused, so
    no UDP service on that host is reachable through the relay; one credential holds at
    most user-quota allocations.  How this was shown to fail: without the README's
    own-address line the permission to the relay host got 200 (coturn 4.6 does not deny
    its own address), and without user-quota the 13th allocation succeeded."""
    import time

    from services import coturn, readme_coturn_policy

    policy = readme_coturn_policy(relay_address)
    quota = int(next(line for line in policy if line.startswith("user-quota="))
                .split("=")[1])
    assert any(line.startswith("max-bps=") for line in policy)
    assert any(line.startswith("total-quota=") for line in policy)
    entry = minter(now=time.time()).mint(SERVER_KEY, "c")
    with coturn(tmp_path, SECRET.decode(), listen=relay_address, extra=policy) as port:
        got = asyncio.run(_permissions(relay_address, port, entry, [relay_address,
                                                                    "198.51.100.7"]))
        assert got == {relay_address: 403, "198.51.100.7": 200}
        fresh = minter(now=time.time(), random=b"\x01" * 6).mint(SERVER_KEY, "c")
        outcomes = asyncio.run(_allocations(relay_address, port, fresh, quota + 1))
    assert outcomes == [200] * quota + [486]


async def _allocations(host, port, entry, n):
    """Allocate *n* times with one credential, each allocation kept until the end; the
    outcome of each (200, or coturn's error code: 486 Allocation Quota Reached)."""
    from aioice import stun

    protos, outcomes = [], []
    try:
        for _ in range(n):
            proto = await _turn_client(host, port, entry)
            protos.append(proto)
            try:
                await proto.connect()
                outcomes.append(200)
            except stun.TransactionFailed as e:
                outcomes.append(e.response.attributes["ERROR-CODE"][0])
    finally:
        for proto in protos:
            if getattr(proto, "refresh_task", None) is not None:
                proto.refresh_task.cancel()
            proto.transport.close()
    return outcomes
