"""Passkeys (WebAuthn): the checks of an enrolment and of a sign-in, for every side.

The home server verifies an enrolment (``navigator.credentials.create`` over the
end-to-end channel) with :func:`verify_registration`; the coordinator verifies a
sign-in's assertion at the door with :func:`verify_assertion` and the public key
the home server vouched for (the passkey's token, ``connect.DeviceToken`` of kind
``passkey``), and the home server verifies it again, with its own record of the
credential (origin, sign count) and its own single-use challenges.

The WebAuthn parsing and checks are py_webauthn's (the ``webauthn`` package on
PyPI, maintained by Duo): it verifies exactly the two ceremonies a relying party
needs, as plain functions over bytes, with ``cryptography`` (already ours) for the
signatures; python-fido2 (Yubico) is a larger library aimed at clients and
authenticators as well.  Only ES256 (ECDSA P-256 with SHA-256) credentials are
accepted: a passkey's public key is then a raw P-256 point like a device key's, so
the token, the policy and the coordinator treat the two alike.

Pure apart from the library: bytes and text in, values out; :class:`ProtocolError`
for a malformed document, :class:`AuthenticationError` for one that does not verify.
"""

import urllib.parse
from dataclasses import dataclass
from typing import Any

from homechannel import crypto
from homechannel.errors import AuthenticationError, ProtocolError

MAX_CREDENTIAL_ID = 256          # bytes (WebAuthn allows 1023; authenticators make 16-64)
MAX_AUTHENTICATOR_DATA = 1024    # bytes of an assertion's authenticatorData
MAX_CLIENT_DATA = 2048           # bytes of clientDataJSON
MAX_SIGNATURE = 80               # bytes of a DER ES256 signature (at most 72)
MAX_ORIGIN = 200
ES256 = -7


