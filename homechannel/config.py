"""Configuration: TOML files parsed once into frozen dataclasses.

The example files in ``conf/`` document every key.  Command-line options
override the file (``tap.py`` passes them as ``overrides``: a mapping of
dotted keys such as ``"udp.port"`` to values).  Unknown keys and wrong types
are a :class:`ConfigError` naming the key, never a silent default.
"""

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field

from homechannel.crypto import parse_server_id
from homechannel.protocol.ice import is_turn_url, parse_ice_servers
from homechannel.protocol.hostport import HostPortError, format_host_port, parse_host_port
from homechannel.errors import ConfigError, HomeChannelError


def default_state_dir() -> str:
    """systemd's ``$STATE_DIRECTORY`` for a service, else ``~/.config/homechannel``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return state.split(":")[0]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "homechannel")


# -- ICE servers -------------------------------------------------------------

class IceServers(tuple):
    """Type marker: a list of ICE servers (``webrtc.ice_servers``, ``web.ice_servers``).

    Each entry is a URL string (``"stun:host:port"``) or a table
    ``{ urls = "..." | ["...", ...], username = "...", credential = "..." }``;
    parsed into a tuple of dicts by :func:`homechannel.protocol.ice.parse_ice_servers`
    (its ConfigError names the key).  A setting of
    this type defaults to None, "not set", which is not the same as ``[]``
    (none at all): not set means "the coordinator's own STUN".
    """


class CoordinatorKeys(tuple):
    """Type marker: coordinator public keys, base64url as each coordinator logs it at
    start (``coordinator.allow_migrate``): a list, or ``false`` for none.  Each is
    checked when the file is loaded."""


def _coordinator_keys(value, key) -> CoordinatorKeys:
    if value is True:
        raise ConfigError(f"{key} = true is not a setting: list the public keys of the "
                          "coordinators a migration may move this server to (or false)")
    if value is False:
        return CoordinatorKeys()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be false or a list of coordinator public keys")
    for i, text in enumerate(value):
        try:
            parse_server_id(text)
        except HomeChannelError:
            raise ConfigError(f"{key}[{i}] is not a coordinator public key (base64url, as "
                              "the coordinator logs it at start: \"coordinator public key: "
                              "...\")") from None
    return CoordinatorKeys(value)


def stun_url(host: str, port: int) -> str:
    """``stun:host:port``, with brackets around an IPv6 address."""
    return f"stun:{format_host_port(host, port)}"


# -- coordinator -----------------------------------------------------------


def _require_positive(obj, section, names):
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be positive")


@dataclass(frozen=True)
class CoordinatorUDP:
    # "::" (the default): every address of both families, IPv6 and IPv4, on one
    # socket; "0.0.0.0" IPv4 only; or one address.
    interface: str = "::"
    port: int = 7777
    # How long a registered server may stay silent before it is forgotten.
    expiry: float = 90.0
    # How often the expiry sweep runs.
    sweep_interval: float = 5.0
    max_servers: int = 1_000_000
    # Registered servers per source network (IPv6 /64, IPv4 address).  Home
    # servers behind one carrier-grade NAT share an IPv4 address: generous.
    max_servers_per_source: int = 1024
    max_handshakes: int = 10_000
    max_handshakes_per_source: int = 100
    # Bytes held in incomplete ANSWER transfers, in all and per source network.
    reassembly_bytes: int = 32 * 1024 * 1024
    reassembly_bytes_per_source: int = 1024 * 1024
    # Replies to unauthenticated-but-well-formed datagrams ("unknown,
    # re-register"), at most this many per second in all (and 5 a second, in bursts
    # of 50, to one source network).
    unknown_replies_per_second: float = 1000.0
    # HELLOs and INITs (each) answered per second from one source network (an IPv4
    # address or an IPv6 /64; its /56 and /48 get 4 and 16 times as many), in bursts
    # of two seconds' worth.
    per_source_per_second: float = 20.0
    # The host name or address clients reach this UDP port at (for the default
    # STUN server and the join string).  Empty: the host of web.public_url.
    public_host: str = ""
    # The UDP port home servers are told in the join string; 0: udp.port (set it
    # when a NAT or load balancer in front changes the port).
    public_port: int = 0
    # Answer STUN Binding requests (RFC 8489) on this port, so that browsers
    # and home servers learn their public address with no STUN server set.
    stun: bool = True
    # Also answer STUN on this extra UDP port (same interface); 0: off.
    stun_port: int = 0
    # STUN answers per second to one source network (as per_source_per_second), and
    # in all.
    stun_per_source_per_second: float = 20.0
    stun_per_second: float = 20000.0

    def __post_init__(self):
        try:
            ipaddress.ip_address(self.interface)
        except ValueError:
            raise ConfigError(f"udp.interface: {self.interface!r} is not an IP address (\"::\" "
                              "for both IPv6 and IPv4, \"0.0.0.0\" for IPv4 only)") from None
        _require_positive(self, "udp", (
            "max_servers", "max_servers_per_source", "max_handshakes",
            "max_handshakes_per_source", "reassembly_bytes", "reassembly_bytes_per_source"))


@dataclass(frozen=True)
class CoordinatorWeb:
    # A Twisted server endpoint string, e.g. "ssl:8443:privateKey=key.pem:certKey=cert.pem".
    # Plain "tcp:" only on loopback or behind a TLS-terminating proxy.
    listen: str = "tcp:8080:interface=127.0.0.1"
    # Public URL of the coordinator, used in connect links.
    public_url: str = "http://127.0.0.1:8080"
    # Directory with the browser client (index.html, js/).  Empty: the bundled one.
    static_dir: str = ""
    # Origins allowed by CORS (exact match).  Empty: same-origin only.
    cors_origins: tuple = ()
    # Reverse proxies whose X-Forwarded-For is trusted: addresses or networks
    # (e.g. ["127.0.0.1", "::1"] or ["10.0.0.0/8"]).
    trusted_proxies: tuple = ()
    # ICE servers for browsers and native clients (STUN only: TURN comes from
    # [turn]).  Not set: the coordinator's own STUN; [] for none.
    ice_servers: IceServers | None = None
    # Log every HTTP request (combined log format, with client addresses).
    # Costs about a tenth of the coordinator's CPU per connect.
    access_log: bool = False
    long_poll_timeout: float = 25.0
    session_timeout: float = 60.0
    # Larger request bodies are refused (413) from their Content-Length, unread.
    max_body: int = 65536
    # Open connections in all and from one source network (IPv6 /64, IPv4
    # address; trusted proxies are exempt); more are closed at once.
    max_connections: int = 10_000
    max_connections_per_source: int = 64
    # Seconds for a request head (from its first byte, or from the connection's
    # start), for its body after the head, and a connection may idle between requests.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 30.0
    max_sessions: int = 10_000
    max_waiters: int = 10_000
    # Shares of those tables: sessions per source network (IPv6 /64, IPv4
    # address) and per target server, waiting long-polls per source network.
    max_sessions_per_source: int = 100
    max_sessions_per_server: int = 100
    max_waiters_per_source: int = 100
    # Connect attempts per source (IPv4 address or IPv6 /64) per minute.
    per_ip_per_minute: int = 30
    # Password attempts on one home server (with a valid challenge) per minute and per
    # day, from everyone without a device token together: the online-guessing ceiling.
    per_server_per_minute: int = 10
    per_server_per_day: int = 1000
    # Connect attempts per device token (a client that signed in before) per minute.
    per_device_per_minute: int = 10
    # Connect attempts on one home server's device path per minute and per day, from
    # all its devices together: the number of tokens cannot multiply the ceiling.
    per_server_device_per_minute: int = 20
    per_server_device_per_day: int = 2000
    # Failed answers from one source (IPv6 /56) or device before it is locked out;
    # the lockout doubles each time.
    failures_before_lockout: int = 5
    lockout_base: float = 60.0
    lockout_max: float = 3600.0

    def __post_init__(self):
        _require_positive(self, "web", (
            "max_body", "max_sessions", "max_waiters", "max_sessions_per_source",
            "max_sessions_per_server", "max_waiters_per_source", "max_connections",
            "max_connections_per_source", "header_timeout", "body_timeout", "idle_timeout",
            "per_server_device_per_minute", "per_server_device_per_day"))
        for entry in self.trusted_proxies:
            try:
                if not isinstance(entry, str):
                    raise TypeError(entry)
                ipaddress.ip_network(entry, strict=False)
            except (ValueError, TypeError):
                raise ConfigError(f"web.trusted_proxies: {entry!r} is not an IP address or "
                                  "network (e.g. \"127.0.0.1\", \"::1\" or \"10.0.0.0/8\")"
                                  ) from None


@dataclass(frozen=True)
class CoordinatorAdmin:
    # The operator endpoint (migrate, status): a UNIX socket with mode 0600
    # (a relative path is in state_dir), or a loopback tcp: endpoint, which then
    # requires the token in token_file.  Empty string disables it.
    listen: str = "unix:admin.sock:mode=600"
    # The admin token for a tcp: listen (created on first start, mode 0600).
    # Empty: state_dir/admin.token.
    token_file: str = ""


_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})"
                        r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


def _check_allowed_hosts(names, key):
    for name in names:
        if not isinstance(name, str) or not _HOST_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not a host name (e.g. "
                              "\"metrics.internal.example\"; IP addresses and localhost are "
                              "always answered)")


@dataclass(frozen=True)
class CoordinatorMetrics:
    # Prometheus metrics (text format, /metrics) for the operator: a Twisted
    # endpoint string, loopback by default, never the public port.  Empty
    # string disables it.
    listen: str = "tcp:9477:interface=127.0.0.1"
    # Host names (besides IP addresses and localhost) a request's Host header may
    # give, e.g. the name Prometheus scrapes this node by; any other is refused (421):
    # a page in a browser on this machine must not read metrics by DNS rebinding.
    allowed_hosts: tuple = ()

    def __post_init__(self):
        _check_allowed_hosts(self.allowed_hosts, "metrics.allowed_hosts")


MAX_TURN_LIFETIME = 3600.0


@dataclass(frozen=True)
class CoordinatorTurn:
    # coturn's URLs (turn:/turns:, e.g. "turn:turn.example.org:3478?transport=udp").
    # Empty: no TURN.
    urls: tuple = ()
    # A file holding coturn's static-auth-secret (coturn runs with use-auth-secret).
    secret_file: str = ""
    # Seconds a minted credential stays valid (at most an hour).  Peers refresh
    # their relay allocation with the same credential, which coturn checks each
    # time: a relayed session ends when it expires (connect again).
    lifetime: float = 3600.0
    # Credentials minted (only for clients that proved the password or a device key)
    # per home server per minute and per day, and in all per minute; beyond them a
    # connect goes on without a relay.
    per_server_per_minute: int = 10
    per_server_per_day: int = 1000
    per_minute: int = 600

    def __post_init__(self):
        _require_positive(self, "turn", ("lifetime", "per_server_per_minute",
                                         "per_server_per_day", "per_minute"))
        if self.lifetime > MAX_TURN_LIFETIME:
            raise ConfigError(f"turn.lifetime must be at most {MAX_TURN_LIFETIME:g} seconds "
                              "(an hour): a credential anyone took from a client stays good "
                              "for that long")
        for i, url in enumerate(self.urls):
            if not is_turn_url(url):
                raise ConfigError(f"turn.urls[{i}]: {url!r} is not a TURN URL "
                                  "(turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT])")
        if self.urls and not self.secret_file:
            raise ConfigError("turn.urls is set but turn.secret_file is not: point it at a "
                              "file with coturn's static-auth-secret")


_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class CoordinatorCluster:
    # Redis shared by the nodes of a cluster: rediss://HOST:PORT/DB (TLS),
    # redis://HOST:PORT/DB (plain: loopback only, unless insecure_plaintext_redis),
    # or unix:///PATH.  Empty (the default): one process, no Redis, all in memory.
    # Never with a user or password in it: they go below.
    redis_url: str = ""
    # The Redis user the nodes log in as (conf/redis/users.acl: "homechannel";
    # "default" for a Redis with only requirepass).
    redis_username: str = "homechannel"
    # A file (mode 0600) whose first line is that user's password.  Required.
    redis_password_file: str = ""
    # TLS (rediss://): the CA file that signed Redis's certificate (empty: the
    # system's CAs); the name in the URL must match the certificate.
    redis_tls_ca_file: str = ""
    # TLS client certificate and its key, for a Redis with tls-auth-clients yes.
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    # true: allow plaintext redis:// to a Redis that is not on this machine.  Anyone
    # on the network path then reads the Redis password and everything the cluster
    # stores, and can inject commands: only on a network nobody else can reach.
    insecure_plaintext_redis: bool = False
    # The cluster key (mode 0600; 'homechannel cluster-key' makes it): the same file
    # on every node, never in Redis.  Default: cluster.key in state_dir.
    key_file: str = ""
    # This node's name, unique in the cluster (letters, digits, ".", "_", "-").
    node_id: str = ""
    # Prefix of every Redis key and channel of this cluster (several can share a Redis).
    key_prefix: str = "hc:"
    # Seconds between the batched refreshes of this node's directory entries.
    directory_refresh: float = 30.0

    def __post_init__(self):
        if not self.redis_url:
            return
        parts = urllib.parse.urlsplit(self.redis_url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("cluster.redis_url must be a rediss://, redis:// or unix:// URL")
        if "@" in parts.netloc or parts.username or parts.password or "password=" in \
                parts.query or "username=" in parts.query:
            raise ConfigError("cluster.redis_url must not carry a user or password: set "
                              "cluster.redis_username, and put the password in the file "
                              "named by cluster.redis_password_file")
        if parts.scheme == "redis" and not self.insecure_plaintext_redis \
                and not _is_loopback(parts.hostname):
            raise ConfigError(
                f"cluster.redis_url: plaintext redis:// to {parts.hostname} would send the "
                "Redis password and every session over the network in clear: use rediss:// "
                "(TLS; cluster.redis_tls_ca_file), or set "
                "cluster.insecure_plaintext_redis = true if nobody else can reach that network")
        if parts.scheme != "rediss" and (self.redis_tls_ca_file or self.redis_tls_cert_file
                                         or self.redis_tls_key_file):
            raise ConfigError("cluster.redis_tls_* is set but cluster.redis_url is not "
                              "rediss://: use rediss:// for TLS")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ConfigError("cluster.redis_tls_cert_file and redis_tls_key_file go "
                              "together (the client certificate and its key)")
        if not self.redis_password_file:
            raise ConfigError(
                "cluster.redis_password_file is required: a Redis without a password gives "
                "whoever reaches it the cluster; set up the user of conf/redis/users.acl and "
                "put its password in a file (mode 0600)")
        if not self.redis_username:
            raise ConfigError("cluster.redis_username must not be empty (\"default\" for a "
                              "Redis with only requirepass)")
        if not _NODE_ID.match(self.node_id):
            raise ConfigError("cluster.node_id must name this node, unique in the cluster "
                              "(1-64 letters, digits, '.', '_' or '-'), e.g. \"node-1\"")
        if not self.key_prefix:
            raise ConfigError("cluster.key_prefix must not be empty")
        _require_positive(self, "cluster", ("directory_refresh",))


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class CoordinatorConfig:
    state_dir: str = ""
    identity_key: str = ""
    udp: CoordinatorUDP = field(default_factory=CoordinatorUDP)
    web: CoordinatorWeb = field(default_factory=CoordinatorWeb)
    admin: CoordinatorAdmin = field(default_factory=CoordinatorAdmin)
    turn: CoordinatorTurn = field(default_factory=CoordinatorTurn)
    metrics: CoordinatorMetrics = field(default_factory=CoordinatorMetrics)
    cluster: CoordinatorCluster = field(default_factory=CoordinatorCluster)


# -- home server -----------------------------------------------------------


@dataclass(frozen=True)
class ServerCoordinator:
    host: str = "127.0.0.1"
    port: int = 7777
    # The coordinator's public key (base64url raw P-256 point).  Required:
    # a missing pin is a configuration error.
    public_key: str = ""
    # Every node of a coordinator cluster ("HOST:PORT", all with public_key): the
    # first is registered with, the next ones when it stops answering.  Empty:
    # host:port only (a name with several addresses fails over between them).
    addresses: tuple = ()
    # The keys of the coordinators a MIGRATE from the coordinator may move this
    # server to (besides public_key itself); false (or empty) for none.
    allow_migrate: CoordinatorKeys = CoordinatorKeys()

    def __post_init__(self):
        for i, entry in enumerate(self.addresses):
            parse_address(entry, f"coordinator.addresses[{i}]")

    def candidates(self):
        """``[(host, port)]``: the addresses, or ``[(host, port)]``."""
        if self.addresses:
            return [parse_address(a, "coordinator.addresses") for a in self.addresses]
        return [(self.host, self.port)]


def parse_address(entry, key="address"):
    """``"host:port"`` or ``"[v6]:port"`` as ``(host, port)``; ConfigError otherwise."""
    if not isinstance(entry, str):
        raise ConfigError(f"{key} must be a \"HOST:PORT\" string")
    try:
        return parse_host_port(entry)
    except HostPortError as e:
        raise ConfigError(e.explain(
            f"{key}: {entry!r} is not HOST:PORT (e.g. \"node1.example.org:7777\")")) from None


@dataclass(frozen=True)
class ServerKeepalive:
    # Under home routers' UDP timeouts (30 s or less) with margin: at most 18 s
    # with the jitter.  It also bounds the outage after the router's public
    # address changes (the next ping meets an UNKNOWN reply and re-registers).
    interval: float = 15.0
    jitter: float = 0.2
    challenge_refresh: float = 600.0
    missed_pongs: int = 3
    backoff_min: float = 1.0
    backoff_max: float = 60.0


@dataclass(frozen=True)
class ServerWebRTC:
    # ICE servers (URL strings or RTCIceServer tables).  Not set: the
    # coordinator's STUN (coordinator.host:port); [] for none.
    ice_servers: IceServers | None = None
    # Host addresses to advertise as ICE candidates in addition to what aioice
    # finds (aioice never offers loopback).  E.g. ["127.0.0.1"].
    advertise_addresses: tuple = ()
    max_sessions: int = 4
    connect_timeout: float = 30.0
    # The hosts whose STUN/TURN servers a coordinator's offer may name (the TURN
    # credential it mints for this server's side of a connect): names, addresses or
    # networks.  Empty: the coordinator's host(s) and the hosts of ice_servers.  A
    # name must also resolve to public addresses only (or to ones listed here).
    offer_ice_hosts: tuple = ()


@dataclass(frozen=True)
class FilesApp:
    enabled: bool = True
    roots: tuple = ()
    read_only: bool = False
    max_upload: int = 10 * 1024 ** 3
    # Bytes an upload must leave free on the file system it writes to (counting what
    # the uploads in progress there still have to write); refused up front otherwise.
    min_free: int = 1024 ** 3
    # Uploads in progress at once on the whole home server.
    max_uploads: int = 8
    # Seconds an upload may go without data before it is abandoned (its partial
    # file deleted); partial files a crash left behind are deleted once this old.
    upload_idle_timeout: float = 300.0

    def __post_init__(self):
        if self.min_free < 0:
            raise ConfigError("apps.files.min_free must not be negative")
        _require_positive(self, "apps.files", ("max_upload", "max_uploads",
                                               "upload_idle_timeout"))


def parse_local_endpoint(text: str, key: str) -> tuple:
    """A local service's address: ``("unix", PATH)`` from ``"unix:/absolute/path"`` or
    ``("tcp", HOST, PORT)`` from ``"HOST:PORT"`` (``[v6]:PORT``); ConfigError otherwise."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{key} must name a service: \"unix:/path/to/socket\" or "
                          "\"HOST:PORT\"")
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not os.path.isabs(path) or "\0" in path:
            raise ConfigError(f"{key}: {text!r}: a UNIX socket's path must be absolute, "
                              "e.g. \"unix:/run/user/1000/homechannel-vnc.sock\"")
        return ("unix", path)
    return ("tcp", *parse_address(text, key))


