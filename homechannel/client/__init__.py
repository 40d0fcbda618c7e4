"""The native client: the browser's connect flow from a terminal, with aiortc.

``homechannel connect`` looks a home server up on a coordinator, proves the
password, offers a datachannel, checks what the browser checks (the
coordinator's signature on every HTTP response; the echoed session id, the
answer's shape, the home server's signature over this offer and the answer,
and the clock; after DTLS, that the certificate the home server presented is
the one it signed), connects, says hello on the control channel and measures
a ping.  The device token the home server gives on hello is kept
(``devices.json`` in the state directory, mode 0600) and presented next time,
so that this client keeps its own sign-in budget while strangers guess.  The
coordinator's URL is https:// (http:// only on this machine), and without
``--coordinator-key`` the key its ``/config.js`` publishes is trusted on first
use and remembered per URL (``coordinators.json``, mode 0600): a different key
later is refused.  ``homechannel forward`` connects once
and then pipes each local TCP connection (``--listen``), or stdin/stdout
(``--stdio``, for ssh's ``ProxyCommand``), through its own ``app:forward:<n>``
datachannel to a TCP port on the home machine (docs/protocol.md section 3.6).

This module is pure asyncio (aiortc is asyncio); it never touches Twisted.  HTTP
is ``urllib.request`` run in the default thread executor, so no dependency is
added and HTTPS uses the system's trust store.
"""

import argparse
import asyncio
import getpass
import ipaddress
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from homechannel.protocol import connect as flow
from homechannel.protocol import hostport
from homechannel.protocol.ice import check_ice_servers, parse_ice_servers
from homechannel import crypto
from homechannel.rtc import icechecks, webrtc
from homechannel.keyfiles import read_secret_line, replace_secret_file
from homechannel.config import default_state_dir
from homechannel.errors import (
    AuthenticationError,
    ConfigError,
    Forbidden,
    HomeChannelError,
    ProtocolError,
    RequestTimeout,
    TooManyRequests,
    Unavailable,
)

MAX_RESPONSE = 256 * 1024
_CONFIG_KEY = re.compile(r'coordinatorKey\s*=\s*"([A-Za-z0-9_-]+)"')


def _stderr(message):
    print(message, file=sys.stderr)


# -- the coordinator's HTTP API ----------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The coordinator never redirects: a redirect (to plain http, to another host)
    is refused, not followed, so the unsigned ``/config.js`` read on first use comes
    from the URL given and nowhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise Unavailable(f"{req.full_url} redirects ({code}) to {newurl}: refused (a "
                          "coordinator does not redirect; if it moved, use its new URL)",
                          "redirect")


_OPENER = urllib.request.build_opener(_NoRedirects)


