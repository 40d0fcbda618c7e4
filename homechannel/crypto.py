"""The one crypto module of HomeChannel.

Pure functions and small value objects: bytes and keys in, bytes out.  No
reactor, no sockets, no files (key files are :mod:`homechannel.keyfiles`).  Everything that signs, verifies, derives, encrypts or
compares secrets lives here, so that the browser (``static/js/crypto.js``)
has exactly one Python counterpart to match.

Formats (see ``docs/protocol.md``):

* Identity keys are ECDSA P-256.  The public key travels as the 65-byte
  uncompressed SEC1 point (WebCrypto ``raw``), in text as unpadded base64url:
  that string is the *server id*.
* Signatures are raw ``r || s`` (64 bytes), the format WebCrypto produces and
  verifies, never DER.
* ``K = PBKDF2-HMAC-SHA256(password, salt = raw server public key, 600000)``;
  ``answer = HMAC-SHA256(K, challenge)``; ``expectedAnswer = SHA-256(answer)``.
"""

import base64
import functools
import hashlib
import hmac
import re
import struct
from typing import Self

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from homechannel.errors import AuthenticationError, ProtocolError

PUBLIC_KEY_SIZE = 65
SIGNATURE_SIZE = 64
KEY_ID_SIZE = 16
CHALLENGE_SIZE = 16
SESSION_ID_SIZE = 22   # base64url of 16 random bytes
EXPECTED_ANSWER_SIZE = 32
AEAD_KEY_SIZE = 32
TAG_SIZE = 16
PBKDF2_ITERATIONS = 600_000
MIN_PBKDF2_ITERATIONS = 600_000

_CURVE = ec.SECP256R1()


# -- encodings -------------------------------------------------------------


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64U = re.compile(r"^[A-Za-z0-9_-]*$")


def b64u_decode(text: object) -> bytes:
    """Decode unpadded base64url; raise ProtocolError on anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("not base64url") from None
    if not isinstance(text, str) or not _B64U.match(text) or len(text) % 4 == 1:
        raise ProtocolError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# -- identity keys ---------------------------------------------------------


def public_key_from_raw(raw: bytes) -> ec.EllipticCurvePublicKey:
    if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_SIZE or raw[0] != 4:
        raise ProtocolError("public key must be a 65-byte uncompressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, raw)
    except ValueError:
        raise ProtocolError("public key is not a point on P-256") from None


def public_key_raw(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def key_id(public_raw: bytes) -> bytes:
    """The 16-byte registry id of a public key."""
    return sha256(public_raw)[:KEY_ID_SIZE]


def parse_server_id(text: object) -> bytes:
    """A server id (base64url of the raw public key) to the raw key."""
    if isinstance(text, str) and len(text) == 87:
        return _parse_server_id_cached(text)
    raw = b64u_decode(text)
    public_key_from_raw(raw)
    return raw


@functools.lru_cache(maxsize=4096)
def _parse_server_id_cached(text: str) -> bytes:
    # Checking that a point is on the curve costs tens of microseconds on
    # every lookup and connect; valid ids repeat, so remember them.
    # (Exceptions are not cached: an invalid id is checked every time.)
    raw = b64u_decode(text)
    public_key_from_raw(raw)
    return raw


def verify(public_raw: bytes, signature: bytes, data: bytes) -> None:
    """Verify a raw r||s ECDSA-P256-SHA256 signature; raise AuthenticationError."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise AuthenticationError("signature must be 64 bytes (raw r||s)")
    key = public_key_from_raw(public_raw)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AuthenticationError("signature does not verify") from None


