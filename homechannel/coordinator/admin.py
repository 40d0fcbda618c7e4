"""The coordinator's operator endpoint: loopback only, no authentication
beyond that (whoever can reach loopback on the coordinator host is the
operator).  ``homechannel migrate`` talks to it.

* ``GET /status`` -> ``{"servers": n, "stats": {...}}``
* ``POST /migrate`` with ``{"server": <id> | "*", "host": h, "port": p,
  "public_key": <b64u>}`` -> ``{"sent": n}``
"""

import ipaddress
import json
import re

from klein import Klein
from twisted.logger import Logger

from homechannel import crypto
from homechannel.errors import ConfigError, HomeChannelError, ProtocolError

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


class Admin:
    app = Klein()

    def __init__(self, udp):
        self.udp = udp

    def resource(self):
        return self.app.resource()

    @app.handle_errors(HomeChannelError)
    def _error(self, request, failure):
        request.setResponseCode(failure.value.status)
        request.setHeader("Content-Type", "application/json")
        return json.dumps({"error": str(failure.value)})

    @app.route("/status", methods=["GET"])
    def status(self, request):
        request.setHeader("Content-Type", "application/json")
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
        try:
            doc = json.loads(request.content.read(65536))
            host, port = str(doc["host"]), int(doc["port"])
            host.encode("ascii")
            target = crypto.parse_server_id(doc["public_key"])
            server = doc["server"]
            if not (0 < port < 65536 and 0 < len(host) < 256):
                raise ValueError("port or host out of range")
        except (ValueError, KeyError, TypeError, ProtocolError, UnicodeError):
            request.setResponseCode(400)
            return json.dumps({"error": "expected JSON {server, host (ASCII), "
                                        "port (1-65535), public_key}"})
        if server == "*":
            n = self.udp.migrate_all(host, port, target)
        else:
            self.udp.migrate(crypto.parse_server_id(server), host, port, target)
            n = 1
        log.info("operator asked {n} server(s) to move to {host}:{port}", n=n, host=host, port=port)
        return json.dumps({"sent": n})
