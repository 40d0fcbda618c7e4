"""The connect flow's formats, limits and codes: one pure module for every side.

The browser (``static/js/connect.js``, its twin, checked against vectors from
this module by ``tests/unit/test_connect_js.py``), the coordinator
(``coordinator/broker.py``), the home server (``server/peer.py``) and the
native client (``client/session.py``) all take their rules from here, so that an
offer the coordinator relays is an offer the home server accepts, and a
refusal means the same thing everywhere.  ``docs/protocol.md`` section 2
documents every field.

Pure: bytes, text and ``now`` in; values out; :class:`ProtocolError` (or a
more specific :mod:`homechannel.errors` class) on anything malformed.  No
reactor, no sockets, no aiortc.
"""

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from homechannel import crypto
from homechannel.protocol.ice import check_ice_servers
from homechannel.protocol.sdp import MAX_SDP
from homechannel.protocol.sdp import fingerprint as sdp_fingerprint
from homechannel.errors import (
    AuthenticationError,
    BadRequest,
    CapacityError,
    Forbidden,
    HomeChannelError,
    ProtocolError,
    Unavailable,
)

# -- limits ------------------------------------------------------------------

SESSION_ID = re.compile(r"\A[A-Za-z0-9_-]{22}\Z")   # b64u of 16 random bytes
MAX_SOURCE = 64                # characters of the source address in an offer
MAX_DEVICE_TOKEN = 1024        # characters of a device token
# The relayed OFFER payload must fit one UDP transfer (``udp.MAX_TRANSFER``).
# An ASCII SDP at most doubles in JSON (\r\n, \", \\), so 2 x MAX_SDP plus the
# other fields stays well under it; ``Offer.encode`` checks it anyway.
MAX_OFFER_PAYLOAD = 64 * 1024
MAX_ANSWER_PAYLOAD = 64 * 1024
MAX_CLOCK_SKEW = 300           # seconds between the home server's and the client's clocks
PROOF_SIZE = 32
ANSWER_SIZE = 32
DEVICE_ID_SIZE = 16
DEVICE_TOKEN_LIFETIME = 90 * 86400
DEVICE_TOKEN_PREFIX = "hcdev2"

# -- the HTTP API ---------------------------------------------------------------

# The coordinator's signature over every HTTP response (``crypto.response_signature_message``),
# made by :func:`signed_json` (for ``coordinator/web.py`` and ``coordinator/httpserver.py``),
# checked by ``client/api.py`` (and by ``static/js/api.js``).
SIGNATURE_HEADER = "X-HomeChannel-Signature"


def signed_json(identity: crypto.IdentityKey | None, path: str,
                doc: Any) -> tuple[bytes, bytes | None]:
    """A coordinator API response: its JSON body (compact, keys sorted) and the value
    of :data:`SIGNATURE_HEADER` for the request *path* (base64url of *identity*'s
    signature), or None without an identity (an unsigned answer)."""
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if identity is None:
        return body, None
    signature = identity.sign(crypto.response_signature_message(path, body))
    return body, crypto.b64u_encode(signature).encode("ascii")


# A client's code for an error response without that header (a reverse proxy's own 429
# or 502): shown as such, nothing in it used.  A success without it is an attack.
UNSIGNED_REFUSAL = "unsigned-refusal"

# The connect link the home server prints and the browser opens: the coordinator's
# URL with the server id in the fragment (never sent to the coordinator by a browser).
LINK_MARK = "#server="


def connect_link(coordinator_url: str, server_id: str) -> str:
    """``{coordinator_url}/#server={server_id}``."""
    return f"{coordinator_url.rstrip('/')}/{LINK_MARK}{server_id}"


def split_link(text: str) -> tuple[str | None, str]:
    """``(coordinator URL or None, server id)`` from a connect link or a bare id."""
    if LINK_MARK in text:
        url, _, server = text.partition(LINK_MARK)
        return url.rstrip("/") or None, server
    return None, text


