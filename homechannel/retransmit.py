"""Retransmission of requests until answered: the one implementation both
UDP sides use.  Pure: times are passed in, nothing is scheduled here."""

import heapq
from dataclasses import dataclass, field


@dataclass
class Request:
    key: object
    message: bytes            # the inner message; re-sealed with a fresh counter each time
    sent: float
    rto: float
    deadline: float           # give up at this time (inf: never)
    attempts: int = 1
    context: object = None    # anything the owner needs when the reply or timeout comes
    due: float = field(init=False)

    def __post_init__(self):
        self.due = self.sent + self.rto


class Outstanding:
    """Requests awaiting a reply, retransmitted with exponential backoff."""

    def __init__(self, rto=0.5, rto_max=4.0, limit=10_000):
        self.rto = rto
        self.rto_max = rto_max
        self.limit = limit
        self._items = {}
        self._heap = []

    def __len__(self):
        return len(self._items)

    def add(self, key, message, now, deadline=float("inf"), context=None, rto=None):
        if len(self._items) >= self.limit and key not in self._items:
            raise OverflowError("too many requests in flight")
        req = Request(key, message, now, rto or self.rto, deadline, context=context)
        self._items[key] = req
        heapq.heappush(self._heap, (min(req.due, req.deadline), id(req), req))
        return req

    def pop(self, key):
        """The request answered by a reply with *key*, removed; or None."""
        return self._items.pop(key, None)

    def get(self, key):
        return self._items.get(key)

    def clear(self):
        items = list(self._items.values())
        self._items.clear()
        self._heap.clear()
        return items

    def due(self, now):
        """``(resend, expired)``: requests to send again now, and those past deadline."""
        resend, expired = [], []
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

    def next_deadline(self):
        heap = self._heap
        while heap and self._items.get(heap[0][2].key) is not heap[0][2]:
            heapq.heappop(heap)
        if not heap:
            return None
        req = heap[0][2]
        return min(req.due, req.deadline)
