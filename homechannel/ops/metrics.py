"""Prometheus metrics for the operator, on their own listener (``[metrics] listen``).

Collectors read the counters the daemons already keep (``Rendezvous.stats``,
``CoordinatorWeb.metrics``, the answerer's and the apps' counters) when
Prometheus scrapes, so the hot paths count nothing twice.  Each daemon has
its own ``CollectorRegistry``; nothing is registered globally.  The listener
is never the public web port: the default is loopback, and the public API has
only ``/healthz``.

The listener is the coordinator's ``LimitedSite`` (caps on connections in all and
per source, header, body and idle timeouts: :data:`LIMITS`), and it answers only a
request whose ``Host`` is an IP address, ``localhost`` or a name in
``metrics.allowed_hosts`` (:func:`host_refusal`): a page in a browser on the same
machine that points a name of its own at 127.0.0.1 (DNS rebinding) gets 421, not
the metrics.
"""

import ipaddress
import re

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.web import resource

from homechannel.config import CoordinatorWeb
from homechannel.coordinator.httpserver import LimitedSite
from homechannel.ops.logsafe import Logger

log = Logger()

_C = "homechannel_coordinator_"
_S = "homechannel_server_"


def _family(cls, name, doc, value, labels, rows):
    m = cls(name, doc, labels=list(labels) or None)
    for label_values, v in (rows if labels else [((), value or 0)]):
        m.add_metric(list(label_values), v)
    return m


def _counter(name, doc, value=None, labels=(), rows=()):
    return _family(CounterMetricFamily, name, doc, value, labels, rows)


def _gauge(name, doc, value=None, labels=(), rows=()):
    return _family(GaugeMetricFamily, name, doc, value, labels, rows)


def _by(label, counts):
    """The ``labels``/``rows`` of a family with one label: a row per key of *counts*."""
    return {"labels": [label], "rows": [((k,), v) for k, v in sorted(counts.items())]}


def _kebab(key):
    return key.replace("_", "-")


class CoordinatorCollector:
    """Registry, UDP protocol and web counters of one coordinator."""

    def __init__(self, rendezvous, web, cluster=None):
        self.rv = rendezvous
        self.web = web
        self.cluster = cluster          # a cluster node's ``ClusterNode``, if any

    def collect(self):
        stats = dict(self.rv.stats)
        web = dict(self.web.metrics)
        sessions = self.web.sessions
        yield _gauge(_C + "registered_servers", "Home servers registered now.",
                     self.rv.registry.count)
        yield _counter(_C + "registrations", "Completed registrations.",
                       stats.get("registered", 0))
        yield _counter(_C + "keepalives", "Keepalive pings answered.", stats.get("pings", 0))
        yield _counter(_C + "departures", "Home servers that said goodbye (BYE).",
                       stats.get("bye", 0))
        yield _counter(_C + "expired_servers", "Silent home servers forgotten.",
                       stats.get("expired", 0))
        yield _counter(_C + "stun_answers", "STUN Binding requests answered on the UDP port.",
                       stats.get("stun-answers", 0))
        outcomes = {_kebab(k[len("connect_"):]): v for k, v in web.items()
                    if k.startswith("connect_")}
        yield _counter(_C + "connects", "Connect attempts by outcome.",
                       **_by("outcome", outcomes))
        answers = {("answered" if k == "answers" else _kebab(k[len("answers_"):])): v
                   for k, v in web.items() if k == "answers" or k.startswith("answers_")}
        yield _counter(_C + "answers", "Home server answers by outcome.",
                       **_by("outcome", answers))
        yield _counter(_C + "lookups", "Server lookups (GET /api/servers/{id}).",
                       web.get("lookups", 0))
        yield _counter(_C + "rate_limited", "Requests refused by a rate limit.",
                       web.get("rate_limited", 0))
        yield _counter(_C + "lockout_hits", "Connects refused because the source is locked out.",
                       web.get("connect_locked_out", 0))
        yield _counter(_C + "lockouts", "Sources locked out after failed answers.",
                       web.get("lockouts", 0))
        yield _counter(_C + "relay_failures", "Offers the home server did not acknowledge.",
                       web.get("relay_failed", 0))
        yield _counter(_C + "internal_errors", "Bugs: requests answered with a 500.",
                       web.get("internal_errors", 0))
        yield _gauge(_C + "sessions", "Connect sessions held (pending or answered).",
                     len(sessions) if hasattr(sessions, "__len__") else 0)
        yield _gauge(_C + "waiting_polls", "Long-polls waiting for an answer.",
                     getattr(sessions, "waiting", 0) or 0)
        drops = {k[len("dropped."):]: v for k, v in stats.items() if k.startswith("dropped.")}
        yield _counter(_C + "udp_dropped", "UDP datagrams dropped, by reason.",
                       **_by("reason", drops))
        events = {k: v for k, v in stats.items() if not k.startswith("dropped")}
        yield _counter(_C + "udp_events", "Every other UDP protocol counter, by name.",
                       **_by("event", events))
        yield _counter(_C + "udp_datagrams_received", "UDP datagrams received.",
                       getattr(self.rv, "received", 0))
        if self.cluster is not None:
            yield _counter(_C + "cluster_dropped",
                           "Messages and records from the cluster's Redis not acted on "
                           "(forged, replayed, stale, malformed), by reason.",
                           **_by("reason", self.cluster.dropped()))


