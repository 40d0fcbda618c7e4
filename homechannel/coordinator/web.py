"""The coordinator's HTTPS API and the static browser client (Klein).

Wiring (the coordinator tap does this)::

    web_obj = web.CoordinatorWeb(identity, relay, config.web, reactor)
    relay.set_answer_handler(web_obj.on_answer)
    site = server.Site(web_obj.resource())

``identity`` is the coordinator's :class:`homechannel.crypto.IdentityKey`,
``relay`` provides :class:`homechannel.coordinator.interfaces.IRelay`,
``config`` is a :class:`homechannel.config.CoordinatorWeb` and ``clock`` an
``IReactorTime``.  :meth:`CoordinatorWeb.on_answer` takes
``(server_key, payload)`` for each complete ANSWER transfer from a home
server (payload: UTF-8 JSON, see ``docs/protocol.md`` section 2).

Every API response (errors too) is JSON signed with the coordinator key in
``X-HomeChannel-Signature``.  Domain errors (``homechannel.errors``) are
mapped to statuses in one place (:meth:`CoordinatorWeb._error_doc`);
anything else is a bug: 500 ``{"error": "internal error"}`` and
``log.failure``, never a traceback on the wire.
"""

import functools
import inspect
import ipaddress
import json
import math
import os
import re
from collections import Counter

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import pages, resource, static
from werkzeug.exceptions import MethodNotAllowed, NotFound as RouteNotFound

from homechannel import crypto, default_static_dir
from homechannel.coordinator.ratelimit import Lockout, RateLimiter
from homechannel.coordinator.sessions import MemorySessionStore
from homechannel.errors import (
    BadRequest,
    CapacityError,
    Forbidden,
    HomeChannelError,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    TooManyRequests,
    Unavailable,
)

SIGNATURE_HEADER = b"X-HomeChannel-Signature"
MAX_OFFER_PAYLOAD = 64 * 1024
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
CSP = (b"default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
       b"style-src 'self'; script-src 'self'; frame-ancestors 'none'")

# The home server's error codes (answer payload "error") and how they reach the browser.
SERVER_ERRORS = {
    "bad-proof": (Forbidden, "the home server refused the connection: the password proof did "
                  "not verify (was the password changed on the home server?)"),
    "unknown-challenge": (Forbidden, "the home server did not recognise the challenge: "
                          "try again"),
    "busy": (Unavailable, "the home server has too many sessions open: try again later"),
    "internal": (Unavailable, "the home server failed to answer: see its log"),
}

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".wasm": "application/wasm",
}


class _StaticFile(static.File):
    """static.File without directory listings."""

    contentTypes = dict(static.File.contentTypes, **_CONTENT_TYPES)
    indexNames = []

    def directoryListing(self):
        return pages.notFound("Not Found", "no directory listings")


class _Wrapper(resource.Resource):
    """Puts the security and CORS headers on every response, whatever renders it."""

    isLeaf = True

    def __init__(self, web, inner):
        super().__init__()
        self._web = web
        self._inner = inner

    def render(self, request):
        self._web._common_headers(request)
        return self._inner.render(request)


