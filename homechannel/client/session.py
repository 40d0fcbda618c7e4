"""The connect flow, as the browser runs it (docs/protocol.md section 2).

:func:`connect` looks the home server up (a challenge and the ICE servers, signed
by the coordinator); when the coordinator has TURN, proves itself first (``POST
/api/prove``: the relay credential comes only then); proves the password over this
exact offer (and, with a device token, signs it with the device key), sends the
offer and waits for the answer, then checks what the browser checks: the echoed
session id, the answer's shape, the home server's signature over this offer and
the answer, and the clock; after DTLS, that the certificate the home server
presented is the one it signed.  Then it says hello on the control channel,
enrolling its device key, and keeps the device token the home server gives.
"""

import asyncio
import os
import socket
import time

from homechannel import crypto
from homechannel.client.api import Coordinator, api_error
from homechannel.client.control import control_request, path_line, wait_open
from homechannel.client.trust import (
    DeviceStore,
    KnownCoordinators,
    coordinator_url,
    remember_key,
    trusted_coordinator_key,
)
from homechannel.errors import (
    AuthenticationError,
    HomeChannelError,
    ProtocolError,
    RequestTimeout,
    Unavailable,
)
from homechannel.protocol import connect as flow
from homechannel.protocol.ice import check_ice_servers
from homechannel.protocol.sdp import fingerprint as sdp_fingerprint
from homechannel.rtc import icechecks, webrtc


async def connect(url, server_id, password, coordinator_key=None, ice_servers=(),
                  advertise_addresses=(), *, timeout=60.0, connect_timeout=30.0,
                  random_bytes=os.urandom, notify=None, devices=None, coordinators=None,
                  insecure_http=False, sign_in_key=False):
    """Connect to home server *server_id* through the coordinator at *url*.

    Returns ``(pc, control_channel, hello)``: the open RTCPeerConnection, its
    open "control" datachannel and the server's hello reply.  Raises a
    HomeChannelError with an actionable message on any refusal.  The caller
    closes *pc*.  *url* is https://, or http:// on this machine unless
    *insecure_http* (:func:`coordinator_url`).  *coordinator_key* is the
    coordinator's base64url public key; None fetches it from ``{url}/config.js``
    and checks it against *coordinators* (a :class:`KnownCoordinators`; None
    remembers nothing), which keeps every key that verified a response.
    *ice_servers* come first, then the ones the coordinator hands out (aiortc
    uses only the first STUN and the first TURN entry; when that TURN URL gives no
    relay, the offer is gathered again with one of another transport).  *devices* is a
    :class:`DeviceStore` (None: keep no device token): the token for this coordinator
    URL and server and the device key it is bound to, which signs every device-path
    connect and enrols after each sign-in.  When the device path is refused (a token
    of an old password, a revoked device) or this device's budget is spent, the same
    connect goes on with the password.

    *sign_in_key* (``connect --key``): this device's key signs in by itself.  Once
    enrolled as a sign-in key (the first such connect signs in with the password and
    asks for it in the hello: ``"sign_in": true``), its token is of kind ``key`` and
    the connect carries no password proof at all: *password* may then be None
    (:func:`key_sign_in_ready` says whether it is needed).
    """
    notify = notify or (lambda message: None)
    devices = devices or DeviceStore(None)
    coordinators = coordinators or KnownCoordinators(None)
    url = coordinator_url(url, insecure_http)
    server_raw = crypto.parse_server_id(server_id)
    if coordinator_key:
        coordinator_raw = crypto.parse_server_id(coordinator_key)
        coordinators.get(url)       # a damaged store is an error now, not after connecting
    else:
        coordinator_raw = await trusted_coordinator_key(url, coordinators, notify)
    coordinator = Coordinator(url, coordinator_raw)
    loop = asyncio.get_running_loop()
    device_key = devices.device_key(server_id)
    device = devices.token(url, server_id)
    password_free = sign_in_key and key_sign_in_ready(devices, url, server_id)
    if password is None and not password_free:
        raise AuthenticationError("this device's key is not enrolled to sign in by itself "
                                  "yet: sign in once with the password (--key with "
                                  "--password-file, or at the prompt)", "bad-device")
    key = None if password is None else loop.run_in_executor(
        None, crypto.derive_password_key, password, server_raw)
    target = _Target(coordinator, url, server_id, server_raw, device_key, devices, notify)
    target.sign_in_key = sign_in_key
    try:
        for attempt in range(3):
            try:
                result = await _attempt(target, None if password_free else await key, device,
                                        tuple(ice_servers), advertise_addresses, timeout,
                                        connect_timeout, random_bytes)
                notify(path_line(result[0]))
                return result
            except HomeChannelError as e:
                if e.code == flow.BAD_DEVICE and password_free:
                    raise AuthenticationError(
                        f"this device's sign-in key was not accepted ({e}): it was revoked, "
                        "or the password was changed; sign in with the password to enrol "
                        "it again (--key with --password-file)", flow.BAD_DEVICE) from None
                if e.code == flow.BAD_DEVICE and device is not None:
                    notify("the home server no longer accepts this device's token (the "
                           "password was changed, or the device was revoked); signing in "
                           "with the password")
                    device = None     # kept until this sign-in replaces it (see main.js)
                elif device is not None and _device_path_held(e):
                    notify(f"this device's own sign-in budget is spent ({e}); signing in "
                           "with the password instead")
                    device = None
                elif e.code in ("stale-challenge", "unknown-challenge") and attempt == 0:
                    pass    # someone else used the challenge first: look up again, once
                else:
                    raise
    finally:
        remember_key(coordinators, coordinator, notify)
    raise Unavailable("the home server refused every attempt; try again later")


