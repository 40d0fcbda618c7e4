"""homechannel: identity keys, the home server's password and connect link,
operator tasks, and the native client (connect, forward)."""

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.request

from homechannel import config, crypto
from homechannel.errors import HomeChannelError


def _key_path(args, role):
    if args.key:
        return args.key
    loader = config.load_server if role == "server" else config.load_coordinator
    return loader(args.config, {"state_dir": args.state_dir}).identity_key


def cmd_keygen(args):
    path = _key_path(args, args.role)
    key, created = crypto.IdentityKey.load_or_create(path)
    print(("created " if created else "exists: ") + path, file=sys.stderr)
    print(key.text)


def cmd_pubkey(args):
    print(crypto.IdentityKey.load(_key_path(args, args.role)).text)


def cmd_link(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    key = crypto.IdentityKey.load(cfg.identity_key)
    print(f"{cfg.coordinator_url.rstrip('/')}/#server={key.text}")


def _read_password(args):
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat: ") != first:
        raise HomeChannelError("passwords do not match")
    return first


def cmd_passwd(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    key, created = crypto.IdentityKey.load_or_create(cfg.identity_key)
    if created:
        print(f"created identity key {cfg.identity_key}", file=sys.stderr)
    password = _read_password(args)
    if len(password) < 8:
        raise HomeChannelError("use a password of at least 8 characters")
    derived = crypto.derive_password_key(password, key.public_raw)
    crypto.save_password_key(cfg.password_key, key.public_raw, derived)
    print(f"password key stored in {cfg.password_key} (the password itself is not stored); "
          "restart the home server to use it", file=sys.stderr)


def cmd_migrate(args):
    host, _, port = args.to.rpartition(":")
    body = json.dumps({"server": args.server, "host": host, "port": int(port),
                       "public_key": args.key}).encode()
    req = urllib.request.Request(args.admin.rstrip("/") + "/migrate", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(json.loads(resp.read())["sent"], "server(s) asked to move")
    except urllib.error.HTTPError as e:
        raise HomeChannelError(f"coordinator refused: {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        raise HomeChannelError(f"cannot reach the admin endpoint {args.admin}: {e.reason}")


def _parser():
    p = argparse.ArgumentParser(prog="homechannel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, role=True):
        sp.add_argument("--config", help="TOML configuration file")
        sp.add_argument("--state-dir", help="state directory (default ~/.config/homechannel)")
        if role:
            sp.add_argument("--key", help="identity key file (overrides --config)")
            sp.add_argument("--role", choices=["server", "coordinator"], default="server",
                            help="whose key, when taken from --config (default: server)")

    sp = sub.add_parser("keygen", help="create the identity key if missing; print its public key")
    common(sp)
    sp.set_defaults(func=cmd_keygen)
    sp = sub.add_parser("pubkey", help="print the public key (a home server's id)")
    common(sp)
    sp.set_defaults(func=cmd_pubkey)
    sp = sub.add_parser("link", help="print the home server's connect link")
    common(sp, role=False)
    sp.set_defaults(func=cmd_link)
    sp = sub.add_parser("passwd", help="set the home server's password (stores a derived key)")
    common(sp, role=False)
    sp.add_argument("--password-file", help="read the password from this file "
                                            "(default: prompt, or one line of stdin)")
    sp.set_defaults(func=cmd_passwd)
    sp = sub.add_parser("migrate", help="ask home servers to move to another coordinator")
    sp.add_argument("--admin", default="http://127.0.0.1:7780",
                    help="the coordinator's admin URL (loopback)")
    sp.add_argument("--server", default="*", help="server id, or * for all (default)")
    sp.add_argument("--to", required=True, help="HOST:PORT of the new coordinator's UDP")
    sp.add_argument("--key", required=True, help="the new coordinator's public key")
    sp.set_defaults(func=cmd_migrate)
    for name in ("connect", "forward"):
        sp = sub.add_parser(name, add_help=False,
                            help=f"native client: {name} (see 'homechannel {name} --help')")
        sp.set_defaults(func=None)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("connect", "forward"):
        from homechannel import client
        return (client.main_connect if argv[0] == "connect" else client.main_forward)(argv[1:])
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except HomeChannelError as e:
        print(f"homechannel: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"homechannel: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
