"""The home server's WebRTC answerer: offer payload in, signed answer payload out.

The UDP registrant hands every OFFER relayed by the coordinator to
:meth:`Answerer.handle_offer` and sends back, as the ANSWER payload, whatever
bytes the returned Deferred yields.  That Deferred never errbacks: every
failure becomes a refusal payload (:class:`homechannel.protocol.connect.Answer`) and a
log line.  Formats, limits and codes come from :mod:`homechannel.protocol.connect`.

Order of checks, cheapest and most hostile first; no WebRTC object exists
until all of them pass, and the challenge is consumed only by the last one:

1. parse the payload                                      -> ``bad-offer``
2. the SDP shape: one datachannel media section, exactly one
   ``a=fingerprint`` attribute in the whole SDP, sha-256   -> ``bad-offer``
3. a device token, if the client sent one: issued by this
   server, for this server, not expired, of this password
   epoch (a passkey's or an invite's: of none), for a
   credential still enrolled with that key and kind, and
   its signature over this session, challenge and offer:
   the device key's, or a passkey's WebAuthn assertion
   (origin, RP ID, user presence and verification, a sign
   count that moves forward: ``devices.EnrolledDevices.check``;
   before the proof: a token that is not good learns
   nothing about the password)                            -> ``bad-device``
4. the client's proof over the exact offer SDP bytes, in
   constant time (required but for a credential that signs
   in by itself: a passkey, a sign-in key, an invite; with
   ``auth.password = false`` every proof is refused)       -> ``bad-proof``
5. (a retransmitted offer for a known session gets the same reply again)
6. the concurrent session cap                             -> ``busy``
7. the challenge: one this server issued (single use), or
   on the device path a fresh one within the clock window  -> ``unknown-challenge``
8. RTCPeerConnection, the apps (gated, below), remote description, answer,
   local description (aiortc gathers every candidate here), signature.

Once DTLS is up, the certificate the peer actually presented is compared with
the fingerprint the proof bound; on a mismatch the connection is closed
before any app channel (control included) is served.

Peer connections that fail, close, or are not "connected" within
``config.connect_timeout`` are closed and forgotten.
"""

import os
from collections import OrderedDict

from twisted.internet.defer import Deferred, DeferredList, succeed

from homechannel import aio, crypto

from homechannel.ops.logsafe import Logger
from homechannel.protocol import connect
from homechannel.protocol.sdp import fingerprint as sdp_fingerprint

from homechannel.rtc import icechecks, webrtc
from homechannel.server.devices import EnrolledDevices, new_invite
from homechannel.server.people import ENROL_ONLY, OWNER, OWNER_NAME, Rights, check_person
from homechannel.protocol import passkey
from homechannel.protocol.connect import (
    BAD_DEVICE,
    BAD_OFFER,
    BAD_PROOF,
    BUSY,
    INTERNAL,
    UNKNOWN_CHALLENGE,
    Answer,
    SlotHolder,
)
from homechannel.errors import AuthenticationError, ProtocolError

DEVICE_CHALLENGES_KEPT = 4096
# Seconds a peer connection may take to close when the home server stops; then it is
# abandoned.  (aiortc releases a TURN allocation before it returns from close(); a relay
# that no longer answers would hold the stop for about ten seconds.)
CLOSE_TIMEOUT = 3.0


def default_peer_connection_factory(ice_servers):
    return webrtc.peer_connection(ice_servers)


class _Session:
    def __init__(self, sid, digest, source=None):
        self.sid = sid
        self.digest = digest        # SHA-256 of the whole offer payload (retransmissions)
        self.source = source        # the client address the coordinator saw
        self.client_fp = None       # the fingerprint the proof bound
        self.device = None          # its enrolled devices.Device (device path, or enrolled)
        self.rights = OWNER         # people.Rights: the password's, or the credential's
        self.person = OWNER_NAME
        self.invite = None          # the invite (devices.Device) it signed in with
        self.invite_spent = False   # that invite enrolled its one passkey
        self.passkey_challenge = None   # the open passkey enrolment's challenge
        self.pc = None
        self.payload = None         # the reply, once known
        self.waiters = []           # Deferreds of retransmissions while answering
        self.timeout = None         # IDelayedCall: connect timeout
        self.forget = None          # IDelayedCall: drop the cached reply
        self.connected = False
        self.closed = False
        self.closing = None         # Deferred of pc.close()
        self.started = None         # clock time of the offer (for the "busy" message)


