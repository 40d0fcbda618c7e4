"""``twistd homechannel-coordinator``: the composition root of the coordinator.

The reactor is imported only inside :func:`makeService`."""

import sys

from twisted.python import usage

from homechannel.errors import HomeChannelError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Run a HomeChannel coordinator: the HTTPS API and browser client, and "
                "the UDP registry of home servers. Settings come from --config (TOML, "
                "see conf/coordinator.example.toml); these options override it. With "
                "[cluster] (a node of a cluster on Redis) it runs on Twisted's asyncio "
                "reactor, installed by itself when twistd is given no --reactor.")
    optParameters = [
        ["config", "c", None, "TOML configuration file"],
        ["state-dir", None, None, "state directory (identity key); default "
                                  "~/.config/homechannel or $STATE_DIRECTORY"],
        ["udp-interface", None, None, "UDP address to listen on (udp.interface; the "
                                      "default :: is IPv6 and IPv4, 0.0.0.0 IPv4 only)"],
        ["udp-port", None, None, "UDP port to listen on (udp.port)", int],
        ["web-listen", None, None, "Twisted endpoint string for HTTP(S) (web.listen), "
                                   "e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem "
                                   "(without interface=: IPv6 and IPv4)"],
        ["public-url", None, None, "public URL of this coordinator (web.public_url)"],
        ["admin-listen", None, None, "endpoint of the operator API (admin.listen): a "
                                     "unix: socket, or loopback tcp: with a token; "
                                     "empty disables it"],
        ["metrics-listen", None, None, "endpoint for Prometheus metrics (metrics.listen); "
                                       "empty disables it"],
    ]

    def overrides(self):
        return {
            "state_dir": self["state-dir"],
            "udp.interface": self["udp-interface"],
            "udp.port": self["udp-port"],
            "web.listen": self["web-listen"],
            "web.public_url": self["public-url"],
            "admin.listen": self["admin-listen"],
            "metrics.listen": self["metrics-listen"],
        }


def makeService(options):
    try:
        return _make(options)
    except HomeChannelError as e:
        raise SystemExit(f"homechannel-coordinator: {e}") from None