# -- codes of the home server's refusals ---------------------------------------
# (code -> the error class and message the coordinator gives the browser)

BAD_OFFER = "bad-offer"
BAD_PROOF = "bad-proof"
BAD_DEVICE = "bad-device"
UNKNOWN_CHALLENGE = "unknown-challenge"
BUSY = "busy"
INTERNAL = "internal"

REFUSALS = {
    BAD_OFFER: (BadRequest, "the home server refused the offer as malformed or of an "
                "unsupported shape (one datachannel media section and one sha-256 "
                "fingerprint are required)"),
    BAD_PROOF: (Forbidden, "the home server refused the connection: the password proof did "
                "not verify (was the password changed on the home server?)"),
    BAD_DEVICE: (Forbidden, "the home server did not accept this device's sign-in token: "
                 "sign in with the password"),
    UNKNOWN_CHALLENGE: (Forbidden, "the home server did not recognise the challenge: "
                        "try again"),
    BUSY: (CapacityError, "the home server has too many sessions open: try again later"),
    INTERNAL: (Unavailable, "the home server failed to answer: see its log"),
}


def refusal_error(code: str, message: str = "", **fields: Any) -> HomeChannelError:
    """The error a browser gets for a home server's refusal *code*.

    Unknown codes become ``refused`` (503); the home server's own message is
    appended when it has one (it is the home server's, not the coordinator's).
    *fields* go with a ``busy`` refusal (``slots``, ``sessions``:
    :meth:`Answer.busy_fields`), so that a client shows what holds the slots
    without reading the message."""
    cls, text = REFUSALS.get(code, (Unavailable, "the home server refused the connection"))
    if code not in REFUSALS:
        code = "refused"
    if isinstance(message, str) and message and code in (BUSY, "refused"):
        text = f"{text} ({message[:200]})"
    return cls(text, code, **(fields if code == BUSY else {}))


# What a ``busy`` refusal says holds the home server's session slots: each live
# session's state and age, oldest first.  Never its address: the list is shown to
# the client that was refused, who is not those sessions' owner.
SLOT_STATES = ("connecting", "connected")
MAX_SLOT_HOLDERS = 16
MAX_SLOTS = 1_000_000
MAX_AGE = 10**9


@dataclass(frozen=True)
class SlotHolder:
    """A live session holding one of the home server's session slots."""

    state: str      # one of SLOT_STATES
    age: int        # whole seconds since its offer

    def to_doc(self) -> dict[str, Any]:
        return {"state": self.state, "age": self.age}

    @classmethod
    def from_doc(cls, doc: object) -> "SlotHolder":
        if (not isinstance(doc, dict) or set(doc) != {"state", "age"}
                or doc["state"] not in SLOT_STATES or not isinstance(doc["age"], int)
                or isinstance(doc["age"], bool) or not 0 <= doc["age"] < MAX_AGE):
            raise ProtocolError("a slot holder is {state: connecting|connected, age: seconds}")
        return cls(doc["state"], doc["age"])


# -- session ids -----------------------------------------------------------------


def check_session_id(value: object) -> str:
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise ProtocolError("session must be 22 base64url characters (16 random bytes)")
    return value


# -- device tokens ---------------------------------------------------------------


def parse_device_key(text: object) -> bytes:
    """A device's public key (base64url of the raw 65-byte P-256 point) as raw bytes;
    ProtocolError if it is not one."""
    raw = crypto.b64u_decode(text)
    crypto.public_key_from_raw(raw)
    return raw


