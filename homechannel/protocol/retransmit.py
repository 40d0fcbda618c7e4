"""Retransmission of requests until answered: the one implementation both
UDP sides use.  Pure: times are passed in, nothing is scheduled here."""

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)   # what identifies a request: its reply carries it


@dataclass
class Request(Generic[K]):
    key: K
    message: bytes            # the inner message; re-sealed with a fresh counter each time
    sent: float
    rto: float
    deadline: float           # give up at this time (inf: never)
    attempts: int = 1
    context: Any = None       # anything the owner needs when the reply or timeout comes
    due: float = field(init=False)

    def __post_init__(self) -> None:
        self.due = self.sent + self.rto


class Outstanding(Generic[K]):
    """Requests awaiting a reply, retransmitted with exponential backoff."""

    def __init__(self, rto: float = 0.5, rto_max: float = 4.0, limit: int = 10_000) -> None:
        self.rto = rto
        self.rto_max = rto_max
        self.limit = limit
        self._items: dict[K, Request[K]] = {}
        self._heap: list[tuple[float, int, Request[K]]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: K, message: bytes, now: float, deadline: float = float("inf"),
            context: Any = None, rto: float | None = None) -> Request[K]:
        if len(self._items) >= self.limit and key not in self._items:
            raise OverflowError("too many requests in flight")
        req = Request(key, message, now, rto or self.rto, deadline, context=context)
        self._items[key] = req
        heapq.heappush(self._heap, (min(req.due, req.deadline), id(req), req))
        return req

    def pop(self, key: K) -> Request[K] | None:
        """The request answered by a reply with *key*, removed; or None."""
        return self._items.pop(key, None)

    def get(self, key: K) -> Request[K] | None:
        return self._items.get(key)

    def clear(self) -> list[Request[K]]:
        items = list(self._items.values())
        self._items.clear()
        self._heap.clear()
        return items

    def due(self, now: float) -> tuple[list[Request[K]], list[Request[K]]]:
        """``(resend, expired)``: requests to send again now, and those past deadline."""
        resend: list[Request[K]] = []
        expired: list[Request[K]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, req = heapq.heappop(heap)
            if self._items.get(req.key) is not req:
                continue  # answered or replaced
            if now >= req.deadline:
                del self._items[req.key]
                expired.append(req)
                continue
            req.attempts += 1
            req.rto = min(req.rto * 2, self.rto_max)
            req.due = now + req.rto
            heapq.heappush(heap, (min(req.due, req.deadline), id(req), req))
            resend.append(req)
        return resend, expired

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._items.get(heap[0][2].key) is not heap[0][2]:
            heapq.heappop(heap)
        if not heap:
            return None
        req = heap[0][2]
        return min(req.due, req.deadline)
