"""Short-lived TURN credentials (coordinator/turn.py): the TURN REST API
scheme, checked against openssl and against a real coturn, which accepts a
minted credential and refuses an expired or forged one."""

import asyncio
import base64
import subprocess

import pytest
from twisted.internet import task

from homechannel.coordinator import turn
from homechannel.errors import ConfigError

SECRET = b"0123456789abcdef-shared-with-coturn"
URLS = ["turns:turn.example:5349", "turn:turn.example:3478?transport=tcp",
        "turn:turn.example:3478?transport=udp"]


def minter(now=1_700_000_000, lifetime=600.0, secret=SECRET):
    clock = task.Clock()
    clock.advance(now)
    return turn.TurnMinter(URLS, secret, lifetime, clock,
                           random_bytes=lambda n: bytes(range(n)))


def test_credential_is_base64_hmac_sha1_of_the_username():
    entry = minter().mint()
    assert entry["username"] == "1700000600:AAECAwQFBgcI"
    # Independently: openssl's HMAC-SHA1.
    mac = subprocess.run(["openssl", "dgst", "-sha1", "-hmac", SECRET.decode(), "-binary"],
                         input=entry["username"].encode(), capture_output=True,
                         check=True).stdout
    assert entry["credential"] == base64.b64encode(mac).decode()


def test_urls_put_udp_first_for_aiortc():
    entry = minter().mint()
    assert entry["urls"] == ["turn:turn.example:3478?transport=udp",
                             "turn:turn.example:3478?transport=tcp",
                             "turns:turn.example:5349"]


def test_each_mint_is_new_and_expires_after_the_lifetime():
    clock = task.Clock()
    clock.advance(1000.5)
    m = turn.TurnMinter(URLS, SECRET, 60, clock)
    a, b = m.mint(), m.mint()
    assert a["username"] != b["username"] and a["credential"] != b["credential"]
    assert a["username"].startswith("1061:")
    assert m.minted == 2


def test_secret_file(tmp_path):
    p = tmp_path / "secret"
    p.write_text(SECRET.decode() + "\n")
    assert turn.load_secret(str(p)) == SECRET
    p.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        turn.load_secret(str(p))
    with pytest.raises(ConfigError, match="does not exist"):
        turn.load_secret(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="turn.urls is empty"):
        turn.TurnMinter([], SECRET, 60, task.Clock())


# -- against coturn ----------------------------------------------------------------


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


@pytest.mark.e2e
def test_coturn_accepts_minted_and_refuses_expired_or_forged(tmp_path):
    """How this was shown to fail: with the HMAC over a different string, or
    with coturn started without use-auth-secret, the first allocation fails."""
    from aioice.stun import TransactionFailed

    from services import coturn

    with coturn(tmp_path, SECRET.decode()) as port:
        import time
        good = minter(now=time.time()).mint()
        _, relayed = asyncio.run(allocate(port, good["username"], good["credential"]))
        assert relayed[0] == "127.0.0.1"

        expired = minter(now=time.time() - 700).mint()   # expired 100 s ago
        with pytest.raises(TransactionFailed, match="401"):
            asyncio.run(allocate(port, expired["username"], expired["credential"]))

        forged = minter(now=time.time(), secret=b"not-the-secret-at-all!").mint()
        with pytest.raises(TransactionFailed, match="401"):
            asyncio.run(allocate(port, forged["username"], forged["credential"]))

        future = minter(now=time.time()).mint()
        with pytest.raises(TransactionFailed, match="401"):   # username changed, same password
            asyncio.run(allocate(port, "9" + future["username"], future["credential"]))
