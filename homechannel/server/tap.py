"""``twistd homechannel-server``: the composition root of the home server.

The home server needs Twisted's asyncio reactor (aiortc runs on asyncio).
When twistd has not installed a reactor yet, ``makeService`` installs it;
when another reactor is already running it stops with advice instead of a
traceback.  The reactor is imported only inside :func:`makeService`."""

from twisted.python import usage

from homechannel.errors import HomeChannelError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Run a HomeChannel home server: registers with a coordinator over UDP "
                "(outbound only) and answers browsers over WebRTC. Runs on Twisted's "
                "asyncio reactor (aiortc needs it): installed by itself when twistd is "
                "given no --reactor; any other reactor is refused. "
                "Settings come from --config (TOML, see conf/server.example.toml); these "
                "options override it.")
    optParameters = [
        ["config", "c", None, "TOML configuration file"],
        ["state-dir", None, None, "state directory (identity key, password key, "
                                  "known_hosts, failover-coordinator.json)"],
        ["coordinator", None, None, "coordinator UDP address HOST:PORT "
                                    "(coordinator.host, coordinator.port)"],
        ["coordinator-key", None, None, "the coordinator's public key, base64url "
                                        "(coordinator.public_key)"],
        ["coordinator-url", None, None, "the coordinator's web URL, for the connect link"],
        ["metrics-listen", None, None, "endpoint for Prometheus metrics (metrics.listen); "
                                       "empty disables it"],
    ]

    def overrides(self):
        from homechannel.protocol.hostport import HostPortError, parse_host_port

        host = port = None
        if self["coordinator"]:
            try:
                host, port = parse_host_port(self["coordinator"])
            except HostPortError as e:
                raise usage.UsageError(e.explain("--coordinator must be HOST:PORT")) from None
        return {
            "state_dir": self["state-dir"],
            "coordinator.host": host or None,
            "coordinator.port": port,
            "coordinator.public_key": self["coordinator-key"],
            "coordinator_url": self["coordinator-url"],
            "metrics.listen": self["metrics-listen"],
        }


def makeService(options):
    try:
        return _make(options)
    except HomeChannelError as e:
        raise SystemExit(f"homechannel-server: {e}") from None


