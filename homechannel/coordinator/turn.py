"""Short-lived TURN credentials for coturn (the "TURN REST API" scheme).

coturn, run with ``use-auth-secret`` and ``static-auth-secret=<secret>``,
accepts any username of the form ``"<expiry unix time>:<anything>"`` whose
password is ``base64(HMAC-SHA1(secret, username))``, until that expiry time.
The coordinator shares the secret with coturn (``[turn] secret_file``) and
mints one credential per use: for a browser or native client in the signed
server lookup, and for the home server in the relayed offer.  The secret
never leaves the coordinator, and no credential appears in the public
``/config.js``.

Pure: the clock and the randomness are injected.
"""

import base64
import hashlib
import hmac
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from homechannel import crypto, keyfiles
from homechannel.errors import ConfigError


def load_secret(path: keyfiles.StrPath) -> bytes:
    """coturn's ``static-auth-secret``, from a file (surrounding whitespace ignored)
    that group and others cannot read."""
    secret = keyfiles.read_private_file(
        path, "turn.secret_file", "write coturn's static-auth-secret there (one line, "
        "mode 0600)").strip()
    if len(secret) < 16:
        raise ConfigError(f"turn.secret_file {path} holds a secret shorter than 16 bytes: "
                          "use a long random one (e.g. openssl rand -hex 32)")
    return secret


def credential(secret: bytes, username: str) -> str:
    """The password coturn expects for *username*: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def order_urls(urls: Iterable[str]) -> list[str]:
    """TURN URLs in the order that suits aiortc, which uses only the first one:
    plain UDP first, then TCP, then TLS (browsers try them all)."""
    def rank(url: str) -> int:
        if url.startswith("turns:"):
            return 2
        return 1 if "transport=tcp" in url else 0
    return sorted(urls, key=rank)


class TurnMinter:
    """Mints ``{"urls", "username", "credential"}`` entries valid for *lifetime* s."""

    def __init__(self, urls: Iterable[str], secret: bytes, lifetime: float, clock: IReactorTime,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if not urls:
            raise ConfigError("turn.urls is empty: list coturn's URLs, e.g. "
                              '["turn:turn.example.org:3478?transport=udp"]')
        if lifetime <= 0:
            raise ConfigError("turn.lifetime must be positive")
        self.urls = order_urls(urls)
        self._secret = secret
        self.lifetime = lifetime
        self._clock = clock
        self._random_bytes = random_bytes
        self.minted = 0

    def mint(self) -> dict[str, Any]:
        expiry = int(math.ceil(self._clock.seconds() + self.lifetime))
        username = f"{expiry}:{crypto.b64u_encode(self._random_bytes(9))}"
        self.minted += 1
        return {"urls": list(self.urls), "username": username,
                "credential": credential(self._secret, username)}


def ice_servers_for(client_ice: Iterable[dict[str, Any]],
                    minter: TurnMinter | None = None) -> Callable[[str], list[dict[str, Any]]]:
    """The ``ice_servers(role)`` callable the connect broker uses.

    ``"client"`` (the signed server lookup, for browsers and native clients):
    *client_ice* (the coordinator's STUN by default) then, with a *minter*, one
    TURN entry minted for this lookup.  ``"server"`` (the relayed offer, for the
    home server, which has its own STUN): only a TURN entry minted for it, or
    nothing.  STUN first, one TURN entry: aiortc uses only the first of each.
    """
    client_ice = [dict(s) for s in client_ice]

    def ice_servers(role: str) -> list[dict[str, Any]]:
        turn = [minter.mint()] if minter is not None else []
        return (list(client_ice) if role == "client" else []) + turn

    return ice_servers
