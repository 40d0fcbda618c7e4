"""Short-lived TURN credentials (coordinator/turn.py): the TURN REST API
scheme, checked against openssl; minted only for a client that proved the
password or a device key (``POST /api/prove``, then the offer with its ticket),
within budgets per server and in all, with the server in the username; never in
a lookup.  (Against a real coturn: test_coturn.py.)"""

import base64
import subprocess

import pytest
from twisted.internet import task

from homechannel.coordinator import turn
from homechannel.errors import ConfigError

from devicekeys import Device, policy
from turncreds import SECRET, URLS, minter
from webharness import IP_A, NOW, OFFER_SDP, PASSWORD_KEY, Harness, assert_error

from homechannel import crypto
from homechannel.config import CoordinatorTurn, load_coordinator
from homechannel.protocol import connect as flow

SERVER_KEY = crypto.IdentityKey.generate().public_raw


def test_credential_is_base64_hmac_sha1_of_the_username():
    entry = minter().mint(SERVER_KEY, "c")
    tag = turn.server_tag(SERVER_KEY)
    assert entry["username"] == f"1700000600:{tag}.c.AAECAwQF"
    assert tag == crypto.b64u_encode(crypto.key_id(SERVER_KEY))[:11]
    # Independently: openssl's HMAC-SHA1.
    mac = subprocess.run(["openssl", "dgst", "-sha1", "-hmac", SECRET.decode(), "-binary"],
                         input=entry["username"].encode(), capture_output=True,
                         check=True).stdout
    assert entry["credential"] == base64.b64encode(mac).decode()


def test_urls_put_udp_first_for_aiortc():
    entry = minter().mint(SERVER_KEY, "c")
    assert entry["urls"] == ["turn:turn.example:3478?transport=udp",
                             "turn:turn.example:3478?transport=tcp",
                             "turns:turn.example:5349"]


def test_each_mint_is_new_and_expires_after_the_lifetime():
    clock = task.Clock()
    clock.advance(1000.5)
    m = turn.TurnMinter(URLS, SECRET, 60, clock)
    a, b = m.mint(SERVER_KEY, "c"), m.mint(SERVER_KEY, "s")
    assert a["username"] != b["username"] and a["credential"] != b["credential"]
    assert a["username"].startswith("1061:") and ".s." in b["username"]
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


def test_the_lifetime_is_at_most_an_hour(tmp_path):
    """17.3: the default lifetime is an hour, and a longer one is refused.  How this was
    shown to fail: with the old default (a day) the first assertion fails."""
    assert CoordinatorTurn().lifetime == 3600
    cfg = tmp_path / "c.toml"
    cfg.write_text('[turn]\nurls = ["turn:t.example:3478"]\nsecret_file = "s"\n'
                   "lifetime = 86400\n")
    with pytest.raises(ConfigError, match="at most 3600"):
        load_coordinator(str(cfg))


# -- only for a proven client -----------------------------------------------------------


def harness(**turn_limits):
    """The web API with [turn]: STUN for everyone, TURN only after a proof."""
    from treq.testing import StubTreq

    from homechannel.coordinator import web
    from homechannel.coordinator.broker import Broker

    h = Harness()
    h.stun = ({"urls": "stun:coordinator.test:7777"},)
    h.minter = turn.TurnMinter(URLS, SECRET, 600, h.clock)
    broker = Broker(h.relay, h.config, h.clock, ice_servers=h.stun, turn=h.minter,
                    turn_limits=CoordinatorTurn(urls=tuple(URLS), secret_file="s",
                                                lifetime=600, **turn_limits),
                    ticket_key=h.identity.derived_key(crypto.TICKET_KEY_LABEL))
    h.web = web.CoordinatorWeb(h.identity, h.relay, h.config, h.clock, broker=broker,
                               ice_servers=h.stun)
    h.stub = StubTreq(h.web.resource())
    return h


