"""ICE servers (STUN and TURN): the one validator, for a config and for a payload.

An ICE server is an RTCIceServer: ``{"urls": URL | [URL, ...], "username"?,
"credential"?}``.  Its URLs are STUN and TURN URIs as RFC 7064 and RFC 7065 write
them, without user info:

- ``stun:HOST[:PORT]``, ``stuns:HOST[:PORT]`` (no query);
- ``turn:HOST[:PORT][?transport=udp|tcp]``, ``turns:...`` the same;
- HOST is a DNS name, an IPv4 address or an IPv6 address in brackets
  (``stun:[2001:db8::1]:3478``); PORT is 1-65535.

:func:`parse_ice_servers` checks a list of them in one walk and words what is
wrong in two flavours: for the operator (:data:`CONFIG`, a ConfigError naming the
config key, e.g. ``webrtc.ice_servers[1]``; entries may be bare URL strings) and
for a payload (:func:`check_ice_servers`, a ProtocolError blaming the
coordinator, who put them in a lookup or an offer).  A TURN server needs a
username and a credential in both (aioice silently drops one without).

Pure: values in, a tuple of dicts out.
"""

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homechannel.errors import ConfigError, HomeChannelError, ProtocolError

MAX_ICE_SERVERS = 4            # entries in a payload (a lookup's, an offer's)
MAX_ICE_TEXT = 512             # characters of one ICE server URL, username or credential

# A STUN or TURN URL (RFC 7064/7065, no user info); :func:`ice_url_problem` checks
# what a pattern cannot (the port range, the IPv6 address, no transport on STUN).
ICE_URL = re.compile(r"\A(?P<scheme>stuns?|turns?):"
                     r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
                     r"(?::(?P<port>[0-9]{1,5}))?"
                     r"(?:\?transport=(?P<transport>udp|tcp))?\Z")
ICE_URL_FORMS = "stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:..."
_KEYS = ("urls", "username", "credential")


def ice_url_problem(url: str) -> str | None:
    """What is wrong with a STUN or TURN *url*, or None when it is fine."""
    m = ICE_URL.match(url)
    if not m:
        return f"is not a STUN or TURN URL ({ICE_URL_FORMS})"
    if m["port"] is not None and not 0 < int(m["port"]) < 65536:
        return "has an invalid port"
    if m["host"].startswith("["):
        try:
            ipaddress.IPv6Address(m["host"][1:-1])
        except ValueError:
            return "has a malformed IPv6 address (write it in brackets: [2001:db8::1])"
    if m["transport"] is not None and not m["scheme"].startswith("turn"):
        return "is a STUN URL with a transport (only TURN URLs have ?transport=)"
    return None


def is_turn_url(url: object) -> bool:
    """True for a valid ``turn:`` or ``turns:`` URL."""
    return (isinstance(url, str) and ice_url_problem(url) is None
            and url.startswith("turn"))


@dataclass(frozen=True)
class Flavour:
    """How :func:`parse_ice_servers` words a problem, and for whom."""

    error: type[HomeChannelError]
    # The subject of the list's messages ("webrtc.ice_servers"), and of entry i's.
    servers: Callable[[str], str]
    entry: Callable[[str, int], str]
    strings: bool                 # bare URL strings are entries too (config files)
    max_entries: int | None


CONFIG = Flavour(ConfigError, lambda key: key, lambda key, i: f"{key}[{i}]",
                 strings=True, max_entries=None)
PAYLOAD = Flavour(ProtocolError, lambda key: "the coordinator's ICE servers",
                  lambda key, i: "the coordinator's ICE server", strings=False,
                  max_entries=MAX_ICE_SERVERS)


def parse_ice_servers(entries: object, key: str = "ice_servers", *,
                      flavour: Flavour = CONFIG,
                      allow_turn: bool = True) -> tuple[dict[str, Any], ...]:
    """Validate ICE server entries; return a tuple of dicts ``{"urls": str | list,
    "username"?: str, "credential"?: str}`` (a bare URL string becomes ``{"urls"}``).

    *key* names the list in a ConfigError; with ``allow_turn=False`` a TURN URL is
    refused (a public list would publish its credentials)."""
    fail = flavour.error
    servers = flavour.servers(key)
    if isinstance(entries, (str, dict)) or not isinstance(entries, (list, tuple)):
        example = 'e.g. ["stun:stun.example.org:3478"]'
        raise fail(f"{servers} must be a list, {example}" if flavour.max_entries is None else
                   f"{servers} must be a list of at most {flavour.max_entries} entries")
    if flavour.max_entries is not None and len(entries) > flavour.max_entries:
        raise fail(f"{servers} must be a list of at most {flavour.max_entries} entries")
    result = []
    for i, entry in enumerate(entries):
        where = flavour.entry(key, i)
        if isinstance(entry, str) and flavour.strings:
            entry = {"urls": entry}
        if not isinstance(entry, dict):
            raise fail(f"{where} must be a URL string or a table with urls" if flavour.strings
                       else f"{where} must be an object with urls")
        unknown = set(entry) - set(_KEYS)
        if unknown:
            raise fail(f"{where}: unknown key {sorted(map(str, unknown))[0]!r} (known: urls, "
                       "username, credential)")
        urls = entry.get("urls")
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, (list, tuple)) or not url_list or \
                not all(isinstance(u, str) for u in url_list):
            raise fail(f"{where}: urls must be a URL string or a list of them")
        turn = False
        for url in url_list:
            problem = (f"is longer than {MAX_ICE_TEXT} characters" if len(url) > MAX_ICE_TEXT
                       else ice_url_problem(url))
            if problem:
                raise fail(f"{where} URL {url[:80]!r} {problem}")
            turn = turn or url.startswith("turn")
        doc: dict[str, Any] = {"urls": urls if isinstance(urls, str) else list(url_list)}
        for name in ("username", "credential"):
            value = entry.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise fail(f"{where}: {name} must be a string")
                if len(value) > MAX_ICE_TEXT:
                    raise fail(f"{where}: {name} is longer than {MAX_ICE_TEXT} characters")
                doc[name] = value
        if turn and not allow_turn:
            raise fail(f"{where}: a TURN server here would publish its credentials "
                       "to everyone in /config.js; configure [turn] (coturn's shared "
                       "secret) so the coordinator hands out short-lived credentials")
        if turn and not ("username" in doc and "credential" in doc):
            raise fail(f"{where}: a TURN server needs username and credential")
        result.append(doc)
    return tuple(result)


def check_ice_servers(value: object) -> tuple[dict[str, Any], ...]:
    """ICE servers carried in a payload (a lookup's, an offer's): None is none, and
    anything malformed is the coordinator's fault (a ProtocolError that says so)."""
    if value is None:
        return ()
    return parse_ice_servers(value, flavour=PAYLOAD)
