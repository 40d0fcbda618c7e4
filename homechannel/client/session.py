"""The connect flow, as the browser runs it (docs/protocol.md section 2).

:func:`connect` looks the home server up (a challenge and the ICE servers, signed
by the coordinator), proves the password over this exact offer (or presents the
device token), sends the offer and waits for the answer, then checks what the
browser checks: the echoed session id, the answer's shape, the home server's
signature over this offer and the answer, and the clock; after DTLS, that the
certificate the home server presented is the one it signed.  Then it says hello
on the control channel, and keeps the device token the home server gives.
"""

import asyncio
import os
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
from homechannel.rtc import icechecks, webrtc


async def connect(url, server_id, password, coordinator_key=None, ice_servers=(),
                  advertise_addresses=(), *, timeout=60.0, connect_timeout=30.0,
                  random_bytes=os.urandom, notify=None, devices=None, coordinators=None,
                  insecure_http=False):
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
    :class:`DeviceStore` (None: keep no device token).
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
    key = loop.run_in_executor(None, crypto.derive_password_key, password, server_raw)
    device = devices.get(server_id)
    try:
        for attempt in range(3):
            try:
                result = await _attempt(coordinator, server_id, server_raw, await key, device,
                                        tuple(ice_servers), advertise_addresses, timeout,
                                        connect_timeout, random_bytes, devices, notify)
                notify(path_line(result[0]))
                return result
            except HomeChannelError as e:
                if e.code == flow.BAD_DEVICE and device is not None:
                    notify("the home server no longer accepts this device's token; "
                           "signing in with the password")
                    devices.put(server_id, None)
                    device = None
                elif e.code in ("stale-challenge", "unknown-challenge") and attempt == 0:
                    pass    # someone else used the challenge first: look up again, once
                else:
                    raise
    finally:
        remember_key(coordinators, coordinator, notify)
    raise Unavailable("the home server refused every attempt; try again later")


async def _attempt(coordinator, server_id, server_raw, key, device, ice_servers,
                   advertise_addresses, timeout, connect_timeout, random_bytes, devices,
                   notify):
    """One attempt of the connect flow (docs/protocol.md section 2)."""
    from aiortc import RTCSessionDescription

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
    offered = doc.get("ice_servers") if isinstance(doc.get("ice_servers"), list) else []
    servers = webrtc.ice_servers(list(ice_servers) + list(check_ice_servers(offered)))

    # 2. The offer, the answer and the proof over this exact offer.
    pc, control = await _gather_offer(servers, advertise_addresses)
    alternative = webrtc.relay_alternative(servers, pc.localDescription.sdp)
    if alternative is not None:
        # aiortc uses one TURN URL; the first gave no relay (UDP blocked here?)
        notify("the TURN relay gave no candidate over its first URL; trying "
               f"{alternative[0].urls}")
        await pc.close()
        pc, control = await _gather_offer(alternative, advertise_addresses)
    try:
        offer = pc.localDescription.sdp
        client_fp = flow.sdp_fingerprint(offer)
        digest = crypto.offer_hash(offer)
        session = crypto.b64u_encode(random_bytes(16))
        request = flow.ConnectRequest(
            server_id, server_raw, session, challenge,
            crypto.client_proof(key, session, challenge, digest), offer,
            answer=None if device else crypto.challenge_answer(key, challenge), device=device)
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
        hello = await control_request(control, {"op": "hello"}, "hello")
        if isinstance(hello.get("device"), str):
            try:
                flow.DeviceToken.verify(server_raw, hello["device"], time.time())
                devices.put(server_id, hello["device"])
            except (ProtocolError, AuthenticationError, OSError):
                pass    # keep connecting; the next sign-in uses the password again
        return pc, control, hello
    except BaseException:
        await pc.close()
        raise


async def _gather_offer(servers, advertise_addresses):
    """A new peer connection with its control channel and its offer (candidates
    gathered) as the local description."""
    pc = webrtc.peer_connection(servers)
    try:
        control = pc.createDataChannel("control")
        webrtc.advertise_host_addresses(pc, advertise_addresses)
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
