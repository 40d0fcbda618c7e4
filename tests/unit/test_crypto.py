"""homechannel/crypto.py: known answers, signatures, encodings, identity and password
key files."""

import hashlib
import hmac
import os
import stat

import pytest

from homechannel import crypto, keyfiles
from homechannel.errors import AuthenticationError, KeyFileError, ProtocolError

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
    key, created = keyfiles.load_or_create_identity_key(str(path))
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = keyfiles.load_or_create_identity_key(str(path))
    assert not created and again.public_raw == key.public_raw


def test_broken_key_is_never_replaced(tmp_path):
    path = tmp_path / "server.key"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not replaced"):
        keyfiles.load_or_create_identity_key(str(path))
    assert path.read_bytes() == b"not a key"


def test_readable_key_is_refused(tmp_path):
    path = tmp_path / "server.key"
    keyfiles.create_identity_key(str(path))
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keyfiles.load_identity_key(str(path))


def test_identity_key_pem_round_trip_and_other_kinds_of_key(tmp_path):
    """``crypto.IdentityKey.from_pem`` (pure) reads what ``private_pem`` writes; a PEM
    key of another kind (Ed25519) is named as such by ``keyfiles``, not taken for a
    damaged file.  Shown to fail by accepting any private key in ``from_pem``: reading
    its public point then raises AttributeError instead of the KeyFileError below."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    again = crypto.IdentityKey.from_pem(SERVER.private_pem())
    assert again.public_raw == SERVER.public_raw
    with pytest.raises(ValueError):
        crypto.IdentityKey.from_pem(b"not a key")
    path = tmp_path / "ed25519.key"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="is not an ECDSA P-256 key"):
        keyfiles.load_identity_key(str(path))


def test_password_key_file_bound_to_identity(tmp_path):
    path = str(tmp_path / "password.json")
    keyfiles.save_password_key(path, SERVER.public_raw, b"k" * 32)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keyfiles.load_password_key(path, SERVER.public_raw) == b"k" * 32
    assert "k" * 10 not in open(path).read()  # stored encoded, never a password
    with pytest.raises(KeyFileError, match="another identity"):
        keyfiles.load_password_key(path, COORDINATOR.public_raw)


def test_password_key_file_readable_by_others_is_refused(tmp_path):
    """K is password-equivalent for HomeChannel sign-ins: its file is refused when
    group or others may read it, with the advice the identity key gets.  How this
    was shown to fail: the old loader read a 0644 file."""
    path = str(tmp_path / "password.json")
    keyfiles.save_password_key(path, SERVER.public_raw, b"k" * 32)
    for mode in (0o644, 0o640, 0o604):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match=rf"password key file .* is readable by others "
                                               rf"\(mode {mode:04o}\): run 'chmod 600 {path}'"):
            keyfiles.load_password_key(path, SERVER.public_raw)
    os.chmod(path, 0o600)
    assert keyfiles.load_password_key(path, SERVER.public_raw) == b"k" * 32
