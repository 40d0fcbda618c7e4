"""A coordinator and a home server on this machine: both configs, keys and password key.

The one builder behind ``make run`` (:mod:`homechannel.demo`), the end-to-end tests
(``tests/daemons.py``, ``tests/nat.py``, ``tests/cluster.py``) and the benchmarks
(``bench/``).  :func:`write_pair` lays out a directory::

    BASE/coordinator.toml   BASE/coordinator/   (the coordinator's state_dir)
    BASE/server.toml        BASE/server/        (the home server's state_dir)
    BASE/files/             (the files app's root)

with the coordinator on *host* (loopback by default) and a home server that
registers with it, advertises 127.0.0.1 as a host candidate (aioice never offers
loopback) and serves ``files/``.  The identity keys and the password key are in
the state directories (the configs' defaults), or all in *keys_dir* (the demo's
``.run/``) and named in the configs.  Each caller adds its own settings as
tables merged into a config (:func:`merge`): section by section, a table updates
the section, anything else replaces the value.

:func:`coordinator_config` and :func:`server_config` are the two halves, for a
caller that needs only one (a benchmark's lone coordinator, a cluster's nodes).
Blocking (PBKDF2 takes a quarter of a second): for programs and tests, not for a
reactor.
"""

import os
from dataclasses import dataclass

from homechannel import crypto, keyfiles
from homechannel.errors import KeyFileError
from homechannel.ops.endpoints import quote
from homechannel.protocol.connect import connect_link
from homechannel.protocol.hostport import format_host_port


def write_toml(path, data: dict):
    """Write *data* (nested dicts are tables) as TOML to *path*; return *path*."""
    import tomli_w

    with open(path, "w", encoding="utf-8") as f:
        f.write(tomli_w.dumps(data))
    return path


def merge(table: dict, extra: dict | None) -> dict:
    """*table* with *extra* merged in, section by section (in place; returned)."""
    for section, values in (extra or {}).items():
        if isinstance(values, dict) and isinstance(table.get(section), dict):
            table[section].update(values)
        else:
            table[section] = dict(values) if isinstance(values, dict) else values
    return table


def _listen(port, host="127.0.0.1"):
    return f"tcp:{port}:interface={quote(host)}" if port else ""


def _url(host, port):
    """``http://HOST:PORT`` (an IPv6 address in brackets)."""
    return f"http://{format_host_port(host, port)}"


def coordinator_config(state_dir, *, udp_port, web_port, host="127.0.0.1", udp_interface=None,
                       metrics_port=None, identity_key=None, static_dir=None,
                       extra=None) -> dict:
    """A coordinator's config: UDP on *udp_interface* (default *host*), the web API
    on *host* (its public URL ``http://HOST:WEB_PORT``), metrics on loopback at
    *metrics_port* (None: off), the admin API's default UNIX socket; *extra* merged."""
    cfg = {
        "state_dir": state_dir,
        "udp": {"interface": udp_interface or host, "port": udp_port},
        "web": {"listen": _listen(web_port, host), "public_url": _url(host, web_port)},
        "metrics": {"listen": _listen(metrics_port)},
    }
    if identity_key:
        cfg["identity_key"] = identity_key
    if static_dir:
        cfg["web"]["static_dir"] = static_dir
    return merge(cfg, extra)


def server_config(state_dir, *, coordinator_key_text, udp_port, web_port, host="127.0.0.1",
                  files_root=None, metrics_port=None, identity_key=None, password_key=None,
                  advertise_loopback=True, extra=None) -> dict:
    """A home server's config: registered with the coordinator at *host*:*udp_port*
    (pinned to *coordinator_key_text*), its link on ``http://HOST:WEB_PORT``, the
    files app on *files_root*, metrics on loopback at *metrics_port* (None: off);
    *extra* merged."""
    cfg = {
        "state_dir": state_dir,
        "coordinator_url": _url(host, web_port),
        "coordinator": {"host": host, "port": udp_port, "public_key": coordinator_key_text},
        "metrics": {"listen": _listen(metrics_port)},
    }
    if identity_key:
        cfg["identity_key"] = identity_key
    if password_key:
        cfg["password_key"] = password_key
    if advertise_loopback:
        cfg["webrtc"] = {"advertise_addresses": ["127.0.0.1"]}
    if files_root:
        cfg["apps"] = {"files": {"roots": [files_root]}}
    return merge(cfg, extra)


