"""The terminal app: the home server is an SSH client to the local sshd.

sshd stays the authority: the browser user types a user name and answers
sshd's password or keyboard-interactive prompts inside the terminal (the line
editing for those prompts happens here, on the home server, so the secrets go
straight from the datachannel into the SSH transport).  The sshd host key is
trusted on first use and remembered in ``known_hosts``; a changed key refuses
the connection with a message saying what to do.

Optionally (``[apps.terminal] identity_key``), the home server first offers an
SSH key of its own (created on first use if the file is missing; its public
half is ``<identity_key>.pub``), so sshd setups with passwords switched off
work.  The trade-off: whoever gets through HomeChannel's password gets a shell
as any user that authorized that key, without typing that user's password.
Without the key, or if sshd does not accept it, the password prompts follow.
The key is loaded (or created) once per home server, in a thread
(:class:`SshKey`): never on the reactor, which also runs every transfer.

Frames (``docs/protocol.md`` section 3): the client sends REQ
``{"op":"open","cols","rows"[,"username"]}`` with id *s*; terminal bytes go
both ways as DATA frames with id *s*; REQ ``{"op":"resize","cols","rows"}``
sends an SSH window-change; the server ends with END ``{"exitStatus"}`` (or
ERR) on id *s* and closes the channel.

Flow control: SSH→browser, the SSH TCP transport is the channel link's
producer, paused while the browser is behind (sshd then blocks on its
socket).  Browser→SSH, conch buffers what the SSH window does not take; more
than ``MAX_INPUT_BACKLOG`` bytes there closes the session.
"""

import os

from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.error import HostKeyChanged
from twisted.conch.ssh import channel, connection, keys, session as sshsession, transport, userauth
from twisted.internet import defer, protocol, threads
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from homechannel import errors, keyfiles
from homechannel.ops.logfilter import protocol_logger
from homechannel.ops.logsafe import Logger
from homechannel.protocol import frames
from homechannel.server.apps.localservice import LocalService
from homechannel.server.statefiles import inline

log = Logger()

MAX_INPUT_BACKLOG = 1024 * 1024
MAX_LINE = 1024


def _dim(body, name, default):
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise errors.BadRequest(f"{name!r} must be an integer 1..1000", "bad-request")
    return value


class HostKeyStore:
    """Trust-on-first-use over an OpenSSH ``known_hosts`` file (conch's parser)."""

    def __init__(self, path):
        self.path = path

    def host_name(self, host, port):
        return (host if port == 22 else f"[{host}]:{port}").encode("ascii")

    def check(self, host, port, key_blob):
        """Return ``"known"`` or ``"added"``; raise Forbidden if the key changed."""
        key = keys.Key.fromString(key_blob)
        name = self.host_name(host, port)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        kh = KnownHostsFile.fromPath(FilePath(self.path))
        try:
            if kh.hasHostKey(name, key):
                return "known"
        except HostKeyChanged:
            raise errors.Forbidden(f"The SSH host key of {name.decode()} has CHANGED (it now offers "
                f"{key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)}). Refusing to connect. "
                f"If sshd's host key was replaced on purpose, remove the line for {name.decode()} from "
                f"{self.path} on the home server and reconnect.", "host-key-changed") from None
        kh.addHostKey(name, key)
        kh.save()
        return "added"


class _Transport(transport.SSHClientTransport):
    _log = protocol_logger()     # conch's per-packet debug lines stay out of the log

    def __init__(self, term):
        self.term = term

    def verifyHostKey(self, hostKey, fingerprint):
        return self.term.verify_host_key(hostKey)

    def connectionSecure(self):
        self.term.ssh_transport = self
        self.requestService(_UserAuth(self.term.username.encode("utf-8"), _Connection(self.term), self.term))

    def receiveError(self, reasonCode, description):
        self.term.ssh_error = description.decode("utf-8", "replace")

    def connectionLost(self, reason):
        transport.SSHClientTransport.connectionLost(self, reason)
        self.term.ssh_lost(reason)


