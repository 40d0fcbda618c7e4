"""The coordinator's HTTPS API and the static browser client (Klein).

HTTP mapping only: the connect use-case (limits, lockouts, challenges, the
answer check, sessions, the relay) is :class:`homechannel.coordinator.broker.Broker`,
and the formats are :mod:`homechannel.protocol.connect`.  Wiring (the coordinator tap
does this)::

    web_obj = web.CoordinatorWeb(identity, relay, config.web, reactor)
    site = server.Site(web_obj.resource())

``identity`` is the coordinator's :class:`homechannel.crypto.IdentityKey`,
``relay`` provides :class:`homechannel.coordinator.interfaces.IRelay` (the
broker registers itself as its answer handler), ``config`` is a
:class:`homechannel.config.CoordinatorWeb` and ``clock`` an ``IReactorTime``.

Every API response (errors too) is JSON signed with the coordinator key in
``X-HomeChannel-Signature`` (``connect.signed_json``, which the listener's own
408/413 answers use too).  Domain errors (``homechannel.errors``) become
statuses and bodies in one place (``errors.to_response``, called by
:meth:`CoordinatorWeb._error_doc`); anything else is a bug: 500 ``{"error":
"internal error"}`` and ``log.failure``, never a traceback on the wire.

The browser client's ``index.html`` is read once, at start, and again by
:meth:`CoordinatorWeb.reload_client` (SIGHUP); ``js/``, ``css/`` and
``node_modules/`` are served from the static directory as they are.
"""

import functools
import json
import os
import re

from klein import Klein
from twisted.internet import defer
from twisted.web import pages, resource, server, static
from werkzeug.exceptions import MethodNotAllowed, NotFound as RouteNotFound

from homechannel import crypto, default_static_dir, errors

from homechannel.ops.logsafe import Logger
from homechannel.protocol import connect
from homechannel.protocol.hostport import unmapped
from homechannel.coordinator.broker import Broker
from homechannel.coordinator.ratelimit import TrustedProxies
from homechannel.errors import BadRequest, HomeChannelError, PayloadTooLarge, Unavailable

# Nothing but what the client uses (docs/security.md, "The browser page"): its own
# scripts, styles, images (data: and blob: for noVNC's cursor and previews), API calls,
# the download service worker and its hidden download frame; no plugins, no <base>, no
# form submissions (every form is handled by script; one sent before the script ran
# would put the password in the URL), no framing by others.
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       b"font-src 'self'; connect-src 'self'; worker-src 'self'; frame-src 'self'; "
       b"manifest-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       b"frame-ancestors 'none'")

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
    """Puts the security and CORS headers on every response, whatever renders it,
    and hands the connect flow's API requests straight to their handlers
    (:meth:`CoordinatorWeb._direct`); everything else goes through Klein."""

    isLeaf = True

    def __init__(self, web, inner):
        super().__init__()
        self._web = web
        self._inner = inner

    def render(self, request):
        self._web._common_headers(request)
        direct = self._web._direct(request)
        if direct is not None:
            return direct
        return self._inner.render(request)


_SIGNATURE = connect.SIGNATURE_HEADER.encode("ascii")

# The plain form of a path argument on the direct routes (base64url): anything else,
# percent escapes included, is left to Klein and werkzeug, which decode and match it.
_PLAIN_ARG = re.compile(rb"\A[A-Za-z0-9_-]+\Z")


def _api(handler):
    """Run an ``async def`` route, map errors in one place, sign and send the JSON."""

    @functools.wraps(handler)
    async def wrapper(self, request, **kwargs):
        try:
            result = await handler(self, request, **kwargs)
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