def key_sign_in_ready(devices, url, server_id):
    """True if *devices* holds a sign-in key's token (kind ``key``) for this coordinator
    URL and server: ``connect --key`` then needs no password."""
    token = devices.token(url, server_id)
    if token is None:
        return False
    try:
        parsed = flow.DeviceToken.verify(crypto.parse_server_id(server_id), token, time.time())
    except (ProtocolError, AuthenticationError):
        return False
    return parsed.kind == "key"


def _device_path_held(error):
    """A refusal of the device path that the password path may not share: this device
    locked out or over its rate, or the server's devices' budget spent."""
    return (error.code in ("locked-out", "rate-limited")
            and error.extra.get("scope") in ("device", "devices"))


class _Target:
    """What every attempt of one connect shares."""

    def __init__(self, coordinator, url, server_id, server_raw, device_key, devices, notify):
        self.coordinator = coordinator
        self.url = url
        self.server_id = server_id
        self.server_raw = server_raw
        self.device_key = device_key
        self.devices = devices
        self.notify = notify
        self.sign_in_key = False    # connect --key: enrol the key to sign in by itself


async def _attempt(target, key, device, ice_servers, advertise_addresses, timeout,
                   connect_timeout, random_bytes):
    """One attempt of the connect flow (docs/protocol.md section 2): the lookup; with
    TURN, the proof first (``POST /api/prove``: the relay credential comes in its signed
    answer); the offer, gathered with those ICE servers; the answer; the control
    channel, whose hello enrols this device's key and brings its token."""
    from aiortc import RTCSessionDescription

    coordinator, server_id, server_raw = target.coordinator, target.server_id, target.server_raw
    # 1. The server's state, a challenge and the ICE servers (signed by the coordinator).
    status, doc = await coordinator.call(f"/api/servers/{server_id}")
    if status != 200:
        raise api_error(status, doc, "looking up the home server")
    if not doc.get("online"):
        raise Unavailable("the home server is offline (not registered with this coordinator)",
                          "offline")
    if device is not None:
        challenge = flow.device_challenge(time.time(), random_bytes)
    elif isinstance(doc.get("challenge"), str):
        challenge = crypto.b64u_decode(doc["challenge"])
    else:
        raise Unavailable("the home server has no fresh challenge right now; try again in a "
                          "minute", "busy")
    session = crypto.b64u_encode(random_bytes(16))
    signer = target.device_key if device is not None else None
    offered = doc.get("ice_servers") if isinstance(doc.get("ice_servers"), list) else []
    ticket = None
    if doc.get("turn") is True:
        # 1b. The proof without the offer: the relay credential comes only now.
        proved = flow.ProveRequest(
            server_id, server_raw, session, challenge,
            answer=None if device else crypto.challenge_answer(key, challenge), device=device,
            device_signature=signer.sign(crypto.device_start_message(session, challenge))
            if signer else None)
        status, doc = await coordinator.call("/api/prove", proved.to_doc())
        if status != 200:
            raise api_error(status, doc, "the coordinator refused the connection")
        ticket = doc.get("ticket")
        offered = doc.get("ice_servers") if isinstance(doc.get("ice_servers"), list) else []
    servers = webrtc.ice_servers(list(ice_servers) + list(check_ice_servers(offered)))

    # 2. The offer, the answer and the proof over this exact offer.
    pc, control = await _gather_offer(servers, advertise_addresses)
    alternative = webrtc.relay_alternative(servers, pc.localDescription.sdp)
    if alternative is not None:
        # aiortc uses one TURN URL; the first gave no relay (UDP blocked here?)
        target.notify("the TURN relay gave no candidate over its first URL; trying "
                      f"{webrtc.display_url(alternative[0].urls)}")
        await pc.close()
        pc, control = await _gather_offer(alternative, advertise_addresses)
    try:
        offer = pc.localDescription.sdp
        client_fp = sdp_fingerprint(offer)
        digest = crypto.offer_hash(offer)
        request = flow.ConnectRequest(
            server_id, server_raw, session, challenge,
            None if key is None else crypto.client_proof(key, session, challenge, digest),
            offer,
            answer=None if device or ticket else crypto.challenge_answer(key, challenge),
            device=device, ticket=ticket,
            device_signature=signer.sign(crypto.device_offer_message(
                session, challenge, digest)) if signer else None)
        wait = min(25.0, timeout)
        status, doc = await coordinator.call(f"/api/connect?wait={wait:g}", request.to_doc(),
                                             timeout=wait + 15)
        if status == 200 and doc.get("status") == "answered":
            result = doc
        elif status in (200, 202):
            # 3. Not answered yet: long-poll for the home server's signed answer.
            result = await _wait_answer(coordinator, session, timeout)
        else:
            raise api_error(status, doc, "the coordinator refused the connection")

        # 4. What the browser checks: session, shape, signature, clock.
        server_fp = flow.check_answer(result, server_raw=server_raw, session=session,
                                      challenge=challenge, offer_digest=digest,
                                      client_fp=client_fp, now=time.time())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=result["answer"], type="answer"))

        # 5. The control channel, over the certificate the home server signed.
        await wait_open(control, connect_timeout)
        presented = webrtc.remote_fingerprint(pc)
        if presented != server_fp:
            raise AuthenticationError(
                f"the home server presented a DTLS certificate ({presented}) that is not the "
                f"one it signed ({server_fp}): someone is in the middle; refusing to connect",
                "server-certificate")
        hello = await control_request(control, {"op": "hello", "device": enrolment(
            target.device_key, session, server_raw, target.sign_in_key)}, "hello")
        _keep_token(target, hello.get("device"))
        return pc, control, hello
    except BaseException:
        await pc.close()
        raise