def prove(h, ip=IP_A, password_key=PASSWORD_KEY, challenge=None, **extra):
    """``POST /api/prove`` on the pool path; (response, its body)."""
    challenge = challenge if challenge is not None else h.lookup(ip)
    body = {"server": h.server_id, "session": h.new_session(),
            "challenge": crypto.b64u_encode(challenge),
            "answer": crypto.b64u_encode(crypto.challenge_answer(password_key, challenge))}
    body.update(extra)
    return h.call("POST", "/api/prove", ip=ip, body=body), body


def offer_after(h, proved, ticket, ip=IP_A, **extra):
    """The second step: the offer with the ticket (no answer)."""
    body = h.connect_body(crypto.b64u_decode(proved["challenge"]), session=proved["session"],
                          ticket=ticket, **extra)
    body.pop("answer")
    return h.call("POST", "/api/connect", ip=ip, body=body), body


def test_a_lookup_or_an_unproven_client_gets_no_credential():
    """17.3: the lookup (of an online server or not) carries STUN and says a relay
    exists, never a credential; a wrong password, a made-up challenge, a forged device
    token or a copied one without its key at the first step get none either, and
    /config.js never has one.  How this was shown to fail: with the old lookup (a
    credential minted for every lookup of an online server) the first assertion fails."""
    h = harness()
    doc = h.call("GET", f"/api/servers/{h.server_id}").json       # signature checked
    assert doc["ice_servers"] == list(h.stun) and doc["turn"] is True
    offline = crypto.IdentityKey.generate().text
    doc = h.call("GET", f"/api/servers/{offline}").json
    assert doc["ice_servers"] == [] and doc["turn"] is False

    resp, _ = prove(h, password_key=bytes(32))
    assert_error(resp, 403, "wrong-password")
    resp, _ = prove(h, challenge=bytes(16))
    assert_error(resp, 403, "stale-challenge")
    owner, thief = Device(), Device()
    h.relay.set_device_policy(h.home.public_raw, policy(0, owner))
    challenge = flow.device_challenge(NOW, lambda n: bytes(n))
    session = h.new_session()
    for token, signer in ((owner.token(crypto.IdentityKey.generate()), owner),
                          (owner.token(h.home), thief)):
        resp = h.call("POST", "/api/prove", body={
            "server": h.server_id, "session": session, "challenge": crypto.b64u_encode(challenge),
            "device": token, "device_signature": crypto.b64u_encode(
                signer.start_signature(session, challenge))})
        assert_error(resp, 403, "bad-device")
    assert h.minter.minted == 0

    config_js = h.call("GET", "/config.js").body.decode()
    assert "stun:coordinator.test:7777" in config_js
    assert "username" not in config_js and "credential" not in config_js \
        and "turn:" not in config_js


def test_a_proven_client_and_its_home_server_get_a_credential_each():
    """The first step's signed answer carries STUN then a TURN credential for the client
    and a ticket; the offer sent with that ticket reaches the home server with a
    credential of its own.  The one-step connect (no ticket) mints nothing."""
    h = harness()
    resp, proved = prove(h)
    assert resp.code == 200, resp.body
    doc = resp.json
    assert doc["session"] == proved["session"] and doc["ice_servers"][0] == h.stun[0]
    client = doc["ice_servers"][1]
    assert client["username"].startswith(f"{NOW + 600}:{turn.server_tag(h.home.public_raw)}.c.")
    assert client["credential"] == turn.credential(SECRET, client["username"])

    resp, _ = offer_after(h, proved, doc["ticket"])
    assert resp.code == 202, resp.body
    offer = flow.Offer.decode(h.relay.offers[-1][1])
    [server] = offer.ice_servers
    assert ".s." in server["username"]
    assert server["credential"] == turn.credential(SECRET, server["username"])
    assert h.minter.minted == 2

    resp, _ = h.connect()                       # one step: no relay for either side
    assert resp.code == 202
    assert flow.Offer.decode(h.relay.offers[-1][1]).ice_servers == ()
    assert h.minter.minted == 2


