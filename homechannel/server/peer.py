"""The home server's WebRTC answerer: offer payload in, signed answer payload out.

The UDP registrant hands every OFFER relayed by the coordinator to
:meth:`Answerer.handle_offer` and sends back, as the ANSWER payload, whatever
bytes the returned Deferred yields.  That Deferred never errbacks: every
failure becomes an error payload (``docs/protocol.md``, section 1) and a log
line.

Order of checks, cheapest and most hostile first:

1. parse the JSON and its fields                         -> ``bad-offer``
2. the client's end-to-end proof, in constant time, before
   anything else is created                              -> ``bad-proof``
3. (a retransmitted offer for a known session gets the same reply again)
4. the challenge is one this server issued, single use   -> ``unknown-challenge``
5. the concurrent session cap                            -> ``busy``
6. RTCPeerConnection, ``app_host.attach(pc)``, remote description, answer,
   local description (aiortc gathers every candidate here), signature.

Peer connections that fail, close, or are not "connected" within
``config.connect_timeout`` are closed and forgotten.
"""

import hashlib
import json
import re

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from homechannel import aio, crypto
from homechannel.errors import ProtocolError
from homechannel.server import ice

MAX_OFFER_PAYLOAD = 48 * 1024
PROOF_SIZE = 32
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Error codes of the ANSWER payload.
BAD_OFFER = "bad-offer"
BAD_PROOF = "bad-proof"
UNKNOWN_CHALLENGE = "unknown-challenge"
BUSY = "busy"
INTERNAL = "internal"

_MESSAGES = {
    BAD_OFFER: "the offer is malformed",
    BAD_PROOF: "the password proof does not verify (wrong password?)",
    UNKNOWN_CHALLENGE: "the challenge is unknown or was already used; fetch a new one",
    BUSY: "the home server has too many sessions; try again later",
    INTERNAL: "the home server failed to answer; see its log",
}


def _encode(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def error_payload(session, code, message=None) -> bytes:
    return _encode({"session": session, "error": code, "message": message or _MESSAGES[code]})


def ice_servers_from_config(entries):
    """``webrtc.ice_servers`` (RTCIceServer dicts or URL strings) to aiortc objects."""
    from aiortc import RTCIceServer

    servers = []
    for entry in entries or ():
        if isinstance(entry, str):
            servers.append(RTCIceServer(urls=entry))
        else:
            servers.append(RTCIceServer(urls=entry["urls"], username=entry.get("username"),
                                        credential=entry.get("credential")))
    return servers


def default_peer_connection_factory(ice_servers):
    from aiortc import RTCConfiguration, RTCPeerConnection

    return RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))


class _Offer:
    __slots__ = ("session", "challenge", "proof", "sdp", "client_fp", "digest")


