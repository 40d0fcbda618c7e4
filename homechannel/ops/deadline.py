"""The one timer of an adapter around a sans-I/O core.

A core (``Rendezvous``, ``Links``, the cluster's ``PendingOffers``) says when
it wants ``poll`` called (``next_deadline()``, or the ``deadline`` of its
``Output``); the adapter keeps one :class:`DeadlineTimer` and calls
``schedule`` with that time after every call into the core.
"""


class DeadlineTimer:
    """Calls *fire* (no arguments) when *clock* reaches the last deadline scheduled.

    ``schedule(when)`` takes an absolute time on *clock* (``clock.seconds()``), or
    None for no timer.  A deadline within a millisecond of the pending one keeps it
    (the hot path: most calls do not move the deadline); another replaces it; a past
    one fires on the next turn of the reactor.  *fire* catches and logs its own
    failures (a failure that escapes it is logged by the reactor)."""

    SLACK = 1e-3

    def __init__(self, clock, fire):
        self._clock = clock
        self._fire = fire
        self._call = None

    @property
    def when(self):
        """The time the pending call fires, or None."""
        return self._call.getTime() if self._call is not None and self._call.active() else None

    def schedule(self, when):
        call = self._call
        if call is not None and call.active():
            if when is not None and abs(call.getTime() - when) < self.SLACK:
                return
            call.cancel()
        self._call = None
        if when is not None:
            self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()),
                                               self._run)

    def cancel(self):
        self.schedule(None)

    def _run(self):
        self._call = None
        self._fire()