_PUBLIC_WARNED: set[str] = set()     # key paths whose missing .pub could not be written (logged once)


def load_identity(path):
    """The SSH key at *path* (OpenSSH or PEM private key, unencrypted, mode 0600);
    created as a new Ed25519 key (``keyfiles.write_secret_file``: mode 0600, never
    over an existing file) with ``<path>.pub`` (mode 0644) if the file does not
    exist; ``<path>.pub`` is written again whenever it is missing (a failure to is
    logged once per process: the key still works).  Every problem is an
    ``Unavailable`` with the code ``bad-key``."""
    try:
        if not os.path.lexists(path):
            return _create_identity(path)
        with open(path, "rb") as f:
            keyfiles.check_private_mode(path, os.fstat(f.fileno()).st_mode,
                                      "the terminal's SSH key")
            data = f.read()
        key = keys.Key.fromString(data)
    except errors.KeyFileError as e:
        raise errors.Unavailable(str(e), "bad-key") from None
    except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise errors.Unavailable(f"cannot use the terminal's SSH key {path} ({e}); it must be an "
                                 f"unencrypted private key", "bad-key") from None
    if not os.path.lexists(path + ".pub"):      # an earlier attempt could not write it
        try:
            _write_public(path, key)
        except OSError as e:
            if path not in _PUBLIC_WARNED:
                _PUBLIC_WARNED.add(path)
                log.warn("terminal: cannot write {path}.pub ({error}); the key still works",
                         path=path, error=e)
    return key


class SshKey:
    """The terminal's own SSH key (``identity_key``), shared by every session of a
    home server: loaded by :func:`load_identity` once, in *reactor*'s thread pool.
    A failure is not kept: the next session tries again (so a fixed file works
    without a restart)."""

    def __init__(self, path, reactor):
        self.path = path
        self._reactor = reactor
        self._key = None
        self._waiting = []
        self.loads = 0          # started

    def get(self):
        """A Deferred of the ``keys.Key``; fails with ``Unavailable`` (``bad-key``)."""
        if self._key is not None:
            return defer.succeed(self._key)
        d = defer.Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:
            self.loads += 1
            threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                      load_identity, self.path).addBoth(self._loaded)
        return d

    def _loaded(self, result):
        waiting, self._waiting = self._waiting, []
        if not isinstance(result, Failure):
            self._key = result
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


def _create_identity(path):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    keyfiles.write_secret_file(path, key.toString("openssh"))
    _write_public(path, key)
    log.info("terminal: created the SSH key {path}; to let the terminal sign in with it, "
             "add {path}.pub to ~/.ssh/authorized_keys of the users concerned", path=path)
    return key


def _write_public(path, key):
    """``<path>.pub`` at mode 0644 whatever the umask, as ssh-keygen writes it."""
    public = key.public().toString("openssh", comment=b"homechannel-terminal") + b"\n"
    keyfiles.replace_file(path + ".pub", public, 0o644)


class _UserAuth(userauth.SSHUserAuthClient):
    _log = protocol_logger()
    preferredOrder = [b"publickey", b"password", b"keyboard-interactive"]

    def __init__(self, user, instance, term):
        userauth.SSHUserAuthClient.__init__(self, user, instance)
        self.term = term
        self.asked = False
        self.offered = False  # the home server's key was offered
        self.hinted = False

    def getPublicKey(self):
        # the home server's own key, once (config: apps.terminal.identity_key)
        if self.offered or self.term.identity is None:
            return None
        self.offered = True
        return self.term.identity.public()

    def getPrivateKey(self):
        return defer.succeed(self.term.identity)

    def getPassword(self, prompt=None):
        self.key_refused()
        if self.asked:
            self.term.write_text("Permission denied, please try again.\r\n")
        self.asked = True
        if prompt is None:
            prompt = f"{self.term.username}@{self.term.host}'s password: "
        else:
            prompt = prompt.decode("utf-8", "replace") if isinstance(prompt, bytes) else prompt
        return self.term.ask(prompt, echo=False).addCallback(lambda s: s.encode("utf-8"))

    def key_refused(self):
        if self.offered and not self.hinted:
            self.hinted = True
            self.term.write_text(f"(sshd did not accept the home server's key for {self.term.username}: "
                                 f"add {self.term.config.identity_key}.pub to its ~/.ssh/authorized_keys)\r\n")

    @defer.inlineCallbacks
    def getGenericAnswers(self, name, instruction, prompts):
        self.key_refused()
        for text in (name, instruction):
            if text:
                self.term.write_text(text.decode("utf-8", "replace") + "\r\n")
        answers = []
        for prompt, echo in prompts:
            answer = yield self.term.ask(prompt.decode("utf-8", "replace"), echo=bool(echo))
            answers.append(answer)
        self.asked = True
        return answers