def resolve_owners(owners: tuple, key: str) -> frozenset:
    """The user ids *owners* names (user names or uids), with root's and this process's
    own: who may own the socket of a local service the home server pipes to."""
    import pwd

    uids = {0, os.geteuid()}
    for entry in owners:
        if isinstance(entry, int) and not isinstance(entry, bool) and entry >= 0:
            uids.add(entry)
        elif isinstance(entry, str) and entry:
            try:
                uids.add(pwd.getpwnam(entry).pw_uid)
            except KeyError:
                raise ConfigError(f"{key}: there is no user {entry!r} on this machine") \
                    from None
        else:
            raise ConfigError(f"{key} lists user names or user ids, not {entry!r}")
    return frozenset(uids)


@dataclass(frozen=True)
class TerminalApp:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 22
    # Who may own the listening socket at host:port besides root and the home server's
    # own user (user names or uids): anyone else's is refused before a byte is sent.
    owners: tuple = ()

    def __post_init__(self):
        resolve_owners(self.owners, "apps.terminal.owners")
    # Where the local sshd host key is remembered on first use.  Empty: state_dir/known_hosts.
    known_hosts: str = ""
    # Opt-in: an SSH private key the home server offers to sshd before any password
    # (created on first use if missing; its public half is <identity_key>.pub).  Empty: off.
    identity_key: str = ""


