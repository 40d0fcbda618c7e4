"""The coordinator's public HTTP(S) listener, with limits for strangers.

Plain ``twisted.web.server.Site`` reads a whole request body before the
resource sees it, spools bodies over 100 KiB to a temporary file, keeps idle
connections for 12 hours and puts no bound on how long the request head may
take or on how many connections one client holds.  :class:`LimitedSite` is a
``Site`` whose channels:

* refuse a body whose ``Content-Length`` is over ``max_body`` as soon as the
  head has arrived (``413``, signed JSON like every API error, ``Connection:
  close``), without reading the body; a chunked body is counted as it arrives
  and cut the same way at the limit;
* keep every body in memory (``BytesIO``): it is at most ``max_body``, and
  nothing a stranger sends is ever written to disk;
* admit at most ``max_connections`` connections in all and
  ``max_connections_per_source`` from one source network (``source_key``:
  IPv6 /64, IPv4 address; a trusted reverse proxy is exempt, it is many
  clients); a connection over either cap is aborted at once;
* count each request that comes through a trusted proxy, while it is answered,
  against the source network X-Forwarded-For names
  (``TrustedProxies.client_address``): at most ``max_connections_per_source``
  of them at once, as a direct client holds at most that many connections and
  so requests; the next is refused (``503 busy``, signed) on the proxy's
  connection, which stays open.  The proxy's own requests (health checks, no
  or a broken header) are exempt;
* close a connection whose request head (request line and headers) has not
  arrived ``header_timeout`` seconds after its first byte (or after the
  connection opened, TLS handshake included), or whose body has not arrived
  ``body_timeout`` seconds after its head (``408``): slowloris;
* close a connection idle for ``idle_timeout`` seconds between requests
  (Twisted's own idle timeout).  That timeout is off while a request is being
  answered, so a long-poll that holds its connection silently for
  ``web.long_poll_timeout`` is never cut.

HTTP/1.1 only (HTTP/2 would bypass these channels; it is not negotiated).
A POST body is never parsed as an HTML form into ``request.args`` (the API
takes JSON; Twisted's form parsing runs the Content-Type through the ``email``
package on every POST, about a tenth of the coordinator's CPU per connect).
Refusals and cuts are counted in :attr:`LimitedSite.stats`.  The limits are
the ``[web]`` configuration's (``config.CoordinatorWeb``: ``max_body``,
``max_connections``, ``max_connections_per_source``, the three timeouts and
``trusted_proxies``), with its defaults.
"""

import io
from collections import Counter

from twisted.web import http, resource, server

from homechannel.config import CoordinatorWeb
from homechannel.ops.logsafe import Logger
from homechannel.protocol import connect
from homechannel.coordinator.ratelimit import TrustedProxies, source_key
from homechannel.coordinator.shares import Shares


class LimitedRequest(server.Request):
    """Keeps the body in memory and counts it against the site's limit."""

    _received = 0

    def gotLength(self, length):
        # Twisted spools bodies over 100 KiB to a temporary file; ours are
        # at most max_body (a Content-Length over it never gets here).
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        channel = self.channel
        if channel is None or channel.refused:
            return
        self._received += len(data)
        if self._received > channel.site.limits.max_body:
            channel.refuse_too_large()   # a chunked body grew past the limit
            return
        self.content.write(data)


