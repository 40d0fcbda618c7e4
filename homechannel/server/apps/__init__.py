"""Apps over the datachannel: the :class:`AppHost` attached to each peer connection.

The browser creates every channel.  ``control`` carries JSON text (hello,
ping); ``app:<name>:<instance>`` opens one instance of an enabled app.  A
channel for a disabled or unknown app, or any other label, gets a text message
``{"op":"error","code","message"}`` and is closed.  ``docs/protocol.md``
section 3 is the reference.
"""

import os
import re

from twisted.logger import Logger

from homechannel import errors
from homechannel.server.apps import frames
from homechannel.server.apps.channel import ChannelLink, send_error_and_close

log = Logger()

APPS = [("files", "Files"), ("terminal", "Terminal"), ("desktop", "Desktop"), ("forward", "Forward")]
LABEL = re.compile(r"\Aapp:([a-z]+):([A-Za-z0-9_.-]{1,64})\Z")
MAX_CHANNELS = 64  # open app channels per peer connection
VERSION = 1


class AppHost:
    def __init__(self, config, server_id, state_dir, reactor):
        self.config = config
        self.server_id = server_id
        self.state_dir = state_dir
        self.reactor = reactor
        self.known_hosts = config.terminal.known_hosts or os.path.join(state_dir, "known_hosts")
        self.open_channels = 0

    def app_list(self):
        out = []
        for name, title in APPS:
            app = getattr(self.config, name)
            if app.enabled:
                entry = {"name": name, "title": title, "version": VERSION}
                if name == "files":
                    entry["readOnly"] = app.read_only
                if name == "forward":
                    entry["ports"] = [int(p) for p in app.ports]
                out.append(entry)
        return out

    def attach(self, pc, context=None):
        """Serve the channels the browser opens on *pc* (call before setRemoteDescription).

        *context* (the answerer's, see ``server/peer.py``) gates every channel:
        none is served unless ``context.verify_peer()`` says the DTLS peer is
        the one the password proof bound; its ``hello_fields()`` go into the
        control channel's hello reply."""
        state = {"channels": 0, "context": context}

        def on_datachannel(channel):
            if context is not None and not context.verify_peer():
                log.warn("refused channel {label}: the peer is not the one that proved "
                         "the password", label=getattr(channel, "label", "?"))
                channel.close()
                return
            try:
                self.channel_opened(channel, state)
            except Exception:
                log.failure("opening channel {label}", label=getattr(channel, "label", "?"))
                channel.close()

        pc.on("datachannel", on_datachannel)

    def channel_opened(self, channel, state=None):
        state = state if state is not None else {"channels": 0}
        link = ChannelLink(channel)
        label = channel.label
        if label == "control":
            from homechannel.server.apps.control import ControlSession

            self._serve(link, ControlSession(self, link, state.get("context")))
            return
        m = LABEL.match(label or "")
        if not m:
            return self._refuse(link, errors.BadRequest(f"unknown channel label {label[:80]!r}", "bad-label"))
        name = m.group(1)
        app = getattr(self.config, name, None) if name in dict(APPS) else None
        if app is None:
            return self._refuse(link, errors.NotFound(f"there is no app called {name!r}", "unknown-app"))
        if not app.enabled:
            return self._refuse(link, errors.Forbidden(f"the {name} app is disabled on this server", "app-disabled"))
        if state["channels"] >= MAX_CHANNELS:
            return self._refuse(link, errors.CapacityError(f"at most {MAX_CHANNELS} app channels per session", "capacity"))
        state["channels"] += 1
        link.on_close(lambda: state.__setitem__("channels", state["channels"] - 1))
        channel.binaryType = "arraybuffer"  # ignored by aiortc; harmless
        if name == "files":
            from homechannel.server.apps.files import FilesSession

            from homechannel.server.apps.files import CHANNEL_LOW

            link.set_low(CHANNEL_LOW)  # downloads keep more queued (see files.py)
            session = FilesSession(app, link, self.reactor)
        elif name == "terminal":
            from homechannel.server.apps.terminal import TerminalSession

            session = TerminalSession(app, link, self.reactor, self.known_hosts)
        elif name == "desktop":
            from homechannel.server.apps.desktop import DesktopSession

            session = DesktopSession(app, link, self.reactor)
        else:
            from homechannel.server.apps.forward import ForwardSession

            session = ForwardSession(app, link, self.reactor)
        log.info("app channel {label} opened", label=label)
        self._serve(link, session)

    def _serve(self, link, session):
        def on_message(message):
            try:
                session.message_received(message)
            except Exception:
                log.failure("handling a message on {label}", label=link.label)

        link.channel.on("message", on_message)

    def _refuse(self, link, exc):
        log.info("refused channel {label}: {err}", label=link.label, err=exc)
        send_error_and_close(link, exc)