@dataclass(frozen=True)
class DesktopApp:
    enabled: bool = True
    # The VNC server: "unix:/path/to/socket" or "HOST:PORT".  Empty: the desktop app is
    # off (nothing is sent to a port no one configured).
    endpoint: str = ""
    # As [apps.terminal] owners, for the VNC server's socket.
    owners: tuple = ()

    def __post_init__(self):
        if self.endpoint:
            parse_local_endpoint(self.endpoint, "apps.desktop.endpoint")
        resolve_owners(self.owners, "apps.desktop.owners")

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.endpoint)


@dataclass(frozen=True)
class ForwardApp:
    enabled: bool = False
    ports: tuple = ()
    # As [apps.terminal] owners, for every forwarded port's listening socket.
    owners: tuple = ()

    def __post_init__(self):
        resolve_owners(self.owners, "apps.forward.owners")


@dataclass(frozen=True)
class ServerApps:
    files: FilesApp = field(default_factory=FilesApp)
    terminal: TerminalApp = field(default_factory=TerminalApp)
    desktop: DesktopApp = field(default_factory=DesktopApp)
    forward: ForwardApp = field(default_factory=ForwardApp)


@dataclass(frozen=True)
class ServerMetrics:
    # As the coordinator's [metrics] listen: loopback by default; empty disables.
    listen: str = "tcp:9478:interface=127.0.0.1"
    # As the coordinator's: Host names besides IP addresses and localhost.
    allowed_hosts: tuple = ()

    def __post_init__(self):
        _check_allowed_hosts(self.allowed_hosts, "metrics.allowed_hosts")


