"""The coordinator's operator endpoint: loopback only, no authentication
beyond that (whoever can reach loopback on the coordinator host is the
operator).  ``homechannel migrate`` talks to it.

* ``GET /status`` -> ``{"servers": n, "stats": {...}}``
* ``POST /migrate`` with ``{"server": <id> | "*", "host": h, "port": p,
  "public_key": <b64u>}`` -> ``{"sent": n}``
"""

import json

from klein import Klein
from twisted.logger import Logger

from homechannel import crypto
from homechannel.errors import ConfigError, HomeChannelError, ProtocolError

log = Logger()

_LOOPBACK = ("interface=127.", "interface=localhost", "interface=\\:\\:1", "interface=::1")


def check_loopback(endpoint: str) -> None:
    if endpoint.startswith("unix:"):
        return
    if not any(part in endpoint for part in _LOOPBACK):
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
        try:
            doc = json.loads(request.content.read(65536))
            host, port = str(doc["host"]), int(doc["port"])
            target = crypto.parse_server_id(doc["public_key"])
            server = doc["server"]
        except (ValueError, KeyError, TypeError, ProtocolError):
            request.setResponseCode(400)
            return json.dumps({"error": "expected JSON {server, host, port, public_key}"})
        if server == "*":
            n = self.udp.migrate_all(host, port, target)
        else:
            self.udp.migrate(crypto.parse_server_id(server), host, port, target)
            n = 1
        log.info("operator asked {n} server(s) to move to {host}:{port}", n=n, host=host, port=port)
        return json.dumps({"sent": n})
