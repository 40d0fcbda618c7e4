"""Short-lived TURN credentials for coturn (the "TURN REST API" scheme).

coturn, run with ``use-auth-secret`` and ``static-auth-secret=<secret>``,
accepts any username of the form ``"<expiry unix time>:<anything>"`` whose
password is ``base64(HMAC-SHA1(secret, username))``, until that expiry time.
The coordinator shares the secret with coturn (``[turn] secret_file``) and
mints one credential per use, and only for a client that proved the password or
a device key (``broker.Broker.prove``): one for the client, in the signed answer
to that proof, and one for the home server, in the relayed offer of that
connect.  Never in a lookup or in the public ``/config.js``; the secret never
leaves the coordinator.

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

    def mint(self, server_key: bytes, role: str) -> dict[str, Any]:
        """A credential for one side (*role*: ``"c"`` the client, ``"s"`` the home
        server) of a connect to the home server with raw key *server_key*.  The
        username is ``<expiry>:<server tag>.<role>.<random>``, where the server tag
        is the first 11 characters of its key id in base64url (:func:`server_tag`):
        coturn logs usernames, so abuse of the relay traces back to a home server."""
        expiry = int(math.ceil(self._clock.seconds() + self.lifetime))
        username = (f"{expiry}:{server_tag(server_key)}.{role}."
                    f"{crypto.b64u_encode(self._random_bytes(6))}")
        self.minted += 1
        return {"urls": list(self.urls), "username": username,
                "credential": credential(self._secret, username)}


def server_tag(server_key: bytes) -> str:
    """The home server in a TURN username: its key id, short (66 bits; the operator's
    ``homechannel`` tools and the coordinator's log show the same prefix)."""
    return crypto.b64u_encode(crypto.key_id(server_key))[:11]
