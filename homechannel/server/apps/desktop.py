"""The desktop app: the channel is a byte pipe to the local VNC server.

The home server does not parse RFB; noVNC in the browser speaks it over the
datachannel.  The pipe and its flow control are :class:`~.pipe.TCPPipe`.

The VNC socket is read only while the channel has little queued (``HIGH``, resumed at
``LOW``; the files app queues 1 MiB): a screen update that waits in the channel's
queue is a stale one, and every byte queued there delays the next update, the one
that answers the user's key press, by its time on the link (1 MiB is 400 ms at
20 Mbit/s).  Left in the socket instead, the backlog is where the VNC server sees
it: TigerVNC then sends fewer, fresher updates (its congestion control measures the
round trip with fences, which noVNC answers), as it does over a slow TCP link.
"""

from homechannel.server.apps.pipe import TCPPipe

HIGH = 256 * 1024
LOW = 64 * 1024


class DesktopSession:
    """One ``app:desktop:<n>`` channel: connects at once, raw bytes both ways."""

    def __init__(self, config, link, reactor):
        self.pipe = TCPPipe(link, reactor, config.host, config.port, "VNC server")
        self.pipe.connect()

    def message_received(self, message):
        self.pipe.channel_data(message)
