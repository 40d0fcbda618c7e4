"""Passkeys and people (issue 19): the WebAuthn checks (``protocol/passkey.py``) with
vectors from a software authenticator, the coordinator's door on the passkey path
(``coordinator/broker.py``), the home server's record of each credential
(``server/devices.py``: passkeys, sign-in keys, invites), people's rights
(``server/people.py``) and ``homechannel people``."""

import dataclasses

import pytest
from twisted.internet import task

from authenticator import UP, UV, Authenticator
from devicekeys import Device, policy
from webharness import IP_A, Harness, assert_error

from homechannel import crypto
from homechannel.config import FilesApp
from homechannel.errors import AuthenticationError, ProtocolError
from homechannel.protocol import connect, passkey
from homechannel.server import devices as store
from homechannel.server.challenges import ChallengeSource
from homechannel.server.devices import EnrolledDevices
from homechannel.server.people import ENROL_ONLY, OWNER, Rights

ORIGIN = "https://home.example"
NOW = 1_700_000_000
SID = "S" * 22
CHALLENGE = bytes(range(16))
SDP = "v=0\r\n"
DIGEST = crypto.offer_hash(SDP)
WANTED = crypto.passkey_challenge(SID, CHALLENGE, DIGEST)


# -- the WebAuthn checks ------------------------------------------------------------------


def test_the_challenge_binds_session_challenge_and_offer():
    """The vector: SHA-256 of the label, the session, the challenge and the offer's hash.
    How this was shown to fail: with the offer hash left out, the swapped offer's
    challenge was the same."""
    assert WANTED == crypto.sha256(b"homechannel-passkey-v1" + SID.encode() + CHALLENGE
                                   + DIGEST)
    assert crypto.passkey_challenge(SID, CHALLENGE, crypto.offer_hash("v=1\r\n")) != WANTED
    with pytest.raises(ProtocolError):
        crypto.passkey_challenge(SID, CHALLENGE, b"short")


def test_a_genuine_assertion_verifies_and_every_alteration_is_refused():
    """Each alteration a coordinator (or another site) could make is refused: another
    challenge (a swapped offer), user verification or presence missing, another origin,
    another RP ID, a registration's client data, a sign count that does not move
    forward, another key's signature, a flipped byte.  How this was shown to fail:
    with ``require_user_verification=False`` the UV-stripped one verified; with the
    sign count not passed, the replayed count verified."""
    a = Authenticator()
    good = a.get(WANTED, ORIGIN)
    assert passkey.verify_assertion(a.public_raw, good, WANTED, ORIGIN, 0) == 1
    other = Authenticator()
    flipped = dataclasses.replace(good, signature=good.signature[:-1]
                                  + bytes([good.signature[-1] ^ 1]))
    cases = {
        "swapped offer": (a.get(crypto.passkey_challenge(SID, CHALLENGE, bytes(32)), ORIGIN), 0),
        "uv stripped": (a.get(WANTED, ORIGIN, flags=UP), 0),
        "up stripped": (a.get(WANTED, ORIGIN, flags=UV), 0),
        "other origin": (a.get(WANTED, "https://evil.example"), 0),
        "other rp id": (a.get(WANTED, ORIGIN, rp="evil.example"), 0),
        "create type": (a.get(WANTED, ORIGIN, kind="webauthn.create"), 0),
        "sign count not forward": (a.get(WANTED, ORIGIN, count=5), 5),
        "other key": (other.get(WANTED, ORIGIN), 0),
        "flipped signature": (flipped, 0),
    }
    for why, (assertion, count) in cases.items():
        with pytest.raises(AuthenticationError):
            passkey.verify_assertion(a.public_raw, assertion, WANTED, ORIGIN, count)
            pytest.fail(why)


