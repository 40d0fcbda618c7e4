"""Known answers and round trips for the codec and the crypto module, and
"garbage raises only ProtocolError" (or is a counted drop) everywhere."""

import hashlib
import hmac
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from homechannel import crypto, wire
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.errors import AuthenticationError, KeyFileError, ProtocolError
from homechannel.server.challenges import ChallengeSource
from homechannel.server.registrant import Registrant

COORDINATOR = crypto.IdentityKey.generate()
SERVER = crypto.IdentityKey.generate()


# -- crypto known answers -----------------------------------------------------


def test_password_key_known_answer():
    # PBKDF2-HMAC-SHA256 with the raw server key as salt, 600,000 iterations.
    salt = bytes([4]) + bytes(range(64))
    want = hashlib.pbkdf2_hmac("sha256", b"correct horse", salt, 600_000, 32)
    assert crypto.derive_password_key("correct horse", salt) == want
    with pytest.raises(ValueError):
        crypto.derive_password_key("x", salt, iterations=1000)


def test_answer_expected_answer_and_proof_known_answers():
    K = bytes(32)
    challenge = bytes(range(16))
    answer = crypto.challenge_answer(K, challenge)
    assert answer == hmac.new(K, challenge, hashlib.sha256).digest()
    assert crypto.expected_answer(answer) == hashlib.sha256(answer).digest()
    assert crypto.check_answer(answer, crypto.expected_answer(answer))
    assert not crypto.check_answer(b"x" * 32, crypto.expected_answer(answer))
    sid, sid2 = "A" * 22, "B" * 22
    digest = crypto.offer_hash("v=0\r\n")
    assert digest == hashlib.sha256(b"v=0\r\n").digest()
    msg = crypto.proof_message(sid, challenge, digest)
    assert msg == b"homechannel-proof-v2" + sid.encode() + challenge + digest
    proof = crypto.client_proof(K, sid, challenge, digest)
    assert proof == hmac.new(K, msg, hashlib.sha256).digest()
    assert crypto.check_proof(K, sid, challenge, digest, proof)
    assert not crypto.check_proof(K, sid2, challenge, digest, proof)
    assert not crypto.check_proof(K, sid, challenge, crypto.offer_hash("v=0\n"), proof)
    for bad in (("short", challenge, digest), (sid, challenge[:15], digest),
                (sid, challenge, digest[:31])):
        with pytest.raises(ProtocolError):
            crypto.proof_message(*bad)


def test_signatures_are_raw_and_verify():
    sig = SERVER.sign(b"hello")
    assert len(sig) == 64
    crypto.verify(SERVER.public_raw, sig, b"hello")
    with pytest.raises(AuthenticationError):
        crypto.verify(SERVER.public_raw, sig, b"hellO")
    with pytest.raises(AuthenticationError):
        crypto.verify(COORDINATOR.public_raw, sig, b"hello")


def test_b64u_round_trip_and_garbage():
    for data in (b"", b"\0", os.urandom(65)):
        assert crypto.b64u_decode(crypto.b64u_encode(data)) == data
    for bad in ("a", "a=b", "+/", "é", 5, b"\xff"):
        with pytest.raises(ProtocolError):
            crypto.b64u_decode(bad)


def test_certificate_fingerprint_is_sdp_style_sha256():
    der = b"certificate bytes"
    fp = crypto.certificate_fingerprint(der)
    assert fp == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert crypto.normalize_fingerprint(fp.lower()) == fp


# -- identity key files -----------------------------------------------------------


def test_key_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "k" / "server.key"
    key, created = crypto.IdentityKey.load_or_create(str(path))
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = crypto.IdentityKey.load_or_create(str(path))
    assert not created and again.public_raw == key.public_raw


def test_broken_key_is_never_replaced(tmp_path):
    path = tmp_path / "server.key"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not replaced"):
        crypto.IdentityKey.load_or_create(str(path))
    assert path.read_bytes() == b"not a key"


def test_readable_key_is_refused(tmp_path):
    path = tmp_path / "server.key"
    crypto.IdentityKey.create(str(path))
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        crypto.IdentityKey.load(str(path))


