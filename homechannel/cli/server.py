"""The home server's commands: ``join`` (a home server from one line), ``passwd``,
``link`` and ``status``."""

import getpass
import json
import os
import sys
import time

from homechannel import config, crypto, keyfiles
from homechannel.cli.keys import check_key_path
from homechannel.errors import ConfigError, HomeChannelError
from homechannel.protocol import connect


def cmd_link(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    key = keyfiles.load_identity_key(check_key_path(cfg.identity_key))
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
    """Store the derived key with a new password epoch: every device token of the
    old password stops working once the home server runs with it."""
    derived = crypto.derive_password_key(password, key.public_raw)
    return keyfiles.save_password_key(cfg.password_key, key.public_raw, derived)


def cmd_passwd(args):
    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    path = check_key_path(cfg.identity_key)
    password = _read_new_password(args)
    key, created = keyfiles.load_or_create_identity_key(path)
    if created:
        print(f"created identity key {cfg.identity_key}", file=sys.stderr)
    epoch = _store_password(cfg, key, password)
    print(f"password key stored in {cfg.password_key} (the password itself is not stored; "
          f"password epoch {epoch}: devices signed in with an earlier password sign in "
          "again); restart the home server to use it", file=sys.stderr)


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
    if args.desktop:
        doc["apps"]["desktop"] = {"endpoint": args.desktop}
    config._build(config.ServerConfig, doc, "")   # what we write must load
    cfg = config.load_server(None, {"state_dir": state_dir})
    key_path = check_key_path(cfg.identity_key)
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
    if not args.desktop:
        print("the desktop app is off until [apps.desktop] endpoint names your VNC server "
              "(\"unix:/path/to/socket\" or \"HOST:PORT\"; see conf/server.example.toml)",
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


# -- devices ------------------------------------------------------------------------


def cmd_devices(args):
    from homechannel.server import devices

    cfg = config.load_server(args.config, {"state_dir": args.state_dir})
    path = cfg.devices_path
    if args.action == "list":
        if args.device:
            raise HomeChannelError("'devices list' takes no device")
        enrolled = devices.read_file(path)
        if not enrolled:
            print(f"no devices enrolled ({path})")
            return 0
        for line in devices.describe(enrolled):
            print(line)
        return 0
    device = devices.revoke(path, args.device)
    print(f"revoked {device.id} ({device.name}): its sign-in token no longer works; the "
          "running home server tells its coordinator within seconds", file=sys.stderr)
    return 0


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
    if state == "up" and doc.get("family"):
        label += f" over {doc['family']} ({doc.get('address') or '?'})"
    print(f"coordinator: {doc.get('coordinator', '?')}, {label}")
    if doc.get("pin_overridden"):
        print(f"coordinator key: {doc.get('coordinator_key', '?')}, not the configured "
              f"coordinator.public_key: a migration moved this server there "
              f"(coordinator.allow_migrate); remove {cfg.failover_path} to go back")
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
