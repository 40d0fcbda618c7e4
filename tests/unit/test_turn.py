"""Short-lived TURN credentials (coordinator/turn.py): the TURN REST API
scheme, checked against openssl; the ICE servers handed to clients and home
servers, and only in signed responses.  (Against a real coturn: test_coturn.py.)"""

import base64
import subprocess

import pytest
from twisted.internet import task

from homechannel.coordinator import turn
from homechannel.errors import ConfigError

from turncreds import SECRET, URLS, minter


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
    p.chmod(0o600)
    assert turn.load_secret(str(p)) == SECRET
    p.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        turn.load_secret(str(p))
    with pytest.raises(ConfigError, match="does not exist"):
        turn.load_secret(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="turn.urls is empty"):
        turn.TurnMinter([], SECRET, 60, task.Clock())


def test_ice_servers_for_clients_and_home_servers():
    stun = ({"urls": "stun:coordinator.example:7777"},)
    plain = turn.ice_servers_for(stun)
    assert plain("client") == [{"urls": "stun:coordinator.example:7777"}]
    assert plain("server") == []
    m = turn.TurnMinter(URLS, SECRET, 600, task.Clock())
    with_turn = turn.ice_servers_for(stun, m)
    client = with_turn("client")
    assert client[0] == {"urls": "stun:coordinator.example:7777"}   # STUN first, then TURN
    assert client[1]["urls"][0] == "turn:turn.example:3478?transport=udp"
    server = with_turn("server")        # its own credential, and no STUN (it has its own)
    assert len(server) == 1 and server[0]["username"] != client[1]["username"]
    assert m.minted == 2


def test_turn_credentials_only_in_signed_responses():
    """The signed lookup carries STUN + a TURN credential minted for it (only for an
    online server); the relayed offer carries the home server's own; /config.js
    carries no credential.  How this was shown to fail: with the lookup's
    ``if online`` removed, the offline lookup hands out a credential."""
    from treq.testing import StubTreq

    from homechannel.protocol import connect as flow
    from homechannel.coordinator import web
    from homechannel.coordinator.broker import Broker
    from webharness import Harness

    h = Harness()
    stun = ({"urls": "stun:coordinator.test:7777"},)
    m = turn.TurnMinter(URLS, SECRET, 600, h.clock)
    broker = Broker(h.relay, h.config, h.clock, ice_servers=turn.ice_servers_for(stun, m))
    h.web = web.CoordinatorWeb(h.identity, h.relay, h.config, h.clock, broker=broker,
                               ice_servers=stun)
    h.stub = StubTreq(h.web.resource())

    doc = h.call("GET", f"/api/servers/{h.server_id}").json       # signature checked
    assert doc["ice_servers"][0] == {"urls": "stun:coordinator.test:7777"}
    entry = doc["ice_servers"][1]
    assert entry["username"].startswith(f"{int(h.clock.seconds()) + 600}:")
    assert entry["credential"] == turn.credential(SECRET, entry["username"])

    offline = crypto_key_text()
    assert h.call("GET", f"/api/servers/{offline}").json["ice_servers"] == []

    config_js = h.call("GET", "/config.js").body.decode()
    assert "stun:coordinator.test:7777" in config_js
    assert "username" not in config_js and "credential" not in config_js and "turn:" not in config_js

    resp, body = h.connect()
    assert resp.code == 202, resp.body
    _, payload, _ = h.relay.offers[-1]
    offer = flow.Offer.decode(payload)
    [server_entry] = offer.ice_servers
    assert server_entry["urls"][0] == "turn:turn.example:3478?transport=udp"
    assert server_entry["username"] != entry["username"]
    assert server_entry["credential"] == turn.credential(SECRET, server_entry["username"])


def crypto_key_text():
    from homechannel import crypto
    return crypto.IdentityKey.generate().text