def test_password_key_file_bound_to_identity(tmp_path):
    path = str(tmp_path / "password.json")
    crypto.save_password_key(path, SERVER.public_raw, b"k" * 32)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert crypto.load_password_key(path, SERVER.public_raw) == b"k" * 32
    assert "k" * 10 not in open(path).read()  # stored encoded, never a password
    with pytest.raises(KeyFileError, match="another identity"):
        crypto.load_password_key(path, COORDINATOR.public_raw)


# -- codec ------------------------------------------------------------------------


def test_inner_round_trip():
    m = wire.inner(wire.PING, 7, b"body")
    assert wire.parse_inner(m + b"\0" * 10) == (wire.PING, 7, b"body")


@given(st.binary(min_size=1, max_size=wire.MAX_TRANSFER), st.integers(0, 2**32 - 1))
@settings(max_examples=50)
def test_fragments_round_trip(payload, tid):
    r = wire.Reassembly()
    frags = [wire.parse_fragment(b) for b in wire.split(tid, wire.KIND_OFFER, payload)]
    out = [r.add(f, 0.0) for f in reversed(frags)]
    assert out[-1] == payload and all(o is None for o in out[:-1])
    assert r.add(frags[0], 0.0) is None  # a late duplicate is never delivered twice


@given(st.binary(max_size=1300))
@settings(max_examples=300)
def test_codec_garbage_raises_only_protocol_error(data):
    for parse in (wire.datagram_type, wire.parse_hello, wire.parse_cookie, wire.parse_init,
                  wire.parse_resp, wire.parse_finish, wire.parse_data, wire.parse_unknown,
                  wire.parse_inner, wire.parse_pairs, wire.parse_fragment,
                  wire.parse_fragment_ack, wire.parse_migrate):
        try:
            parse(data)
        except ProtocolError:
            pass


def test_migrate_round_trip():
    body = wire.migrate("coord.example", 7777, COORDINATOR.public_raw)
    assert wire.parse_migrate(body) == ("coord.example", 7777, COORDINATOR.public_raw)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_replay_window_accepts_each_counter_once(counters):
    top = bitmap = 0
    seen = set()
    for c in counters:
        ok, top, bitmap = wire.replay_check(top, bitmap, c)
        fresh = c not in seen and (not seen or c > max(seen) - wire.REPLAY_WINDOW)
        assert ok == fresh, (c, sorted(seen))
        if ok:
            seen.add(c)


# -- hostile datagrams against both protocol objects ----------------------------------


HEADERED = st.builds(lambda t, rest: wire.header(t) + rest,
                     st.integers(0, 255), st.binary(max_size=300))


@given(st.one_of(st.binary(max_size=1300), HEADERED))
@settings(max_examples=400)
def test_coordinator_never_raises_and_never_amplifies(data):
    rv = Rendezvous(COORDINATOR)
    out = rv.receive(data, ("192.0.2.1", 1234), 100.0)
    for reply, _ in out:
        assert len(reply) <= len(data), "never a reply larger than the request"
    assert rv.registry.count == 0
    assert len(rv._pending) == 0, "nothing stored before the cookie round trip"


@given(st.one_of(st.binary(max_size=1300), HEADERED))
@settings(max_examples=300)
def test_registrant_never_raises(data):
    reg = Registrant(SERVER, COORDINATOR.public_raw, ChallengeSource(b"k" * 32))
    reg.start(0.0)
    assert reg.receive(data, 1.0) == []


def test_hello_flood_is_bounded_and_stores_nothing():
    rv = Rendezvous(COORDINATOR, hellos_per_second=100.0)
    replies = sum(len(rv.receive(wire.hello(os.urandom(16)), ("192.0.2.%d" % (i % 250), i), 5.0))
                  for i in range(1000))
    assert replies <= 100
    assert rv.stats["dropped.hello-rate"] >= 900
    assert not rv._per_source and not rv._pending, "no state for unproven sources"


def test_unknown_replies_are_rate_limited_and_need_big_requests():
    rv = Rendezvous(COORDINATOR, unknown_replies_per_second=10)
    small = wire.header(wire.DATA) + bytes(40)
    assert rv.receive(small, ("192.0.2.1", 1), 1.0) == []
    big = wire.header(wire.DATA) + bytes(wire.MIN_SERVER_DATAGRAM - 4)
    n = sum(len(rv.receive(big, ("192.0.2.1", 1), 1.0)) for _ in range(100))
    assert n <= 10
