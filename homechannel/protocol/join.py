"""The join string: everything a home server needs to know about a coordinator, in one line.

``hcjoin:`` followed by unpadded base64url of a compact JSON object::

    {"v": 1, "url": "https://hc.example", "host": "hc.example", "port": 7777,
     "key": "<coordinator public key, base64url>"}

``url`` is the coordinator's public web URL (connect links start with it),
``host``/``port`` its UDP address, ``key`` the key the home server pins.  The
coordinator logs it at start and ``homechannel join-string`` prints it;
``homechannel join STRING`` turns it into a home server's configuration.
Pure: no I/O.
"""

import ipaddress
import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from homechannel import crypto
from homechannel.errors import ConfigError, ProtocolError

if TYPE_CHECKING:
    from homechannel.config import CoordinatorConfig

PREFIX = "hcjoin:"
VERSION = 1


def encode(url: str, host: str, port: int, key: str) -> str:
    doc = {"v": VERSION, "url": url, "host": host, "port": port, "key": key}
    _check(doc)
    return PREFIX + crypto.b64u_encode(json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def decode(text: str) -> dict:
    """``{"url", "host", "port", "key"}`` from a join string; ConfigError naming what is wrong."""
    text = (text or "").strip()
    if not text.startswith(PREFIX):
        raise ConfigError("not a join string: it starts with 'hcjoin:' (copy the whole line "
                          "the coordinator prints, or run 'homechannel join-string' there)")
    try:
        doc = json.loads(crypto.b64u_decode(text[len(PREFIX):]).decode("utf-8"))
    except (ProtocolError, UnicodeDecodeError, ValueError):
        raise ConfigError("the join string is damaged (cut short or changed while copying?): "
                          "copy it again") from None
    if not isinstance(doc, dict):
        raise ConfigError("the join string is damaged: copy it again")
    if doc.get("v") != VERSION:
        raise ConfigError(f"join string version {doc.get('v')!r} is not supported by this "
                          f"homechannel (it reads version {VERSION}): upgrade homechannel")
    _check(doc)
    return {k: doc[k] for k in ("url", "host", "port", "key")}


def _check(doc: dict[str, Any]) -> None:
    url, host, port, key = doc.get("url"), doc.get("host"), doc.get("port"), doc.get("key")
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the join string's coordinator URL {url!r} is not an http(s) URL")
    if not isinstance(host, str) or not 0 < len(host) < 256 or not host.isascii() \
            or any(c in host for c in " /:") and not _is_ipv6(host):
        raise ConfigError(f"the join string's UDP host {host!r} is not a host name or address")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"the join string's UDP port {port!r} is not a port number")
    try:
        crypto.parse_server_id(key)
    except ProtocolError:
        raise ConfigError("the join string's coordinator key is not a P-256 public key") \
            from None


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def from_coordinator_config(cfg: "CoordinatorConfig", key_text: str) -> str:
    """The join string of a coordinator configuration and its public key."""
    host = cfg.udp.public_host or urllib.parse.urlsplit(cfg.web.public_url).hostname or ""
    return encode(cfg.web.public_url.rstrip("/"), host, cfg.udp.public_port or cfg.udp.port,
                  key_text)
