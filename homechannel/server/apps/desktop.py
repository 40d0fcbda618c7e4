"""The desktop app: the channel is a byte pipe to the local VNC server.

The home server does not parse RFB; noVNC in the browser speaks it over the
datachannel.  The pipe and its flow control are :class:`~.pipe.TCPPipe`; the VNC
server is ``[apps.desktop] endpoint`` (the app is off without one), a UNIX socket
or a TCP port, whose owner is checked before a byte is sent (:mod:`.localservice`).
"""

from homechannel.server.apps.pipe import TCPPipe


class DesktopSession:
    """One ``app:desktop:<n>`` channel: connects at once, raw bytes both ways."""

    def __init__(self, service, link, reactor, to_thread):
        self.pipe = TCPPipe(link, reactor, service, to_thread)
        self.pipe.connect()

    def message_received(self, message):
        self.pipe.channel_data(message)
