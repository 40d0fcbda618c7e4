"""``homechannel connect`` and ``homechannel forward``: the native client's command
line.  Parses the options, reads the password and the TURN credential, and runs
the client (:mod:`homechannel.client`) on asyncio; every failure is one line on
stderr and exit status 1."""

import argparse
import asyncio
import getpass
import sys

from homechannel import crypto
from homechannel.client.control import ping
from homechannel.client.forward import forward
from homechannel.client.session import connect, key_sign_in_ready
from homechannel.client.trust import DeviceStore, KnownCoordinators, coordinator_url
from homechannel.errors import ConfigError, HomeChannelError, ProtocolError
from homechannel.keyfiles import read_secret_line
from homechannel.protocol import connect as flow
from homechannel.protocol import hostport
from homechannel.protocol.ice import parse_ice_servers
from homechannel.rtc import webrtc


def _stderr(message):
    print(message, file=sys.stderr)


def _common_options(p):
    p.add_argument("--url", help="the coordinator's URL, e.g. https://coordinator.example")
    p.add_argument("--server", required=True,
                   help="the home server id, or the connect link the home server prints")
    p.add_argument("--password-file",
                   help="read the password from the first line of this file (default: prompt)")
    p.add_argument("--coordinator-key",
                   help="pin the coordinator's public key (default: the key {url}/config.js "
                        "published the first time, remembered in the state directory's "
                        "coordinators.json; a different key later is refused until you pass "
                        "the new one here)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow plain http:// to a coordinator on another machine (for tests "
                        "on private networks only: anyone on the way can then play the "
                        "coordinator)")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="a STUN or TURN URL, tried before the ones the coordinator hands "
                        "out (repeatable; e.g. turn:turn.example:3478?transport=udp). "
                        "aiortc uses only the first STUN and the first TURN server (and "
                        "the next TURN URL of another transport when that gives no relay)")
    p.add_argument("--ice-username", metavar="USER",
                   help="the username for the TURN servers given with --ice-server")
    p.add_argument("--ice-credential-file", metavar="FILE",
                   help="read the TURN password for --ice-server from this file")
    p.add_argument("--advertise-address", action="append", default=[], metavar="IP",
                   help="also offer this host address as an ICE candidate (e.g. 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the home server's answer")
    p.add_argument("--key", action="store_true",
                   help="sign in with this device's key alone, no password (like an ssh "
                        "key: the key file in the state directory, mode 0600). The first "
                        "time, the password is asked for once and the key is enrolled to "
                        "sign in by itself; 'homechannel people revoke owner' or "
                        "'devices revoke' on the home server ends it")
    p.add_argument("--no-device-token", action="store_true",
                   help="neither use nor keep a device token (by default the token the home "
                        "server gives after a sign-in is kept in the state directory's "
                        "devices.json, so that this client keeps its own sign-in budget)")


def _parse_target(args):
    """--server may be an id or a connect link ``{url}/#server={id}``."""
    link_url, server = flow.split_link(args.server.strip())
    url = args.url or link_url
    if not url:
        raise ConfigError("no coordinator: pass --url (or a connect link as --server)")
    url = coordinator_url(url, args.insecure_http)
    try:
        crypto.parse_server_id(server)
    except ProtocolError:
        raise ConfigError(f"--server {args.server!r} is not a server id or connect link "
                          "(damaged or cut short while copying? copy the whole link the "
                          "home server prints)") from None
    return url, server


def ice_server_args(args):
    """``--ice-server`` URLs (+ ``--ice-username``/``--ice-credential-file`` for TURN)
    as validated RTCIceServer dicts; a TURN URL without credentials is refused here,
    not silently dropped by aioice."""
    if not args.ice_server:
        if args.ice_username or args.ice_credential_file:
            raise ConfigError("--ice-username and --ice-credential-file need --ice-server")
        return ()
    credential = (read_secret_line(args.ice_credential_file, "TURN credential file")
                  if args.ice_credential_file else None)
    entries = []
    for url in args.ice_server:
        entry = {"urls": url}
        if url.startswith("turn"):
            if not args.ice_username or credential is None:
                raise ConfigError(f"--ice-server {url}: a TURN server needs --ice-username "
                                  "and --ice-credential-file")
            entry.update(username=args.ice_username, credential=credential)
        entries.append(entry)
    return parse_ice_servers(entries, "--ice-server")


def _read_password(args):
    if args.password_file:
        password = read_secret_line(args.password_file)
    else:
        password = getpass.getpass("HomeChannel password: ")
    if not password:
        raise ConfigError("the password is empty")
    return password


