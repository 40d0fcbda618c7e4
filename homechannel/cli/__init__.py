"""homechannel: set up a home server in one line, its keys, password and connect
link; operator tasks on a coordinator; and the native client (connect, forward).

Every failure is one line on stderr and exit status 1, never a traceback."""

import argparse
import getpass
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse

from homechannel import config, crypto, keyfiles

from homechannel.protocol import connect, hostport
from homechannel.errors import ConfigError, HomeChannelError


def version():
    try:
        from importlib.metadata import version as _version
        return _version("homechannel")
    except Exception:
        return "unknown"


def _check_key_path(path):
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a key file: give the path of the key "
                          f"file itself, e.g. {os.path.join(path, 'server.key')}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise ConfigError(f"cannot create the key file {path}: {parent} is not a directory")
    return path


def _key_path(args, role):
    if args.key:
        return _check_key_path(args.key)
    loader = config.load_server if role == "server" else config.load_coordinator
    return _check_key_path(loader(args.config, {"state_dir": args.state_dir}).identity_key)


def cmd_keygen(args):
    path = _key_path(args, args.role)
    key, created = keyfiles.load_or_create_identity_key(path)
    print(("created " if created else "exists: ") + path, file=sys.stderr)
    print(key.text)


def cmd_pubkey(args):
    print(keyfiles.load_identity_key(_key_path(args, args.role)).text)


def cmd_link(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    key = keyfiles.load_identity_key(_check_key_path(cfg.identity_key))
    print(connect.connect_link(cfg.coordinator_url, key.text))


def _read_password(args):
    if args.password_file:
        return keyfiles.read_secret_line(args.password_file)
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat: ") != first:
        raise HomeChannelError("passwords do not match")
    return first


def _read_new_password(args):
    """The new password, checked before anything is created."""
    password = _read_password(args)
    if len(password) < 8:
        raise HomeChannelError("use a password of at least 8 characters")
    return password


def _store_password(cfg, key, password):
    derived = crypto.derive_password_key(password, key.public_raw)
    keyfiles.save_password_key(cfg.password_key, key.public_raw, derived)


def cmd_passwd(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    path = _check_key_path(cfg.identity_key)
    password = _read_new_password(args)
    key, created = keyfiles.load_or_create_identity_key(path)
    if created:
        print(f"created identity key {cfg.identity_key}", file=sys.stderr)
    _store_password(cfg, key, password)
    print(f"password key stored in {cfg.password_key} (the password itself is not stored); "
          "restart the home server to use it", file=sys.stderr)


# -- join: a home server from one line -------------------------------------------


def cmd_join_string(args):
    from homechannel.protocol import join
    cfg = config.load_coordinator(args.config, {"state_dir": args.state_dir})
    key = keyfiles.load_identity_key(_check_key_path(cfg.identity_key))
    print(join.from_coordinator_config(cfg, key.text))


def default_server_config():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "homechannel", "server.toml")


def cmd_join(args):
    import tomli_w

    from homechannel.protocol import join
    target = join.decode(args.join_string)
    path = os.path.abspath(args.config or default_server_config())
    if os.path.exists(path) and not args.force:
        raise ConfigError(f"{path} exists already; it was not changed (pass --force to "
                          "replace it, or --config to write another file)")
    state_dir = os.path.abspath(os.path.expanduser(args.state_dir or config.default_state_dir()))
    doc = {
        "state_dir": state_dir,
        "coordinator_url": target["url"],
        "coordinator": {"host": target["host"], "port": target["port"],
                        "public_key": target["key"]},
        "apps": {"files": {"roots": [os.path.abspath(r) for r in args.files_root]}},
    }
    config._build(config.ServerConfig, doc, "")   # what we write must load
    cfg = config.load_server(None, {"state_dir": state_dir})
    key_path = _check_key_path(cfg.identity_key)
    password = _read_new_password(args)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    key, created = keyfiles.load_or_create_identity_key(key_path)
    print(("created identity key " if created else "using identity key ") + cfg.identity_key,
          file=sys.stderr)
    _store_password(cfg, key, password)
    header = ("# HomeChannel home server, written by 'homechannel join'.\n"
              "# Every key is documented in conf/server.example.toml.\n"
              "# Run: twistd -n --pidfile= --reactor=asyncio homechannel-server --config "
              + path + "\n")
    keyfiles.replace_secret_file(path, (header + tomli_w.dumps(doc)).encode("utf-8"))
    os.chmod(path, 0o644)
    link = connect.connect_link(target["url"], key.text)
    print(f"wrote {path}; the password is stored only as a derived key in "
          f"{cfg.password_key}", file=sys.stderr)
    if not args.files_root:
        print("the files app shows no folders until you list some in [apps.files] roots",
              file=sys.stderr)
    print(f"start the home server: twistd -n --pidfile= --reactor=asyncio homechannel-server "
          f"--config {path}", file=sys.stderr)
    print(f"\nConnect link (open it in a browser, or scan the code):\n{link}\n")
    if not args.no_qr:
        print(qr_text(link))


def qr_text(text):
    """A QR code of *text* for a terminal (two rows per character line)."""
    import io

    import segno
    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


# -- status ------------------------------------------------------------------------


def cmd_status(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    from homechannel.server.status import read_status
    doc = read_status(cfg.status_path)
    running = doc.get("pid") and _alive(doc["pid"])
    now = time.time()
    if args.json:
        print(json.dumps(dict(doc, running=bool(running)), indent=2, sort_keys=True))
        return 0 if running else 3
    if not running:
        print(f"home server: not running (last status from {_ago(now, doc.get('updated'))})")
    else:
        print(f"home server: running (pid {doc['pid']})")
    state = doc.get("state", "?")
    label = {"up": "registered", "leaving": "leaving", "stopped": "stopped"}.get(
        state, f"not registered ({state})")
    print(f"coordinator: {doc.get('coordinator', '?')}, {label}")
    print(f"last registered: {_ago(now, doc.get('last_registered'))}")
    if doc.get("last_failure") and state != "up":
        print(f"last failure: {doc['last_failure']}")
    if doc.get("moving_to"):
        print(f"moving to: {doc['moving_to']}")
    print(f"live sessions: {doc.get('live_sessions', 0)}")
    return 0 if running and state == "up" else 3


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError):
        return False
    return True


def _ago(now, when):
    if not isinstance(when, (int, float)):
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} ({max(0, int(now - when))} s ago)"


