"""The ``homechannel`` command: one module per command group, the parser here.

- :mod:`~homechannel.cli.keys` -- ``keygen``, ``pubkey`` (and the key-path checks).
- :mod:`~homechannel.cli.server` -- the home server's ``join``, ``passwd``, ``link``,
  ``status``.
- :mod:`~homechannel.cli.coordinator` -- the coordinator's ``join-string``,
  ``cluster-key`` and ``migrate`` (through its admin API).
- :mod:`~homechannel.cli.client` -- ``connect`` and ``forward``: the native client's
  options, run with :mod:`homechannel.client` (which never imports this package).

:func:`main` is the console script (``homechannel.cli:main``; ``python -m
homechannel.cli`` too): every failure is one line on stderr and exit status 1,
never a traceback.
"""

import argparse
import sys

from homechannel.cli.coordinator import cmd_cluster_key, cmd_join_string, cmd_migrate
from homechannel.cli.keys import cmd_keygen, cmd_pubkey
from homechannel.cli.server import (
    cmd_devices,
    cmd_join,
    cmd_link,
    cmd_passwd,
    cmd_status,
    default_server_config,
)
from homechannel.errors import HomeChannelError

# What ``homechannel --help`` says first.
DESCRIPTION = """homechannel: set up a home server in one line, its keys, password and connect
link; operator tasks on a coordinator; and the native client (connect, forward).

Every failure is one line on stderr and exit status 1, never a traceback."""


def version():
    try:
        from importlib.metadata import version as _version
        return _version("homechannel")
    except Exception:
        return "unknown"


# -- the parser ------------------------------------------------------------------------


def _sub(sub, name, help, description, example):
    import textwrap
    return sub.add_parser(name, help=help, description=textwrap.fill(description, 78),
                          epilog="example:\n  " + example,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser():
    p = argparse.ArgumentParser(
        prog="homechannel", description=DESCRIPTION,
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
    sp.add_argument("--desktop", metavar="ENDPOINT",
                    help="the VNC server the desktop app pipes to: unix:/path/to/socket "
                         "(e.g. Xtigervnc -rfbunixpath) or HOST:PORT (default: none, the "
                         "desktop app is off)")
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

    sp = _sub(sub, "cluster-key", "make the key every node of a coordinator cluster holds",
              "Make the cluster key file (32 random bytes, mode 0600) if it does not exist; "
              "never replace one. Copy the file to every node of the cluster, as the "
              "identity key; it never goes into Redis. Prints the key's fingerprint, which "
              "each node logs at start: the same on every node.",
              "homechannel cluster-key --config /etc/homechannel/coordinator.toml")
    common(sp, role=False)
    sp.add_argument("--key-file", help="the cluster key file (default: cluster.key_file from "
                                       "--config, or cluster.key in the state directory)")
    sp.set_defaults(func=cmd_cluster_key)

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
              "restart the home server to use it. Every device's sign-in token of the old "
              "password stops working (a new password epoch).",
              "homechannel passwd --config /etc/homechannel/server.toml")
    common(sp, role=False)
    sp.add_argument("--password-file", help="read the password from the first line of this "
                                            "file (default: prompt, or one line of stdin)")
    sp.set_defaults(func=cmd_passwd)

    sp = _sub(sub, "devices", "list or revoke the devices enrolled with the home server",
              "List the devices (browsers, native clients) that enrolled a key with this "
              "home server after signing in, or revoke one: its sign-in token stops working "
              "at the coordinator and here (the running home server notices within "
              "seconds), and it signs in with the password again next time. To keep out "
              "someone who knows the password, change it ('homechannel passwd'): that ends "
              "every device's token.",
              "homechannel devices revoke Xy3k --config /etc/homechannel/server.toml")
    sp.add_argument("action", choices=["list", "revoke"])
    sp.add_argument("device", nargs="?", default="",
                    help="revoke: the device's id, or the start of it ('devices list')")
    common(sp, role=False)
    sp.set_defaults(func=cmd_devices)

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
            from homechannel.cli import client   # aiortc: loaded only for these two
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

