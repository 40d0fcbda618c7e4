"""Apps over the datachannel: the :class:`AppHost` attached to each peer connection.

The browser creates every channel.  ``control`` carries JSON text (hello,
ping); ``app:<name>:<instance>`` opens one instance of an enabled app.  A
channel for a disabled or unknown app, or any other label, gets a text message
``{"op":"error","code","message"}`` and is closed.  ``docs/protocol.md``
section 3 is the reference.
"""

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable


from homechannel import errors
from homechannel.ops.logsafe import Logger
from homechannel.config import resolve_owners
from homechannel.server.apps.channel import ChannelLink, send_error_and_close
from homechannel.server.apps.localservice import LocalService
from homechannel.server.apps.uploads import Uploads
from homechannel.server.statefiles import inline

log = Logger()

LABEL = re.compile(r"\Aapp:([a-z]+):([A-Za-z0-9_.-]{1,64})\Z")
MAX_CHANNELS = 64  # open app channels per peer connection
VERSION = 1


# Each app's session module is imported when its first channel opens, so a
# server with an app disabled never loads it (twisted.conch for the terminal).

def _files(host, config, link):
    from homechannel.server.apps.files import CHANNEL_LOW, FilesSession

    link.set_marks(low=CHANNEL_LOW)  # downloads keep more queued (see files.py)
    return FilesSession(config, link, host.reactor, uploads=host.uploads)


def _terminal(host, config, link):
    from homechannel.server.apps.terminal import SshKey, TerminalSession

    if config.identity_key and host.terminal_key is None:
        host.terminal_key = SshKey(config.identity_key, host.reactor)
    return TerminalSession(config, link, host.reactor, host.known_hosts, host.terminal_key,
                           host.services["terminal"], host.to_thread)


def _desktop(host, config, link):
    from homechannel.server.apps.desktop import HIGH, LOW, DesktopSession

    link.set_marks(low=LOW, high=HIGH)  # little queued: the screen stays current (desktop.py)
    return DesktopSession(host.services["desktop"], link, host.reactor, host.to_thread)


def _forward(host, config, link):
    from homechannel.server.apps.forward import ForwardSession

    return ForwardSession(config, link, host.reactor, host.services["forward"],
                          host.to_thread)


@dataclass(frozen=True)
class App:
    """One row of :data:`APPS`: how the hello answer shows it, how a channel opens it."""

    title: str
    session: Callable  # (host, app config, link) -> session with message_received
    describe: Callable = field(default=lambda config: {})  # extra hello fields
    # Whether the app is on: enabled, and (the desktop) told where its service is.
    active: Callable = field(default=lambda config: config.enabled)
    off: str = "the {name} app is disabled on this server"   # the refusal when it is not


# The apps, in the order the hello answer lists them; each name is also the
# attribute of the apps configuration (:class:`~homechannel.config.ServerApps`)
# that configures it.
APPS = {
    "files": App("Files", _files, lambda config: {"readOnly": config.read_only}),
    "terminal": App("Terminal", _terminal),
    "desktop": App("Desktop", _desktop, active=lambda config: config.active,
                   off="the desktop app is off on this server: no VNC server is configured "
                       "([apps.desktop] endpoint)"),
    "forward": App("Forward", _forward, lambda config: {"ports": [int(p) for p in config.ports]}),
}