class LimitedChannel(http.HTTPChannel):
    """An ``HTTPChannel`` with a connection cap, a body limit and timeouts."""

    log = Logger()
    refused = False
    _admitted = False
    _source = None
    _deadline = None
    _phase = "head"      # head -> body -> handling -> idle -> head ...

    # -- connection admission --

    def connectionMade(self):
        if not self.site.admit(self):
            self.refused = True
            self.transport.abortConnection()
            return
        self._admitted = True
        super().connectionMade()
        self._start_deadline(self.site.limits.header_timeout, "header-timeout")

    def connectionLost(self, reason):
        self._stop_deadline()
        if self._admitted:
            self._admitted = False
            self.site.release(self)
        super().connectionLost(reason)

    # -- request phases --

    def dataReceived(self, data):
        if self.refused:
            return
        if self._phase == "idle" and data:
            # The first byte of the next request on a kept-alive connection.
            self._phase = "head"
            self._start_deadline(self.site.limits.header_timeout, "header-timeout")
        super().dataReceived(data)

    def rawDataReceived(self, data):
        if not self.refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self):
        self._stop_deadline()
        if self.length is not None and self.length > self.site.limits.max_body:
            self.refuse_too_large()
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._phase = "body"
            self._start_deadline(self.site.limits.body_timeout, "body-timeout")

    def allContentReceived(self):
        if self.refused:
            return
        self._stop_deadline()
        self._phase = "handling"
        super().allContentReceived()

    def requestDone(self, request):
        self._phase = "idle"
        super().requestDone(request)

    def timeoutConnection(self):
        # Idle between requests (Twisted's idle timeout): a counted, quiet close
        # (Twisted logs every one at info level, with the client's address).
        self.site.stats["idle-timeout"] += 1
        self.log.debug("closing an idle connection from {peer}", peer=self._source)
        self.loseConnection()
        self._abort_later()

    def forceAbortClient(self):
        self._abortingCall = None
        self.transport.abortConnection()

    def _abort_later(self):
        # A client that does not read what is left to send is cut off all the same.
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    # -- refusals --

    def refuse_too_large(self):
        """Answer 413 and close, reading nothing more."""
        if self.refused:
            return
        limit = self.site.limits.max_body
        path = getattr(self, "_path", b"/").split(b"?", 1)[0]
        self._refuse(b"413 Payload Too Large", "too-large", path, {
            "error": f"request body is too large: at most {limit} bytes", "code": "too-large"})

    def _start_deadline(self, seconds, reason):
        self._stop_deadline()
        self._deadline = self.callLater(seconds, self._timed_out, reason)

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _timed_out(self, reason):
        self._deadline = None
        path = getattr(self, "_path", b"/").split(b"?", 1)[0]
        self._refuse(b"408 Request Timeout", reason, path, {
            "error": "the request took too long to arrive", "code": "timeout"})

    def _refuse(self, status, reason, path, doc):
        self.refused = True
        self._stop_deadline()
        self.setTimeout(None)
        self.site.stats[reason] += 1
        self.log.debug("refused a request from {peer}: {reason}",
                       peer=self._source, reason=reason)
        body, signature = connect.signed_json(self.site.identity,
                                              path.decode("utf-8", "replace"), doc)
        headers = [b"HTTP/1.1 " + status,
                   b"Content-Type: application/json",
                   b"Content-Length: " + str(len(body)).encode("ascii"),
                   b"Cache-Control: no-store",
                   b"X-Content-Type-Options: nosniff",
                   b"Connection: close"]
        if signature is not None:
            headers.append(connect.SIGNATURE_HEADER.encode("ascii") + b": " + signature)
        self.transport.write(b"\r\n".join(headers) + b"\r\n\r\n" + body)
        self.loseConnection()
        self._abort_later()


class LimitedSite(server.Site):
    """``Site(resource, limits, identity=None, reactor=None)``.

    *limits* is the ``[web]`` configuration (``config.CoordinatorWeb``; its
    defaults when not given).  *identity* (the coordinator's ``IdentityKey``)
    signs the 408/413 answers the way ``coordinator.web`` signs API responses;
    without it they are unsigned."""

    protocol = LimitedChannel  # type: ignore[assignment]  # HTTPFactory's stub: any callable
    requestFactory = LimitedRequest

    def __init__(self, resource, limits=CoordinatorWeb(), identity=None, reactor=None,
                 **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, timeout=limits.idle_timeout, reactor=reactor, **kwargs)
        self.limits = limits
        self.identity = identity
        self._trusted = TrustedProxies(limits.trusted_proxies)
        self.stats = Counter()
        self.connections = 0
        self._by_source = Shares(limits.max_connections_per_source)
        # Requests in progress through a trusted proxy, by the source it names.
        self._forwarded = Shares(limits.max_connections_per_source)

    def admit(self, channel):
        """Count a new connection, or refuse it (False) over a cap."""
        if self.connections >= self.limits.max_connections:
            self.stats["refused-connections"] += 1
            return False
        host = getattr(channel.transport.getPeer(), "host", None)
        key = None if host is None or host in self._trusted else source_key(host)
        if key is not None:
            if not self._by_source.room(key):
                self.stats["refused-source-connections"] += 1
                return False
            self._by_source.take(key)
        channel._source = key
        self.connections += 1
        return True

    def release(self, channel):
        self.connections -= 1
        if channel._source is not None:
            self._by_source.give_back(channel._source)

    def getResourceFor(self, request):
        if self._trusted:
            key = self._forwarded_key(request)
            if key is not None:
                if not self._forwarded.room(key):
                    self.stats["refused-source-requests"] += 1
                    return _Busy(self)
                self._forwarded.take(key)
                request.notifyFinish().addBoth(lambda _: self._forwarded.give_back(key))
        return super().getResourceFor(request)

    def _forwarded_key(self, request):
        """The source network a request through a trusted proxy counts against, or
        None (not through a proxy, or the proxy's own)."""
        peer = getattr(request.getClientAddress(), "host", None)
        if peer is None or peer not in self._trusted:
            return None
        source = self._trusted.client_address(
            peer, request.requestHeaders.getRawHeaders(b"X-Forwarded-For"))
        return None if source in self._trusted else source_key(source)


class _Busy(resource.Resource):
    """The refusal of a request over its source's share of requests in progress."""

    isLeaf = True

    def __init__(self, site):
        super().__init__()
        self._site = site

    def render(self, request):
        body, signature = connect.signed_json(self._site.identity, request.path.decode(
            "utf-8", "replace"), {
            "error": "too many requests from your network are in progress: try again "
                     "shortly", "code": "busy"})
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if signature is not None:
            request.setHeader(connect.SIGNATURE_HEADER.encode("ascii"), signature)
        return body


def raise_fd_limit(wanted):
    """Raise the soft limit on open files towards *wanted* (at most to the hard
    limit): every connection is a file descriptor, and the usual soft limit
    (1,024) is far below ``max_connections``.  Returns the soft limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