def test_registration_is_verified_for_its_challenge_origin_and_user_verification():
    """How this was shown to fail: with ``require_user_verification=False`` the
    registration without UV was accepted."""
    a = Authenticator()
    challenge = bytes(32)
    reg = passkey.verify_registration(a.create(challenge, ORIGIN), challenge, ORIGIN)
    assert reg.public_raw == a.public_raw and reg.credential == a.credential
    for doc in (a.create(challenge, ORIGIN, flags=UP), a.create(bytes([1] * 32), ORIGIN),
                a.create(challenge, "https://evil.example"), {"id": "x"}):
        with pytest.raises(AuthenticationError):
            passkey.verify_registration(doc, challenge, ORIGIN)


def test_passkeys_need_a_domain_name():
    assert passkey.relying_party_origin("http://localhost:8080/x") == "http://localhost:8080"
    assert passkey.relying_party_origin("https://Home.Example") == "https://home.example"
    assert passkey.relying_party_origin("http://127.0.0.1:8080") is None
    assert passkey.relying_party_origin("http://[::1]:8080") is None


# -- the coordinator's door ---------------------------------------------------------------


class Passkey:
    """A passkey as the browser holds it: the authenticator and the token the home
    server issued for it."""

    def __init__(self, home, origin=ORIGIN):
        self.authenticator = Authenticator()
        self.id = crypto.device_id(self.authenticator.public_raw)
        self.token = connect.DeviceToken.issue(home, self.authenticator.public_raw,
                                               connect.KEY_EPOCH, NOW, kind="passkey",
                                               origin=origin)


def passkey_body(h, key, sdp_for_assertion=None, origin=ORIGIN, flags=UP | UV):
    challenge = connect.device_challenge(h.clock.seconds(), lambda n: bytes(n))
    doc = h.connect_body(challenge)
    for field in ("answer", "proof"):
        doc.pop(field)
    doc["device"] = key.token
    signed = crypto.offer_hash(sdp_for_assertion or doc["offer"])
    doc["passkey"] = key.authenticator.get(
        crypto.passkey_challenge(doc["session"], challenge, signed), origin,
        flags=flags).to_doc()
    return doc


def test_the_coordinator_checks_a_passkey_with_the_public_key_and_relays_it():
    """The passkey path at the door: relayed (without a password proof) with a genuine
    assertion, the assertion in the OFFER; refused as bad-device with an assertion over
    another offer, without user verification, from another origin, without any, and
    once the home server stops listing it.  How this was shown to fail: with the
    assertion unchecked at the coordinator (``_check_credential`` returning at once)
    the four bad ones were relayed (202)."""
    h = Harness()
    key = Passkey(h.home)
    h.relay.set_device_policy(h.home.public_raw, connect.DevicePolicy(7, frozenset({key.id})))
    body = passkey_body(h, key)
    resp = h.call("POST", "/api/connect", ip=IP_A, body=body)
    assert resp.code == 202, resp.body
    offer = connect.Offer.decode(h.relay.offers[-1][1])
    assert offer.proof is None and offer.passkey.to_doc() == body["passkey"]
    bad = [passkey_body(h, key, sdp_for_assertion="v=1\r\n"),
           passkey_body(h, key, flags=UP),
           passkey_body(h, key, origin="https://evil.example")]
    no_assertion = passkey_body(h, key)
    no_assertion.pop("passkey")
    for body in bad + [no_assertion]:
        assert_error(h.call("POST", "/api/connect", ip="192.0.2.77", body=body), 403,
                     "bad-device")
    h.relay.set_device_policy(h.home.public_raw, connect.DevicePolicy(7, frozenset()))
    assert_error(h.call("POST", "/api/connect", ip=IP_A, body=passkey_body(h, key)), 403,
                 "bad-device")
    assert len(h.relay.offers) == 1