@dataclass(frozen=True)
class DeviceToken:
    """A home server's signed statement: "the device holding this key signed in with
    the password of this epoch".

    The home server issues one over the control channel after a sign-in, to the key
    the client enrols (``hello``'s ``device``); the client presents it with later
    connects, each signed by that key (:func:`crypto.device_offer_message`), so a
    copied token is useless without the key.  The coordinator verifies it with the
    server's public key, checks the epoch and the device against the server's
    :class:`DevicePolicy`, and gives its holder a budget of its own, apart from
    strangers' attempts; the home server verifies all of it again against its own
    store of enrolled devices.  It grants no access by itself: every connect still
    carries the password proof.

    Text form: ``hcdev2.<b64u payload>.<b64u signature>``; payload: compact JSON
    ``{"device","epoch","exp","iat","key","server","v":2}`` (sorted keys); ``device``
    is :func:`crypto.device_id` of ``key``; signature: ECDSA(server identity,
    ``"homechannel-device-v2\\n" + payload``).
    """

    server: str
    device: str
    key: bytes          # the device's raw public key
    epoch: int          # the password epoch it was issued in
    issued: int
    expires: int

    def payload(self) -> bytes:
        return json.dumps({"v": 2, "server": self.server, "device": self.device,
                           "key": crypto.b64u_encode(self.key), "epoch": int(self.epoch),
                           "iat": int(self.issued), "exp": int(self.expires)},
                          separators=(",", ":"), sort_keys=True).encode("ascii")

    @classmethod
    def issue(cls, identity: crypto.IdentityKey, device_key: bytes, epoch: int, now: float,
              lifetime: float = DEVICE_TOKEN_LIFETIME) -> str:
        """A token for the device with raw public key *device_key*."""
        token = cls(identity.text, crypto.device_id(device_key), device_key, int(epoch),
                    int(now), int(now + lifetime))
        payload = token.payload()
        signature = identity.sign(crypto.device_token_message(payload))
        return ".".join([DEVICE_TOKEN_PREFIX, crypto.b64u_encode(payload),
                         crypto.b64u_encode(signature)])

    @classmethod
    def verify(cls, server_raw: bytes, text: object, now: float) -> "DeviceToken":
        """Parse and verify *text* for the server with raw key *server_raw*.

        Raises ProtocolError (malformed, or of another version: sign in with the
        password again) or AuthenticationError (forged, another server's, expired
        or issued in the future)."""
        if not isinstance(text, str) or len(text) > MAX_DEVICE_TOKEN:
            raise ProtocolError("device token missing or too long")
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != DEVICE_TOKEN_PREFIX:
            raise ProtocolError("not a device token of this version")
        payload, signature = crypto.b64u_decode(parts[1]), crypto.b64u_decode(parts[2])
        crypto.verify(server_raw, signature, crypto.device_token_message(payload))
        try:
            doc = json.loads(payload.decode("ascii"))
            token = cls(doc["server"], doc["device"], parse_device_key(doc["key"]),
                        doc["epoch"], doc["iat"], doc["exp"])
            ok = (doc.get("v") == 2 and isinstance(token.server, str)
                  and isinstance(token.device, str)
                  and all(isinstance(t, int) and not isinstance(t, bool)
                          for t in (token.epoch, token.issued, token.expires)))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, ProtocolError):
            ok = False
        if not ok or token.device != crypto.device_id(token.key):
            raise ProtocolError("malformed device token")
        if token.server != crypto.b64u_encode(server_raw):
            raise AuthenticationError("the device token belongs to another server")
        if not token.issued - MAX_CLOCK_SKEW <= now < token.expires:
            raise AuthenticationError("the device token has expired")
        return token

    def check_signature(self, signature: bytes | None, message: bytes) -> None:
        """The device key's *signature* over *message*; AuthenticationError if it is
        missing or does not verify (a copied token without its key)."""
        if signature is None:
            raise AuthenticationError("the connect is not signed by the device's key")
        try:
            crypto.verify(self.key, signature, message)
        except AuthenticationError:
            raise AuthenticationError("the device's signature does not verify (a token "
                                      "used without its key?)") from None


MAX_POLICY_DEVICES = 64        # devices a home server enrols (and tells its coordinator of)
_POLICY = struct.Struct(">IB")


