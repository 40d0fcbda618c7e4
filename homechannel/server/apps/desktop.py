"""The desktop app: the channel is a byte pipe to the local VNC server.

The home server does not parse RFB; noVNC in the browser speaks it over the
datachannel.  The pipe and its flow control are :class:`~.pipe.TCPPipe`.
"""

from homechannel.server.apps.pipe import TCPPipe


class DesktopSession:
    """One ``app:desktop:<n>`` channel: connects at once, raw bytes both ways."""

    def __init__(self, config, link, reactor):
        self.pipe = TCPPipe(link, reactor, config.host, config.port, "VNC server")
        self.pipe.connect()

    def message_received(self, message):
        self.pipe.channel_data(message)