def test_only_a_sign_in_key_connects_without_the_password_proof():
    """A native client's sign-in key (kind ``key``) is relayed without a proof; a
    browser's device key (kind ``device``: it signs with the password) is refused at
    the door without one.  How this was shown to fail: without the ``password_free``
    check the device without a proof was relayed."""
    h = Harness()
    native, browser = Device(), Device()
    h.relay.set_device_policy(h.home.public_raw, policy(7, native, browser))
    for device, kind, code in ((native, "key", 202), (browser, "device", 403)):
        challenge = connect.device_challenge(h.clock.seconds(), lambda n: bytes(n))
        doc = h.connect_body(challenge)
        doc.pop("answer"), doc.pop("proof")
        doc["device"] = device.token(h.home, 7, kind=kind)
        doc["device_signature"] = crypto.b64u_encode(device.offer_signature(
            doc["session"], challenge, doc["offer"]))
        resp = h.call("POST", "/api/connect", ip=IP_A, body=doc)
        assert resp.code == code, (kind, resp.body)


# -- the home server's record ---------------------------------------------------------------


def running(path, epoch=5):
    clock = task.Clock()
    clock.advance(NOW)
    enrolled = EnrolledDevices(str(path), epoch, clock)
    enrolled.load()
    return enrolled, clock


def passkey_offer(a, token, sid=SID, challenge=CHALLENGE, sdp=SDP, **kw):
    assertion = a.get(crypto.passkey_challenge(sid, challenge, crypto.offer_hash(sdp)), ORIGIN,
                      **kw)
    return connect.Offer(sid, challenge, None, sdp, device=token, passkey=assertion)


def test_the_home_server_checks_a_passkey_again_with_its_sign_count(tmp_path):
    """The home server's own check of a passkey: its record's origin and sign count, and
    the password epoch of none (``homechannel passwd`` leaves passkeys in place).  A
    replayed assertion is refused once the sign-in was used.  How this was shown to
    fail: with ``used`` not keeping the sign count, the replay was accepted."""
    home = crypto.IdentityKey.generate()
    enrolled, _ = running(tmp_path / store.FILE)
    a = Authenticator()
    enrolled.enrol(a.public_raw, "phone", NOW, kind="passkey", person="alice",
                   rights=ENROL_ONLY, credential=a.credential, origin=ORIGIN)
    token = connect.DeviceToken.verify(home.public_raw, connect.DeviceToken.issue(
        home, a.public_raw, connect.KEY_EPOCH, NOW, kind="passkey", origin=ORIGIN), NOW)
    offer = passkey_offer(a, None)
    device = enrolled.check(token, offer, DIGEST, NOW)
    assert device.person == "alice" and device.sign_count == 1
    enrolled.used(device)
    with pytest.raises(AuthenticationError, match="sign count"):
        enrolled.check(token, offer, DIGEST, NOW)            # the same assertion again
    enrolled.epoch = 6                                       # homechannel passwd
    assert enrolled.check(token, passkey_offer(a, None), DIGEST, NOW).sign_count == 2
    with pytest.raises(AuthenticationError, match="does not verify"):
        enrolled.check(token, passkey_offer(a, None, flags=UP), DIGEST, NOW)
    # The file keeps the person, the rights and the sign count.
    again, _ = running(tmp_path / store.FILE)
    held = again.person_of(device.id)
    assert (held.person, held.rights, held.kind, held.sign_count) == ("alice", ENROL_ONLY,
                                                                       "passkey", 1)


def test_an_invite_signs_in_once_before_it_expires(tmp_path):
    """How this was shown to fail: without ``used`` removing the invite, the second
    sign-in with the same link was accepted."""
    home = crypto.IdentityKey.generate()
    enrolled, _ = running(tmp_path / store.FILE)
    told = []
    enrolled.on_change = told.append
    rights = Rights(frozenset({"files"}), True)
    device, text, private = store.new_invite(home, "bob", rights, NOW, 600)
    enrolled.enrol(device.key, device.name, NOW, kind="invite", person="bob", rights=rights,
                   expires=device.expires)
    assert told[-1].devices == {device.id}
    token = connect.DeviceToken.verify(home.public_raw, text, NOW)
    assert token.kind == "invite" and told[-1].allows(token)
    key = Device(crypto.IdentityKey.from_private_raw(private))
    offer = key.offer(SID, CHALLENGE, SDP, token=text, proof=None)
    with pytest.raises(AuthenticationError, match="expired"):
        enrolled.check(token, offer, DIGEST, NOW + 601)
    used = enrolled.check(token, offer, DIGEST, NOW)
    enrolled.used(used)
    assert told[-1].devices == frozenset()                  # the coordinator is told
    with pytest.raises(AuthenticationError, match="not enrolled"):
        enrolled.check(token, offer, DIGEST, NOW)
    link = connect.invite_link("https://c.example", home.text, text, private)
    assert connect.split_link(link) == ("https://c.example", home.text)


