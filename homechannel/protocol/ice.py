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


# -- which hosts a home server lets an offer's ICE servers name (docs/security.md) --------

# NAT64 prefixes (RFC 6052, RFC 8215): on an IPv6-only network they reach IPv4 neighbours.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def url_host(url: str) -> str:
    """The host of a valid STUN or TURN URL (an IPv6 address without its brackets)."""
    m = ICE_URL.match(url)
    if not m:
        raise ProtocolError(f"{url[:80]!r} is not a STUN or TURN URL")
    host = m["host"]
    return host[1:-1] if host.startswith("[") else host


def with_host(url: str, address: str) -> str:
    """*url* with its host replaced by the IP *address* (in brackets for IPv6)."""
    m = ICE_URL.match(url)
    if not m:
        raise ProtocolError(f"{url[:80]!r} is not a STUN or TURN URL")
    host = f"[{address}]" if ":" in address else address
    return url[:m.start("host")] + host + url[m.end("host"):]


def is_public_address(address: str) -> bool:
    """A globally routable unicast address: never private, loopback, link-local,
    carrier-grade NAT, documentation, multicast, unspecified or reserved, and no IPv4
    hidden in IPv6 (IPv4-mapped, NAT64, 6to4, Teredo) that is not public itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(str(ip.ipv4_mapped))
        if any(ip in net for net in _NAT64):
            return False
        if ip.sixtofour is not None or ip.teredo is not None:
            return False
    return ip.is_global and not ip.is_multicast


class AllowedHosts:
    """The hosts a home server lets a coordinator's offer point its STUN and TURN
    client at: names (exact, any letter case, no trailing dot) and addresses or
    networks the operator wrote in its own configuration.  A name must also
    resolve only to public addresses, or to addresses the operator listed: a
    coordinator cannot point the home server's TURN client at the home network,
    whatever its DNS answers."""

    def __init__(self, entries: Any) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            text = str(entry).strip().lower().rstrip(".")
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if text:
                    self.names.add(text)

    def listed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)

    def name_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def address_allowed(self, address: str) -> bool:
        """For an address a listed name resolved to."""
        return is_public_address(address) or self.listed(address)