def _connect_kwargs(args):
    url, server = _parse_target(args)
    if args.key and args.no_device_token:
        raise ConfigError("--key signs in with the device's key and token: drop "
                          "--no-device-token")
    devices = DeviceStore(None) if args.no_device_token else DeviceStore.default()
    # --key with a sign-in key enrolled: no password at all (ssh's ProxyCommand, cron).
    ready = args.key and key_sign_in_ready(devices, url, server)
    return dict(url=url, server_id=server, password=None if ready else _read_password(args),
                coordinator_key=args.coordinator_key, ice_servers=ice_server_args(args),
                advertise_addresses=webrtc.parse_addresses(args.advertise_address),
                timeout=args.timeout, notify=_stderr, devices=devices,
                coordinators=KnownCoordinators.default(), insecure_http=args.insecure_http,
                sign_in_key=args.key)


async def _connect_and_ping(kwargs, out):
    pc, control, hello = await connect(**kwargs)
    try:
        apps = hello.get("apps") or []
        names = [a.get("name", a) if isinstance(a, dict) else a for a in apps]
        print(f"connected to {kwargs['server_id']}", file=out)
        print("apps: " + (", ".join(map(str, names)) or "(none)"), file=out)
        rtt = await ping(control, 1)
        print(f"ping: {rtt * 1000:.1f} ms", file=out)
    finally:
        await pc.close()


def main_connect(argv, out=None):
    """``homechannel connect``: connect, print the apps and a ping time; exit status."""
    p = argparse.ArgumentParser(
        prog="homechannel connect",
        description="Connect to a home server as the browser does (from a terminal, with "
                    "aiortc), list its apps and measure a ping. A quick check that the home "
                    "server, the coordinator and the network between them work.",
        epilog="example:\n  homechannel connect --server 'https://hc.example.org/#server=ID' "
               "--password-file ~/.homechannel-password",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(p)
    args = p.parse_args(argv)
    return _run("connect", lambda: _connect_and_ping(_connect_kwargs(args), out or sys.stdout))


def _run(name, make):
    """Run the coroutine from *make*; every failure is one line on stderr."""
    try:
        asyncio.run(make())
    except HomeChannelError as e:
        _stderr(f"homechannel {name}: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:   # a bug, or a library refusing something: still one line
        _stderr(f"homechannel {name}: unexpected error ({type(e).__name__}: {e})")
        return 1
    return 0


def parse_listen(text):
    try:
        return hostport.parse_host_port(text, default_host="127.0.0.1", port_zero=True)
    except hostport.HostPortError as e:
        raise ConfigError(e.explain(f"--listen {text!r}: expected HOST:PORT, e.g. "
                                    "127.0.0.1:2222")) from None


def main_forward(argv):
    """``homechannel forward``: a local TCP port (or stdio) to a port on the home machine."""
    p = argparse.ArgumentParser(
        prog="homechannel forward",
        description="Forward a local TCP port (--listen), or stdin/stdout (--stdio, for ssh's "
                    "ProxyCommand), to a TCP port on the home machine that its home server "
                    "allows (apps.forward.ports).",
        epilog='examples:\n'
               '  homechannel forward --server LINK --port 5900 --listen 127.0.0.1:5901\n'
               '  ssh -o ProxyCommand="homechannel forward --stdio --server LINK '
               '--password-file F --port 22" user@home\n'
               '  ssh -o ProxyCommand="homechannel forward --stdio --server LINK --key '
               '--port 22" user@home   # after one --key sign-in with the password',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(p)
    p.add_argument("--port", type=int, required=True,
                   help="the TCP port on the home machine (must be in apps.forward.ports)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", metavar="HOST:PORT",
                      help="accept local connections here, e.g. 127.0.0.1:2222")
    mode.add_argument("--stdio", action="store_true",
                      help="pipe stdin/stdout (one connection, e.g. as ssh's ProxyCommand)")
    args = p.parse_args(argv)

    def make():
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port {args.port}: expected the TCP port on the home machine, "
                              "1-65535")
        listen = None if args.stdio else parse_listen(args.listen)
        kwargs = _connect_kwargs(args)
        if args.stdio:
            # ssh's ProxyCommand: stderr is the user's terminal; only failures go there.
            kwargs["notify"] = lambda message: None
        return forward(kwargs, args.port, listen=listen, stdio=args.stdio)

    return _run("forward", make)