class IdentityKey:
    """An ECDSA P-256 identity: the coordinator's or a home server's."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key
        self.public_raw = public_key_raw(private_key)
        self.id = key_id(self.public_raw)
        self.text = b64u_encode(self.public_raw)

    @classmethod
    def generate(cls) -> Self:
        return cls(ec.generate_private_key(_CURVE))

    def sign(self, data: bytes) -> bytes:
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def derived_key(self, label: bytes) -> bytes:
        """A 32-byte secret derived from this private key for one purpose (*label*):
        HKDF-SHA256 of the private scalar.  Every process holding the key derives the
        same one (a coordinator cluster's nodes share the identity key), and it
        tells nothing about the key itself."""
        scalar = self._key.private_numbers().private_value.to_bytes(32, "big")
        return hkdf(scalar, b"homechannel derived key v1", label, 32)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> Self:
        """The identity in a PEM (PKCS#8) private key; ValueError if *data* is not a
        PEM private key, TypeError if it is another kind of key than P-256."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ValueError("not a PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
            raise TypeError("not an ECDSA P-256 key")
        return cls(key)


# -- ephemeral key agreement and session keys ------------------------------


class Ephemeral:
    """An ephemeral ECDH P-256 key for one handshake."""

    __slots__ = ("_key", "public_raw")

    def __init__(self) -> None:
        self._key = ec.generate_private_key(_CURVE)
        self.public_raw = public_key_raw(self._key)

    def shared_secret(self, peer_raw: bytes) -> bytes:
        return self._key.exchange(ec.ECDH(), public_key_from_raw(peer_raw))


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def session_keys(shared: bytes, transcript_hash: bytes) -> tuple[bytes, bytes]:
    """Per-direction AES-256-GCM keys: ``(server_to_coordinator, coordinator_to_server)``."""
    okm = hkdf(shared, transcript_hash, b"homechannel udp v1 session keys", 2 * AEAD_KEY_SIZE)
    return okm[:AEAD_KEY_SIZE], okm[AEAD_KEY_SIZE:]


_NONCE = struct.Struct(">4xQ")


def seal(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with the 64-bit counter as the nonce (4 zero bytes || counter)."""
    return AESGCM(key).encrypt(_NONCE.pack(counter), plaintext, aad)


def open_sealed(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(_NONCE.pack(counter), ciphertext, aad)
    except InvalidTag:
        raise AuthenticationError("AEAD tag does not verify") from None


# -- password, challenges and the end-to-end proof ---------------------------


def derive_password_key(password: str, server_public_raw: bytes,
                        iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """``K = PBKDF2-HMAC-SHA256(password, salt = raw server public key)``.

    Deliberately slow (about a quarter of a second): call it from a thread.
    """
    if iterations < MIN_PBKDF2_ITERATIONS:
        raise ValueError(f"PBKDF2 needs at least {MIN_PBKDF2_ITERATIONS} iterations")
    return hashlib.pbkdf2_hmac(
        "sha256", password.encode("utf-8"), server_public_raw, iterations, 32
    )


def challenge_answer(password_key: bytes, challenge: bytes) -> bytes:
    return hmac_sha256(password_key, challenge)


def expected_answer(answer: bytes) -> bytes:
    return sha256(answer)


def check_answer(answer: bytes, expected: bytes) -> bool:
    """Constant-time check of a client's answer against ``expectedAnswer``."""
    return hmac.compare_digest(sha256(answer), expected)


def offer_hash(sdp: str) -> bytes:
    """SHA-256 of the offer SDP as sent (its UTF-8 bytes): what the proof binds."""
    return sha256(sdp.encode("utf-8"))


PROOF_LABEL = b"homechannel-proof-v2"


def proof_message(session_id: str, challenge: bytes, offer_digest: bytes) -> bytes:
    """``"homechannel-proof-v2" || session id || challenge || SHA-256(offer SDP)``.

    Every part has a fixed size (20 + 22 + 16 + 32 bytes), so plain
    concatenation is unambiguous."""
    sid = session_id.encode("ascii") if isinstance(session_id, str) else b""
    if (len(sid) != SESSION_ID_SIZE or not isinstance(challenge, bytes)
            or len(challenge) != CHALLENGE_SIZE or not isinstance(offer_digest, bytes)
            or len(offer_digest) != 32):
        raise ProtocolError("proof input: a 22-character session id, a 16-byte challenge "
                            "and a 32-byte offer hash")
    return PROOF_LABEL + sid + challenge + offer_digest


def client_proof(password_key: bytes, session_id: str, challenge: bytes,
                 offer_digest: bytes) -> bytes:
    """``proof = HMAC(K, proof_message(...))``: binds the password to this exact offer."""
    return hmac_sha256(password_key, proof_message(session_id, challenge, offer_digest))


def check_proof(password_key: bytes, session_id: str, challenge: bytes,
                offer_digest: bytes, proof: bytes) -> bool:
    """Constant-time check of a client's proof over the offer it sent."""
    good = client_proof(password_key, session_id, challenge, offer_digest)
    return isinstance(proof, bytes) and hmac.compare_digest(good, proof)


def answer_signature_message(session_id: str, challenge: bytes, offer_digest: bytes,
                             client_fingerprint: str, server_fingerprint: str,
                             timestamp: int, answer_sdp: str) -> bytes:
    """What the home server signs over its SDP answer.  The SDP comes last."""
    return "\n".join([
        "homechannel-answer-v2", session_id, b64u_encode(challenge), b64u_encode(offer_digest),
        normalize_fingerprint(client_fingerprint),
        normalize_fingerprint(server_fingerprint),
        str(int(timestamp)), answer_sdp,
    ]).encode("utf-8")


def device_token_message(payload: bytes) -> bytes:
    """What a home server signs to issue a device token (``connect.DeviceToken``)."""
    return b"homechannel-device-v2\n" + payload


def device_id(device_public_raw: bytes) -> str:
    """A device's id: base64url of the first 16 bytes of SHA-256 of its public key
    (the same key enrolled again is the same device)."""
    return b64u_encode(sha256(device_public_raw)[:16])


# The device key's signatures over a connect (docs/protocol.md, "Device signatures").
# Every label is 27 bytes and every field has a fixed size, so plain concatenation is
# unambiguous, and no signature made for one purpose verifies for another.
DEVICE_OFFER_LABEL = b"homechannel-device-offer-v1"
DEVICE_START_LABEL = b"homechannel-device-start-v1"
DEVICE_ENROL_LABEL = b"homechannel-device-enrol-v1"


def _session_bytes(session_id: str) -> bytes:
    sid = session_id.encode("ascii") if isinstance(session_id, str) else b""
    if len(sid) != SESSION_ID_SIZE:
        raise ProtocolError("a session id is 22 base64url characters")
    return sid


def _challenge_bytes(challenge: bytes) -> bytes:
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_SIZE:
        raise ProtocolError("a challenge is 16 bytes")
    return challenge


def device_offer_message(session_id: str, challenge: bytes, offer_digest: bytes) -> bytes:
    """What the device key signs over a connect with an offer: ``label || session id ||
    challenge || SHA-256(offer SDP)`` (27 + 22 + 16 + 32 bytes): the proof's binding,
    made by a key the device holds."""
    if not isinstance(offer_digest, bytes) or len(offer_digest) != 32:
        raise ProtocolError("an offer hash is 32 bytes")
    return (DEVICE_OFFER_LABEL + _session_bytes(session_id) + _challenge_bytes(challenge)
            + offer_digest)


def device_start_message(session_id: str, challenge: bytes) -> bytes:
    """What the device key signs to prove itself before the offer exists (the first
    step of a connect with TURN): ``label || session id || challenge``."""
    return DEVICE_START_LABEL + _session_bytes(session_id) + _challenge_bytes(challenge)


def device_enrol_message(session_id: str, server_public_raw: bytes) -> bytes:
    """What the device key signs to enrol over a signed-in session: ``label || session
    id || the home server's raw public key`` (proof that the device holds the key)."""
    if not isinstance(server_public_raw, bytes) or len(server_public_raw) != PUBLIC_KEY_SIZE:
        raise ProtocolError("a server key is 65 bytes")
    return DEVICE_ENROL_LABEL + _session_bytes(session_id) + server_public_raw


# The coordinator's tickets: the proven first step of a connect with TURN, MACed with
# a key derived from its identity (``IdentityKey.derived_key(TICKET_KEY_LABEL)``).
TICKET_KEY_LABEL = b"homechannel connect tickets v1"
TICKET_LABEL = b"homechannel-ticket-v1"


def response_signature_message(path: str, body: bytes) -> bytes:
    """What the coordinator signs over every HTTP response body."""
    return b"homechannel-response-v1\n" + path.encode("utf-8") + b"\n" + body


# -- DTLS fingerprints ---------------------------------------------------------

_FINGERPRINT_TEXT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")


def normalize_fingerprint(fp: str) -> str:
    """A sha-256 DTLS fingerprint ("AB:CD:..." 32 hex pairs) in upper case."""
    if not isinstance(fp, str) or not _FINGERPRINT_TEXT.fullmatch(fp):
        raise ProtocolError("DTLS fingerprint must be a sha-256 fingerprint (32 hex pairs)")
    return fp.upper()


def certificate_fingerprint(der: bytes) -> str:
    """The sha-256 fingerprint of a DER certificate, as SDP writes it (upper case)."""
    return ":".join(f"{b:02X}" for b in sha256(der))
