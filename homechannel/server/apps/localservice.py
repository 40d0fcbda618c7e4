"""The local services the apps pipe to, and who owns them.

The desktop app pipes the owner's keystrokes to a VNC server, the terminal app
sends the sshd password the owner types, the forward app carries whatever the
native client sends.  On a machine with other users, any of them may listen on
127.0.0.1:5900 while no VNC server runs, or on a forwarded port of 1024 and up,
or on sshd's port when it is one of those, and would get it all.  So every
connection to a local service (:meth:`LocalService.connect`) is checked before a
byte goes either way, and refused (``owner-mismatch``, saying whose socket it
is and what to configure) unless root, the home server's own user or a user in
the app's ``owners`` setting owns the listening socket:

- a UNIX socket (``endpoint = "unix:/path"``, e.g. Xtigervnc's
  ``-rfbunixpath``): the peer credentials of the connected socket
  (``SO_PEERCRED``: the user of the process that listened);
- TCP to an address of this machine: the uid the kernel keeps for the
  accepting side of this very connection (``/proc/net/tcp`` and ``tcp6``: the
  entry whose local address is our peer and whose remote address is our end).
  A connection waiting to be accepted already carries its listening socket's
  uid, and the check is of the connection itself, not of whatever listened a
  moment before, so there is nothing to race;
- TCP to another machine (an address this machine cannot bind) is not checked:
  no local user can listen there.

The ``/proc`` read runs in a thread (``to_thread``); bytes the service sends
meanwhile (a VNC or SSH banner) are held, at most ``MAX_HELD``.
"""

import ipaddress
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.python.failure import Failure

from homechannel import errors
from homechannel.config import parse_local_endpoint, resolve_owners

MAX_HELD = 64 * 1024
_PEERCRED = struct.Struct("3i")     # struct ucred: pid, uid, gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass(frozen=True)
class LocalService:
    """One local service: *what* it is ("the VNC server"), the *setting* that
    configures it ("apps.desktop", for the advice), its *address* (``("unix", path)``
    or ``("tcp", host, port)``, as ``config.parse_local_endpoint`` gives it) and the
    user ids that may own it."""

    what: str
    setting: str
    address: tuple
    owners: frozenset

    @classmethod
    def configured(cls, what, setting, endpoint, owners):
        """From a config's endpoint text (``"unix:/path"`` or ``"HOST:PORT"``) and
        owners (user names or uids): a ConfigError names *setting* on a problem."""
        return cls(what, setting, parse_local_endpoint(endpoint, f"{setting}.endpoint"),
                   resolve_owners(owners, f"{setting}.owners"))

    @classmethod
    def tcp(cls, what, setting, host, port, owners):
        return cls(what, setting, ("tcp", host, port), resolve_owners(owners,
                                                                      f"{setting}.owners"))

    @property
    def where(self) -> str:
        if self.address[0] == "unix":
            return self.address[1]
        _, host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def connect(self, reactor, factory, to_thread, timeout=10):
        """Connect, check the owner, then hand the connection to *factory*'s
        protocol; a Deferred of that protocol, or of the failure: a
        :class:`~homechannel.errors.Forbidden` ``owner-mismatch`` refusal, or the
        connection's own error."""
        if self.address[0] == "unix":
            endpoint = UNIXClientEndpoint(reactor, self.address[1], timeout=timeout)
        else:
            endpoint = HostnameEndpoint(reactor, self.address[1], self.address[2],
                                        timeout=timeout)
        checked = _CheckedFactory(self, factory, to_thread)
        d = endpoint.connect(checked)
        d.addCallback(lambda wrapper: wrapper.ready)
        return d

    # -- the check ----------------------------------------------------------------

    def check(self, transport, to_thread):
        """A Deferred that fires (None) if *transport*'s peer is an allowed owner's
        socket, or fails with the refusal."""
        if self.address[0] == "unix":
            raw = transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _PEERCRED.size)
            return defer.maybeDeferred(self._judge, _PEERCRED.unpack(raw)[1])
        ours, peer = transport.getHost(), transport.getPeer()
        d = to_thread(tcp_owner, (peer.host, peer.port), (ours.host, ours.port))
        return d.addCallback(self._judge, peer.host)

    def _judge(self, uid, peer_host=None):
        if uid is None:
            if not is_local_address(peer_host):
                return None     # another machine's service: no local user listens there
            raise errors.Unavailable(
                f"cannot tell who owns {self.what} at {self.where} (its connection is not "
                "in /proc/net/tcp): refusing to send anything to it", "owner-unknown")
        if uid in self.owners:
            return None
        name = user_name(uid)
        allowed = ", ".join(sorted(user_name(u) for u in self.owners))
        raise errors.Forbidden(
            f"refused to use {self.what} at {self.where}: its socket belongs to {name} "
            f"(uid {uid}), not to {allowed}; another local user may be listening in its "
            f"place. If it is yours, add \"{name}\" to {self.setting} owners in the home "
            "server's config", "owner-mismatch")


