"""The forward app: a byte pipe to an allowed local TCP port (native client).

The client opens ``app:forward:<n>`` and sends one text message
``{"op":"open","port":N}`` first.  The server connects to 127.0.0.1:N if N is
in ``config.forward.ports`` and the socket there belongs to root, the home
server's user or one of ``config.forward.owners`` (:mod:`.localservice`), and
answers ``{"op":"open","port":N}``, or ``{"op":"error",...}`` and closes.  After that, binary messages are the raw
TCP bytes both ways (flow control as in :mod:`.pipe`).
"""

import json

from homechannel import errors
from homechannel.server.apps.channel import send_error_and_close
from homechannel.server.apps.localservice import LocalService
from homechannel.server.apps.pipe import TCPPipe


class ForwardSession:
    def __init__(self, config, link, reactor, owners, to_thread, host="127.0.0.1"):
        """*owners*: the user ids that may own a forwarded port's socket
        (``config.resolve_owners`` of ``config.owners``)."""
        self.config = config
        self.link = link
        self.reactor = reactor
        self.owners = owners
        self.to_thread = to_thread
        self.host = host
        self.pipe = None

    def message_received(self, message):
        if self.pipe is not None:
            self.pipe.channel_data(message)
            return
        try:
            if not isinstance(message, str):
                raise errors.ProtocolError('send {"op":"open","port":N} as text before any bytes', "protocol")
            try:
                body = json.loads(message)
            except ValueError:
                raise errors.ProtocolError("open message is not JSON", "protocol") from None
            port = body.get("port") if isinstance(body, dict) else None
            if not isinstance(body, dict) or body.get("op") != "open" or not isinstance(port, int) \
                    or isinstance(port, bool):
                raise errors.BadRequest('expected {"op":"open","port":N}', "bad-request")
            allowed = {int(p) for p in self.config.ports}
            if port not in allowed:
                raise errors.Forbidden(f"port {port} is not forwarded by this server "
                                       f"(allowed: {sorted(allowed) or 'none'})", "port-not-allowed")
        except errors.HomeChannelError as e:
            send_error_and_close(self.link, e)
            return
        service = LocalService(f"local port {port}", "apps.forward", ("tcp", self.host, port),
                               self.owners)
        self.pipe = TCPPipe(self.link, self.reactor, service, self.to_thread)
        self.pipe.connect()