@dataclass(frozen=True)
class DevicePolicy:
    """What a home server tells its coordinator about its devices, so that the
    coordinator refuses a stale token at the door: the current password ``epoch``
    and the ids of the enrolled ``devices`` (an allow-list: a revoked device is one
    that is no longer listed, so the list stays bounded by the devices that exist).

    Wire form (the body of the UDP DEVICES message after its generation, and what a
    coordinator cluster keeps in Redis): ``epoch(4) || count(1) || count x device
    id(16)``, at most :data:`MAX_POLICY_DEVICES` ids."""

    epoch: int
    devices: frozenset[str] = frozenset()

    def allows(self, token: "DeviceToken") -> bool:
        return token.epoch == self.epoch and token.device in self.devices

    def encode(self) -> bytes:
        ids = sorted(self.devices)
        if len(ids) > MAX_POLICY_DEVICES or not 0 <= self.epoch < 2 ** 32:
            raise ValueError("a device policy has at most 64 devices and a 32-bit epoch")
        return _POLICY.pack(self.epoch, len(ids)) + b"".join(
            crypto.b64u_decode(d) for d in ids)

    @classmethod
    def decode(cls, body: bytes) -> "DevicePolicy":
        if not isinstance(body, bytes) or len(body) < _POLICY.size:
            raise ProtocolError("bad device policy")
        epoch, count = _POLICY.unpack_from(body)
        if count > MAX_POLICY_DEVICES or len(body) != _POLICY.size + count * DEVICE_ID_SIZE:
            raise ProtocolError("bad device policy")
        at = _POLICY.size
        return cls(epoch, frozenset(
            crypto.b64u_encode(body[at + i * DEVICE_ID_SIZE:at + (i + 1) * DEVICE_ID_SIZE])
            for i in range(count)))


def device_challenge(now: float, random_bytes: Callable[[int], bytes]) -> bytes:
    """The challenge a device-token holder makes itself: time(8) || random(8).

    The home server accepts it once, and only within MAX_CLOCK_SKEW of its
    clock (the pool challenges of the coordinator are not used on this path)."""
    return struct.pack(">Q", int(now)) + random_bytes(8)


def device_challenge_time(challenge: bytes) -> int:
    return struct.unpack(">Q", challenge[:8])[0]


# -- the proven first step of a connect with TURN ---------------------------------

TICKET_SIZE = 8 + 1 + 16       # expiry, flags, MAC
TICKET_TURN = 1                # flag: a TURN credential was minted for the client


@dataclass(frozen=True)
class Ticket:
    """The coordinator's word that the first step of a connect (``POST /api/prove``)
    passed every check: for this server, session, challenge and device (None on the
    pool path), until ``expires``; ``turn`` if a TURN credential was minted for the
    client (then the home server gets one with the offer).  Text: base64url of
    ``expires(8) || flags(1) || HMAC-SHA256(key, label || expires || flags || server
    key id(16) || session(22) || challenge(16) || device id(16) or zeros)[:16]``."""

    server_key: bytes
    session: str
    challenge: bytes
    device: str | None
    expires: int
    turn: bool

    def _mac(self, key: bytes) -> bytes:
        device = crypto.b64u_decode(self.device) if self.device else bytes(DEVICE_ID_SIZE)
        head = struct.pack(">QB", self.expires, TICKET_TURN if self.turn else 0)
        return crypto.hmac_sha256(key, crypto.TICKET_LABEL + head
                                  + crypto.key_id(self.server_key)
                                  + self.session.encode("ascii") + self.challenge
                                  + device)[:16]

    def encode(self, key: bytes) -> str:
        head = struct.pack(">QB", self.expires, TICKET_TURN if self.turn else 0)
        return crypto.b64u_encode(head + self._mac(key))

    @classmethod
    def check(cls, key: bytes, text: object, server_key: bytes, session: str,
              challenge: bytes, device: str | None, now: float) -> "Ticket":
        """The ticket *text* for exactly these values; Forbidden (``bad-ticket``) if it
        is not the coordinator's, is another connect's, or has expired."""
        refused = Forbidden("the first step of this connect is not valid or has expired: "
                            "connect again", "bad-ticket")
        try:
            raw = crypto.b64u_decode(text)
        except ProtocolError:
            raise refused from None
        if len(raw) != TICKET_SIZE:
            raise refused
        expires, flags = struct.unpack_from(">QB", raw)
        ticket = cls(server_key, session, challenge, device, expires, bool(flags & TICKET_TURN))
        if not crypto.constant_time_equal(ticket._mac(key), raw[9:]) or not now < expires:
            raise refused
        return ticket


