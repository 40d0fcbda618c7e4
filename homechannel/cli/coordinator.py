"""The coordinator's operator commands: ``join-string`` (what home servers join
with) and ``migrate`` (through the coordinator's admin API: its UNIX socket, or a
loopback tcp endpoint with a token)."""

import http.client
import json
import socket
import urllib.parse

from homechannel import config, crypto, keyfiles
from homechannel.cli.keys import check_key_path
from homechannel.errors import ConfigError, HomeChannelError
from homechannel.protocol import connect, hostport


def cmd_join_string(args):
    from homechannel.protocol import join
    cfg = config.load_coordinator(args.config, {"state_dir": args.state_dir})
    key = keyfiles.load_identity_key(check_key_path(cfg.identity_key))
    print(join.from_coordinator_config(cfg, key.text))


def cmd_cluster_key(args):
    """Make the cluster key file if it is missing (never replace one); print its
    fingerprint, the one every node's start line must show."""
    import os
    import sys

    from homechannel.coordinator.cluster.clusterkey import ClusterKey

    path = args.key_file
    if not path:
        cfg = config.load_coordinator(args.config, {"state_dir": args.state_dir})
        path = cfg.cluster.key_file or os.path.join(cfg.state_dir, "cluster.key")
    check_key_path(path)
    if os.path.lexists(path):
        key, what = keyfiles.load_cluster_key(path), "exists: "
    else:
        key, what = keyfiles.create_cluster_key(path), "created "
    print(f"{what}{path}: copy this file to every node of the cluster (mode 0600, the "
          "nodes' user); never into Redis", file=sys.stderr)
    print(f"fingerprint {ClusterKey(key).fingerprint}")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _admin_target(args):
    """``(connection factory, what, headers)`` for the admin API."""
    from homechannel.coordinator import admin
    headers = {}
    if args.admin:
        where = args.admin
        token_file = args.token_file
    else:
        cfg = config.load_coordinator(args.config, {"state_dir": args.state_dir})
        if not cfg.admin.listen:
            raise ConfigError("the admin API is disabled (admin.listen is empty) in "
                              f"{args.config or 'the default configuration'}")
        path = admin.socket_path(cfg)
        if path:
            where, token_file = path, None
        else:
            from homechannel.ops import endpoints
            _, pos, kw = endpoints.split(cfg.admin.listen)
            host = kw.get("interface", "127.0.0.1")
            where = f"http://{hostport.format_host_port(host, pos[0])}"
            token_file = args.token_file or admin.token_path(cfg)
    if "://" in where:
        parts = urllib.parse.urlsplit(where)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"--admin {where!r}: expected http://127.0.0.1:PORT or the "
                              "path of the admin socket")
        try:
            port = parts.port or 80
        except ValueError:
            raise ConfigError(f"--admin {where!r}: bad port") from None
        host = parts.hostname

        def factory():
            return http.client.HTTPConnection(host, port, timeout=10)
        if token_file:
            headers["Authorization"] = "Bearer " + admin.read_token(token_file)
        return factory, where, headers
    return (lambda: _UnixHTTPConnection(where, 10)), where, headers


def admin_call(args, method, path, doc=None):
    factory, where, headers = _admin_target(args)
    headers = dict(headers, Host="localhost")
    body = None
    if doc is not None:
        body = json.dumps(doc).encode()
        headers["Content-Type"] = "application/json"
    conn = factory()
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(65536)
    except PermissionError:
        raise HomeChannelError(f"permission denied on the admin socket {where}: run this as "
                               "the coordinator's user (or root)") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise HomeChannelError(f"nothing answers at {where}: is the coordinator running, "
                               "with this configuration?") from None
    except (OSError, http.client.HTTPException) as e:
        raise HomeChannelError(f"cannot reach the coordinator's admin API at {where}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
    finally:
        conn.close()
    try:
        result = json.loads(raw)
    except ValueError:
        result = {"error": raw.decode("utf-8", "replace")[:200]}
    if resp.status != 200:
        raise HomeChannelError(f"the coordinator refused: {result.get('error', resp.status)}")
    return result


def cmd_migrate(args):
    try:
        host, port = hostport.parse_host_port(args.to)
    except hostport.HostPortError as e:
        raise ConfigError(e.explain(f"--to {args.to!r}: expected HOST:PORT of the new "
                                    "coordinator's UDP port, e.g. "
                                    "coordinator2.example.org:7777")) from None
    try:
        crypto.parse_server_id(args.key)
    except HomeChannelError:
        raise ConfigError(f"--key {args.key!r} is not a coordinator public key (base64url "
                          "P-256; the new coordinator logs it at start)") from None
    if args.server != "*":
        server = connect.split_link(args.server)[1]
        try:
            crypto.parse_server_id(server)
        except HomeChannelError:
            raise ConfigError(f"--server {args.server!r} is not a server id or connect link") \
                from None
        args.server = server
    result = admin_call(args, "POST", "/migrate", {"server": args.server, "host": host,
                                                   "port": port, "public_key": args.key})
    print(result.get("sent", 0), "server(s) asked to move")
