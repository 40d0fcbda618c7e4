"""Prometheus metrics for the operator, on their own listener (``[metrics] listen``).

Collectors read the counters the daemons already keep (``Rendezvous.stats``,
``CoordinatorWeb.metrics``, the answerer's and the apps' counters) when
Prometheus scrapes, so the hot paths count nothing twice.  Each daemon has
its own ``CollectorRegistry``; nothing is registered globally.  The listener
is never the public web port: the default is loopback, and the public API has
only ``/healthz``.
"""

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger

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

    def __init__(self, rendezvous, web):
        self.rv = rendezvous
        self.web = web

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


def service(endpoint, registry, reactor, what="metrics"):
    """A service serving *registry* at ``/metrics`` on *endpoint*.

    Not being able to listen is logged, not fatal: metrics are for the operator,
    and the daemon's real work goes on without them."""
    from prometheus_client.twisted import MetricsResource
    from twisted.application import service as _service
    from twisted.internet.endpoints import serverFromString
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = Site(root)
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

    return _Listener()


def _where(port):
    addr = port.getHost()
    host = getattr(addr, "host", None)
    return f"{host}:{addr.port}" if host is not None else str(getattr(addr, "name", addr))