@dataclass(frozen=True)
class ServerConfig:
    state_dir: str = ""
    identity_key: str = ""
    password_key: str = ""
    # Public URL of the coordinator's web client, for the printed connect link.
    coordinator_url: str = "http://127.0.0.1:8080"
    coordinator: ServerCoordinator = field(default_factory=ServerCoordinator)
    keepalive: ServerKeepalive = field(default_factory=ServerKeepalive)
    webrtc: ServerWebRTC = field(default_factory=ServerWebRTC)
    apps: ServerApps = field(default_factory=ServerApps)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    @property
    def failover_path(self):
        return os.path.join(self.state_dir, "failover-coordinator.json")

    @property
    def devices_path(self):
        """The devices enrolled with this home server (``homechannel devices``)."""
        return os.path.join(self.state_dir, "enrolled-devices.json")

    @property
    def status_path(self):
        """What ``homechannel status`` reads (written by the running daemon, mode 0600)."""
        return os.path.join(self.state_dir, "status.json")


# -- loading ---------------------------------------------------------------


def _coerce(value, typ, key):
    if isinstance(typ, types.UnionType):
        # "X | None": None is the default (nothing set); a value given is an X
        (typ,) = [t for t in typ.__args__ if t is not type(None)]
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table")
        return _build(typ, value, key)
    if typ is IceServers:
        return parse_ice_servers(value, key, allow_turn=not key.startswith("web."))
    if typ is CoordinatorKeys:
        return _coordinator_keys(value, key)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    raise ConfigError(f"{key} must be of type {typ.__name__}, not {type(value).__name__}")