class Coordinator:
    """The coordinator's JSON API; every response must carry its signature."""

    def __init__(self, url, key_raw, *, http_timeout=40.0):
        self.url = url.rstrip("/")
        self.key_raw = key_raw
        self.http_timeout = http_timeout
        self.verified = False       # a response verified with key_raw
        self._base_path = urllib.parse.urlsplit(self.url).path

    @staticmethod
    def _fetch(url, method="GET", body=None, timeout=40.0):
        """Blocking HTTP; returns (status, headers, body).  Run in a thread."""
        headers = {"Accept": "application/json", "User-Agent": "homechannel-client"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return response.status, response.headers, response.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers, e.read(MAX_RESPONSE + 1)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(f"cannot reach the coordinator at {url}: {reason}") from None

    async def fetch(self, path, method="GET", body=None, timeout=None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, self._fetch, self.url + path, method, body, timeout or self.http_timeout)

    async def call(self, path, doc=None, timeout=None):
        """GET (or POST *doc*) an API path; verify the signature; return (status, json)."""
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        status, headers, raw = await self.fetch(path, "GET" if doc is None else "POST", body,
                                                timeout)
        if len(raw) > MAX_RESPONSE:
            raise ProtocolError(f"the coordinator's response to {path} is too large")
        signature = headers.get(flow.SIGNATURE_HEADER)
        if signature is None and status >= 400:
            # A refusal with no signature comes from something in between (a reverse
            # proxy's 429 or 502, a load balancer's 503): nothing in it is used, but it
            # is told as what it is, not as an attack.
            raise _api_error(status, {"error": UNSIGNED_REFUSAL_MESSAGE.format(status=status),
                                      "code": flow.UNSIGNED_REFUSAL}, path)
        try:
            if signature is None:
                raise AuthenticationError("no signature header")
            signed_path = self._base_path + urllib.parse.urlsplit(path).path
            crypto.verify(self.key_raw, crypto.b64u_decode(signature),
                          crypto.response_signature_message(signed_path, raw))
        except (AuthenticationError, ProtocolError):
            raise AuthenticationError(
                f"the coordinator's response to {path} is not signed by the coordinator key "
                f"{crypto.b64u_encode(self.key_raw)}: refusing it (wrong --coordinator-key, or "
                "someone between you and the coordinator changed the response)") from None
        self.verified = True
        try:
            result = json.loads(raw.decode("utf-8"))
            if not isinstance(result, dict):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(f"the coordinator's response to {path} is not a JSON object") \
                from None
        return status, result


UNSIGNED_REFUSAL_MESSAGE = (
    "HTTP {status} without the coordinator's signature: a reverse proxy or load balancer in "
    "front of the coordinator refused the request (try again later; if it persists, tell "
    "the coordinator's operator)")


def _api_error(status, doc, context):
    """A coordinator error response as the matching HomeChannelError (with its code)."""
    message = doc.get("error") if isinstance(doc.get("error"), str) else f"HTTP {status}"
    code = doc.get("code") if isinstance(doc.get("code"), str) else None
    text = f"{context}: {message}" + (f" ({code})" if code else "")
    if status == 403:
        return Forbidden(text, code)
    if status == 408:
        return RequestTimeout(text, code)
    if status == 429:
        return TooManyRequests(text, code, retry_after=doc.get("retry_after"))
    if status == 404 or status >= 500:
        return Unavailable(text, code)
    return ProtocolError(text, code)


class _JsonStore:
    """A JSON file ``{name: text}`` in the state directory with mode 0600
    (``replace_secret_file``), changed under an exclusive lock (``FILE.lock``)
    so that two clients saving at once lose nothing.  A missing file is an empty
    store; a damaged one too (replaced on the next save) unless the store is
    ``STRICT``, where it is an error.  *path* None keeps nothing."""

    FILE = ""
    STRICT = False
    WHAT = ""

    def __init__(self, path):
        self.path = path

    @classmethod
    def default(cls):
        return cls(os.path.join(default_state_dir(), cls.FILE))

    def _load(self):
        if not self.path:
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            if self.STRICT:
                raise ConfigError(f"cannot read {self.path} ({e}), which holds {self.WHAT}: "
                                  "fix it or delete it (then every key is trusted on first "
                                  "use again)") from None
            return {}
        return doc

    def get(self, name):
        text = self._load().get(name)
        return text if isinstance(text, str) else None

    def put(self, name, text):
        if not self.path:
            return
        import fcntl

        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self._load()
            if text is None:
                if doc.pop(name, None) is None:
                    return
            else:
                doc[name] = text
            replace_secret_file(self.path, (json.dumps(doc, indent=2) + "\n").encode())
        finally:
            os.close(lock)


class DeviceStore(_JsonStore):
    """Device tokens the home servers issued to this client: ``{server id: token}``."""

    FILE = "devices.json"


class KnownCoordinators(_JsonStore):
    """The coordinator keys this client trusted, per coordinator URL (trust on first
    use, as ssh's known_hosts): ``{url: base64url key}``."""

    FILE = "coordinators.json"
    STRICT = True
    WHAT = "the coordinator keys this client trusts"


def _is_loopback(host):
    # Exactly "localhost" (from /etc/hosts); "localhost." is an absolute name that
    # glibc sends to DNS, whoever answers that.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def coordinator_url(url, insecure_http=False):
    """*url* checked as a coordinator's URL, in its one canonical form (the requests'
    base and the key of the coordinators this client trusts): scheme and host in lower
    case, no trailing dot, no default port, no trailing slash; no user, query or
    fragment.  https://, or http:// only on this machine (127.0.0.0/8, ::1, localhost)
    unless *insecure_http* (for tests on private networks): over plain http anyone on
    the way could play the coordinator, hand out its own key, and collect answers and
    proofs over challenges it chose to guess the password offline."""
    expected = "expected https://HOST[:PORT][/PATH]"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:     # e.g. "Invalid IPv6 URL" for an unclosed [
        raise ConfigError(f"--url {url!r} is not a coordinator URL ({e}): {expected}") \
            from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url {url!r} is not a coordinator URL: {expected} "
                          "(or http:// on this machine)")
    if "@" in parts.netloc or "?" in url or "#" in url:
        raise ConfigError(f"--url {url!r}: a coordinator URL has no user name, query or "
                          f"fragment: {expected}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--url {url!r} has a bad port number") from None
    host = parts.hostname       # lower case, without brackets
    if parts.scheme == "http" and not insecure_http and not _is_loopback(host):
        raise ConfigError(f"--url {url!r}: plain http:// to a coordinator on another machine "
                          "lets anyone on the way play the coordinator; use https:// "
                          "(http:// only for 127.0.0.1, ::1 or localhost)")
    host = host.rstrip(".")
    if not host:
        raise ConfigError(f"--url {url!r} is not a coordinator URL: {expected}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


async def trusted_coordinator_key(url, known, notify):
    """The key in ``{url}/config.js``, checked against the one *known* (a
    :class:`KnownCoordinators`) remembers for *url*: trusted on first use, and a
    different key later is refused (``--coordinator-key`` accepts a new one)."""
    published = await fetch_coordinator_key(url)
    text = crypto.b64u_encode(published)
    remembered = known.get(url)
    if remembered is None:
        where = (f" (remembered in {known.path} once it verifies a response)"
                 if known.path else "")
        notify(f"trusting coordinator key {text} from {url}/config.js on first use{where}; "
               "pass --coordinator-key to pin it")
    elif remembered != text:
        raise AuthenticationError(
            f"the coordinator at {url} now publishes the key {text}, not the key {remembered} "
            f"this client trusted before ({known.path}): someone between you and it may be "
            "playing the coordinator. If its operator really changed the key, pass "
            f"--coordinator-key {text} once to accept it", "coordinator-key-changed")
    return published


async def fetch_coordinator_key(url):
    """The key published in ``{url}/config.js``."""
    status, _, body = await Coordinator(url, None).fetch("/config.js")
    match = _CONFIG_KEY.search(body.decode("utf-8", "replace")) if status == 200 else None
    if not match:
        raise ConfigError(f"{url}/config.js does not publish a coordinator key: "
                          "pass --coordinator-key")
    return crypto.parse_server_id(match.group(1))


# -- the control channel -------------------------------------------------------


async def wait_open(channel, timeout):
    if channel.readyState == "open":
        return
    loop = asyncio.get_running_loop()
    opened = loop.create_future()

    def on_open():
        if not opened.done():
            opened.set_result(None)

    def on_close():
        if not opened.done():
            opened.set_exception(Unavailable("the datachannel closed before it opened"))

    channel.on("open", on_open)
    channel.on("close", on_close)
    try:
        await asyncio.wait_for(opened, timeout)
    except asyncio.TimeoutError:
        raise Unavailable(no_path_advice(timeout)) from None
    finally:
        channel.remove_listener("open", on_open)
        channel.remove_listener("close", on_close)


def path_line(pc):
    """``path: <local>/<remote>`` candidate types of the pair in use (host, srflx,
    prflx: direct; relay: through TURN)."""
    pair = webrtc.selected_pair(pc)
    return "path: " + ("/".join(pair) if pair else "unknown")


def no_path_advice(timeout):
    """What to do when ICE found no path (the datachannel did not open)."""
    return (f"no network path to the home server was found within {timeout:g} s: this "
            "network and the home network are probably behind NATs or firewalls that only "
            "a relay can cross. Ask the coordinator's operator to add a TURN relay (coturn "
            "with a shared secret, [turn] in the coordinator's config; coturn's UDP and TCP "
            "port 3478 and its relay ports must be open), or pass your own: --ice-server "
            "turn:HOST:3478?transport=udp --ice-username USER --ice-credential-file FILE")


async def control_request(channel, doc, reply_op, match=None, timeout=10.0):
    """Send *doc* on the control channel; return the first reply with op *reply_op*."""
    loop = asyncio.get_running_loop()
    reply = loop.create_future()

    def on_message(message):
        try:
            got = json.loads(message)
        except (TypeError, ValueError):
            return
        if not isinstance(got, dict) or reply.done():
            return
        if got.get("op") == reply_op and (match is None or match(got)):
            reply.set_result(got)
        elif got.get("op") == "error" and got.get("id", doc.get("id")) == doc.get("id"):
            reply.set_exception(ProtocolError(
                f"the home server refused {doc.get('op')!r}: {got.get('message', got)}"))

    channel.on("message", on_message)
    try:
        channel.send(json.dumps(doc))
        return await asyncio.wait_for(reply, timeout)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"no {reply_op!r} reply on the control channel "
                             f"within {timeout:g} s") from None
    finally:
        channel.remove_listener("message", on_message)