class AppHost:
    def __init__(self, config, server_id, state_dir, reactor, to_thread=None):
        """*to_thread* runs the sweep of stale upload files (``uploads.sweep``; the
        reactor's thread pool in the daemon, ``statefiles.inline`` by default)."""
        self.config = config
        self.server_id = server_id
        self.state_dir = state_dir
        self.reactor = reactor
        self.to_thread = to_thread or inline
        # every files channel's uploads, counted together (the reserve, max_uploads)
        self.uploads = Uploads(config.files, self.to_thread)
        # the local services the apps pipe to, their owners resolved once (localservice)
        self.services = {
            "terminal": LocalService.tcp("sshd", "apps.terminal", config.terminal.host,
                                         config.terminal.port, config.terminal.owners),
            "desktop": LocalService.configured(
                "the VNC server", "apps.desktop", config.desktop.endpoint,
                config.desktop.owners) if config.desktop.endpoint else None,
            "forward": resolve_owners(config.forward.owners, "apps.forward.owners"),
        }
        self.known_hosts = config.terminal.known_hosts or os.path.join(state_dir, "known_hosts")
        self.terminal_key = None   # the terminal's SSH key, loaded once (terminal.SshKey)
        self.traffic = Counter()   # (app, "in" | "out") -> payload bytes (metrics)

    def app_list(self, rights=None):
        """The apps the hello lists: those enabled, and that *rights* (the person's,
        ``people.Rights``; None: all) allow, as they would run for that person."""
        out = []
        for name, app in APPS.items():
            config = getattr(self.config, name)
            if app.active(config):
                out.append({"name": name, "title": app.title, "version": VERSION, **app.describe(config)})
        return out if rights is None else self._allowed(out, rights)

    def _allowed(self, listed, rights):
        """The entries of *listed* that *rights* allow, described as they run for them."""
        out = []
        for entry in listed:
            config = rights.app_config(entry["name"], getattr(self.config, entry["name"]))
            if config is not None:
                out.append({**entry, **APPS[entry["name"]].describe(config)})
        return out

    def attach(self, pc, context=None):
        """Serve the channels the browser opens on *pc* (call before setRemoteDescription).

        *context* (the answerer's, see ``server/peer.py``) gates every channel:
        none is served unless ``context.verify_peer()`` says the DTLS peer is
        the one the password proof bound; its ``hello_fields(hello)`` go into the
        control channel's hello reply (a device token for the key *hello* enrols)."""
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
        link = ChannelLink(channel, clock=self.reactor)
        label = channel.label
        if label == "control":
            from homechannel.server.apps.control import ControlSession

            self._serve(link, ControlSession(self, link, state.get("context")))
            return
        m = LABEL.match(label or "")
        if not m:
            return self._refuse(link, errors.BadRequest(f"unknown channel label {label[:80]!r}", "bad-label"))
        name = m.group(1)
        app = APPS.get(name)
        if app is None:
            return self._refuse(link, errors.NotFound(f"there is no app called {name!r}", "unknown-app"))
        config = getattr(self.config, name)
        if not app.active(config):
            return self._refuse(link, errors.Forbidden(app.off.format(name=name), "app-disabled"))
        if state["channels"] >= MAX_CHANNELS:
            return self._refuse(link, errors.CapacityError(f"at most {MAX_CHANNELS} app channels per session", "capacity"))
        context = state.get("context")
        if getattr(context, "rights", None) is not None:
            # The person's rights, enforced here whatever the page shows (people.py): the
            # app as it runs for them (the files app's roots and read-only flag), or none.
            config = context.rights.app_config(name, config)
            if config is None:
                return self._refuse(link, errors.Forbidden(
                    f"{context.person} may not open the {name} app on this server",
                    "not-allowed"))
        state["channels"] += 1
        link.on_close(lambda: state.__setitem__("channels", state["channels"] - 1))
        channel.binaryType = "arraybuffer"  # ignored by aiortc; harmless
        session = app.session(self, config, link)
        session.person = getattr(context, "person", None)
        log.info("app channel {label} opened", label=label)
        traffic = self.traffic
        link.on_sent = lambda n: traffic.update({(name, "out"): n})
        self._serve(link, session, name)

    def _serve(self, link, session, app=None):
        traffic = self.traffic

        def on_message(message):
            if app is not None:
                traffic[(app, "in")] += len(message)
            try:
                session.message_received(message)
            except Exception:
                log.failure("handling a message on {label}", label=link.label)

        link.channel.on("message", on_message)

    def _refuse(self, link, exc):
        log.info("refused channel {label}: {err}", label=link.label, err=exc)
        send_error_and_close(link, exc)
