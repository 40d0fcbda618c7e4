"""Shares of a capped table: how many entries (or bytes) each key may hold.

Every table the coordinator keeps for strangers (pending sessions, waiting
long-polls, UDP handshakes, reassembly buffers) has a global cap, and inside
it a share per source network (``ratelimit.source_key``: IPv6 /64, IPv4
address) and, where it applies, per target server.  One source, or one
attacker with many throwaway home-server keys, fills at most its share, and
everybody else still finds room.

:class:`Shares` counts what each key holds.  A key is in it only while it
holds something (the count is dropped at zero), so it never has more keys
than the table it guards has entries (times three, below): its size is bounded
by that table's cap.

An IPv6 source (a /64 key) also counts in its /56 and its /48, which may hold
``ratelimit.WIDER_SHARES`` shares each (4 and 16): whoever holds a /56 or a /48
is one source with a few shares, not 256 or 65,536 sources.
"""

from collections.abc import Hashable, Iterator

from homechannel.coordinator.ratelimit import wider_keys


class Shares:
    """Per-key amounts, each at most *limit*."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a share must be positive")
        self.limit = limit
        self._held: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    def _limits(self, key: Hashable) -> Iterator[tuple[Hashable, int]]:
        yield key, self.limit
        for wider, shares in wider_keys(key):
            yield wider, shares * self.limit

    def room(self, key: Hashable, amount: int = 1) -> bool:
        """True if *key* (and each wider network it is in) may take *amount* more."""
        return all(self._held.get(k, 0) + amount <= limit for k, limit in self._limits(key))

    def take(self, key: Hashable, amount: int = 1) -> None:
        """Count *amount* more for *key* (the caller checked :meth:`room`)."""
        if amount:
            for k, _ in self._limits(key):
                self._held[k] = self._held.get(k, 0) + amount

    def give_back(self, key: Hashable, amount: int = 1) -> None:
        """*key* released *amount*."""
        if not amount:
            return
        for k, _ in self._limits(key):
            left = self._held.get(k, 0) - amount
            if left > 0:
                self._held[k] = left
            else:
                self._held.pop(k, None)