def parse_offer(payload: bytes) -> _Offer:
    """Parse an OFFER payload; raise ProtocolError (whose text is safe to log)."""
    if not isinstance(payload, bytes) or len(payload) > MAX_OFFER_PAYLOAD:
        raise ProtocolError("offer payload missing or too large")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("offer payload is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("offer payload is not a JSON object")
    offer = _Offer()
    offer.session = doc.get("session")
    if not isinstance(offer.session, str) or not _SESSION_ID.match(offer.session):
        offer.session = None
        raise ProtocolError("session id missing or malformed")
    offer.challenge = crypto.b64u_decode(doc.get("challenge"))
    if len(offer.challenge) != crypto.CHALLENGE_SIZE:
        raise ProtocolError("challenge must be 16 bytes")
    offer.proof = crypto.b64u_decode(doc.get("proof"))
    if len(offer.proof) != PROOF_SIZE:
        raise ProtocolError("proof must be 32 bytes")
    offer.sdp = doc.get("offer")
    if not isinstance(offer.sdp, str):
        raise ProtocolError("offer SDP missing")
    offer.client_fp = crypto.sdp_fingerprint(offer.sdp)
    offer.digest = hashlib.sha256(payload).digest()
    return offer


class _Session:
    def __init__(self, sid, digest):
        self.sid = sid
        self.digest = digest
        self.pc = None
        self.payload = None         # the reply, once known
        self.waiters = []           # Deferreds of retransmissions while answering
        self.timeout = None         # IDelayedCall: connect timeout
        self.forget = None          # IDelayedCall: drop the cached reply
        self.connected = False
        self.closed = False
        self.closing = None         # Deferred of pc.close()


class Answerer:
    """Answers relayed offers with signed aiortc answers; owns the peer connections."""

    log = Logger()

    def __init__(self, identity, password_key, challenges, config, app_host, clock,
                 log=None, *, peer_connection_factory=default_peer_connection_factory):
        self._identity = identity
        self._key = password_key
        self._challenges = challenges
        self._config = config
        self._app_host = app_host
        self._clock = clock
        if log is not None:
            self.log = log
        self._pc_factory = peer_connection_factory
        self._ice_servers = ice_servers_from_config(config.ice_servers)
        self._advertise = ice.parse_addresses(config.advertise_addresses)
        self._sessions = {}         # sid -> _Session (live, answering, or cached reply)
        self._live = set()          # _Sessions with an open peer connection
        self._stopping = False
        self.peer_connections_created = 0
        self.logins_refused = 0
        self.logins_accepted = 0

    # -- public --

    @property
    def live_sessions(self) -> int:
        """Peer connections currently open (answering, connecting or connected)."""
        return len(self._live)

    def handle_offer(self, payload: bytes):
        """OFFER payload bytes -> Deferred[ANSWER payload bytes].  Never errbacks."""
        try:
            return self._handle_offer(payload)
        except Exception:
            self.log.failure("answering an offer failed")
            return succeed(error_payload(None, INTERNAL))

    def close_all(self):
        """Close every peer connection (service shutdown); Deferred fires when done."""
        self._stopping = True
        for session in list(self._live):
            self._close(session, "the home server is shutting down")
        closing = [s.closing for s in self._sessions.values() if s.closing is not None]
        for session in list(self._sessions.values()):
            if session.forget is not None and session.forget.active():
                session.forget.cancel()
        self._sessions.clear()
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- the checks --

    def _refuse(self, sid, code, reason):
        self.logins_refused += 1
        self.log.warn("login refused: session {session}: {reason}", session=sid, reason=reason)
        return error_payload(sid, code)

    def _handle_offer(self, payload):
        try:
            offer = parse_offer(payload)
        except ProtocolError as e:
            sid = _guess_session(payload)
            self.logins_refused += 1
            self.log.info("login refused: session {session}: bad offer: {reason}",
                          session=sid, reason=str(e))
            return succeed(error_payload(sid, BAD_OFFER, str(e)))
        sid = offer.session

        if not crypto.check_proof(self._key, sid, offer.challenge, offer.client_fp, offer.proof):
            return succeed(self._refuse(sid, BAD_PROOF, "the password proof does not verify"))

        known = self._sessions.get(sid)
        if known is not None:
            if known.digest != offer.digest:
                return succeed(self._refuse(sid, BAD_OFFER, "session id reused with another offer"))
            self.log.debug("retransmitted offer for session {session}", session=sid)
            return self._reply_of(known)

        if not self._challenges.consume(offer.challenge):
            return succeed(self._refuse(sid, UNKNOWN_CHALLENGE,
                                        "the challenge is unknown or already used"))

        session = _Session(sid, offer.digest)
        self._sessions[sid] = session
        if self._stopping or len(self._live) >= self._config.max_sessions:
            why = "shutting down" if self._stopping else \
                f"session cap reached ({self._config.max_sessions} live sessions)"
            self._finish(session, self._refuse(sid, BUSY, why))
            return succeed(session.payload)

        self._live.add(session)
        session.timeout = self._clock.callLater(
            self._config.connect_timeout, self._timed_out, session)
        d = aio.as_deferred(self._answer(session, offer))
        d.addErrback(self._answer_failed, session)
        d.addCallback(lambda payload: self._finish(session, payload))
        return self._reply_of(session)

    def _reply_of(self, session):
        if session.payload is not None:
            return succeed(session.payload)
        d = Deferred()
        session.waiters.append(d)
        return d

    def _finish(self, session, payload):
        session.payload = payload
        waiters, session.waiters = session.waiters, []
        for d in waiters:
            d.callback(payload)
        if session.closed or not session.pc:
            self._schedule_forget(session)

    def _schedule_forget(self, session):
        """Keep a finished session's reply a while, for retransmitted offers."""
        if session.forget is None and not self._stopping:
            session.forget = self._clock.callLater(
                self._config.connect_timeout, self._forget, session)

    def _forget(self, session):
        if self._sessions.get(session.sid) is session:
            del self._sessions[session.sid]

    # -- the peer connection --

    async def _answer(self, session, offer):
        from aiortc import RTCSessionDescription

        pc = self._pc_factory(self._ice_servers)
        session.pc = pc
        self.peer_connections_created += 1
        pc.on("connectionstatechange", lambda: self._state_changed(session))
        self._app_host.attach(pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except Exception as e:
            # aiortc raises ValueError and friends on SDP it cannot use.
            self._close(session, "unusable offer SDP")
            return self._refuse(session.sid, BAD_OFFER, f"unusable offer SDP: {e}")
        ice.advertise_host_addresses(pc, self._advertise)
        await pc.setLocalDescription(await pc.createAnswer())
        if session.closed:
            return self._refuse(session.sid, INTERNAL, "peer connection closed while answering")
        sdp = pc.localDescription.sdp
        server_fp = crypto.sdp_fingerprint(sdp)
        now = int(self._clock.seconds())
        signature = self._identity.sign(crypto.answer_signature_message(
            session.sid, offer.challenge, offer.client_fp, server_fp, now, sdp))
        self.logins_accepted += 1
        self.log.info("login accepted: session {session} answered", session=session.sid)
        return _encode({"session": session.sid, "answer": sdp, "time": now,
                        "signature": crypto.b64u_encode(signature)})

    def _answer_failed(self, failure, session):
        self.log.failure("answering session {session} failed", failure, session=session.sid)
        self.logins_refused += 1
        self._close(session, "answering failed")
        return error_payload(session.sid, INTERNAL)

    def _state_changed(self, session):
        state = session.pc.connectionState if session.pc is not None else "closed"
        if state == "connected" and not session.connected:
            session.connected = True
            if session.timeout is not None and session.timeout.active():
                session.timeout.cancel()
            self.log.info("session {session} connected", session=session.sid)
        elif state in ("failed", "closed"):
            self._close(session, f"connection {state}")

    def _timed_out(self, session):
        session.timeout = None
        if not session.connected:
            self._close(session, f"not connected within {self._config.connect_timeout:g} s")

    def _close(self, session, reason):
        if session.closed:
            return
        session.closed = True
        self._live.discard(session)
        if session.timeout is not None and session.timeout.active():
            session.timeout.cancel()
        session.timeout = None
        self.log.info("session {session} closed: {reason}", session=session.sid, reason=reason)
        if session.pc is not None:
            session.closing = aio.as_deferred(session.pc.close())
            session.closing.addErrback(
                lambda f: self.log.failure("closing session {session} failed", f,
                                           session=session.sid))
        if session.payload is not None:
            self._schedule_forget(session)


def _guess_session(payload):
    """The session id of a malformed offer, if one can be read, for the error reply."""
    try:
        sid = json.loads(payload.decode("utf-8")).get("session")
    except Exception:
        return None
    return sid if isinstance(sid, str) and _SESSION_ID.match(sid) else None