# -- migrate: the coordinator's admin API ----------------------------------------------


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


# -- the parser ------------------------------------------------------------------------


def _sub(sub, name, help, description, example):
    import textwrap
    return sub.add_parser(name, help=help, description=textwrap.fill(description, 78),
                          epilog="example:\n  " + example,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser():
    p = argparse.ArgumentParser(
        prog="homechannel", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  homechannel join 'hcjoin:...'      # on the home machine\n"
               "  homechannel join-string --config /etc/homechannel/coordinator.toml\n"
               "  homechannel COMMAND --help")
    p.add_argument("--version", action="version", version=f"homechannel {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, role=True):
        sp.add_argument("--config", help="TOML configuration file")
        sp.add_argument("--state-dir", help="state directory (default ~/.config/homechannel, "
                                            "or $STATE_DIRECTORY under systemd)")
        if role:
            sp.add_argument("--key", help="identity key file (overrides --config)")
            sp.add_argument("--role", choices=["server", "coordinator"], default="server",
                            help="whose key, when taken from --config (default: server)")

    sp = _sub(sub, "join", "set up this machine as a home server from a join string",
              "Set up a home server from the coordinator's join string: create the "
              "identity key, ask for the password (twice, never echoed, never stored: only "
              "a derived key is), write server.toml, and print the connect link with a QR "
              "code.",
              "homechannel join 'hcjoin:eyJ2IjoxLC...' --files-root ~/Documents")
    sp.add_argument("join_string", metavar="STRING",
                    help="the line the coordinator prints ('homechannel join-string' there)")
    sp.add_argument("--config", help=f"where to write server.toml "
                                     f"(default {default_server_config()})")
    sp.add_argument("--state-dir", help="where the keys go (default ~/.config/homechannel)")
    sp.add_argument("--files-root", action="append", default=[], metavar="DIR",
                    help="a folder the files app serves (repeatable; default: none)")
    sp.add_argument("--password-file", help="read the password from the first line of this "
                                            "file (default: prompt twice)")
    sp.add_argument("--force", action="store_true", help="replace an existing server.toml")
    sp.add_argument("--no-qr", action="store_true", help="print the link without a QR code")
    sp.set_defaults(func=cmd_join)

    sp = _sub(sub, "join-string", "print the join string home servers use (coordinator)",
              "Print this coordinator's join string: its public URL, UDP host and port "
              "and public key in one line, for 'homechannel join' on a home machine.",
              "homechannel join-string --config /etc/homechannel/coordinator.toml")
    common(sp, role=False)
    sp.set_defaults(func=cmd_join_string)

    sp = _sub(sub, "status", "show whether the home server is registered, and its sessions",
              "Show the running home server's coordinator link (registered or not, and "
              "why), when it last registered, and its live sessions, from the status file "
              "it keeps in its state directory. Exit status 0 when running and registered, "
              "3 otherwise.",
              "homechannel status --config /etc/homechannel/server.toml")
    common(sp, role=False)
    sp.add_argument("--json", action="store_true", help="print the status as JSON")
    sp.set_defaults(func=cmd_status)

    sp = _sub(sub, "keygen", "create the identity key if missing; print its public key",
              "Create a P-256 identity key (mode 0600) if the file does not exist; never "
              "replace one. Prints the public key.",
              "homechannel keygen --key /var/lib/homechannel/server/server.key")
    common(sp)
    sp.set_defaults(func=cmd_keygen)
    sp = _sub(sub, "pubkey", "print the public key (a home server's id)",
              "Print the public key of an identity key: a home server's id, or the key "
              "home servers pin for a coordinator (--role coordinator).",
              "homechannel pubkey --config /etc/homechannel/coordinator.toml --role coordinator")
    common(sp)
    sp.set_defaults(func=cmd_pubkey)
    sp = _sub(sub, "link", "print the home server's connect link",
              "Print the link to open in a browser to reach this home server.",
              "homechannel link --config /etc/homechannel/server.toml")
    common(sp, role=False)
    sp.set_defaults(func=cmd_link)
    sp = _sub(sub, "passwd", "set the home server's password (stores a derived key)",
              "Set the home server's password. Only a derived key (PBKDF2) is stored; "
              "restart the home server to use it.",
              "homechannel passwd --config /etc/homechannel/server.toml")
    common(sp, role=False)
    sp.add_argument("--password-file", help="read the password from the first line of this "
                                            "file (default: prompt, or one line of stdin)")
    sp.set_defaults(func=cmd_passwd)

    sp = _sub(sub, "migrate", "ask home servers to move to another coordinator",
              "Ask home servers registered with this coordinator to move to another one. "
              "Talks to the coordinator's admin API: its UNIX socket (from --config, "
              "mode 0600: run as the coordinator's user or root), or --admin.",
              "homechannel migrate --config /etc/homechannel/coordinator.toml "
              "--to hc2.example.org:7777 --key BASE64URL_KEY")
    common(sp, role=False)
    sp.add_argument("--admin", help="the admin socket path, or http://127.0.0.1:PORT for a "
                                    "tcp admin endpoint (default: from --config)")
    sp.add_argument("--token-file", help="the admin token, for a tcp admin endpoint "
                                         "(default: admin.token_file from --config)")
    sp.add_argument("--server", default="*", help="server id or link, or * for all (default)")
    sp.add_argument("--to", required=True, help="HOST:PORT of the new coordinator's UDP")
    sp.add_argument("--key", required=True, help="the new coordinator's public key")
    sp.set_defaults(func=cmd_migrate)

    for name, text in (("connect", "native client: connect to a home server and ping it"),
                       ("forward", "native client: forward a local port or stdio to a port "
                                   "at home")):
        sp = sub.add_parser(name, add_help=False, help=f"{text} (see 'homechannel {name} "
                                                       "--help')")
        sp.set_defaults(func=None)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in ("connect", "forward"):
            from homechannel import client
            return (client.main_connect if argv[0] == "connect" else client.main_forward)(
                argv[1:])
        args = _parser().parse_args(argv)
        result = args.func(args)
    except HomeChannelError as e:
        print(f"homechannel: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"homechannel: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("homechannel: interrupted", file=sys.stderr)
        return 130
    except Exception as e:   # a bug: still one line, with what to report
        print(f"homechannel: unexpected error ({type(e).__name__}: {e}); please report it",
              file=sys.stderr)
        return 1
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