class CoordinatorWeb:
    """The Klein app: ``/api/*``, ``/config.js``, ``/healthz`` and the static
    client.  (Metrics are on the operator's listener: ``homechannel.ops.metrics``.)"""

    app = Klein()
    log = Logger()

    def __init__(self, identity, relay, config, clock, random_bytes=os.urandom,
                 static_dir=None, broker=None, ice_servers=None):
        self._identity = identity
        self._config = config
        self._clock = clock
        # The STUN (and static) ICE servers for /config.js: config.coordinator_ice_servers()
        # from the tap; else web.ice_servers as given.
        if ice_servers is None:
            ice_servers = config.ice_servers or ()
        self._ice_servers = [dict(s) for s in ice_servers]
        self._static_dir = static_dir or config.static_dir or default_static_dir()
        self.broker = broker or Broker(
            relay, config, clock, random_bytes=random_bytes, ice_servers=self._ice_servers,
            ticket_key=identity.derived_key(crypto.TICKET_KEY_LABEL))
        self._cors = frozenset(config.cors_origins)
        self._trusted = TrustedProxies(config.trusted_proxies)
        self.metrics = self.broker.metrics
        self._config_js = self._render_config_js()
        self._index = self._read_index()

    def resource(self):
        return _Wrapper(self, self.app.resource())

    @property
    def sessions(self):
        return self.broker.sessions

    # -- API routes --

    @app.route("/healthz", methods=["GET"])
    @_api
    async def healthz(self, request):
        return {"ok": True}

    @app.route("/api/servers/<string:server_id>", methods=["GET"])
    @_api
    async def server_status(self, request, server_id):
        source = self.source_address(request)
        server_key = connect.parse_server_id(server_id)
        found = await self.broker.lookup(server_key, source)
        return {
            "server": server_id,
            "online": found["online"],
            "challenge": crypto.b64u_encode(found["challenge"]) if found["challenge"] else None,
            "ice_servers": found["ice_servers"],
            "turn": found["turn"],
            "time": int(self._clock.seconds()),
        }

    @app.route("/api/prove", methods=["POST"])
    @_api
    async def prove(self, request):
        """The first step of a connect with TURN: the proof without the offer; the
        client's ICE servers with a TURN credential, and a ticket for the second."""
        source = self.source_address(request)
        req = connect.ProveRequest.parse(self._read_body(request))
        result = await self.broker.prove(req, source)
        return dict(result, time=int(self._clock.seconds()))

    @app.route("/api/connect", methods=["POST"])
    @_api
    async def connect(self, request):
        source = self.source_address(request)
        req = connect.ConnectRequest.parse(self._read_body(request))
        await self.broker.connect(req, source)
        wait = self._wait_seconds(request)
        if wait <= 0:
            return 202, {"session": req.session}
        # The two-request connect: hold the answer here (bounded) instead of a poll.
        result = await self.broker.wait(req.session, wait, source)
        if result is None:
            return 202, {"session": req.session, "status": "pending"}
        return result

    @app.route("/api/sessions/<string:session_id>", methods=["GET"])
    @_api
    async def session(self, request, session_id):
        if not connect.SESSION_ID.match(session_id):
            raise BadRequest("malformed session id", "bad-session")
        result = await self.broker.wait(session_id, self._config.long_poll_timeout,
                                        self.source_address(request))
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
        if self._index is None:
            return self._send_json(request, 404, {
                "error": "the browser client is not installed", "code": "not-found"})
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._index

    def reload_client(self):
        """Read ``index.html`` again (SIGHUP: after the static files were updated)."""
        self._index = self._read_index()
        if self._index is not None:
            self.log.info("read the browser client again from {dir}", dir=self._static_dir)

    def _read_index(self):
        """The client's page, read once: None (GET / is a 404) if it is missing."""
        path = os.path.join(self._static_dir, "index.html")
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            self.log.error("the browser client is missing from {dir} ({error}): GET / "
                           "answers 404 until it is installed and the coordinator "
                           "reloaded", dir=self._static_dir, error=e.strerror)
            return None

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

    # -- the connect flow's routes without Klein --

    def _direct(self, request):
        """``GET /api/servers/{id}``, ``POST /api/connect`` and ``GET
        /api/sessions/{sid}`` in their plain form: the same handlers as their Klein
        routes, called without Klein's per-request URL map binding, matching and
        Deferred layers (about 50 us of CPU per request, more than a bare
        twisted.web request costs).  None for every other request (Klein's)."""
        method, path = request.method, request.path
        if method == b"POST":
            if path == b"/api/connect":
                return self._run(request, self.connect(request))
            if path == b"/api/prove":
                return self._run(request, self.prove(request))
        elif method == b"GET":
            if path.startswith(b"/api/servers/"):
                arg = path[13:]
                if _PLAIN_ARG.match(arg):
                    return self._run(request, self.server_status(
                        request, server_id=arg.decode("ascii")))
            elif path.startswith(b"/api/sessions/"):
                arg = path[14:]
                if _PLAIN_ARG.match(arg):
                    return self._run(request, self.session(
                        request, session_id=arg.decode("ascii")))
        return None

    def _run(self, request, coroutine):
        """Write what an ``_api`` handler's *coroutine* returns, as Klein does: the
        handler is cancelled if the client goes away first, and a failure (only a
        bug gets here: ``_api`` maps every error) is Twisted's plain 500."""
        d = defer.Deferred.fromCoroutine(coroutine)
        finished = []

        def gone(failure):
            finished.append(True)
            d.cancel()

        def done(result):
            finished.append(True)

        request.notifyFinish().addCallbacks(done, gone)

        def write(body):
            request.write(body)
            if not finished:
                request.finish()

        def failed(failure):
            if finished:
                if not failure.check(defer.CancelledError):
                    self.log.failure("unhandled error in {path}", failure,
                                     path=request.path)
                return None
            request.processingFailed(failure)
            return None

        d.addCallbacks(write, failed)
        d.addErrback(lambda f: self.log.failure("writing the response to {path} failed", f,
                                                path=request.path))
        return server.NOT_DONE_YET

    # -- helpers --

    def _static(self, name, request):
        request.setHeader(b"Cache-Control", b"no-cache")
        path = os.path.join(self._static_dir, name)
        if not os.path.isdir(path):
            return pages.notFound()
        return _StaticFile(path)

    def _render_config_js(self):
        ice = self._ice_servers
        return (
            "// Generated by the HomeChannel coordinator.  A copy of the client served from\n"
            "// another origin has its own config.js (docs/security.md).\n"
            f"export const coordinatorKey = {json.dumps(self._identity.text)};\n"
            "export const coordinatorUrl = \"\";  // \"\": this origin\n"
            f"export const iceServers = {json.dumps(ice)};\n"
        ).encode("utf-8")

    def _common_headers(self, request):
        request.setHeader(b"Content-Security-Policy", CSP)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Cross-Origin-Opener-Policy", b"same-origin")
        if self._is_secure(request):
            request.setHeader(b"Strict-Transport-Security", b"max-age=31536000")
        origin = self._allowed_origin(request)
        if origin is not None:
            request.setHeader(b"Access-Control-Allow-Origin", origin.encode("ascii"))
            request.setHeader(b"Access-Control-Expose-Headers",
                              (connect.SIGNATURE_HEADER + ", Retry-After").encode("ascii"))
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
        # A dual-stack listener (web.listen on "::") reports an IPv4 client as
        # ::ffff:a.b.c.d: rate limits, logs and the home server's audit see IPv4.
        address = request.getClientAddress()
        return unmapped(getattr(address, "host", None) or "unknown")

    def source_address(self, request):
        """The client's IP (``TrustedProxies.client_address``): the peer, or, if the
        peer is a trusted proxy, the right-most address in X-Forwarded-For that is
        not one; the peer if that one is not exactly an IP address (a zone such as
        ``%eth0``, a port, anything else)."""
        return self._trusted.client_address(
            self._peer(request), request.requestHeaders.getRawHeaders(b"X-Forwarded-For"))

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

    def _wait_seconds(self, request):
        """``?wait=N``: hold ``POST /api/connect`` up to N seconds (at most the
        long-poll timeout) for the answer."""
        values = request.args.get(b"wait")
        if not values:
            return 0.0
        try:
            wait = float(values[0])
        except ValueError:
            raise BadRequest("wait must be a number of seconds", "bad-request") from None
        return max(0.0, min(wait, self._config.long_poll_timeout))

    def _error_doc(self, request, error):
        status, doc = errors.to_response(error)
        if "retry_after" in doc:
            request.setHeader(b"Retry-After", str(doc["retry_after"]).encode("ascii"))
        if status >= 500 and not isinstance(error, Unavailable):
            self.log.error("{error}", error=str(error))
        return status, doc

    def _send_json(self, request, status, doc):
        body, signature = connect.signed_json(
            self._identity, request.path.decode("utf-8", "replace"), doc)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(_SIGNATURE, signature)
        return body