def enrolment(device_key, session, server_raw, sign_in=False):
    """The ``device`` field of the hello: this client's device key, signed over the
    session (``crypto.device_enrol_message``), and a name for ``devices list``;
    *sign_in* asks for a key that signs in by itself (``connect --key``)."""
    doc = {"key": crypto.b64u_encode(device_key.public_raw),
           "signature": crypto.b64u_encode(device_key.sign(
               crypto.device_enrol_message(session, server_raw))),
           "name": f"homechannel connect on {socket.gethostname()}"[:64]}
    if sign_in:
        doc["sign_in"] = True
    return doc


def _keep_token(target, token):
    """Keep the token the hello brought if it is the home server's, for this key."""
    if not isinstance(token, str):
        return
    try:
        checked = flow.DeviceToken.verify(target.server_raw, token, time.time())
        if checked.key != target.device_key.public_raw:
            raise AuthenticationError("the token is for another key")
        target.devices.keep(target.url, target.server_id, token)
    except (ProtocolError, AuthenticationError, OSError):
        pass    # keep connecting; the next sign-in uses the password again


async def _gather_offer(servers, advertise_addresses):
    """A new peer connection with its control channel and its offer (candidates
    gathered) as the local description."""
    pc = webrtc.peer_connection(servers)
    try:
        control = pc.createDataChannel("control")
        webrtc.prepare_gathering(pc, advertise_addresses)
        icechecks.prompt_triggered_checks(pc)
        webrtc.set_receive_window(pc)
        await pc.setLocalDescription(await pc.createOffer())
    except BaseException:
        await pc.close()
        raise
    return pc, control


async def _wait_answer(coordinator, session, timeout):
    path = f"/api/sessions/{session}"
    deadline = time.monotonic() + timeout
    while True:
        status, doc = await coordinator.call(path)
        if status == 200 and doc.get("status") == "answered":
            return doc
        if status == 200 and doc.get("status") == "pending":
            if time.monotonic() > deadline:
                raise RequestTimeout(f"the home server did not answer within {timeout:g} s")
            continue
        if status == 200:
            raise ProtocolError(f"unexpected session status {doc.get('status')!r}")
        raise api_error(status, doc, "the connection was refused")
