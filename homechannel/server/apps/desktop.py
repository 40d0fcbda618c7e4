"""The desktop app: the channel is a byte pipe to the local VNC server.

The home server does not parse RFB; noVNC in the browser speaks it over the
datachannel.  The pipe and its flow control are :class:`~.pipe.TCPPipe`; the VNC
server is ``[apps.desktop] endpoint`` (the app is off without one), a UNIX socket
or a TCP port, whose owner is checked before a byte is sent (:mod:`.localservice`).

The VNC socket is read only while the channel has little queued (``HIGH``, 64 KiB,
resumed at ``LOW``; other pipes queue 1 MiB), and its kernel receive buffer is small
(``RECEIVE_BUFFER``; loopback TCP would otherwise grow it to megabytes): a screen
update that waits in the channel's queue or in that buffer is a stale one, and every
byte queued there delays the next update, the one that answers the user's key
press, by its time on the link (1 MiB is 400 ms at 20 Mbit/s).  Left in the VNC
server's own send queue instead, the backlog is where it sees it: TigerVNC then
sends fewer, fresher updates (its congestion control measures the round trip with
fences, which noVNC answers), as it does over a slow TCP link.  Over a 40 ms,
20 Mbit/s link this took a video's frame rate from 0.69 to 0.98 of a direct TCP
viewer's (docs/performance.md, "Over a WAN link").
"""

from homechannel.server.apps.pipe import TCPPipe

HIGH = 64 * 1024
LOW = 16 * 1024
RECEIVE_BUFFER = 64 * 1024


class DesktopSession:
    """One ``app:desktop:<n>`` channel: connects at once, raw bytes both ways."""

    def __init__(self, service, link, reactor, to_thread):
        self.pipe = TCPPipe(link, reactor, service, to_thread, receive_buffer=RECEIVE_BUFFER)
        self.pipe.connect()

    def message_received(self, message):
        self.pipe.channel_data(message)