async def ping(channel, ident, timeout=10.0):
    """One control ping; returns the round-trip time in seconds."""
    start = time.monotonic()
    await control_request(channel, {"op": "ping", "id": ident}, "pong",
                          match=lambda d: d.get("id") == ident, timeout=timeout)
    return time.monotonic() - start


# -- connect -------------------------------------------------------------------


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
        _remember_key(coordinators, coordinator, notify)
    raise Unavailable("the home server refused every attempt; try again later")


def _remember_key(coordinators, coordinator, notify):
    """Keep the coordinator key once a response verified with it (a first-use key, or
    a new one given with --coordinator-key)."""
    text = crypto.b64u_encode(coordinator.key_raw)
    if not coordinator.verified:
        return
    try:
        if coordinators.get(coordinator.url) != text:
            coordinators.put(coordinator.url, text)
    except OSError as e:
        notify(f"cannot remember the coordinator key in {coordinators.path}: "
               f"{e.strerror or e}")
    except HomeChannelError as e:   # damaged meanwhile: never replaces the outcome
        notify(f"cannot remember the coordinator key: {e}")


async def _attempt(coordinator, server_id, server_raw, key, device, ice_servers,
                   advertise_addresses, timeout, connect_timeout, random_bytes, devices,
                   notify):
    """One attempt of the connect flow (docs/protocol.md section 2)."""
    from aiortc import RTCSessionDescription

    # 1. The server's state, a challenge and the ICE servers (signed by the coordinator).
    status, doc = await coordinator.call(f"/api/servers/{server_id}")
    if status != 200:
        raise _api_error(status, doc, "looking up the home server")
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
            raise _api_error(status, doc, "the coordinator refused the connection")

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
        raise _api_error(status, doc, "the connection was refused")