def _make(options):
    from homechannel import aio

    aio.install_asyncio_reactor()
    from twisted.application import internet
    from twisted.internet import reactor

    from homechannel import aio, config, crypto, keyfiles

    from homechannel.protocol import connect

    from homechannel.ops import dualstack, logfilter, metrics
    from homechannel.ops.logsafe import Logger
    from homechannel.errors import ConfigError
    from homechannel.server.apps import AppHost
    from homechannel.server.apps.uploads import SWEEP_INTERVAL
    from homechannel.server.challenges import ChallengeSource
    from homechannel.server.devices import EnrolledDevices
    from homechannel.server.offerice import OfferIcePolicy
    from homechannel.server.peer import Answerer
    from homechannel.server.statefiles import reactor_threads
    from homechannel.server.status import StatusFile
    from homechannel.server.udp import (
        ServerUDP, load_failover, reactor_resolver, start_target,
    )

    logfilter.capture_library_logging()
    log = Logger(namespace="homechannel.server")
    cfg = config.load_server(options["config"], options.overrides())
    if not cfg.coordinator.public_key:
        raise ConfigError("coordinator key not configured: set coordinator.public_key in "
                          "the config (the coordinator logs it at start) or pass "
                          "--coordinator-key")
    try:
        coordinator_key = crypto.parse_server_id(cfg.coordinator.public_key)
    except HomeChannelError:
        raise ConfigError("coordinator.public_key is not a base64url P-256 public key") from None
    identity, created = keyfiles.load_or_create_identity_key(cfg.identity_key)
    if created:
        log.info("created home server identity key {path}", path=cfg.identity_key)
    password_key = keyfiles.load_password_key(cfg.password_key, identity.public_raw)
    epoch = keyfiles.load_password_epoch(cfg.password_key) or 0

    challenges = ChallengeSource(password_key)
    allow_migrate = [crypto.parse_server_id(k) for k in cfg.coordinator.allow_migrate]
    saved = load_failover(cfg.failover_path)
    target, candidates, why = start_target(saved, cfg.coordinator.candidates(),
                                           coordinator_key, allow_migrate)
    if why == "not-allowed":
        log.warn("ignoring {path}: a migration moved this server to the coordinator with "
                 "the key {key}, which is neither coordinator.public_key nor in "
                 "coordinator.allow_migrate; using the configured coordinator",
                 path=cfg.failover_path, key=crypto.b64u_encode(saved[2]))
    elif why is not None:
        log.info("using the coordinator from {path}: {host}:{port}",
                 path=cfg.failover_path, host=target[0], port=target[1])
    if why == "overridden":
        log.warn("the coordinator key from {path} ({key}) replaces the configured "
                 "coordinator.public_key (a migration, which coordinator.allow_migrate "
                 "allows); remove the file to go back to the configured coordinator",
                 path=cfg.failover_path, key=crypto.b64u_encode(target[2]))

    to_thread = reactor_threads(reactor)    # the state files' writes (fsync), the sweep
    app_host = AppHost(cfg.apps, identity.text, cfg.state_dir, reactor, to_thread)
    links = []

    def ice_servers():
        # STUN on the coordinator this server is registered with now (it follows a move).
        active = links[0].active if links else None
        host, port = (active.host, active.port) if active else target[:2]
        return config.server_ice_servers(cfg, host, port)

    to_thread = reactor_threads(reactor)    # the state files' writes (fsync)
    devices = EnrolledDevices(cfg.devices_path, epoch, reactor, to_thread=to_thread)
    devices.load()

    def allowed_ice_hosts():
        active = links[0].active if links else None
        return config.offer_ice_hosts(cfg, active.host if active else target[0])

    answerer = Answerer(identity, password_key, challenges, cfg.webrtc, app_host, reactor,
                        ice_servers=ice_servers, devices=devices,
                        offer_ice=OfferIcePolicy(allowed_ice_hosts))
    # One UDP port for both families (IPv4 only on a host without IPv6).
    ipv6 = dualstack.ipv6_available()
    udp = ServerUDP(identity, challenges, cfg.keepalive, target, reactor, answerer,
                    cfg.failover_path, resolve=reactor_resolver(reactor, ipv6=ipv6),
                    candidates=candidates, to_thread=to_thread,
                    allow_migrate=allow_migrate, pinned=coordinator_key)
    links.append(udp)
    devices.on_change = udp.set_devices
    udp.set_devices(devices.policy())

    top = _home_server_class()(answerer, udp)
    dualstack.UDPServer(reactor, 0, udp,
                        dualstack.BOTH if ipv6 else dualstack.ANY_IPV4).setServiceParent(top)
    status = StatusFile(cfg.status_path, udp, answerer, reactor, to_thread=to_thread)
    udp.on_change = status.changed
    internet.TimerService(2.0, status.tick).setServiceParent(top)
    # 'homechannel devices revoke' changes the file: noticed within one tick.
    internet.TimerService(2.0, devices.poll).setServiceParent(top)

    files = cfg.apps.files
    if files.enabled and files.roots and not files.read_only:
        # partial upload files a crash left behind: at start, then every hour
        internet.TimerService(SWEEP_INTERVAL, lambda: app_host.uploads.sweep(
            reactor.seconds())).setServiceParent(top)
    if cfg.metrics.listen:
        metrics.service(cfg.metrics.listen, metrics.registry_for(
            metrics.ServerCollector(udp, answerer, app_host)), reactor,
            allowed_hosts=cfg.metrics.allowed_hosts).setServiceParent(top)
    link = connect.connect_link(cfg.coordinator_url, identity.text)
    log.info("home server id {id}", id=identity.text)
    log.info("ICE servers: {ice}", ice=", ".join(
        s["urls"] if isinstance(s["urls"], str) else " ".join(s["urls"])
        for s in ice_servers()) or "none (host candidates only)")
    log.info("connect link: {link}", link=link)
    log.info("password epoch {epoch}; {n} enrolled device(s) in {path}", epoch=epoch,
             n=len(devices), path=cfg.devices_path)
    return top


def _home_server_class():
    from twisted.application import service

    class HomeServer(service.MultiService):
        """Stopping says goodbye to the coordinator first (so browsers see
        "offline" at once), then closes the port and every session."""

        def __init__(self, answerer, udp):
            super().__init__()
            self.answerer = answerer
            self.udp = udp

        def stopService(self):
            d = self.udp.leave()
            d.addBoth(lambda _: service.MultiService.stopService(self))
            d.addCallback(lambda _: self.answerer.close_all())
            return d

    return HomeServer