def origin_of(url: object) -> str:
    """The WebAuthn origin (``scheme://host[:port]``) of *url*; ProtocolError if it has
    none.  Its host is the RP ID a passkey is bound to (never an IP address in a
    browser: ``http://localhost:PORT`` for tests)."""
    if not isinstance(url, str) or len(url) > MAX_ORIGIN:
        raise ProtocolError("an origin is a URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ProtocolError(f"{url[:80]!r} has no http(s) origin")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


def relying_party_origin(coordinator_url: str) -> str | None:
    """The origin passkeys are enrolled for: the coordinator's web origin, or None if
    its host is an IP address (a browser binds a passkey to a domain name only)."""
    import ipaddress

    try:
        origin = origin_of(coordinator_url)
        ipaddress.ip_address(rp_id(origin))
    except ProtocolError:
        return None
    except ValueError:
        return origin           # a name, not an address
    return None


def rp_id(origin: str) -> str:
    """The RP ID of *origin*: its host."""
    return urllib.parse.urlsplit(origin).hostname or ""


def _b64(doc: dict[str, Any], name: str, limit: int) -> bytes:
    value = crypto.b64u_decode(doc.get(name))
    if not value or len(value) > limit:
        raise ProtocolError(f"passkey: {name} is missing or longer than {limit} bytes")
    return value


@dataclass(frozen=True)
class Assertion:
    """A sign-in's WebAuthn assertion as the browser posts it (``passkey`` of
    ``POST /api/connect``, relayed in the OFFER): base64url fields ``credential``
    (raw id), ``authenticator_data``, ``client_data`` (clientDataJSON) and
    ``signature`` (DER)."""

    credential: bytes
    authenticator_data: bytes
    client_data: bytes
    signature: bytes

    def to_doc(self) -> dict[str, str]:
        return {"credential": crypto.b64u_encode(self.credential),
                "authenticator_data": crypto.b64u_encode(self.authenticator_data),
                "client_data": crypto.b64u_encode(self.client_data),
                "signature": crypto.b64u_encode(self.signature)}

    @classmethod
    def from_doc(cls, doc: object) -> "Assertion":
        if not isinstance(doc, dict):
            raise ProtocolError("passkey must be an object")
        return cls(_b64(doc, "credential", MAX_CREDENTIAL_ID),
                   _b64(doc, "authenticator_data", MAX_AUTHENTICATOR_DATA),
                   _b64(doc, "client_data", MAX_CLIENT_DATA),
                   _b64(doc, "signature", MAX_SIGNATURE))


def cose_key(public_raw: bytes) -> bytes:
    """The COSE_Key (EC2, P-256, ES256) of a raw P-256 point."""
    from webauthn.helpers import encode_cbor

    crypto.public_key_from_raw(public_raw)
    return encode_cbor({1: 2, 3: ES256, -1: 1, -2: public_raw[1:33], -3: public_raw[33:65]})


def verify_assertion(public_raw: bytes, assertion: Assertion, challenge: bytes, origin: str,
                     sign_count: int = 0) -> int:
    """Check *assertion* against the credential's raw public key, the expected WebAuthn
    *challenge* (:func:`crypto.passkey_challenge`) and *origin* (its RP ID is the
    origin's host): type ``webauthn.get``, the challenge, the origin, the RP ID hash,
    user presence and user verification, a sign count beyond *sign_count* (when
    either is not 0: the coordinator, which keeps none, passes 0), and the signature.
    Returns the assertion's sign count; AuthenticationError saying what failed."""
    from webauthn import verify_authentication_response
    from webauthn.helpers.exceptions import InvalidAuthenticationResponse

    try:
        verified = verify_authentication_response(
            credential={"id": crypto.b64u_encode(assertion.credential),
                        "rawId": crypto.b64u_encode(assertion.credential),
                        "type": "public-key",
                        "response": {
                            "authenticatorData": crypto.b64u_encode(assertion.authenticator_data),
                            "clientDataJSON": crypto.b64u_encode(assertion.client_data),
                            "signature": crypto.b64u_encode(assertion.signature)}},
            expected_challenge=challenge, expected_rp_id=rp_id(origin),
            expected_origin=origin, credential_public_key=cose_key(public_raw),
            credential_current_sign_count=sign_count, require_user_verification=True)
    except InvalidAuthenticationResponse as e:
        raise AuthenticationError(f"the passkey's assertion does not verify: {e}") from None
    except Exception as e:       # the library's parsers: CBOR, JSON, base64
        raise AuthenticationError(f"the passkey's assertion is malformed: "
                                  f"{type(e).__name__}") from None
    return verified.new_sign_count


@dataclass(frozen=True)
class Registration:
    """A verified enrolment: the credential's raw id, raw P-256 public key, sign count."""

    credential: bytes
    public_raw: bytes
    sign_count: int


def verify_registration(doc: object, challenge: bytes, origin: str) -> Registration:
    """Check the browser's ``navigator.credentials.create`` result *doc* (``{"id",
    "rawId", "type", "response": {"clientDataJSON", "attestationObject"}}``, base64url)
    for *challenge* and *origin*: user presence and verification, ES256 only
    (attestation ``none`` is what the browser is asked for; any other format is
    verified by the library or refused).  AuthenticationError saying what failed."""
    from webauthn import verify_registration_response
    from webauthn.helpers import decode_credential_public_key
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.decode_credential_public_key import DecodedEC2PublicKey
    from webauthn.helpers.exceptions import InvalidRegistrationResponse

    if not isinstance(doc, dict):
        raise ProtocolError("a passkey registration is an object")
    try:
        verified = verify_registration_response(
            credential=doc, expected_challenge=challenge, expected_rp_id=rp_id(origin),
            expected_origin=origin, require_user_verification=True,
            supported_pub_key_algs=[COSEAlgorithmIdentifier.ECDSA_SHA_256])
        key = decode_credential_public_key(verified.credential_public_key)
        if not isinstance(key, DecodedEC2PublicKey):
            raise InvalidRegistrationResponse("not an ES256 (EC2 P-256) public key")
        raw = b"\x04" + bytes(key.x) + bytes(key.y)
        crypto.public_key_from_raw(raw)
    except InvalidRegistrationResponse as e:
        raise AuthenticationError(f"the passkey registration does not verify: {e}") from None
    except Exception as e:
        raise AuthenticationError(f"the passkey registration is malformed: "
                                  f"{type(e).__name__}") from None
    if len(verified.credential_id) > MAX_CREDENTIAL_ID:
        raise AuthenticationError("the passkey's credential id is too long")
    return Registration(bytes(verified.credential_id), raw, verified.sign_count)