# -- command line ----------------------------------------------------------------


def _common_options(p):
    p.add_argument("--url", help="the coordinator's URL, e.g. https://coordinator.example")
    p.add_argument("--server", required=True,
                   help="the home server id, or the connect link the home server prints")
    p.add_argument("--password-file",
                   help="read the password from the first line of this file (default: prompt)")
    p.add_argument("--coordinator-key",
                   help="pin the coordinator's public key (default: the key {url}/config.js "
                        "published the first time, remembered in the state directory's "
                        "coordinators.json; a different key later is refused until you pass "
                        "the new one here)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow plain http:// to a coordinator on another machine (for tests "
                        "on private networks only: anyone on the way can then play the "
                        "coordinator)")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="a STUN or TURN URL, tried before the ones the coordinator hands "
                        "out (repeatable; e.g. turn:turn.example:3478?transport=udp). "
                        "aiortc uses only the first STUN and the first TURN server (and "
                        "the next TURN URL of another transport when that gives no relay)")
    p.add_argument("--ice-username", metavar="USER",
                   help="the username for the TURN servers given with --ice-server")
    p.add_argument("--ice-credential-file", metavar="FILE",
                   help="read the TURN password for --ice-server from this file")
    p.add_argument("--advertise-address", action="append", default=[], metavar="IP",
                   help="also offer this host address as an ICE candidate (e.g. 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the home server's answer")
    p.add_argument("--no-device-token", action="store_true",
                   help="neither use nor keep a device token (by default the token the home "
                        "server gives after a sign-in is kept in the state directory's "
                        "devices.json, so that this client keeps its own sign-in budget)")


def _parse_target(args):
    """--server may be an id or a connect link ``{url}/#server={id}``."""
    link_url, server = flow.split_link(args.server.strip())
    url = args.url or link_url
    if not url:
        raise ConfigError("no coordinator: pass --url (or a connect link as --server)")
    url = coordinator_url(url, args.insecure_http)
    try:
        crypto.parse_server_id(server)
    except ProtocolError:
        raise ConfigError(f"--server {args.server!r} is not a server id or connect link "
                          "(damaged or cut short while copying? copy the whole link the "
                          "home server prints)") from None
    return url, server