class ServerCollector:
    """Coordinator link, logins, sessions and app traffic of one home server."""

    def __init__(self, udp, answerer, app_host):
        self.udp = udp
        self.answerer = answerer
        self.app_host = app_host

    def collect(self):
        status = self.udp.status()
        yield _gauge(_S + "coordinator_up", "1 while registered with the coordinator.",
                     labels=["coordinator"],
                     rows=[((status["coordinator"],), 1 if status["state"] == "up" else 0)])
        yield _gauge(_S + "coordinator_family", "1 for the IP family the home server is "
                     "registered over (IPv6 or IPv4), 0 for the other.", labels=["family"],
                     rows=[((family,), 1 if status.get("family") == family else 0)
                           for family in ("IPv6", "IPv4")])
        yield _counter(_S + "registrations", "Completed registrations with a coordinator.",
                       status["registrations"])
        yield _counter(_S + "coordinator_lost", "Times the coordinator link was lost.",
                       status["lost"])
        a = self.answerer
        yield _counter(_S + "logins", "Logins by result.", labels=["result"],
                       rows=[(("accepted",), a.logins_accepted),
                             (("refused",), a.logins_refused),
                             (("refused-at-coordinator",), self.udp.failed_logins)])
        yield _gauge(_S + "live_sessions", "Open peer connections.", a.live_sessions)
        traffic = getattr(self.app_host, "traffic", {})
        yield _counter(_S + "app_bytes", "Datachannel payload bytes by app and direction.",
                       labels=["app", "direction"],
                       rows=[(k, v) for k, v in sorted(traffic.items())])


def registry_for(collector):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# A scraper holds one kept-alive connection; a few scrapers (and a person with curl)
# fit with room.  What these bound is the daemon's file descriptors and memory.
LIMITS = CoordinatorWeb(max_body=4096, max_connections=64, max_connections_per_source=16,
                        header_timeout=5.0, body_timeout=5.0, idle_timeout=60.0)

_PORT = re.compile(r":[0-9]{1,5}")


def host_refusal(values, names=()):
    """None if a request's ``Host`` header lines *values* (bytes, as
    ``getRawHeaders`` gives them) name this listener: an IP address (a browser sends
    one only to a page whose origin is that address, never to a name an attacker
    rebinds), ``localhost``, or one of *names* (lower case, no trailing dot); else the
    status to refuse with: 400 for no Host, several, or one that is not
    ``host[:port]``, 421 for any other name."""
    if not values or len(values) != 1:
        return 400
    try:
        text = values[0].decode("ascii")
    except UnicodeDecodeError:
        return 400
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not _PORT.fullmatch(port)):
            return 400
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return 400
        return None
    host, colon, port = text.partition(":")
    if not host or (colon and not _PORT.fullmatch(colon + port)):
        return 400
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    return None if name == "localhost" or name in names else 421


class HostChecked(resource.Resource):
    """*inner*, for requests whose ``Host`` passes :func:`host_refusal` (with the
    host *names* allowed besides addresses and localhost); a plain-text refusal for
    the rest."""

    def __init__(self, inner, names=()):
        super().__init__()
        self._inner = inner
        self._names = frozenset(n.lower().rstrip(".") for n in names)
        self.refused = 0

    def _refusal(self, request):
        status = host_refusal(request.requestHeaders.getRawHeaders(b"host"), self._names)
        if status is None:
            return None
        self.refused += 1
        log.debug("metrics: refused a request for Host {host!r} ({status})",
                  host=request.getHeader(b"host"), status=status)
        text = (b"this listener answers only to its own address (an IP address or "
                b"localhost) or a name in metrics.allowed_hosts\n" if status == 421 else
                b"a request needs one Host header: host[:port]\n")
        return _Plain(status, text)

    def getChildWithDefault(self, name, request):
        refusal = self._refusal(request)
        return self._inner.getChildWithDefault(name, request) if refusal is None else refusal

    def render(self, request):
        refusal = self._refusal(request)
        return (self._inner if refusal is None else refusal).render(request)


class _Plain(resource.Resource):
    isLeaf = True

    def __init__(self, status, text):
        super().__init__()
        self._status = status
        self._text = text

    def render(self, request):
        request.setResponseCode(self._status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return self._text


def service(endpoint, registry, reactor, what="metrics", allowed_hosts=(), limits=LIMITS):
    """A service serving *registry* at ``/metrics`` on *endpoint*, to requests whose
    Host is an address, localhost or one of *allowed_hosts*, within *limits*.

    Not being able to listen is logged, not fatal: metrics are for the operator,
    and the daemon's real work goes on without them."""
    from prometheus_client.twisted import MetricsResource
    from twisted.application import service as _service
    from twisted.internet.endpoints import serverFromString

    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = LimitedSite(HostChecked(root, allowed_hosts), limits, reactor=reactor)
    site.displayTracebacks = False
    site.log = lambda request: None

    class _Listener(_service.Service):
        port = None

        def startService(self):
            super().startService()
            d = serverFromString(reactor, endpoint).listen(site)

            def listening(port):
                self.port = port
                log.info("{what}: http://{addr}/metrics", what=what, addr=_where(port))

            def failed(f):
                log.error("{what}: cannot listen on {endpoint}: {err} (the daemon runs on "
                          "without it)", what=what, endpoint=endpoint, err=f.getErrorMessage())

            d.addCallbacks(listening, failed)

        def stopService(self):
            super().stopService()
            if self.port is not None:
                return self.port.stopListening()

    listener = _Listener()
    listener.site = site
    return listener


def _where(port):
    addr = port.getHost()
    host = getattr(addr, "host", None)
    return f"{host}:{addr.port}" if host is not None else str(getattr(addr, "name", addr))