def test_the_ticket_binds_the_connect_it_was_made_for():
    """A ticket is good for its own session, challenge and server, until it expires;
    a made-up, altered, borrowed or expired one is refused (bad-ticket) and nothing is
    relayed.  How this was shown to fail: with the MAC unchecked, the borrowed ticket
    relayed an offer for another session."""
    h = harness()
    resp, proved = prove(h)
    good = resp.json["ticket"]
    _, second = prove(h)
    raw = crypto.b64u_decode(good)
    for bad in ("AAAA", crypto.b64u_encode(raw[:-1] + bytes([raw[-1] ^ 1])),
                crypto.b64u_encode(b"\xff" * 8 + raw[8:])):
        resp, _ = offer_after(h, proved, bad)
        assert_error(resp, 403, "bad-ticket")
    resp, _ = offer_after(h, second, good)          # another connect's ticket
    assert_error(resp, 403, "bad-ticket")
    h.clock.advance(h.config.session_timeout + 1)
    resp, _ = offer_after(h, proved, good)
    assert_error(resp, 403, "bad-ticket")
    assert not h.relay.offers


def test_the_device_path_proves_with_its_key_and_signs_the_offer():
    h = harness()
    device = Device()
    h.relay.set_device_policy(h.home.public_raw, policy(0, device))
    token = device.token(h.home)
    challenge = flow.device_challenge(NOW, lambda n: bytes(n))
    session = h.new_session()
    resp = h.call("POST", "/api/prove", body={
        "server": h.server_id, "session": session, "challenge": crypto.b64u_encode(challenge),
        "device": token, "device_signature": crypto.b64u_encode(
            device.start_signature(session, challenge))})
    assert resp.code == 200, resp.body
    proved = {"session": session, "challenge": crypto.b64u_encode(challenge)}
    signature = crypto.b64u_encode(device.offer_signature(session, challenge, OFFER_SDP))
    # Without the device's signature over the offer, the second step is refused.
    resp, _ = offer_after(h, proved, resp.json["ticket"], device=token,
                          device_signature=crypto.b64u_encode(Device().offer_signature(
                              session, challenge, OFFER_SDP)))
    assert_error(resp, 403, "bad-device")
    resp2 = h.call("POST", "/api/prove", body={
        "server": h.server_id, "session": session, "challenge": crypto.b64u_encode(challenge),
        "device": token, "device_signature": crypto.b64u_encode(
            device.start_signature(session, challenge))})
    resp, _ = offer_after(h, proved, resp2.json["ticket"], device=token,
                          device_signature=signature)
    assert resp.code == 202, resp.body
    offer = flow.Offer.decode(h.relay.offers[-1][1])
    assert offer.device == token and len(offer.ice_servers) == 1


def test_minting_has_budgets_per_server_and_in_all():
    """17.3: proven clients of one server get at most turn.per_server_per_minute
    credentials a minute (then connect on without a relay), and all servers together
    at most turn.per_minute.  How this was shown to fail: without the budgets every
    proof minted one (10 and 6 below)."""
    h = harness(per_server_per_minute=3, per_minute=5)
    minted = []
    for i in range(6):
        resp, _ = prove(h, ip=f"192.0.2.{i + 1}")
        assert resp.code == 200, resp.body
        minted.append(len(resp.json["ice_servers"]) == 2)
    assert minted == [True] * 3 + [False] * 3
    other = crypto.IdentityKey.generate()
    h.relay.add_server(other.public_raw, PASSWORD_KEY)
    got = []
    for i in range(4):
        challenge = crypto.b64u_decode(h.call("GET", f"/api/servers/{other.text}",
                                              ip=f"198.51.100.{i + 1}").json["challenge"])
        resp, _ = prove(h, ip=f"198.51.100.{i + 1}", challenge=challenge, server=other.text)
        got.append(len(resp.json["ice_servers"]) == 2)
    assert got == [True, True, False, False]        # 5 in all
    assert h.minter.minted == 5