def ice_server_args(args):
    """``--ice-server`` URLs (+ ``--ice-username``/``--ice-credential-file`` for TURN)
    as validated RTCIceServer dicts; a TURN URL without credentials is refused here,
    not silently dropped by aioice."""
    if not args.ice_server:
        if args.ice_username or args.ice_credential_file:
            raise ConfigError("--ice-username and --ice-credential-file need --ice-server")
        return ()
    credential = (read_secret_line(args.ice_credential_file, "TURN credential file")
                  if args.ice_credential_file else None)
    entries = []
    for url in args.ice_server:
        entry = {"urls": url}
        if url.startswith("turn"):
            if not args.ice_username or credential is None:
                raise ConfigError(f"--ice-server {url}: a TURN server needs --ice-username "
                                  "and --ice-credential-file")
            entry.update(username=args.ice_username, credential=credential)
        entries.append(entry)
    return parse_ice_servers(entries, "--ice-server")


def _read_password(args):
    if args.password_file:
        password = read_secret_line(args.password_file)
    else:
        password = getpass.getpass("HomeChannel password: ")
    if not password:
        raise ConfigError("the password is empty")
    return password


def _connect_kwargs(args):
    url, server = _parse_target(args)
    return dict(url=url, server_id=server, password=_read_password(args),
                coordinator_key=args.coordinator_key, ice_servers=ice_server_args(args),
                advertise_addresses=webrtc.parse_addresses(args.advertise_address),
                timeout=args.timeout, notify=_stderr,
                devices=DeviceStore(None) if args.no_device_token else DeviceStore.default(),
                coordinators=KnownCoordinators.default(), insecure_http=args.insecure_http)


async def _connect_and_ping(kwargs, out):
    pc, control, hello = await connect(**kwargs)
    try:
        apps = hello.get("apps") or []
        names = [a.get("name", a) if isinstance(a, dict) else a for a in apps]
        print(f"connected to {kwargs['server_id']}", file=out)
        print("apps: " + (", ".join(map(str, names)) or "(none)"), file=out)
        rtt = await ping(control, 1)
        print(f"ping: {rtt * 1000:.1f} ms", file=out)
    finally:
        await pc.close()