def server_keys(key_path, password_key_path, password, *, keep=False, say=None):
    """The home server's identity key (created once) and its password key for
    *password* (derived and stored); returns the identity.  With *keep*, a password
    key already stored for this identity is kept (the caller knows the password did
    not change), which saves the derivation."""
    key, _ = keyfiles.load_or_create_identity_key(key_path)
    if keep:
        try:
            keyfiles.load_password_key(password_key_path, key.public_raw)
            return key
        except KeyFileError:
            pass
    if say is not None:
        say("deriving the password key (PBKDF2, a moment)...")
    keyfiles.save_password_key(password_key_path, key.public_raw,
                               crypto.derive_password_key(password, key.public_raw))
    return key


@dataclass
class LocalPair:
    """What :func:`write_pair` wrote."""

    base: str
    coordinator_config: str
    server_config: str
    coordinator_key: crypto.IdentityKey
    server_key: crypto.IdentityKey
    web_port: int
    udp_port: int
    metrics_port: int | None          # the coordinator's Prometheus listener
    server_metrics_port: int | None   # the home server's
    files_root: str
    host: str = "127.0.0.1"

    @property
    def url(self):
        return _url(self.host, self.web_port)

    @property
    def link(self):
        return connect_link(self.url, self.server_key.text)


def write_pair(base, *, web_port, udp_port, password, metrics_port=None,
               server_metrics_port=None, host="127.0.0.1", udp_interface=None,
               static_dir=None, keys_dir=None, keep_password_key=False,
               advertise_loopback=True, coordinator_extra=None, server_extra=None,
               say=None, pair_class=LocalPair) -> LocalPair:
    """Write both configs, both identity keys and the password key under *base*.

    *keys_dir* None keeps the keys in the state directories; a directory puts
    ``coordinator.key``, ``server.key`` and ``password.json`` there instead.
    *keep_password_key*: see :func:`server_keys`.  Returns a *pair_class*."""
    base = os.path.abspath(base)
    cdir, sdir = os.path.join(base, "coordinator"), os.path.join(base, "server")
    files_root = os.path.join(base, "files")
    os.makedirs(files_root, exist_ok=True)
    keys = {"coordinator": os.path.join(keys_dir or cdir, "coordinator.key"),
            "server": os.path.join(keys_dir or sdir, "server.key"),
            "password": os.path.join(keys_dir or sdir, "password.json")}
    named = keys if keys_dir else {}
    coordinator_key, _ = keyfiles.load_or_create_identity_key(keys["coordinator"])
    server_key = server_keys(keys["server"], keys["password"], password,
                             keep=keep_password_key, say=say)
    ccfg = write_toml(os.path.join(base, "coordinator.toml"), coordinator_config(
        cdir, udp_port=udp_port, web_port=web_port, host=host, udp_interface=udp_interface,
        metrics_port=metrics_port, identity_key=named.get("coordinator"),
        static_dir=static_dir, extra=coordinator_extra))
    scfg = write_toml(os.path.join(base, "server.toml"), server_config(
        sdir, coordinator_key_text=coordinator_key.text, udp_port=udp_port,
        web_port=web_port, host=host, files_root=files_root,
        metrics_port=server_metrics_port, identity_key=named.get("server"),
        password_key=named.get("password"), advertise_loopback=advertise_loopback,
        extra=server_extra))
    return pair_class(base, ccfg, scfg, coordinator_key, server_key, web_port, udp_port,
                      metrics_port, server_metrics_port, files_root, host)