def _make(options):
    from homechannel import aio, config, crypto, keyfiles

    cfg = config.load_coordinator(options["config"], options.overrides())
    if cfg.cluster.redis_url:
        # The cluster's Redis client (redis-py) runs on asyncio.
        aio.install_asyncio_reactor(
            "a cluster node ([cluster] in the config) needs Twisted's asyncio reactor for "
            "its Redis client: run twistd with --reactor=asyncio, or with no --reactor")
    from twisted.application import internet, service, strports
    from twisted.internet import reactor
    from twisted.web.server import Site

    from homechannel.protocol import join

    from homechannel.ops import dualstack, logfilter, metrics
    from homechannel.ops.logsafe import Logger
    from homechannel.protocol.hostport import format_host_port
    from homechannel.coordinator import admin, tls
    from homechannel.coordinator.httpserver import LimitedSite, raise_fd_limit
    from homechannel.coordinator.registry import Registry
    from homechannel.coordinator.rendezvous import Rendezvous
    from homechannel.coordinator.broker import Broker
    from homechannel.coordinator.stun import StunResponder
    from homechannel.coordinator.turn import TurnMinter, load_secret
    from homechannel.coordinator.udp import CoordinatorUDP, StunUDP
    from homechannel.coordinator.web import CoordinatorWeb

    log = Logger(namespace="homechannel.coordinator")
    logfilter.capture_library_logging()
    identity, created = keyfiles.load_or_create_identity_key(cfg.identity_key)
    if created:
        log.info("created coordinator identity key {path}", path=cfg.identity_key)
    log.info("coordinator public key: {key}", key=identity.text)

    registry = Registry(cfg.udp.max_servers, epoch=reactor.seconds(),
                        max_per_source=cfg.udp.max_servers_per_source)
    rv = Rendezvous(identity, registry, max_handshakes=cfg.udp.max_handshakes,
                    unknown_replies_per_second=cfg.udp.unknown_replies_per_second,
                    per_source_per_second=cfg.udp.per_source_per_second,
                    max_handshakes_per_source=cfg.udp.max_handshakes_per_source,
                    reassembly_bytes=cfg.udp.reassembly_bytes,
                    reassembly_bytes_per_source=cfg.udp.reassembly_bytes_per_source,
                    stun=None)
    stun = None
    if cfg.udp.stun or cfg.udp.stun_port:
        stun = StunResponder(rv.stats, cfg.udp.stun_per_source_per_second,
                             cfg.udp.stun_per_second)
    if cfg.udp.stun:
        rv.stun = stun
    udp = CoordinatorUDP(rv, reactor, expiry=cfg.udp.expiry,
                         sweep_interval=cfg.udp.sweep_interval)

    top = service.MultiService()
    dualstack.UDPServer(reactor, cfg.udp.port, udp, cfg.udp.interface).setServiceParent(top)
    if cfg.udp.stun_port:
        dualstack.UDPServer(reactor, cfg.udp.stun_port, StunUDP(stun, reactor),
                            cfg.udp.interface).setServiceParent(top)
    web_listen = dualstack.both_families(cfg.web.listen)

    kwargs = {"static_dir": cfg.web.static_dir} if cfg.web.static_dir else {}
    ice_servers = config.coordinator_ice_servers(cfg)
    minter = None
    if cfg.turn.urls:
        minter = TurnMinter(cfg.turn.urls, load_secret(cfg.turn.secret_file), cfg.turn.lifetime,
                            reactor)
        log.info("TURN: {urls}, credentials valid {lifetime:g} s, only for proven clients "
                 "({server_minute} a minute and {server_day} a day per home server, "
                 "{all} a minute in all)", urls=" ".join(minter.urls),
                 lifetime=cfg.turn.lifetime, server_minute=cfg.turn.per_server_per_minute,
                 server_day=cfg.turn.per_server_per_day, all=cfg.turn.per_minute)
    seams = {}
    node = None
    if cfg.cluster.redis_url:
        from homechannel.coordinator.cluster import node as cluster
        node = cluster.build(cfg, reactor, udp, rv)
        node.service.setServiceParent(top)
        seams = dict(sessions=node.sessions, make_limiter=node.make_limiter,
                     make_lockout=node.make_lockout)
        relay = node.relay
    else:
        relay = udp
    broker = Broker(relay, cfg.web, reactor, ice_servers=ice_servers, turn=minter,
                    turn_limits=cfg.turn,
                    ticket_key=identity.derived_key(crypto.TICKET_KEY_LABEL), **seams)
    web = CoordinatorWeb(identity, relay, cfg.web, reactor, broker=broker,
                         ice_servers=ice_servers, **kwargs)
    site = LimitedSite(web.resource(), cfg.web, identity, reactor)
    site.displayTracebacks = False
    fds = cfg.web.max_connections + 1024
    if raise_fd_limit(fds) < fds:
        log.warn("open-file limit below web.max_connections + 1024 ({n}): raise LimitNOFILE",
                 n=fds)
    if not cfg.web.access_log:
        site.log = lambda request: None
    if tls.is_tls(web_listen):
        # Twisted's ssl: endpoint, built here so that SIGHUP can swap the certificate.
        endpoint, certificate = tls.server_endpoint(reactor, web_listen)
        web_service = internet.StreamServerEndpointService(endpoint, site)
        web_service._raiseSynchronously = True     # as strports.service does
        web_service.setServiceParent(top)

        def reload():
            certificate.reload()
            web.reload_client()
    else:
        strports.service(web_listen, site).setServiceParent(top)
        reload = web.reload_client
    tls.reload_on_sighup(reactor, reload)

    if cfg.admin.listen:
        admin_endpoint, token = admin.listen_endpoint(cfg)
        admin_site = Site(admin.Admin(udp, token).resource())
        admin_site.displayTracebacks = False
        strports.service(admin_endpoint, admin_site).setServiceParent(top)
        log.info("admin API: {where}", where=admin_endpoint)
    if cfg.metrics.listen:
        metrics.service(cfg.metrics.listen, metrics.registry_for(
            metrics.CoordinatorCollector(rv, web, cluster=node)), reactor,
            allowed_hosts=cfg.metrics.allowed_hosts).setServiceParent(top)
    log.info("coordinator: UDP {udp}{families}, web {web}, STUN {stun}",
             udp=format_host_port(cfg.udp.interface, cfg.udp.port),
             families=" (IPv6 and IPv4)" if cfg.udp.interface == dualstack.BOTH else "",
             web=web_listen, stun=_stun_ports(cfg.udp))
    log.info("ICE servers for clients: {ice}",
             ice=", ".join(_urls(s) for s in ice_servers) or "none")
    log.info("join string for home servers ('homechannel join STRING' there): {join}",
             join=join.from_coordinator_config(cfg, identity.text))
    return top


def _urls(server):
    urls = server["urls"]
    return urls if isinstance(urls, str) else " ".join(urls)


def _stun_ports(udp):
    ports = ([str(udp.port)] if udp.stun else []) + (
        [str(udp.stun_port)] if udp.stun_port else [])
    return "on UDP " + " and ".join(ports) if ports else "off"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with: twistd -n homechannel-coordinator --config FILE")