def test_without_the_password_no_challenge_is_issued():
    """``auth.password = false``: the home server gives its coordinator no challenge,
    so no expectedAnswer exists anywhere.  How this was shown to fail: without the
    check, ``issue`` with no key raised (HMAC of None)."""
    assert ChallengeSource(None).issue(2) == []
    assert len(ChallengeSource(bytes(32)).issue(2)) == 2


# -- rights ----------------------------------------------------------------------------------


def test_rights_narrow_the_apps_and_the_files_roots():
    files = FilesApp(roots=("/srv/photos", "/srv/work"), read_only=False)
    reader = Rights(frozenset({"files"}), True, ("/srv/photos",))
    narrowed = reader.app_config("files", files)
    assert narrowed.roots == ("/srv/photos",) and narrowed.read_only
    assert reader.app_config("terminal", object()) is None
    assert Rights(frozenset({"files"}), True, ("/elsewhere",)).app_config("files", files) is None
    assert OWNER.app_config("files", files) is files
    assert Rights.from_doc(reader.to_doc()) == reader and Rights.from_doc(OWNER.to_doc()) == OWNER
    assert reader.within(OWNER) and not OWNER.within(reader)
    assert not Rights(frozenset({"files"}), False).within(reader)       # read-write > read-only
    assert not Rights(frozenset({"files", "terminal"}), True).within(reader)
    for bad in ({"apps": ["shell"]}, {"apps": "files"}, {"read_only": "yes"}, {"x": 1}, []):
        with pytest.raises(ProtocolError):
            Rights.from_doc(bad)


# -- homechannel people ------------------------------------------------------------------


def test_people_invite_list_and_revoke(tmp_path, capsys):
    """``homechannel people``: an invite link (only with a domain name for the
    coordinator: a passkey needs one), the store's entry for it, the list by person,
    a revocation by name, and clear errors.  How this was shown to fail: without the
    domain-name check the CLI printed an invite for an IP address that could never
    enrol a passkey."""
    from homechannel import cli, keyfiles

    state = tmp_path / "state"
    key, _ = keyfiles.load_or_create_identity_key(str(state / "server.key"))

    def run(*args, url="https://hc.example"):
        config = tmp_path / "server.toml"
        config.write_text(f'state_dir = "{state}"\ncoordinator_url = "{url}"\n')
        capsys.readouterr()
        status = cli.main(["people", *args, "--config", str(config)])
        out = capsys.readouterr()
        return status, out.out, out.err

    status, out, err = run("invite", "alice", "--apps", "files,desktop", url="http://10.0.0.1")
    assert status == 1 and "domain name" in err and not out
    status, out, err = run("invite", "alice", "--apps", "files,desktop", "--minutes", "30")
    assert status == 0, err
    assert out.startswith(f"https://hc.example/#server={key.text}&invite=hcdev2.")
    assert "files read-only" in err and "single use" in err
    [entry] = store.read_file(str(state / store.FILE)).values()
    assert (entry.kind, entry.person, entry.rights.apps) == ("invite", "alice",
                                                             frozenset({"files", "desktop"}))
    status, out, _ = run("list")
    assert status == 0 and out.splitlines()[0] == "alice: desktop,files; files read-only"
    assert "invite (unused, expires" in out
    assert run("invite", "bad/name")[0] == 1
    assert run("invite", "x", "--apps", "shell")[0] == 1
    assert run("revoke", "bob")[0] == 1
    status, _, err = run("revoke", "alice")
    assert status == 0 and "1 credential(s)" in err
    assert store.read_file(str(state / store.FILE)) == {}