def _api(handler):
    """Run a route, map errors in one place, sign and send the JSON."""

    @functools.wraps(handler)
    async def wrapper(self, request, **kwargs):
        try:
            result = handler(self, request, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            status, doc = result if isinstance(result, tuple) else (200, result)
        except defer.CancelledError:
            raise
        except HomeChannelError as e:
            status, doc = self._error_doc(request, e)
        except Exception:
            self.log.failure("unexpected error in {method} {path}",
                             method=request.method, path=request.path)
            self.metrics["internal_errors"] += 1
            status, doc = 500, {"error": "internal error", "code": "internal"}
        return self._send_json(request, status, doc)

    return wrapper


class _ConnectRequest:
    __slots__ = ("server_id", "server_key", "session", "challenge", "answer", "proof", "offer")


class CoordinatorWeb:
    """The Klein app: ``/api/*``, ``/config.js``, ``/healthz``, ``/metrics``
    and the static client."""

    app = Klein()
    log = Logger()

    def __init__(self, identity, relay, config, clock, random_bytes=os.urandom,
                 static_dir=None, sessions=None, lockout=None, ip_limiter=None,
                 server_limiter=None, lookup_limiter=None):
        self._identity = identity
        self._relay = relay
        self._config = config
        self._clock = clock
        self._random_bytes = random_bytes
        self._static_dir = static_dir or config.static_dir or default_static_dir()
        self._sessions = sessions or MemorySessionStore(
            clock,
            session_timeout=config.session_timeout,
            retention=max(30.0, config.long_poll_timeout + 5.0),
            max_sessions=config.max_sessions,
            max_waiters=config.max_waiters,
        )
        self._lockout = lockout or Lockout(
            clock, threshold=config.failures_before_lockout, base=config.lockout_base,
            maximum=config.lockout_max)
        self._ip_limiter = ip_limiter or RateLimiter(clock, config.per_ip_per_minute, 60.0)
        self._server_limiter = server_limiter or RateLimiter(
            clock, config.per_server_per_minute, 60.0)
        # Looking up a server precedes every connect attempt and its retries.
        self._lookup_limiter = lookup_limiter or RateLimiter(
            clock, 2 * config.per_ip_per_minute, 60.0)
        self._cors = frozenset(config.cors_origins)
        self._trusted = frozenset(config.trusted_proxies)
        self.metrics = Counter()
        self._config_js = self._render_config_js()

    def resource(self):
        return _Wrapper(self, self.app.resource())

    @property
    def sessions(self):
        return self._sessions

    # -- the answer path (called by the relay) --

    def on_answer(self, server_key, payload):
        """A complete ANSWER transfer from the home server *server_key*.

        Hostile or stale input is counted and dropped, never raised."""
        try:
            doc = json.loads(bytes(payload).decode("utf-8"))
            session_id = doc["session"]
            if not isinstance(session_id, str):
                raise ValueError("session")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self.metrics["answers_malformed"] += 1
            self.log.debug("dropped a malformed answer")
            return
        target = self._sessions.server_key(session_id)
        if target is None:
            self.metrics["answers_unknown_session"] += 1
            return
        if target != server_key:
            self.metrics["answers_wrong_server"] += 1
            self.log.debug("dropped an answer for {session} from another server",
                           session=session_id)
            return
        if "error" in doc:
            code = doc["error"]
            cls, message = SERVER_ERRORS.get(
                code, (Unavailable, "the home server refused the connection"))
            if code not in SERVER_ERRORS:
                code = "refused"
            if self._sessions.fail(session_id, cls(message, code)):
                self.metrics["answers_refused"] += 1
            return
        answer, when, signature = doc.get("answer"), doc.get("time"), doc.get("signature")
        if (not isinstance(answer, str) or not isinstance(signature, str)
                or not isinstance(when, int) or isinstance(when, bool)):
            self.metrics["answers_malformed"] += 1
            return
        result = {"session": session_id, "status": "answered", "answer": answer,
                  "time": when, "signature": signature}
        if self._sessions.answer(session_id, result):
            self.metrics["answers"] += 1
        else:
            self.metrics["answers_duplicate"] += 1

    # -- API routes --

    @app.route("/healthz", methods=["GET"])
    @_api
    def healthz(self, request):
        return {"ok": True}

    @app.route("/metrics", methods=["GET"])
    @_api
    def metrics_route(self, request):
        doc = dict(self.metrics)
        doc["sessions"] = len(self._sessions) if hasattr(self._sessions, "__len__") else None
        doc["waiting"] = getattr(self._sessions, "waiting", None)
        return doc

    @app.route("/api/servers/<string:server_id>", methods=["GET"])
    @_api
    def server_status(self, request, server_id):
        source = self.source_address(request)
        self._limit(self._lookup_limiter, source, "too many lookups from your address")
        server_key = self._parse_server_id(server_id)
        online, challenge = self._relay.server_status(server_key)
        self.metrics["lookups"] += 1
        return {
            "server": server_id,
            "online": bool(online),
            "challenge": crypto.b64u_encode(challenge) if online and challenge else None,
            "time": int(self._clock.seconds()),
        }

    @app.route("/api/connect", methods=["POST"])
    @_api
    def connect(self, request):
        source = self.source_address(request)
        req = self._parse_connect(self._read_body(request))

        locked = self._lockout.check(source)
        if locked is not None:
            self.metrics["connect_locked_out"] += 1
            raise TooManyRequests(f"too many wrong passwords from your address: try again in "
                        f"{_seconds(locked)} seconds", "locked-out",
                        retry_after=_seconds(locked))
        self._limit(self._ip_limiter, source, "too many connection attempts from your address")
        self._limit(self._server_limiter, req.server_key,
                    "too many connection attempts to this server")

        online, _ = self._relay.server_status(req.server_key)
        if not online:
            self.metrics["connect_offline"] += 1
            raise NotFound("the home server is offline: check that it is running "
                        "and connected to the internet", "offline")
        expected = self._relay.take_challenge(req.server_key, req.challenge)
        if expected is None:
            self.metrics["connect_stale_challenge"] += 1
            raise Forbidden("the challenge was already used or has expired: "
                        "look the server up again", "stale-challenge")
        if not crypto.check_answer(req.answer, expected):
            self.metrics["connect_wrong_password"] += 1
            lockout = self._lockout.failure(source)
            if lockout is not None:
                self.log.info("locked out {source} for {seconds}s after failed answers",
                              source=source, seconds=lockout)
            try:
                self._relay.report_failure(req.server_key, source, "wrong-password")
            except Exception:
                self.log.failure("reporting a failed login to the home server failed")
            raise Forbidden("wrong password", "wrong-password")
        self._lockout.success(source)

        payload = json.dumps({
            "session": req.session,
            "challenge": crypto.b64u_encode(req.challenge),
            "proof": crypto.b64u_encode(req.proof),
            "offer": req.offer,
        }, separators=(",", ":")).encode("utf-8")
        if len(payload) > MAX_OFFER_PAYLOAD:
            raise PayloadTooLarge("the offer is too large", "too-large")
        self._sessions.create(req.session, req.server_key)
        self.metrics["connect_relayed"] += 1
        try:
            d = defer.maybeDeferred(self._relay.send_offer, req.server_key, payload)
        except Exception:  # maybeDeferred catches; belt and braces
            d = defer.fail()
        d.addErrback(self._offer_failed, req.session)
        return 202, {"session": req.session}

    @app.route("/api/sessions/<string:session_id>", methods=["GET"])
    @_api
    async def session(self, request, session_id):
        if not SESSION_ID.match(session_id):
            raise BadRequest("malformed session id", "bad-session")
        result = await self._sessions.wait(session_id, self._config.long_poll_timeout)
        if result is None:
            return {"session": session_id, "status": "pending"}
        return result

    @app.route("/api/", branch=True)
    def preflight(self, request):
        """CORS preflight for every API path; any other unknown API path is a 404."""
        if request.method != b"OPTIONS":
            return self._send_json(request, 404, {"error": "no such page", "code": "not-found"})
        origin = self._allowed_origin(request)
        if origin is None:
            return self._send_json(request, 403, {
                "error": "cross-origin requests from this origin are not allowed",
                "code": "cors"})
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", b"GET, POST, OPTIONS")
        request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
        request.setHeader(b"Access-Control-Max-Age", b"600")
        return b""

    @app.handle_errors(RouteNotFound)
    def not_found(self, request, failure):
        return self._send_json(request, 404, {"error": "no such page", "code": "not-found"})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request, failure):
        return self._send_json(request, 405, {"error": "method not allowed",
                                              "code": "method-not-allowed"})

    # -- client --

    @app.route("/", methods=["GET", "HEAD"])
    def index(self, request):
        try:
            with open(os.path.join(self._static_dir, "index.html"), "rb") as f:
                page = f.read()
        except OSError:
            self.log.error("the browser client is missing from {dir}", dir=self._static_dir)
            return self._send_json(request, 404, {
                "error": "the browser client is not installed", "code": "not-found"})
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return page

    @app.route("/js/", branch=True, methods=["GET", "HEAD"])
    def js(self, request):
        return self._static("js", request)

    @app.route("/css/", branch=True, methods=["GET", "HEAD"])
    def css(self, request):
        return self._static("css", request)

    @app.route("/node_modules/", branch=True, methods=["GET", "HEAD"])
    def node_modules(self, request):
        # noVNC and xterm.js, installed from npm by 'make npm' (never committed).
        return self._static("node_modules", request)

    @app.route("/config.js", methods=["GET", "HEAD"])
    def config_js(self, request):
        request.setHeader(b"Content-Type", b"text/javascript; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._config_js

    # -- helpers --

    def _static(self, name, request):
        request.setHeader(b"Cache-Control", b"no-cache")
        path = os.path.join(self._static_dir, name)
        if not os.path.isdir(path):
            return pages.notFound()
        return _StaticFile(path)

    def _render_config_js(self):
        ice = [dict(s) for s in self._config.ice_servers]
        return (
            "// Generated by the HomeChannel coordinator.\n"
            f"export const coordinatorKey = {json.dumps(self._identity.text)};\n"
            f"export const iceServers = {json.dumps(ice)};\n"
        ).encode("utf-8")

    def _common_headers(self, request):
        request.setHeader(b"Content-Security-Policy", CSP)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"X-Frame-Options", b"DENY")
        if self._is_secure(request):
            request.setHeader(b"Strict-Transport-Security", b"max-age=31536000")
        origin = self._allowed_origin(request)
        if origin is not None:
            request.setHeader(b"Access-Control-Allow-Origin", origin.encode("ascii"))
            request.setHeader(b"Access-Control-Expose-Headers",
                              SIGNATURE_HEADER + b", Retry-After")
        if self._cors:
            request.setHeader(b"Vary", b"Origin")

    def _is_secure(self, request):
        if request.isSecure():
            return True
        peer = self._peer(request)
        if peer in self._trusted:
            proto = request.getHeader(b"X-Forwarded-Proto")
            return proto is not None and proto.strip().lower() == b"https"
        return False

    def _allowed_origin(self, request):
        origin = request.getHeader(b"Origin")
        if not origin or not self._cors:
            return None
        try:
            origin = origin.decode("ascii")
        except UnicodeDecodeError:
            return None
        return origin if origin in self._cors else None

    @staticmethod
    def _peer(request):
        address = request.getClientAddress()
        return getattr(address, "host", None) or "unknown"

    def source_address(self, request):
        """The client's IP: the peer, or, if the peer is a trusted proxy, the
        right-most address in X-Forwarded-For that is not a trusted proxy."""
        peer = self._peer(request)
        if peer not in self._trusted:
            return peer
        values = request.requestHeaders.getRawHeaders(b"X-Forwarded-For") or []
        hops = [h.strip() for v in values for h in v.decode("latin-1").split(",")]
        for hop in reversed(hops):
            try:
                hop = str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a forged or broken header: do not trust anything left of it
            if hop not in self._trusted:
                return hop
        return peer

    def _limit(self, limiter, key, message):
        retry = limiter.hit(key)
        if retry is not None:
            self.metrics["rate_limited"] += 1
            seconds = _seconds(retry)
            raise TooManyRequests(f"{message}: try again in {seconds} seconds",
                        "rate-limited", retry_after=seconds)

    def _parse_server_id(self, server_id):
        try:
            return crypto.parse_server_id(server_id)
        except ProtocolError:
            raise BadRequest("malformed server id: copy the whole connect link "
                        "from the home server", "bad-server-id") from None

    def _read_body(self, request):
        limit = self._config.max_body
        length = request.getHeader(b"Content-Length")
        if length is not None:
            try:
                if int(length) > limit:
                    raise PayloadTooLarge("request body is too large", "too-large")
            except ValueError:
                raise BadRequest("bad Content-Length", "bad-request") from None
        body = request.content.read(limit + 1) if request.content is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge("request body is too large", "too-large")
        return body

    def _parse_connect(self, body):
        def bad(what):
            return BadRequest(f"malformed request: {what}", "bad-request")

        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise bad("the body must be a JSON object") from None
        if not isinstance(doc, dict):
            raise bad("the body must be a JSON object")
        req = _ConnectRequest()
        server_id = doc.get("server")
        if not isinstance(server_id, str):
            raise bad("server is missing")
        req.server_id = server_id
        req.server_key = self._parse_server_id(server_id)
        session = doc.get("session")
        if not isinstance(session, str) or not SESSION_ID.match(session):
            raise bad("session must be 22 base64url characters (16 random bytes)")
        req.session = session
        for name, size in (("challenge", crypto.CHALLENGE_SIZE), ("answer", 32),
                           ("proof", 32)):
            try:
                value = crypto.b64u_decode(doc.get(name))
            except ProtocolError:
                raise bad(f"{name} must be base64url") from None
            if len(value) != size:
                raise bad(f"{name} must be {size} bytes")
            setattr(req, name, value)
        offer = doc.get("offer")
        if not isinstance(offer, str) or not offer:
            raise bad("offer must be an SDP string")
        req.offer = offer
        return req

    def _offer_failed(self, failure, session_id):
        if failure.check(HomeChannelError):
            self.log.info("could not relay the offer for {session}: {error}",
                          session=session_id, error=failure.getErrorMessage())
        else:
            self.log.failure("relaying the offer for {session} failed", failure,
                             session=session_id)
        self.metrics["relay_failed"] += 1
        self._sessions.fail(session_id, Unavailable("the coordinator could not reach the home server: try again",
            "relay-failed"))

    def _error_doc(self, request, error):
        status = getattr(error, "status", 500)
        doc = {"error": str(error) or error.code, "code": error.code}
        doc.update(error.extra)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            retry_after = _seconds(retry_after)
            request.setHeader(b"Retry-After", str(retry_after).encode("ascii"))
            doc["retry_after"] = retry_after
        if status >= 500 and not isinstance(error, Unavailable):
            self.log.error("{error}", error=str(error))
        return status, doc

    def _send_json(self, request, status, doc):
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
        path = request.path.decode("utf-8", "replace")
        signature = self._identity.sign(crypto.response_signature_message(path, body))
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(SIGNATURE_HEADER, crypto.b64u_encode(signature).encode("ascii"))
        return body


def _seconds(value):
    return max(1, int(math.ceil(value)))
