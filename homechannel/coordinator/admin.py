"""The coordinator's operator endpoint.  ``homechannel migrate`` talks to it.

By default a UNIX socket with mode 0600 in the state directory
(``admin.listen = "unix:admin.sock:mode=600"``): only the coordinator's own
user (and root) can connect, so other local users cannot move servers.  A
loopback ``tcp:`` endpoint is allowed too, and then every request must carry
``Authorization: Bearer <token>`` with the token from ``admin.token_file``
(mode 0600, created on first start).

* ``GET /status`` -> ``{"servers": n, "stats": {...}}``
* ``POST /migrate`` with ``{"server": <id> | "*", "host": h, "port": p,
  "public_key": <b64u>}`` -> ``{"sent": n}``
"""

import ipaddress
import json
import os
import re
import secrets

from klein import Klein

from homechannel import crypto, keyfiles

from homechannel.ops import endpoints
from homechannel.protocol import udp
from homechannel.errors import ConfigError, HomeChannelError, ProtocolError
from homechannel.ops.logsafe import Logger

log = Logger()

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\.|[^:])+)")


def check_loopback(endpoint: str) -> None:
    if endpoint.startswith("unix:"):
        return
    m = _INTERFACE.search(endpoint)
    iface = m.group(1).replace("\\:", ":") if m else ""
    try:
        ok = iface == "localhost" or ipaddress.ip_address(iface).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"admin.listen {endpoint!r} must be bound to loopback "
                          "(add :interface=127.0.0.1) or be a unix: socket")


def socket_path(cfg):
    """The admin socket's absolute path, or None when admin.listen is not unix:."""
    kind, args, _ = endpoints.split(cfg.admin.listen)
    if kind != "unix" or not args:
        return None
    return os.path.join(cfg.state_dir, os.path.expanduser(args[0]))


def token_path(cfg):
    return cfg.admin.token_file or os.path.join(cfg.state_dir, "admin.token")


def listen_endpoint(cfg):
    """``(endpoint string, token or None)`` for admin.listen, checked.

    A unix: socket gets an absolute path (relative ones are in state_dir) and
    must not be accessible to group or others; a tcp: one must be on loopback
    and gets a token (created in admin.token_file if missing)."""
    listen = cfg.admin.listen
    kind, args, kwargs = endpoints.split(listen)
    if kind == "unix":
        if not args:
            raise ConfigError(f"admin.listen {listen!r}: a unix: endpoint needs a path")
        try:
            mode = int(kwargs.get("mode", "666"), 8)
        except ValueError:
            raise ConfigError(f"admin.listen {listen!r}: mode must be octal, e.g. 600") from None
        if mode & 0o077:
            raise ConfigError(f"admin.listen {listen!r}: the socket would be open to other "
                              f"users (mode {mode:o}): use mode=600")
        path = socket_path(cfg)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return endpoints.join("unix", [path], dict(kwargs, mode=f"{mode:o}")), None
    check_loopback(listen)
    return listen, load_or_create_token(token_path(cfg))


def load_or_create_token(path):
    """The admin token in *path* (mode 0600), created if missing."""
    if not os.path.lexists(path):
        keyfiles.write_secret_file(path, (secrets.token_urlsafe(32) + "\n").encode())
    return read_token(path)


def read_token(path):
    try:
        token = keyfiles.read_private_file(path, "admin token").decode("ascii").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read the admin token {path}: {e}") from None
    if len(token) < 16:
        raise ConfigError(f"the admin token in {path} is too short: remove the file "
                          "and restart the coordinator to make a new one")
    return token


class Admin:
    app = Klein()

    def __init__(self, udp, token=None):
        self.udp = udp
        self.token = token

    def resource(self):
        return self.app.resource()

    @app.handle_errors(HomeChannelError)
    def _error(self, request, failure):
        request.setResponseCode(failure.value.status)
        request.setHeader("Content-Type", "application/json")
        return json.dumps({"error": str(failure.value)})

    def _authorized(self, request):
        if self.token is None:
            return True
        given = (request.getHeader("authorization") or "").encode("utf-8", "replace")
        return crypto.constant_time_equal(given, b"Bearer " + self.token.encode("ascii"))

    @app.route("/status", methods=["GET"])
    def status(self, request):
        request.setHeader("Content-Type", "application/json")
        if not self._authorized(request):
            request.setResponseCode(401)
            return json.dumps({"error": "the admin token is missing or wrong"})
        rv = self.udp.rv
        return json.dumps({"servers": rv.registry.count, "stats": dict(rv.stats)})

    @app.route("/migrate", methods=["POST"])
    def migrate(self, request):
        request.setHeader("Content-Type", "application/json")
        # A web page on the coordinator host must not be able to drive this:
        # a JSON content type needs a CORS preflight (never granted), and a
        # loopback Host header defeats DNS rebinding.
        host_header = (request.getHeader("host") or "").rsplit(":", 1)[0].strip("[]")
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip()
        if host_header not in _LOOPBACK_HOSTS or ctype != "application/json":
            request.setResponseCode(403)
            return json.dumps({"error": "the admin API takes JSON from loopback only"})
        if not self._authorized(request):
            request.setResponseCode(401)
            return json.dumps({"error": "the admin token is missing or wrong"})
        try:
            doc = json.loads(request.content.read(65536))
            host, port = str(doc["host"]), int(doc["port"])
            host.encode("ascii")
            target = crypto.parse_server_id(doc["public_key"])
            server = doc["server"]
            if not (0 < port < 65536 and 0 < len(host) < 256 and udp.host_ok(host)):
                raise ValueError("port or host out of range")
        except (ValueError, KeyError, TypeError, ProtocolError, UnicodeError):
            request.setResponseCode(400)
            return json.dumps({"error": "expected JSON {server, host (a name or an IP "
                                        "address), port (1-65535), public_key}"})
        if server == "*":
            n = self.udp.migrate_all(host, port, target)
        else:
            self.udp.migrate(crypto.parse_server_id(server), host, port, target)
            n = 1
        log.info("operator asked {n} server(s) to move to {host}:{port}", n=n, host=host, port=port)
        return json.dumps({"sent": n})