class _Connection(connection.SSHConnection):
    _log = protocol_logger()

    def __init__(self, term):
        connection.SSHConnection.__init__(self)
        self.term = term

    def serviceStarted(self):
        connection.SSHConnection.serviceStarted(self)
        self.term.authenticated(self)


class _Shell(channel.SSHChannel):
    _log = protocol_logger()
    name = b"session"

    def __init__(self, term, **kw):
        channel.SSHChannel.__init__(self, **kw)
        self.term = term
        self.exit_status = None

    def channelOpen(self, data):
        t = self.term
        pty = sshsession.packRequest_pty_req(b"xterm-256color", (t.rows, t.cols, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallbacks(lambda _: t.shell_started(self), t.shell_failed)

    def openFailed(self, reason):
        self.term.shell_failed(reason)

    def dataReceived(self, data):
        self.term.output(data)

    def extReceived(self, dataType, data):
        self.term.output(data)

    def request_exit_status(self, data):
        import struct

        self.exit_status = struct.unpack(">L", data[:4])[0]
        return True

    def closed(self):
        self.term.shell_ended(self.exit_status)


class TerminalSession:
    """One ``app:terminal:<n>`` channel."""

    def __init__(self, config, link, reactor, known_hosts, ssh_key=None, service=None,
                 to_thread=inline):
        """*ssh_key*: the home server's :class:`SshKey`, when ``identity_key`` is set;
        *service*: sshd as a :class:`~.localservice.LocalService` (by default from
        *config*), whose owner is checked, in *to_thread*, before the SSH version
        string is sent."""
        self.config = config
        self.link = link
        self.reactor = reactor
        self.host = config.host
        self.port = config.port
        self.service = service or LocalService.tcp("sshd", "apps.terminal", config.host,
                                                   config.port, config.owners)
        self.to_thread = to_thread
        self.known = HostKeyStore(known_hosts)
        self.ssh_key = ssh_key
        self.identity = None  # the home server's SSH key, once loaded (ssh_key)
        self.rid = None
        self.cols = 80
        self.rows = 24
        self.username = None
        self.state = "new"  # new, login, connecting, prompt, shell, done
        self.line = bytearray()
        self.echo = True
        self.answer = None  # Deferred for the pending prompt
        self.tcp = None
        self.ssh_transport = None
        self.ssh_error = None
        self.conn = None
        self.shell = None
        link.on_close(self.channel_closed)

    # -- frames ---------------------------------------------------------------

    def message_received(self, message):
        try:
            frame = frames.decode(message)
        except errors.ProtocolError as e:
            self.link.send(frames.encode(frames.ERR, 0, frames.error_body(e)))
            return
        try:
            self.frame_received(frame)
        except errors.HomeChannelError as e:
            self.link.send(frames.encode(frames.ERR, frame.id, frames.error_body(e)))

    def frame_received(self, frame):
        if frame.type == frames.REQ:
            op = frame.body.get("op")
            if op == "open":
                if self.rid is not None:
                    raise errors.BadRequest("this channel already has a terminal", "bad-request")
                self.cols = _dim(frame.body, "cols", 80)
                self.rows = _dim(frame.body, "rows", 24)
                self.rid = frame.id
                user = frame.body.get("username")
                if isinstance(user, str) and user and len(user) < 256 and "\x00" not in user:
                    self.username = user
                    self.connect()
                else:
                    self.state = "login"
                    self.write_text(f"HomeChannel terminal: SSH to {self.host}:{self.port}\r\nlogin as: ")
                return
            if op == "resize":
                self.cols = _dim(frame.body, "cols", self.cols)
                self.rows = _dim(frame.body, "rows", self.rows)
                if self.shell is not None:
                    self.conn.sendRequest(self.shell, b"window-change", sshsession.packRequest_window_change(
                        (self.rows, self.cols, 0, 0)))
                self.link.send(frames.encode(frames.RES, frame.id, {"ok": True}))
                return
            raise errors.BadRequest(f"unknown terminal operation {op!r}", "unknown-op")
        if frame.type == frames.DATA and frame.id == self.rid:
            self.input(frame.data)
            return
        if frame.type == frames.CANCEL and frame.id == self.rid:
            self.link.close()
            return
        if frame.type in (frames.ACK, frames.RES, frames.ERR):
            return
        raise errors.ProtocolError(f"unexpected {frames.TYPES[frame.type]} frame for request {frame.id}", "unexpected-frame")

    # -- output ------------------------------------------------------------------

    def output(self, data):
        if self.rid is None:
            return
        view = memoryview(data)
        for i in range(0, len(data), frames.CHUNK):
            self.link.send(frames.encode(frames.DATA, self.rid, data=view[i:i + frames.CHUNK]))

    def write_text(self, text):
        self.output(text.encode("utf-8"))

    def fail(self, exc):
        """Show *exc* in the terminal, send ERR and close the channel."""
        if self.state == "done":
            return
        self.state = "done"
        self.write_text("\r\n" + str(exc) + "\r\n")
        if self.rid is not None:
            self.link.send(frames.encode(frames.ERR, self.rid, frames.error_body(exc)))
        self.link.close()
        if self.tcp is not None:
            self.tcp.loseConnection()

    # -- input and the local line editor ------------------------------------------

    def input(self, data):
        if self.state == "shell":
            self.shell.write(data)
            if len(self.shell.buf) > MAX_INPUT_BACKLOG:
                self.fail(errors.Unavailable("sshd is not reading the input; closing", "backlog"))
            return
        if self.state not in ("login", "prompt"):
            return
        for b in data:
            if b in (13, 10):
                line, self.line = bytes(self.line), bytearray()
                self.write_text("\r\n")
                self.submit(line.decode("utf-8", "replace"))
                return  # drop typed-ahead bytes after a line
            if b in (8, 127):
                if self.line:
                    # remove one UTF-8 character
                    while self.line and (self.line[-1] & 0xC0) == 0x80:
                        self.line.pop()
                    if self.line:
                        self.line.pop()
                    if self.echo:
                        self.output(b"\b \b")
            elif b == 3 or b == 4:  # Ctrl-C / Ctrl-D
                self.fail(errors.BadRequest("sign-in cancelled", "cancelled"))
                return
            elif b == 21:  # Ctrl-U
                if self.echo:
                    self.output(b"\b \b" * len(self.line.decode("utf-8", "replace")))
                self.line = bytearray()
            elif b >= 32 and len(self.line) < MAX_LINE:
                self.line.append(b)
                if self.echo:
                    self.output(bytes([b]))

    def submit(self, line):
        if self.state == "login":
            if not line.strip():
                self.write_text("login as: ")
                return
            self.username = line.strip()
            self.connect()
        elif self.state == "prompt":
            self.state = "connecting"
            d, self.answer = self.answer, None
            d.callback(line)

    def ask(self, prompt, echo):
        """Show *prompt*, read one line (echoed or not); a Deferred of str."""
        self.state = "prompt"
        self.echo = echo
        self.line = bytearray()
        self.answer = defer.Deferred()
        self.write_text(prompt)
        return self.answer

    # -- SSH ---------------------------------------------------------------------

    def connect(self):
        self.state = "connecting"
        self.echo = True
        if self.ssh_key is not None and self.identity is None:
            self.ssh_key.get().addCallbacks(self._key_loaded, self._key_failed)
            return
        self._connect_ssh()

    def _key_loaded(self, key):
        if self.state == "done" or self.link.closed:
            return
        self.identity = key
        self._connect_ssh()

    def _key_failed(self, f):
        if f.check(errors.HomeChannelError):
            self.fail(f.value)
        else:
            log.failure("terminal: loading the SSH key {path}", f, path=self.ssh_key.path)
            self.fail(errors.Unavailable("cannot load the terminal's SSH key", "bad-key"))

    def _connect_ssh(self):
        d = self.service.connect(self.reactor, protocol.Factory.forProtocol(
            lambda: _Transport(self)), self.to_thread)

        def connected(proto):
            self.tcp = proto.transport
            if self.state == "done" or self.link.closed:
                proto.transport.loseConnection()
                return
            self.link.registerProducer(proto.transport, True)

        def failed(f):
            if f.check(errors.HomeChannelError):        # the owner check refused it
                log.warn("terminal: {err}", err=f.value)
                self.fail(f.value)
                return
            self.fail(errors.Unavailable(f"cannot reach sshd at {self.host}:{self.port} ({f.getErrorMessage()}); "
                                f"is it running?", "connect-failed"))

        d.addCallbacks(connected, failed)

    def verify_host_key(self, blob):
        # Synchronously (a small file): conch processes sshd's NEWKEYS, sent in
        # the same segment as the key exchange reply, right after this returns;
        # a Deferred that fires later (a thread) desynchronises the transport.
        d = defer.maybeDeferred(self.known.check, self.host, self.port, blob)

        def checked(result):
            if result == "added":
                fp = keys.Key.fromString(blob).fingerprint(keys.FingerprintFormats.SHA256_BASE64)
                self.write_text(f"New host key for {self.host}:{self.port} remembered: {fp}\r\n")
            return True

        def refused(f):
            self.fail(f.value if isinstance(f.value, errors.HomeChannelError)
                      else errors.Unavailable("cannot check the host key", "host-key"))
            return f

        return d.addCallbacks(checked, refused)

    def authenticated(self, conn):
        self.conn = conn
        conn.openChannel(_Shell(self, conn=conn))

    def shell_started(self, shell):
        if self.state == "done":
            return
        self.shell = shell
        self.state = "shell"
        self.link.send(frames.encode(frames.RES, self.rid, {"ok": True, "user": self.username}))

    def shell_failed(self, failure):
        self.fail(errors.Unavailable(f"sshd refused the shell: {failure.getErrorMessage()}", "shell-failed"))

    def shell_ended(self, status):
        if self.state == "done":
            return
        self.state = "done"
        self.link.send(frames.encode(frames.END, self.rid, {"exitStatus": status}))
        self.link.close()
        if self.tcp is not None:
            self.tcp.loseConnection()

    def ssh_lost(self, reason):
        self.link.unregisterProducer()
        if self.state == "done":
            return
        if self.state == "shell":
            self.shell_ended(None)
            return
        why = self.ssh_error or reason.getErrorMessage()
        if self.conn is None:
            msg = f"sign-in failed: {why}"
            if self.identity is not None:
                msg += (f" (the home server offered its key; is {self.config.identity_key}.pub in "
                        f"~/.ssh/authorized_keys of {self.username}?)")
            code = "auth-failed"
        else:
            msg = f"SSH connection closed: {why}"
            code = "closed"
        self.fail(errors.Forbidden(msg, code))

    def channel_closed(self):
        self.state = "done"
        if self.answer is not None and not self.answer.called:
            d, self.answer = self.answer, None
            d.addErrback(lambda _: None)
            d.errback(defer.CancelledError())
        if self.tcp is not None:
            self.tcp.loseConnection()