class _AppContext:
    """What the apps learn about the connection they serve (``AppHost.attach``)."""

    def __init__(self, answerer, session):
        self._answerer = answerer
        self._session = session

    @property
    def source(self):
        return self._session.source

    def verify_peer(self) -> bool:
        """True if the DTLS certificate presented is the one the proof bound."""
        return self._answerer._peer_verified(self._session)

    @property
    def rights(self):
        """The person's rights (``people.Rights``): the app host enforces them."""
        return self._session.rights

    @property
    def person(self) -> str:
        return self._session.person

    def hello_fields(self, hello: dict) -> dict:
        """Extra fields of the control channel's hello reply: who signed in and with
        what rights, and a device token for the key the client enrols in its *hello*
        (``{"device": {"key", "signature", "name", "sign_in"}}``), if any."""
        session = self._session
        fields = {"person": session.person, "rights": session.rights.to_doc(),
                  "passkeys": self._answerer.passkey_origin is not None}
        if session.invite is not None:
            fields["invite"] = True
        token = self._answerer._enrol(session, hello.get("device"))
        if token is not None:
            fields["device"] = token
        return fields

    def control(self, op: str, body: dict) -> dict | None:
        """A control operation of people and passkeys (``passkey-options``,
        ``passkey-register``, ``invite``): its reply, or None if *op* is not one."""
        return self._answerer.people_op(self._session, op, body)