# -- what the browser posts ------------------------------------------------------


def _b64(doc: dict[str, Any], name: str, size: int,
         error: type[HomeChannelError] = BadRequest) -> bytes:
    try:
        value = crypto.b64u_decode(doc.get(name))
    except ProtocolError:
        raise error(f"malformed request: {name} must be base64url", "bad-request") from None
    if len(value) != size:
        raise error(f"malformed request: {name} must be {size} bytes", "bad-request")
    return value


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("malformed request: the body must be a JSON object",
                         "bad-request") from None
    if not isinstance(doc, dict):
        raise BadRequest("malformed request: the body must be a JSON object", "bad-request")
    return doc


def _common(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields the two steps share: server, session, challenge, device and its
    signature, answer (required on the pool path: no device token)."""
    server = doc.get("server")
    if not isinstance(server, str):
        raise BadRequest("malformed request: server is missing", "bad-request")
    server_key = parse_server_id(server)
    try:
        session = check_session_id(doc.get("session"))
    except ProtocolError as e:
        raise BadRequest(f"malformed request: {e}", "bad-request") from None
    device = doc.get("device")
    if device is not None and (not isinstance(device, str) or not device
                               or len(device) > MAX_DEVICE_TOKEN):
        raise BadRequest("malformed request: device must be a device token", "bad-request")
    signature = None
    if doc.get("device_signature") is not None:
        signature = _b64(doc, "device_signature", crypto.SIGNATURE_SIZE)
    return dict(server=server, server_key=server_key, session=session,
                challenge=_b64(doc, "challenge", crypto.CHALLENGE_SIZE),
                device=device, device_signature=signature)


@dataclass(frozen=True)
class ConnectRequest:
    """The body of ``POST /api/connect``.

    With ``device`` (a device token) the challenge is one the client made
    (:func:`device_challenge`), ``device_signature`` is the device key's over
    :func:`crypto.device_offer_message`, and ``answer`` is not needed; without it
    the challenge comes from the coordinator's pool and ``answer`` is required.
    With ``ticket`` (the second step of a connect with TURN, after ``POST
    /api/prove``) the checks were made in the first step and ``answer`` is not
    sent either."""

    server: str
    server_key: bytes
    session: str
    challenge: bytes
    proof: bytes
    offer: str
    answer: bytes | None = None
    device: str | None = None
    device_signature: bytes | None = None
    ticket: str | None = None

    def to_doc(self) -> dict:
        doc = {"server": self.server, "session": self.session,
               "challenge": crypto.b64u_encode(self.challenge),
               "proof": crypto.b64u_encode(self.proof), "offer": self.offer}
        if self.answer is not None:
            doc["answer"] = crypto.b64u_encode(self.answer)
        if self.device is not None:
            doc["device"] = self.device
        if self.device_signature is not None:
            doc["device_signature"] = crypto.b64u_encode(self.device_signature)
        if self.ticket is not None:
            doc["ticket"] = self.ticket
        return doc

    @property
    def offer_digest(self) -> bytes:
        return crypto.offer_hash(self.offer)

    @classmethod
    def parse(cls, body: bytes) -> "ConnectRequest":
        """Parse the request body; BadRequest (code ``bad-request`` or
        ``bad-server-id``) with a message that says what is wrong."""
        doc = _json_body(body)
        fields = _common(doc)
        ticket = doc.get("ticket")
        if ticket is not None and (not isinstance(ticket, str) or len(ticket) > 64):
            raise BadRequest("malformed request: ticket must be the first step's ticket",
                             "bad-request")
        answer = None
        if (fields["device"] is None and ticket is None) or doc.get("answer") is not None:
            answer = _b64(doc, "answer", ANSWER_SIZE)
        proof = _b64(doc, "proof", PROOF_SIZE)
        try:
            sdp_fingerprint(doc.get("offer"))
        except ProtocolError as e:
            raise BadRequest(f"malformed request: {e}", "bad-offer") from None
        return cls(proof=proof, offer=doc["offer"], answer=answer, ticket=ticket, **fields)


@dataclass(frozen=True)
class ProveRequest:
    """The body of ``POST /api/prove``, the first step of a connect when the
    coordinator has TURN: the proof without the offer, so that the client gets its
    relay credential before it gathers.  Pool path: ``answer``; device path:
    ``device`` and ``device_signature`` over :func:`crypto.device_start_message`."""

    server: str
    server_key: bytes
    session: str
    challenge: bytes
    answer: bytes | None = None
    device: str | None = None
    device_signature: bytes | None = None

    def to_doc(self) -> dict:
        doc = {"server": self.server, "session": self.session,
               "challenge": crypto.b64u_encode(self.challenge)}
        if self.answer is not None:
            doc["answer"] = crypto.b64u_encode(self.answer)
        if self.device is not None:
            doc["device"] = self.device
        if self.device_signature is not None:
            doc["device_signature"] = crypto.b64u_encode(self.device_signature)
        return doc

    @classmethod
    def parse(cls, body: bytes) -> "ProveRequest":
        doc = _json_body(body)
        fields = _common(doc)
        answer = None
        if fields["device"] is None or doc.get("answer") is not None:
            answer = _b64(doc, "answer", ANSWER_SIZE)
        return cls(answer=answer, **fields)


def parse_server_id(text: object) -> bytes:
    try:
        return crypto.parse_server_id(text)
    except ProtocolError:
        raise BadRequest("malformed server id: copy the whole connect link from the home "
                         "server", "bad-server-id") from None


# -- what the coordinator relays to the home server (UDP OFFER transfer) ------------


@dataclass(frozen=True)
class Offer:
    """The OFFER payload: what the home server needs to answer one connect.

    ``source`` is the client address the coordinator saw (for the home
    server's audit log), ``device`` the client's device token if it sent
    one, with ``device_signature`` (the device key's over
    :func:`crypto.device_offer_message`), ``ice_servers`` extra ICE servers
    (TURN credentials minted for this connect) for the home server's side of
    this connection only (checked against its own allowed hosts:
    ``server/offerice.py``)."""

    session: str
    challenge: bytes
    proof: bytes
    sdp: str
    source: str | None = None
    device: str | None = None
    ice_servers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    device_signature: bytes | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "session": self.session, "challenge": crypto.b64u_encode(self.challenge),
            "proof": crypto.b64u_encode(self.proof), "offer": self.sdp}
        if self.source is not None:
            doc["source"] = str(self.source)[:MAX_SOURCE]
        if self.device is not None:
            doc["device"] = self.device
        if self.device_signature is not None:
            doc["device_signature"] = crypto.b64u_encode(self.device_signature)
        if self.ice_servers:
            doc["ice_servers"] = [dict(e) for e in self.ice_servers]
        payload = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        if len(payload) > MAX_OFFER_PAYLOAD:
            raise BadRequest("the offer is too large", "too-large")
        return payload

    @classmethod
    def decode(cls, payload: bytes) -> "Offer":
        if not isinstance(payload, bytes) or len(payload) > MAX_OFFER_PAYLOAD:
            raise ProtocolError("offer payload missing or too large")
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("offer payload is not UTF-8 JSON") from None
        if not isinstance(doc, dict):
            raise ProtocolError("offer payload is not a JSON object")
        session = check_session_id(doc.get("session"))
        challenge = crypto.b64u_decode(doc.get("challenge"))
        if len(challenge) != crypto.CHALLENGE_SIZE:
            raise ProtocolError("challenge must be 16 bytes")
        proof = crypto.b64u_decode(doc.get("proof"))
        if len(proof) != PROOF_SIZE:
            raise ProtocolError("proof must be 32 bytes")
        sdp = doc.get("offer")
        if not isinstance(sdp, str):
            raise ProtocolError("offer SDP missing")
        source, device = doc.get("source"), doc.get("device")
        if source is not None and (not isinstance(source, str) or len(source) > MAX_SOURCE):
            raise ProtocolError("source must be an address")
        if device is not None and (not isinstance(device, str) or len(device) > MAX_DEVICE_TOKEN):
            raise ProtocolError("device must be a device token")
        signature = doc.get("device_signature")
        if signature is not None:
            signature = crypto.b64u_decode(signature)
            if len(signature) != crypto.SIGNATURE_SIZE:
                raise ProtocolError("device_signature must be 64 bytes")
        return cls(session, challenge, proof, sdp, source, device,
                   check_ice_servers(doc.get("ice_servers")), signature)


def session_of(payload: bytes) -> str | None:
    """The session id of a payload that may not parse, or None (for error replies)."""
    try:
        sid = json.loads(bytes(payload).decode("utf-8")).get("session")
    except Exception:
        return None
    return sid if isinstance(sid, str) and SESSION_ID.match(sid) else None


def failure_notice(source: str, reason: str) -> bytes:
    """The NOTICE body telling a home server of a login refused at the coordinator
    (docs/protocol.md section 1.3: UTF-8 JSON, at most 512 bytes)."""
    return json.dumps({"event": "login-failed", "source": str(source)[:MAX_SOURCE],
                       "reason": str(reason)[:64]}).encode("utf-8")


# -- what the home server sends back (UDP ANSWER transfer) -------------------------


@dataclass(frozen=True)
class Answer:
    """A signed answer (``sdp``, ``time``, ``signature``) or a refusal (``error``).

    ``session`` is None only in a refusal of an offer whose session did not parse."""

    session: str | None
    sdp: str | None = None
    time: int | None = None
    signature: bytes | None = None
    error: str | None = None
    message: str = ""
    # A busy refusal's detail: the home server's session cap and what holds the slots.
    slots: int | None = None
    holders: tuple[SlotHolder, ...] = ()

    @property
    def refused(self) -> bool:
        return self.error is not None

    def busy_fields(self) -> dict[str, Any]:
        """``{"slots": cap, "sessions": [{"state", "age"}, ...]}`` of a busy refusal
        that says what holds the slots; ``{}`` otherwise."""
        if self.error != BUSY or self.slots is None:
            return {}
        return {"slots": self.slots, "sessions": [h.to_doc() for h in self.holders]}

    def as_error(self) -> HomeChannelError:
        """The error a browser gets for this refusal (:func:`refusal_error`)."""
        return refusal_error(self.error or INTERNAL, self.message, **self.busy_fields())

    def encode(self) -> bytes:
        doc: dict[str, Any]
        if self.error is not None:  # refused
            known = REFUSALS[self.error][1] if self.error in REFUSALS else ""
            doc = {"session": self.session, "error": self.error, "message": self.message or known,
                   **self.busy_fields()}
        else:
            doc = {"session": self.session, "answer": self.sdp, "time": int(self._time()),
                   "signature": crypto.b64u_encode(self._signature())}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def refusal(cls, session: str | None, code: str, message: str | None = None, *,
                slots: int | None = None, holders: tuple[SlotHolder, ...] = ()) -> "Answer":
        """A refusal; a busy one may say what holds the slots (*slots*, *holders*:
        the oldest MAX_SLOT_HOLDERS are kept)."""
        return cls(session, error=code, message=message or REFUSALS[code][1], slots=slots,
                   holders=tuple(holders)[:MAX_SLOT_HOLDERS] if slots is not None else ())

    @classmethod
    def decode(cls, payload: bytes) -> "Answer":
        if not isinstance(payload, (bytes, bytearray)) or len(payload) > MAX_ANSWER_PAYLOAD:
            raise ProtocolError("answer payload missing or too large")
        try:
            doc = json.loads(bytes(payload).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("answer payload is not UTF-8 JSON") from None
        if not isinstance(doc, dict):
            raise ProtocolError("answer payload is not a JSON object")
        session = check_session_id(doc.get("session"))
        if "error" in doc:
            code, message = doc.get("error"), doc.get("message", "")
            if not isinstance(code, str) or not re.fullmatch(r"[a-z0-9-]{1,40}", code):
                raise ProtocolError("malformed refusal code")
            slots, holders = doc.get("slots"), doc.get("sessions")
            if slots is not None or holders is not None:
                if (code != BUSY or not isinstance(slots, int) or isinstance(slots, bool)
                        or not 0 < slots <= MAX_SLOTS or not isinstance(holders, list)
                        or len(holders) > MAX_SLOT_HOLDERS):
                    raise ProtocolError("malformed busy refusal: slots and sessions go "
                                        "together, with busy")
            return cls(session, error=code,
                       message=message[:200] if isinstance(message, str) else "", slots=slots,
                       holders=tuple(SlotHolder.from_doc(h) for h in holders or ()))
        sdp, when, signature = doc.get("answer"), doc.get("time"), doc.get("signature")
        if (not isinstance(sdp, str) or len(sdp) > MAX_SDP or not isinstance(when, int)
                or isinstance(when, bool)):
            raise ProtocolError("answer, time or signature missing")
        signature = crypto.b64u_decode(signature)
        if len(signature) != crypto.SIGNATURE_SIZE:
            raise ProtocolError("signature must be 64 bytes")
        return cls(session, sdp, when, signature)

    def to_doc(self) -> dict:
        """The long-poll result the coordinator passes through unchanged."""
        return {"session": self.session, "status": "answered", "answer": self.sdp,
                "time": self.time, "signature": crypto.b64u_encode(self._signature())}

    def _time(self) -> int:
        if self.time is None:
            raise TypeError("a refusal has no time")
        return self.time

    def _signature(self) -> bytes:
        if self.signature is None:
            raise TypeError("a refusal has no signature")
        return self.signature


def check_answer(doc: object, *, server_raw: bytes, session: str, challenge: bytes,
                 offer_digest: bytes, client_fp: str, now: float) -> str:
    """What a client checks before it uses an answer; returns the answer's fingerprint.

    *doc* is the long-poll result.  The echoed session id must be ours, the
    answer SDP must have the strict shape (:func:`homechannel.protocol.sdp.fingerprint`), the
    home server's signature must verify with the pinned key over this
    session, challenge, offer hash, both fingerprints, time and SDP, and the
    time must be within MAX_CLOCK_SKEW of ours.  Raises AuthenticationError
    (altered or forged; code ``server-signature``) or ProtocolError (code
    ``clock`` for the clock check)."""
    forged = ("the answer is not signed by the home server you added, over this connection: "
              "it was altered on the way (by the coordinator?) or someone is impersonating "
              "the home server; refusing to connect")
    if not isinstance(doc, dict) or doc.get("session") != session:
        raise AuthenticationError(forged + " (wrong session)", "server-signature")
    sdp, when = doc.get("answer"), doc.get("time")
    try:
        if not isinstance(when, int) or isinstance(when, bool):
            raise ProtocolError("time missing")
        server_fp = sdp_fingerprint(sdp, "answer")
        crypto.verify(server_raw, crypto.b64u_decode(doc.get("signature")),
                      crypto.answer_signature_message(session, challenge, offer_digest,
                                                      client_fp, server_fp, when,
                                                      cast(str, sdp)))  # sdp_fingerprint checked it
    except (ProtocolError, AuthenticationError) as e:
        raise AuthenticationError(f"{forged} ({e})", "server-signature") from None
    if not abs(when - now) < MAX_CLOCK_SKEW:
        raise ProtocolError("the home server's answer is too old or its clock is wrong (more "
                            f"than {MAX_CLOCK_SKEW // 60} minutes off): check the clocks",
                            "clock")
    return server_fp
