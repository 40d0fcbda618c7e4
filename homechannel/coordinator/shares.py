"""Shares of a capped table: how many entries (or bytes) each key may hold.

Every table the coordinator keeps for strangers (pending sessions, waiting
long-polls, UDP handshakes, reassembly buffers) has a global cap, and inside
it a share per source network (``ratelimit.source_key``: IPv6 /64, IPv4
address) and, where it applies, per target server.  One source, or one
attacker with many throwaway home-server keys, fills at most its share, and
everybody else still finds room.

:class:`Shares` counts what each key holds.  A key is in it only while it
holds something (the count is dropped at zero), so it never has more keys
than the table it guards has entries: its size is bounded by that table's cap.
"""

from collections.abc import Hashable


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

    def room(self, key: Hashable, amount: int = 1) -> bool:
        """True if *key* may take *amount* more."""
        return self._held.get(key, 0) + amount <= self.limit

    def take(self, key: Hashable, amount: int = 1) -> None:
        """Count *amount* more for *key* (the caller checked :meth:`room`)."""
        if amount:
            self._held[key] = self._held.get(key, 0) + amount

    def give_back(self, key: Hashable, amount: int = 1) -> None:
        """*key* released *amount*."""
        if not amount:
            return
        left = self._held.get(key, 0) - amount
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)