class Answerer:
    """Answers relayed offers with signed aiortc answers; owns the peer connections."""

    log = Logger()

    def __init__(self, identity, password_key, challenges, config, app_host, clock,
                 log=None, *, peer_connection_factory=default_peer_connection_factory,
                 random_bytes=os.urandom, ice_servers=None, devices=None, offer_ice=None,
                 passkey_origin=None, coordinator_url=None):
        """*devices* is the store of enrolled devices (``devices.EnrolledDevices``,
        with the password epoch; memory only when None); *offer_ice* checks the ICE
        servers an offer brings (``offerice.OfferIcePolicy``; None: none are used).
        *password_key* None: the password path is off (``auth.password = false``).
        *passkey_origin*: the WebAuthn origin passkeys are enrolled for (the
        coordinator's web origin; None: no passkeys); *coordinator_url* makes invite
        links."""
        self._identity = identity
        self._key = password_key
        self._challenges = challenges
        self._config = config
        self._app_host = app_host
        self._clock = clock
        self._random = random_bytes
        if log is not None:
            self.log = log
        self._pc_factory = peer_connection_factory
        self._buffers_warned = False
        # ICE servers of our own (before those an offer brings): a tuple, or a callable
        # returning one (the tap's: STUN on the coordinator registered with now).
        if ice_servers is None:
            ice_servers = tuple(config.ice_servers or ())
        self._ice_servers = ice_servers if callable(ice_servers) else tuple(ice_servers)
        self._advertise = webrtc.parse_addresses(config.advertise_addresses)
        self.devices = devices if devices is not None else EnrolledDevices(None, 0, clock)
        self.devices.on_removed = self._revoked
        self._offer_ice = offer_ice
        self.passkey_origin = passkey_origin
        self._coordinator_url = coordinator_url
        self._sessions = {}         # sid -> _Session (live, answering, or cached reply)
        self._live = set()          # _Sessions with an open peer connection
        self._device_challenges = OrderedDict()   # challenge -> expiry (device path, once)
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
            return succeed(Answer.refusal(connect.session_of(payload), INTERNAL).encode())

    def close_all(self):
        """Close every peer connection (service shutdown); the Deferred fires when they
        are closed, or after ``CLOSE_TIMEOUT`` seconds for those that hang (cancelled)."""
        self._stopping = True
        for session in list(self._live):
            self._close(session, "the home server is shutting down")
        closing = [s.closing.addTimeout(CLOSE_TIMEOUT, self._clock)
                   for s in self._sessions.values() if s.closing is not None]
        for session in list(self._sessions.values()):
            if session.forget is not None and session.forget.active():
                session.forget.cancel()
        self._sessions.clear()
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- the checks --

    def _small_buffers(self, got, wanted):
        """The kernel gave the connection's UDP sockets less receive buffer than its
        SCTP window needs (``webrtc.set_receive_window``): said once per process."""
        if self._buffers_warned:
            return
        self._buffers_warned = True
        self.log.warn("UDP receive buffers are {got} bytes, not the {wanted} the SCTP receive "
                      "window needs: uploads over a long link will lose packets and slow down; "
                      "raise the limit: sysctl -w net.core.rmem_max={wanted} (README, 'A home "
                      "server')", got=got, wanted=wanted)

    def _refuse(self, sid, code, reason, source=None, tell=None, **fields):
        """Count and log a refusal (with *reason*); its payload, with the message *tell*
        (None: the code's own) and *fields* (``Answer.refusal``'s)."""
        self.logins_refused += 1
        self.log.warn("login refused: session {session} from {source}: {reason}",
                      session=sid, source=source or "?", reason=reason)
        return Answer.refusal(sid, code, tell, **fields).encode()

    def _handle_offer(self, payload):
        try:
            offer = connect.Offer.decode(payload)
            client_fp = sdp_fingerprint(offer.sdp)
        except ProtocolError as e:
            sid = connect.session_of(payload)
            self.logins_refused += 1
            self.log.info("login refused: session {session}: bad offer: {reason}",
                          session=sid, reason=str(e))
            return succeed(Answer.refusal(sid, BAD_OFFER, f"{connect.REFUSALS[BAD_OFFER][1]}: "
                                                          f"{e}").encode())
        sid, source = offer.session, offer.source
        digest = crypto.offer_hash(offer.sdp)

        device = None
        if offer.device is not None:
            try:
                token = connect.DeviceToken.verify(self._identity.public_raw, offer.device,
                                                   self._clock.seconds())
                device = self.devices.check(token, offer, digest, self._clock.seconds())
            except (ProtocolError, AuthenticationError) as e:
                return succeed(self._refuse(sid, BAD_DEVICE, f"device token refused: {e}",
                                            source))

        # The password proof: required unless a credential that signs in by itself did
        # (it is checked when sent anyway); none is ever good when the password is off.
        if offer.proof is not None or device is None or device.kind == "device":
            if self._key is None:
                return succeed(self._refuse(sid, BAD_PROOF, "signing in with the password "
                                            "is off on this home server (auth.password = "
                                            "false): use a passkey or a sign-in key",
                                            source, tell=True))
            if offer.proof is None or not crypto.check_proof(self._key, sid, offer.challenge,
                                                             digest, offer.proof):
                return succeed(self._refuse(sid, BAD_PROOF,
                                            "the password proof does not verify", source))

        known = self._sessions.get(sid)
        payload_digest = crypto.sha256(payload)
        if known is not None:
            if known.digest != payload_digest:
                return succeed(self._refuse(sid, BAD_OFFER, "session id reused with another offer",
                                            source))
            self.log.debug("retransmitted offer for session {session}", session=sid)
            return self._reply_of(known)

        session = _Session(sid, payload_digest, source)
        session.client_fp = client_fp
        session.device = device
        if device is not None and device.kind == "invite":
            session.rights, session.person, session.invite = ENROL_ONLY, device.person, device
        elif device is not None and device.kind != "device":
            session.rights, session.person = device.rights, device.person
        if self._stopping or len(self._live) >= self._config.max_sessions:
            # Refused before the challenge is looked at: it stays usable.  The refusal
            # is kept for retransmissions of this offer.
            self._sessions[sid] = session
            if self._stopping:
                self._finish(session, self._refuse(sid, BUSY, "shutting down", source))
            else:
                told, logged, holders = self._slots_in_use()
                self._finish(session, self._refuse(sid, BUSY, logged, source, tell=told,
                                                   slots=self._config.max_sessions,
                                                   holders=holders))
            return succeed(session.payload)

        if device is not None:
            if not self._take_device_challenge(offer.challenge):
                return succeed(self._refuse(sid, UNKNOWN_CHALLENGE, "the device challenge is "
                                            "stale, from a wrong clock, or was used before",
                                            source))
        elif not self._challenges.consume(offer.challenge):
            return succeed(self._refuse(sid, UNKNOWN_CHALLENGE,
                                        "the challenge is unknown or already used", source))
        if device is not None:
            self.devices.used(device)       # an invite is used up; a sign count moves on
        self._sessions[sid] = session
        session.started = self._clock.seconds()

        self._live.add(session)
        session.timeout = self._clock.callLater(
            self._config.connect_timeout, self._timed_out, session)
        d = aio.as_deferred(self._answer(session, offer, digest))
        d.addErrback(self._answer_failed, session)
        d.addCallback(lambda payload: self._finish(session, payload))
        return self._reply_of(session)

    def _take_device_challenge(self, challenge):
        """A device-path challenge: within the clock window, and used once."""
        now = self._clock.seconds()
        while self._device_challenges:
            first, until = next(iter(self._device_challenges.items()))
            if until > now and len(self._device_challenges) < DEVICE_CHALLENGES_KEPT:
                break
            del self._device_challenges[first]
        made = connect.device_challenge_time(challenge)
        if challenge in self._device_challenges or not abs(made - now) < connect.MAX_CLOCK_SKEW:
            return False
        self._device_challenges[challenge] = made + connect.MAX_CLOCK_SKEW
        return True

    def _slots_in_use(self):
        """What holds the session slots, for the "busy" refusal: ``(told, logged,
        holders)``.  *told*, the refusal's message (the coordinator passes on 200
        characters), and *holders*, its ``SlotHolder`` fields, say each live
        session's state and age: never its address, since the refused client is not
        those sessions' owner.  *logged*, for the home server's own log, adds each
        session's source."""
        live = sorted(self._live, key=lambda s: s.started or 0)
        now = self._clock.seconds()
        holders = tuple(SlotHolder("connected" if s.connected else "connecting",
                                   max(0, int(now - (s.started or now)))) for s in live)
        more = [f"{len(live) - 3} more"] if len(live) > 3 else []
        told = [f"{h.state} {h.age} s" for h in holders[:3]] + more
        logged = [f"{h.state} {h.age} s" + (f" from {s.source}" if s.source else "")
                  for h, s in zip(holders[:3], live)] + more
        head = f"all {self._config.max_sessions} session slots are in use: "
        return head + "; ".join(told), head + "; ".join(logged), holders

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

    async def _answer(self, session, offer, digest):
        from aiortc import RTCSessionDescription

        # The configured servers first (aiortc uses only the first STUN and the
        # first TURN entry), then what the coordinator minted for this connect, if
        # it names hosts this server allows (``offerice``: none without a policy).
        own = self._ice_servers() if callable(self._ice_servers) else self._ice_servers
        offered = ()
        if offer.ice_servers and self._offer_ice is not None:
            offered = await self._offer_ice.check(offer.ice_servers)
        servers = webrtc.ice_servers(tuple(own) + tuple(offered))
        pc = self._pc_factory(servers)
        session.pc = pc
        self.peer_connections_created += 1
        pc.on("connectionstatechange", lambda: self._state_changed(session))
        self._app_host.attach(pc, _AppContext(self, session))
        # The browser closing its control channel (Disconnect, a closed tab) ends the
        # session at once, whatever the transport still says.
        pc.on("datachannel", lambda channel: self._watch_control(session, channel))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except Exception as e:
            # aiortc raises ValueError and friends on SDP it cannot use.
            self._close(session, "unusable offer SDP")
            return self._refuse(session.sid, BAD_OFFER, f"unusable offer SDP: {e}",
                                session.source)
        dtls = pc.sctp.transport if pc.sctp is not None else None
        if dtls is not None:
            dtls.on("statechange", lambda: self._dtls_state(session, dtls))
        webrtc.prepare_gathering(pc, self._advertise)
        icechecks.prompt_triggered_checks(pc)
        webrtc.set_receive_window(pc, too_small=self._small_buffers)
        await pc.setLocalDescription(await pc.createAnswer())
        if session.closed:
            return self._refuse(session.sid, INTERNAL, "peer connection closed while answering",
                                session.source)
        sdp = pc.localDescription.sdp
        server_fp = sdp_fingerprint(sdp, "answer")
        now = int(self._clock.seconds())
        signature = self._identity.sign(crypto.answer_signature_message(
            session.sid, offer.challenge, digest, session.client_fp, server_fp, now, sdp))
        self.logins_accepted += 1
        device = ""
        if session.device is not None:
            device = f" ({session.device.kind} {session.device.id[:8]})"
        self.log.info("login accepted: session {session} from {source}{device} as {person}: "
                      "answered", session=session.sid, source=session.source or "?",
                      device=device, person=session.person)
        return Answer(session.sid, sdp, now, signature).encode()

    def _answer_failed(self, failure, session):
        self.log.failure("answering session {session} failed", failure, session=session.sid)
        self.logins_refused += 1
        self._close(session, "answering failed")
        return Answer.refusal(session.sid, INTERNAL).encode()

    def _dtls_state(self, session, dtls):
        if dtls.state == "connected" and not self._peer_verified(session):
            self._close(session, "the DTLS certificate the client presented is not the one its "
                                 "password proof bound (someone in the middle?)")

    def _peer_verified(self, session) -> bool:
        """The certificate the peer presented matches the fingerprint the proof bound."""
        if session.closed or session.pc is None:
            return False
        try:
            presented = webrtc.remote_fingerprint(session.pc)
        except Exception:
            self.log.failure("reading the peer certificate of session {session}",
                             session=session.sid)
            presented = None
        if presented is not None and crypto.constant_time_equal(
                presented.encode("ascii"), session.client_fp.encode("ascii")):
            return True
        if not session.closed:
            self.log.warn("session {session} from {source}: the DTLS certificate presented "
                          "({presented}) is not the one the password proof bound; closing",
                          session=session.sid, source=session.source or "?",
                          presented=presented or "none")
        return False

    def device_policy(self):
        """What this server tells its coordinator of its devices (``DevicePolicy``)."""
        return self.devices.policy()

    def _enrol(self, session, request):
        """Enrol the key a signed-in client offers in its hello (*request*: ``{"key",
        "signature", "name"}``, the signature over ``crypto.device_enrol_message``:
        proof that it holds the key) and issue a token bound to it and to the
        password epoch; None (and a log line) for anything else."""
        if request is None:
            return None
        try:
            if not isinstance(request, dict):
                raise ProtocolError("device must be an object")
            if not session.rights.owner:
                raise ProtocolError(f"{session.person} is not the owner: device keys are the "
                                    "owner's (a person signs in with their passkey)")
            key = connect.parse_device_key(request.get("key"))
            crypto.verify(key, crypto.b64u_decode(request.get("signature")),
                          crypto.device_enrol_message(session.sid, self._identity.public_raw))
        except (ProtocolError, AuthenticationError) as e:
            self.log.info("session {session}: not enrolling the device: {error}",
                          session=session.sid, error=str(e))
            return None
        now = self._clock.seconds()
        # A native client's key that signs in by itself ("sign_in": ``connect --key``).
        kind = "key" if request.get("sign_in") is True else "device"
        device = self.devices.enrol(key, request.get("name"), now, kind=kind,
                                    person=session.person, rights=session.rights)
        if session.device is None or session.device.id != device.id:
            self.log.info("session {session}: device {device} ({name}) enrolled",
                          session=session.sid, device=device.id[:8], name=device.name)
        session.device = device
        return connect.DeviceToken.issue(self._identity, key, self.devices.epoch, now,
                                         kind=kind)

    def _revoked(self, ids):
        """Credentials were revoked: the live sessions that signed in with them end now
        (a session signed in with the password, or with an invite, is not one of them)."""
        for session in list(self._live):
            device = session.device
            if device is not None and device.id in ids and device.kind in ("key", "passkey"):
                self._close(session, f"{session.person}'s {device.kind} was revoked")

    def person_of(self, sid):
        """The person a session signed in as (the audit line), or None."""
        session = self._sessions.get(sid)
        return session.person if session is not None else None

    # -- people and passkeys (control operations) --

    def people_op(self, session, op, body):
        """The reply to the control operation *op* of *session*, or None if it is none
        of ours.  ``passkey-options``/``passkey-register``: enrol a passkey for the
        person signed in (or the one the invite is for); ``invite``: make an invite
        link (a person who may invite, with at most their own rights)."""
        handlers = {"passkey-options": self._passkey_options,
                    "passkey-register": self._passkey_register, "invite": self._invite}
        handler = handlers.get(op)
        if handler is None:
            return None
        try:
            return handler(session, body)
        except (ProtocolError, AuthenticationError) as e:
            self.log.info("session {session}: {op} refused: {error}", session=session.sid,
                          op=op, error=str(e))
            return {"op": "error", "code": getattr(e, "code", None) or "refused",
                    "message": str(e), "for": op}

    def _enrolling_as(self, session):
        """``(person, rights)`` a passkey enrolled on *session* gets."""
        if session.invite is not None:
            return session.invite.person, session.invite.rights
        return session.person, session.rights

    def _passkey_options(self, session, body):
        if self.passkey_origin is None:
            raise ProtocolError("passkeys are off: the home server's coordinator_url has no "
                                "web origin")
        if session.invite_spent:
            raise ProtocolError("this invite enrolled its passkey already: sign in with it")
        person, _ = self._enrolling_as(session)
        session.passkey_challenge = self._random(32)
        user = crypto.sha256(self._identity.public_raw + person.encode("utf-8"))[:16]
        return {"op": "passkey-options", "challenge": crypto.b64u_encode(session.passkey_challenge),
                "rp": {"id": passkey.rp_id(self.passkey_origin), "name": "HomeChannel"},
                "user": {"id": crypto.b64u_encode(user), "name": person},
                "origin": self.passkey_origin}

    def _passkey_register(self, session, body):
        challenge, session.passkey_challenge = session.passkey_challenge, None
        if challenge is None or self.passkey_origin is None:
            raise ProtocolError("ask for passkey-options first (each is good once)")
        reg = passkey.verify_registration(body.get("credential"), challenge,
                                          self.passkey_origin)
        person, rights = self._enrolling_as(session)
        now = self._clock.seconds()
        device = self.devices.enrol(reg.public_raw, body.get("name") or "passkey", now,
                                    kind="passkey", person=person, rights=rights,
                                    credential=reg.credential, origin=self.passkey_origin,
                                    sign_count=reg.sign_count)
        self.log.info("session {session}: passkey {device} of {person} enrolled",
                      session=session.sid, device=device.id[:8], person=person)
        session.invite_spent = session.invite is not None
        token = connect.DeviceToken.issue(self._identity, reg.public_raw, connect.KEY_EPOCH,
                                          now, kind="passkey", origin=self.passkey_origin)
        return {"op": "passkey-registered", "token": token, "person": person,
                "credential": crypto.b64u_encode(reg.credential)}

    def _invite(self, session, body):
        if not session.rights.invite:
            raise ProtocolError(f"{session.person} may not invite others")
        if self.passkey_origin is None:
            raise ProtocolError("an invite enrols a passkey, and passkeys are off: the home "
                                "server's coordinator_url must name the coordinator by a "
                                "domain name")
        person = check_person(body.get("person"))
        rights = Rights.from_doc(body.get("rights"))
        if not rights.within(session.rights):
            raise ProtocolError("an invite gives at most the rights of whoever makes it")
        minutes = body.get("minutes", 60)
        if not isinstance(minutes, int) or isinstance(minutes, bool) or not 0 < minutes <= 1440:
            raise ProtocolError("minutes is 1-1440")
        now = self._clock.seconds()
        device, token, private = new_invite(self._identity, person, rights, now, minutes * 60)
        self.devices.enrol(device.key, device.name, now, kind="invite", person=person,
                           rights=rights, expires=device.expires)
        self.log.info("session {session}: {by} invited {person} ({rights}) until {expires}",
                      session=session.sid, by=session.person, person=person,
                      rights=rights.describe(), expires=device.expires)
        link = connect.invite_link(self._coordinator_url or "", self._identity.text, token,
                                   private)
        return {"op": "invite", "link": link, "expires": device.expires, "person": person}

    def _state_changed(self, session):
        state = session.pc.connectionState if session.pc is not None else "closed"
        if state == "connected" and not session.connected:
            session.connected = True
            if session.timeout is not None and session.timeout.active():
                session.timeout.cancel()
            pair = webrtc.selected_pair(session.pc)
            self.log.info("session {session} connected ({path}){family}", session=session.sid,
                          path="/".join(pair) if pair else "path unknown",
                          family=f" over {webrtc.selected_family(session.pc)}" if pair else "")
        elif state in ("failed", "closed"):
            self._close(session, f"connection {state}")

    def _watch_control(self, session, channel):
        if channel.label == "control":
            channel.on("close", lambda: self._close(session, "the browser closed the session"))

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
