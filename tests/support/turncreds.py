"""TURN credentials for the tests: ``SECRET`` (shared with coturn), ``URLS``, and
``minter(now, lifetime, secret, random)``, a ``TurnMinter`` on a clock at *now* with
fixed random bytes."""

from twisted.internet import task

from homechannel.coordinator import turn


SECRET = b"0123456789abcdef-shared-with-coturn"
URLS = ["turns:turn.example:5349", "turn:turn.example:3478?transport=tcp",
        "turn:turn.example:3478?transport=udp"]


def minter(now=1_700_000_000, lifetime=600.0, secret=SECRET, random=None):
    """*random*: the bytes of the username's random part (default 0, 1, 2, ...)."""
    clock = task.Clock()
    clock.advance(now)
    return turn.TurnMinter(URLS, secret, lifetime, clock,
                           random_bytes=lambda n: random[:n] if random else bytes(range(n)))
