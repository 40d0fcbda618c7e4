"""Flow control around an aiortc ``RTCDataChannel`` (and a Twisted bridge).

aiortc counts queued-but-unsent bytes in ``channel.bufferedAmount`` and emits
``"bufferedamountlow"`` when it drops to ``bufferedAmountLowThreshold``.
:class:`ChannelLink` turns that into Twisted flow control:

- as an ``IConsumer`` it accepts one producer (e.g. a TCP transport) and
  pauses it while more than ``high`` bytes are buffered, resuming it at
  ``low``;
- :meth:`ChannelLink.wait_writable` gives a Deferred for pull-style senders
  (file downloads) that fires once the buffer has drained to ``low``.

So a slow browser slows the sender, and the memory held for one channel is
bounded by ``high`` plus one read.  Chrome closes a channel whose send buffer
passes 16 MB; we stay two orders of magnitude below.

:func:`send_status` and :func:`send_error_and_close` are the channel-level
text messages (``docs/protocol.md`` section 3.2): the byte pipes' only in-band
signalling, and how a refused channel is told why before it is closed.
"""

import json

from twisted.internet import defer
from zope.interface import implementer
from twisted.internet.interfaces import IConsumer

from homechannel.ops.logsafe import Logger
from homechannel.protocol import frames

HIGH = 1024 * 1024
LOW = 256 * 1024

log = Logger()


def send_status(link, op, **fields):
    """A channel-level text message ``{"op": op, **fields}``."""
    body = {"op": op}
    body.update(fields)
    link.send(json.dumps(body))


# How long the client has to read a channel-level error and close the channel itself.
CLOSE_GRACE = 5.0


def send_error_and_close(link, exc):
    """Send ``{"op":"error","code","message",...}`` for *exc*, then close the channel.

    The client closes the channel when it reads the error; the home server closes
    it itself only CLOSE_GRACE seconds later.  Closing at once resets the SCTP
    stream so soon that a browser whose channel is still opening (the error came
    before its open event, e.g. a refused VNC connection) drops the message and
    sees only "closed before it opened"."""
    send_status(link, "error", **frames.error_body(exc))
    link.close_after(CLOSE_GRACE)


@implementer(IConsumer)
class ChannelLink:
    def __init__(self, channel, high=HIGH, low=LOW, clock=None):
        self.channel = channel
        self.clock = clock          # IReactorTime for close_after (None: close at once)
        self._close_timer = None
        self.high = high
        self.low = low
        self.producer = None
        self.paused = False
        self._waiters = []
        self._close_callbacks = []
        self.closed = channel.readyState in ("closing", "closed")
        self.on_sent = None        # called with each sent message's size (metrics)
        channel.bufferedAmountLowThreshold = low
        channel.on("bufferedamountlow", self._drained)
        channel.on("close", self._on_close)

    def set_marks(self, low, high=None):
        """Move the low mark (where paused senders resume) to *low* and, if given, the
        high mark (where a producer is paused) to *high*; *low* stays <= ``high``."""
        if high is not None:
            self.high = high
        self.low = min(low, self.high)
        self.channel.bufferedAmountLowThreshold = self.low

    @property
    def label(self):
        return self.channel.label

    @property
    def buffered(self):
        return self.channel.bufferedAmount

    # -- sending ------------------------------------------------------------

    def send(self, data):
        """Queue one message; returns False (and drops it) once closed."""
        if self.closed or self.channel.readyState != "open":
            return False
        self.channel.send(data)
        if self.on_sent is not None:
            self.on_sent(len(data))
        if self.channel.bufferedAmount > self.high and not self.paused:
            self.paused = True
            if self.producer is not None:
                self.producer.pauseProducing()
        return True

    def writable(self):
        return not self.closed and self.channel.bufferedAmount <= self.low

    def wait_writable(self):
        """A Deferred that fires (with None) once the buffer is at or below
        ``low``; errbacks with ``CancelledError`` if the channel closes."""
        if self.closed:
            return defer.fail(defer.CancelledError("channel closed"))
        if self.channel.bufferedAmount <= self.low:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _drained(self):
        if self.paused:
            self.paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # -- IConsumer ------------------------------------------------------------

    def registerProducer(self, producer, streaming):
        if not streaming:
            raise ValueError("ChannelLink takes push producers only")
        self.producer = producer
        if self.paused:
            producer.pauseProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.send(data)

    # -- closing --------------------------------------------------------------

    def on_close(self, callback):
        if self.closed:
            callback()
        else:
            self._close_callbacks.append(callback)

    def close(self):
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if self.channel.readyState in ("connecting", "open"):
            self.channel.close()

    def close_after(self, seconds):
        """Close the channel in *seconds* unless the peer closes it first."""
        if self.clock is None or self.closed:
            self.close()
        elif self._close_timer is None:
            self._close_timer = self.clock.callLater(seconds, self.close)
            self.on_close(self.close)

    def _on_close(self):
        if self.closed and not self._close_callbacks:
            return
        self.closed = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(defer.CancelledError("channel closed"))
        callbacks, self._close_callbacks = self._close_callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.failure("closing {label}", label=self.channel.label)
