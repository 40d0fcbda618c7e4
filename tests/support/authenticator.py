"""A software WebAuthn authenticator for tests: what Chromium's virtual authenticator
does, in Python, so that the passkey checks (``protocol/passkey.py``) and the
malicious-coordinator cases can be driven with exact bytes.

:meth:`Authenticator.create` makes a registration (attestation ``none``, ES256) and
:meth:`Authenticator.get` an assertion, with flags, sign count, origin, type and RP
ID each settable, so a test can make every way an assertion can be wrong."""

import json
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import encode_cbor

from homechannel import crypto
from homechannel.protocol import passkey

UP, UV, AT = 0x01, 0x04, 0x40


class Authenticator:
    def __init__(self, credential=b"credential-id-01"):
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public_raw = crypto.public_key_raw(self.private)
        self.credential = credential
        self.count = 0

    def client_data(self, kind, challenge, origin):
        return json.dumps({"type": kind, "challenge": crypto.b64u_encode(challenge),
                           "origin": origin, "crossOrigin": False}).encode()

    def create(self, challenge, origin, flags=UP | UV, rp=None):
        """``navigator.credentials.create``'s result as the browser sends it."""
        rp_hash = crypto.sha256((rp or passkey.rp_id(origin)).encode())
        attested = (bytes(16) + struct.pack(">H", len(self.credential)) + self.credential
                    + passkey.cose_key(self.public_raw))
        auth = rp_hash + bytes([flags | AT]) + struct.pack(">I", self.count) + attested
        attestation = encode_cbor({"fmt": "none", "attStmt": {}, "authData": auth})
        b64 = crypto.b64u_encode
        return {"id": b64(self.credential), "rawId": b64(self.credential),
                "type": "public-key",
                "response": {"clientDataJSON": b64(self.client_data(
                    "webauthn.create", challenge, origin)),
                    "attestationObject": b64(attestation)}}

    def get(self, challenge, origin, flags=UP | UV, rp=None, kind="webauthn.get",
            count=None):
        """An assertion (``passkey.Assertion``) over *challenge* from *origin*."""
        self.count = self.count + 1 if count is None else count
        rp_hash = crypto.sha256((rp or passkey.rp_id(origin)).encode())
        auth = rp_hash + bytes([flags]) + struct.pack(">I", self.count)
        client = self.client_data(kind, challenge, origin)
        der = self.private.sign(auth + crypto.sha256(client), ec.ECDSA(hashes.SHA256()))
        return passkey.Assertion(self.credential, auth, client, der)