def main_connect(argv, out=None):
    """``homechannel connect``: connect, print the apps and a ping time; exit status."""
    p = argparse.ArgumentParser(
        prog="homechannel connect",
        description="Connect to a home server as the browser does (from a terminal, with "
                    "aiortc), list its apps and measure a ping. A quick check that the home "
                    "server, the coordinator and the network between them work.",
        epilog="example:\n  homechannel connect --server 'https://hc.example.org/#server=ID' "
               "--password-file ~/.homechannel-password",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(p)
    args = p.parse_args(argv)
    return _run("connect", lambda: _connect_and_ping(_connect_kwargs(args), out or sys.stdout))


def _run(name, make):
    """Run the coroutine from *make*; every failure is one line on stderr."""
    try:
        asyncio.run(make())
    except HomeChannelError as e:
        _stderr(f"homechannel {name}: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:   # a bug, or a library refusing something: still one line
        _stderr(f"homechannel {name}: unexpected error ({type(e).__name__}: {e})")
        return 1
    return 0


# -- forward ---------------------------------------------------------------------

FORWARD_HIGH = 1024 * 1024       # stop reading the local socket above this many buffered bytes
FORWARD_LOW = 256 * 1024         # ... and read again once the channel has drained to this
FORWARD_CHUNK = 65536            # one datachannel message (the server's frame limit)
FORWARD_MAX_BACKLOG = 16 * 1024 * 1024   # channel bytes the local side does not take


class ForwardRefused(HomeChannelError):
    """The home server refused to open the forward (or closed it with an error)."""


def _forward_error(doc, port):
    code = doc.get("code") if isinstance(doc.get("code"), str) else "error"
    message = doc.get("message") if isinstance(doc.get("message"), str) else ""
    if code == "port-not-allowed":
        return ForwardRefused(f"the home server refused port {port}: {message or code} "
                              f"(add it to apps.forward.ports in the home server's config)")
    if code == "connect-failed":
        return ForwardRefused(f"the home server could not connect to its port {port}: "
                              f"{message or code}")
    return ForwardRefused(f"the home server refused the forward to port {port}: "
                          f"{message or code} ({code})")


def check_forward_port(hello, port):
    """Refuse early, from the hello reply, when *port* is not forwarded."""
    apps = [a for a in (hello.get("apps") or []) if isinstance(a, dict)]
    forward = next((a for a in apps if a.get("name") == "forward"), None)
    if forward is None:
        raise ForwardRefused("the home server does not enable the forward app "
                             "(set apps.forward.enabled = true and ports = [...] in its config)")
    ports = forward.get("ports")
    if isinstance(ports, list) and port not in ports:
        allowed = ", ".join(str(p) for p in ports) or "none"
        raise ForwardRefused(f"the home server does not forward port {port} (allowed: {allowed}); "
                             "add it to apps.forward.ports in the home server's config")


class ForwardPipe:
    """One ``app:forward:<n>`` channel piped to a local (reader, writer) stream pair.

    Local → channel: the reader is not read while the channel buffers more than
    *high* bytes; reading resumes on ``bufferedamountlow`` (at *low*).  Channel →
    local: written to the writer; if the local side stops taking bytes and more
    than FORWARD_MAX_BACKLOG pile up, the pipe is closed.  EOF or an error on
    either side closes the other.
    """

    def __init__(self, pc, instance, port, *, high=FORWARD_HIGH, low=FORWARD_LOW,
                 notify=None):
        self.port = port
        self.high = high
        self.notify = notify or (lambda message: None)
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.error = None
        self.writer = None
        self.early = []
        self.drained = asyncio.Event()
        self.drained.set()
        self.bytes_in = self.bytes_out = 0
        self.channel = pc.createDataChannel(f"app:forward:{instance}")
        self.channel.bufferedAmountLowThreshold = low
        self.channel.on("message", self._on_message)
        self.channel.on("bufferedamountlow", self.drained.set)
        self.channel.on("close", self._on_close)

    # -- channel events --

    def _on_message(self, message):
        if isinstance(message, str):
            try:
                doc = json.loads(message)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                self._fail(ProtocolError("the home server sent a malformed status message"))
            elif doc.get("op") == "open" and not self.opened.done():
                self.opened.set_result(None)
            elif doc.get("op") == "error":
                self._fail(_forward_error(doc, self.port))
            return
        if not self.opened.done():
            self._fail(ProtocolError("the home server sent bytes before opening the forward"))
            return
        self.bytes_in += len(message)
        if self.writer is None:
            self.early.append(bytes(message))
            return
        self._write(message)

    def _write(self, data):
        if self.writer.is_closing():
            return
        self.writer.write(data)
        transport = self.writer.transport
        if transport is not None and transport.get_write_buffer_size() > FORWARD_MAX_BACKLOG:
            self._fail(ForwardRefused("the local side is not reading; closing the forward"))
            self.channel.close()

    def _fail(self, error):
        if self.error is None:
            self.error = error
        if not self.opened.done():
            self.opened.set_exception(error)

    def _on_close(self):
        self.drained.set()
        if not self.opened.done():
            self.opened.set_exception(self.error or ForwardRefused(
                "the home server closed the forward channel before it opened"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- running --

    async def open(self, timeout=15.0):
        """Wait for the channel, ask for the port, wait for the server's ``open``."""
        await wait_open(self.channel, timeout)
        self.channel.send(json.dumps({"op": "open", "port": self.port}))
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), timeout)
        except asyncio.TimeoutError:
            self.channel.close()
            raise RequestTimeout(f"the home server did not open port {self.port} within "
                                 f"{timeout:g} s") from None
        except BaseException:
            self.channel.close()
            raise

    async def run(self, reader, writer):
        """Pipe until either side closes; raise the server's error if it sent one."""
        self.writer = writer
        early, self.early = self.early, []
        for data in early:
            self._write(data)
        pump = asyncio.ensure_future(self._pump(reader))
        try:
            await asyncio.wait([pump, self.closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, ConnectionError, OSError):
                pass
            if self.channel.readyState not in ("closing", "closed"):
                self.channel.close()   # queued messages are still sent before the reset
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self.error is not None:
            raise self.error

    async def _pump(self, reader):
        channel = self.channel
        while channel.readyState == "open":
            if channel.bufferedAmount > self.high:
                self.drained.clear()
                if channel.bufferedAmount > self.high:
                    await self.drained.wait()
                continue
            data = await reader.read(FORWARD_CHUNK)
            if not data or channel.readyState != "open":
                return
            self.bytes_out += len(data)
            channel.send(data)


class _Forwarder:
    """One connected peer connection; opens one forward channel per local stream."""

    def __init__(self, pc, port, notify):
        self.pc = pc
        self.port = port
        self.notify = notify
        self.count = 0
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        pc.on("connectionstatechange", self._state)

    def _state(self):
        if self.pc.connectionState in ("failed", "closed") and not self.lost.done():
            self.lost.set_result(self.pc.connectionState)

    async def pipe(self, reader, writer, timeout=15.0):
        self.count += 1
        pipe = ForwardPipe(self.pc, self.count, self.port, notify=self.notify)
        try:
            await pipe.open(timeout)
        except BaseException:
            writer.close()
            raise
        await pipe.run(reader, writer)
        return pipe


async def _stdio_streams():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=FORWARD_CHUNK * 4)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin,
        os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


def parse_listen(text):
    try:
        return hostport.parse_host_port(text, default_host="127.0.0.1", port_zero=True)
    except hostport.HostPortError as e:
        raise ConfigError(e.explain(f"--listen {text!r}: expected HOST:PORT, e.g. "
                                    "127.0.0.1:2222")) from None


async def forward(kwargs, port, listen=None, stdio=False, ready=None):
    """Connect once, then forward ``--stdio`` or every connection to *listen*."""
    notify = kwargs.get("notify") or (lambda message: None)
    pc, control, hello = await connect(**kwargs)
    try:
        check_forward_port(hello, port)
        forwarder = _Forwarder(pc, port, notify)
        if stdio:
            reader, writer = await _stdio_streams()
            await forwarder.pipe(reader, writer)
            return
        host, lport = listen
        active = set()

        async def handle(reader, writer):
            peer = writer.get_extra_info("peername")
            task = asyncio.current_task()
            active.add(task)
            try:
                pipe = await forwarder.pipe(reader, writer)
                notify(f"forward {pipe.channel.label} from {peer} closed "
                       f"({pipe.bytes_out} bytes out, {pipe.bytes_in} bytes in)")
            except HomeChannelError as e:
                notify(f"forward from {peer}: {e}")
            except Exception as e:  # pragma: no cover - a bug; keep serving others
                notify(f"forward from {peer} failed: {e!r}")
            finally:
                active.discard(task)

        server = await asyncio.start_server(handle, host, lport)
        try:
            bound = server.sockets[0].getsockname()
            notify(f"forwarding {bound[0]}:{bound[1]} to port {port} on the home server "
                   f"{kwargs['server_id'][:12]}...")
            if ready is not None:
                ready(bound)
            state = await forwarder.lost
            raise Unavailable(f"the connection to the home server was lost ({state})")
        finally:
            server.close()
            for task in list(active):
                task.cancel()
    finally:
        await pc.close()


def main_forward(argv):
    """``homechannel forward``: a local TCP port (or stdio) to a port on the home machine."""
    p = argparse.ArgumentParser(
        prog="homechannel forward",
        description="Forward a local TCP port (--listen), or stdin/stdout (--stdio, for ssh's "
                    "ProxyCommand), to a TCP port on the home machine that its home server "
                    "allows (apps.forward.ports).",
        epilog='examples:\n'
               '  homechannel forward --server LINK --port 5900 --listen 127.0.0.1:5901\n'
               '  ssh -o ProxyCommand="homechannel forward --stdio --server LINK '
               '--password-file F --port 22" user@home',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(p)
    p.add_argument("--port", type=int, required=True,
                   help="the TCP port on the home machine (must be in apps.forward.ports)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", metavar="HOST:PORT",
                      help="accept local connections here, e.g. 127.0.0.1:2222")
    mode.add_argument("--stdio", action="store_true",
                      help="pipe stdin/stdout (one connection, e.g. as ssh's ProxyCommand)")
    args = p.parse_args(argv)

    def make():
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port {args.port}: expected the TCP port on the home machine, "
                              "1-65535")
        listen = None if args.stdio else parse_listen(args.listen)
        kwargs = _connect_kwargs(args)
        if args.stdio:
            # ssh's ProxyCommand: stderr is the user's terminal; only failures go there.
            kwargs["notify"] = lambda message: None
        return forward(kwargs, args.port, listen=listen, stdio=args.stdio)

    return _run("forward", make)