# Keys of earlier releases, and what replaced them (said when one is found).
_REPLACED = {
    "apps.desktop.host": 'set apps.desktop.endpoint = "HOST:PORT" (or "unix:/path") instead',
    "apps.desktop.port": 'set apps.desktop.endpoint = "HOST:PORT" (or "unix:/path") instead',
}


def _build(cls, table, prefix):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            hint = f": {_REPLACED[key]}" if key in _REPLACED else ""
            raise ConfigError(f"unknown configuration key {key!r}{hint}")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _set_dotted(table, dotted, value):
    parts = dotted.split(".")
    for p in parts[:-1]:
        table = table.setdefault(p, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{dotted}: {p} is not a table")
    table[parts[-1]] = value


def load(cls, path=None, overrides=None):
    """Parse TOML at *path* (optional) into *cls*, then apply dotted overrides."""
    table = {}
    if path:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(table, dotted, value)
    cfg = _build(cls, table, "")
    state_dir = os.path.expanduser(cfg.state_dir or default_state_dir())
    changes = {"state_dir": state_dir}
    if not cfg.identity_key:
        name = "coordinator.key" if cls is CoordinatorConfig else "server.key"
        changes["identity_key"] = os.path.join(state_dir, name)
    if cls is ServerConfig and not cfg.password_key:
        changes["password_key"] = os.path.join(state_dir, "password.json")
    if cls is CoordinatorConfig and cfg.cluster.redis_url and not cfg.cluster.key_file:
        changes["cluster"] = dataclasses.replace(
            cfg.cluster, key_file=os.path.join(state_dir, "cluster.key"))
    return dataclasses.replace(cfg, **changes)


def coordinator_stun_host(cfg: CoordinatorConfig) -> str:
    return cfg.udp.public_host or urllib.parse.urlsplit(cfg.web.public_url).hostname or ""


def coordinator_ice_servers(cfg: CoordinatorConfig) -> tuple:
    """The ICE servers browsers and native clients get (before any TURN entry):
    ``web.ice_servers`` if set, else the coordinator's own STUN (on the
    registry port, or udp.stun_port), else none."""
    if cfg.web.ice_servers is not None:
        return cfg.web.ice_servers
    port = cfg.udp.port if cfg.udp.stun else cfg.udp.stun_port
    host = coordinator_stun_host(cfg)
    if not port or not host:
        return ()
    return ({"urls": stun_url(host, port)},)


def server_ice_servers(cfg: "ServerConfig", host: str, port: int) -> tuple:
    """The home server's ICE servers: ``webrtc.ice_servers`` if set, else STUN on
    the coordinator it registers with (*host*, *port*)."""
    if cfg.webrtc.ice_servers is not None:
        return cfg.webrtc.ice_servers
    return ({"urls": stun_url(host, port)},)


def offer_ice_hosts(cfg: "ServerConfig", host: str) -> tuple:
    """The hosts a coordinator's offer may point the home server's STUN/TURN client at:
    ``webrtc.offer_ice_hosts`` if set, else the coordinator it registers with (*host*),
    the configured coordinator(s) and the hosts of ``webrtc.ice_servers``."""
    from homechannel.protocol.ice import url_host

    if cfg.webrtc.offer_ice_hosts:
        return tuple(cfg.webrtc.offer_ice_hosts)
    hosts = [host] + [h for h, _ in cfg.coordinator.candidates()]
    for entry in cfg.webrtc.ice_servers or ():
        urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
        hosts += [url_host(u) for u in urls]
    return tuple(dict.fromkeys(hosts))


def load_coordinator(path=None, overrides=None) -> CoordinatorConfig:
    return load(CoordinatorConfig, path, overrides)


def load_server(path=None, overrides=None) -> ServerConfig:
    return load(ServerConfig, path, overrides)