class _CheckedFactory(protocol.ClientFactory):
    def __init__(self, service, factory, to_thread):
        self.service, self.factory, self.to_thread = service, factory, to_thread

    def buildProtocol(self, addr):
        inner = self.factory.buildProtocol(addr)
        return None if inner is None else _Checked(self.service, inner, self.to_thread)


class _Checked(protocol.Protocol):
    """Holds a connection until its owner is checked, then hands it to *inner*."""

    def __init__(self, service, inner, to_thread):
        self.service, self.inner, self.to_thread = service, inner, to_thread
        self.state = "checking"     # then "open", "refused" or "lost"
        self.held = []
        self.held_bytes = 0
        self.ready = defer.Deferred()

    def connectionMade(self):
        d = defer.maybeDeferred(self.service.check, self.transport, self.to_thread)
        d.addCallbacks(self._allowed, self._refused)

    def _allowed(self, _):
        if self.state != "checking":
            return
        self.state = "open"
        self.inner.makeConnection(self.transport)
        held, self.held = self.held, []
        for data in held:
            self.inner.dataReceived(data)
        self.ready.callback(self.inner)

    def _refused(self, failure):
        if self.state != "checking":
            return
        self.state = "refused"
        self.transport.abortConnection()
        self.ready.errback(failure)

    def dataReceived(self, data):
        if self.state == "open":
            self.inner.dataReceived(data)
        elif self.state == "checking":
            self.held.append(data)
            self.held_bytes += len(data)
            if self.held_bytes > MAX_HELD:
                self._refused(Failure(errors.Unavailable(
                    f"{self.service.what} at {self.service.where} sent more than "
                    f"{MAX_HELD} bytes before its owner was checked", "backlog")))

    def connectionLost(self, reason):
        if self.state == "open":
            self.inner.connectionLost(reason)
        elif self.state == "checking":
            self.state = "lost"
            self.ready.errback(reason)


# -- who owns a TCP connection's other end (Linux) ----------------------------------


def _proc_forms(ip: str, port: int) -> dict:
    """How /proc/net/tcp (IPv4) and tcp6 write *ip*:*port* (an IPv4 address also as
    IPv4-mapped, for a dual-stack listener): ``{"tcp": text, "tcp6": text}``."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    forms = {}
    if addr.version == 4:
        forms["tcp"] = f"{struct.unpack('=I', addr.packed)[0]:08X}:{port:04X}"
        packed = b"\0" * 10 + b"\xff\xff" + addr.packed
    else:
        if addr.ipv4_mapped is not None:
            forms["tcp"] = _proc_forms(str(addr.ipv4_mapped), port)["tcp"]
        packed = addr.packed
    words = struct.unpack("=4I", packed)
    forms["tcp6"] = "".join(f"{w:08X}" for w in words) + f":{port:04X}"
    return forms


def tcp_owner(peer, ours, proc="/proc/net"):
    """Blocking: the uid of the socket at the other end of the TCP connection from
    *ours* (``(host, port)``) to *peer*, if it is on this machine (in this network
    namespace), else None."""
    local, remote = _proc_forms(*peer), _proc_forms(*ours)
    for table in ("tcp", "tcp6"):
        path = os.path.join(proc, table)
        try:
            with open(path, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == local.get(table) \
                            and fields[2] == remote.get(table):
                        return int(fields[7])
        except FileNotFoundError:
            continue            # no IPv6 on this machine
        except OSError as e:
            raise errors.Unavailable(f"cannot read {path} ({e.strerror}), so cannot tell who "
                                     "owns a local service: refusing to use it",
                                     "owner-unknown") from None
    return None


def is_local_address(host) -> bool:
    """Whether *host* is an address of this machine (one a socket can bind)."""
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return True         # not an address: assume the worst
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(host), 0))
        except OSError:
            return False
    return True
