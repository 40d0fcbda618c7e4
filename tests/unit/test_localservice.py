"""Local services cannot be squatted (``server/apps/localservice.py``): a connection to
the VNC server, sshd or a forwarded port is handed to the app only when root, the home
server's user or a configured owner owns the listening socket; otherwise nothing is
sent either way and the refusal says whose socket it is.  The "other user" here is
``nobody`` (uid 65534): the sockets are made while this process's effective uid is
that user's, as another user's process would make them.  (With real Xtigervnc, sshd,
a throwaway user and the daemons: ``tests/e2e/test_squatting.py``.)"""

import asyncio
import contextlib
import os
import pathlib
import socket

import pytest
from twisted.internet import protocol

from homechannel import errors
from homechannel.config import parse_local_endpoint, resolve_owners
from homechannel.errors import ConfigError
from homechannel.server.apps import localservice
from homechannel.server.apps.localservice import LocalService, tcp_owner
from homechannel.server.statefiles import inline
from homechannel.testing.apps import private_reactor

NOBODY = 65534


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.fail("these tests make sockets as another user: run them as root in "
                    "tests/netns-run")


@contextlib.contextmanager
def as_user(uid):
    """This process's effective uid is *uid* meanwhile: sockets made now are that user's."""
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def tcp_listener(uid=0, family=socket.AF_INET, host="127.0.0.1"):
    with as_user(uid):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind((host, 0))
        s.listen(4)
    return s


def unix_listener(path, uid=0):
    with as_user(uid):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(4)
    return s


class Recorder(protocol.Protocol):
    def __init__(self):
        self.events = []

    def connectionMade(self):
        self.events.append("made")
        self.transport.write(b"keystrokes")

    def dataReceived(self, data):
        self.events.append(data)


def connect(service):
    """``service.connect`` on a private reactor: ``(Recorder or the failure's
    exception)``."""
    async def main():
        with private_reactor() as reactor:
            recorder = Recorder()
            d = service.connect(reactor, protocol.Factory.forProtocol(lambda: recorder),
                                inline, timeout=5)
            try:
                proto = await d.asFuture(asyncio.get_running_loop())
            except Exception as e:
                return e
            await asyncio.sleep(0.05)
            proto.transport.loseConnection()
            await asyncio.sleep(0.05)           # the FIN goes out before the reactor stops
            return proto
    return asyncio.run(asyncio.wait_for(main(), 30))


def accepted_bytes(listener, wait=1.0):
    """What the service's side received on its first connection (within *wait* s)."""
    conn, _ = listener.accept()
    conn.settimeout(wait)
    data = b""
    with conn:
        try:
            while chunk := conn.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def test_the_kernel_tells_who_owns_the_other_end_of_a_tcp_connection():
    for uid, family, host in [(NOBODY, socket.AF_INET, "127.0.0.1"), (0, socket.AF_INET,
                              "127.0.0.1"), (NOBODY, socket.AF_INET6, "::1")]:
        with tcp_listener(uid, family, host) as listener:
            with socket.create_connection(listener.getsockname()[:2]) as client:
                assert tcp_owner(listener.getsockname()[:2], client.getsockname()[:2]) == uid
    # A dual-stack listener ("::") accepting an IPv4 client: the IPv4-mapped entry.
    with tcp_listener(NOBODY, socket.AF_INET6, "::") as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert tcp_owner(("127.0.0.1", port), client.getsockname()) == NOBODY


def test_a_tcp_port_another_user_listens_on_gets_nothing():
    """How this was shown to fail: with ``LocalService.check`` passing every socket,
    the recorder was connected and "keystrokes" reached the other user's listener."""
    with tcp_listener(NOBODY) as listener:
        port = listener.getsockname()[1]
        service = LocalService.tcp("the VNC server", "apps.desktop", "127.0.0.1", port, ())
        result = connect(service)
        assert isinstance(result, errors.Forbidden) and result.code == "owner-mismatch"
        assert str(result) == (
            f"refused to use the VNC server at 127.0.0.1:{port}: its socket belongs to "
            f"nobody (uid {NOBODY}), not to root; another local user may be listening in "
            "its place. If it is yours, add \"nobody\" to apps.desktop owners in the home "
            "server's config")
        assert accepted_bytes(listener) == b""


def test_a_configured_owner_or_root_is_served_and_bytes_flow_both_ways():
    for uid, owners in [(0, ()), (NOBODY, ("nobody",)), (NOBODY, (NOBODY,))]:
        with tcp_listener(uid) as listener:
            port = listener.getsockname()[1]
            service = LocalService.tcp("sshd", "apps.terminal", "127.0.0.1", port, owners)
            result = connect(service)
            assert isinstance(result, Recorder) and result.events[0] == "made", result
            assert accepted_bytes(listener) == b"keystrokes"


@pytest.fixture
def shared(tmp_path):
    """A directory anyone may write to (pytest's tmp_path is not reachable by others)."""
    import shutil
    import tempfile

    where = tempfile.mkdtemp(prefix="hc-shared-", dir="/tmp")
    os.chmod(where, 0o1777)
    yield pathlib.Path(where)
    shutil.rmtree(where, ignore_errors=True)


def test_a_unix_socket_is_judged_by_its_peer_credentials(tmp_path, shared):
    """How this was shown to fail: with the check passing every socket, the recorder
    connected to the socket "nobody" made in a directory anyone may write to."""
    with unix_listener(shared / "vnc.sock", NOBODY) as listener:
        service = LocalService.configured("the VNC server", "apps.desktop",
                                          f"unix:{shared}/vnc.sock", ())
        result = connect(service)
        assert isinstance(result, errors.Forbidden) and result.code == "owner-mismatch"
        assert f"the VNC server at {shared}/vnc.sock: its socket belongs to nobody" \
            in str(result)
        assert accepted_bytes(listener) == b""
    with unix_listener(tmp_path / "mine.sock") as listener:
        service = LocalService.configured("the VNC server", "apps.desktop",
                                          f"unix:{tmp_path}/mine.sock", ())
        result = connect(service)
        assert isinstance(result, Recorder) and result.events[0] == "made"
        assert accepted_bytes(listener) == b"keystrokes"


def test_the_services_first_bytes_wait_for_the_check_and_are_not_lost():
    """The service speaks first (a VNC or SSH banner) while the owner is checked in a
    thread: the bytes are held and handed over after connectionMade.  How this was
    shown to fail: with ``_Checked.dataReceived`` dropping them, the banner was lost."""
    with tcp_listener() as listener:
        port = listener.getsockname()[1]
        service = LocalService.tcp("sshd", "apps.terminal", "127.0.0.1", port, ())
        checks = []

        def slow_thread(f, *args):
            import threading

            from twisted.internet import defer
            d = defer.Deferred()
            loop = asyncio.get_running_loop()
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-banner\r\n")
            checks.append(conn)

            def run():
                result = f(*args)
                loop.call_soon_threadsafe(d.callback, result)
            threading.Timer(0.2, run).start()
            return d

        async def main():
            with private_reactor() as reactor:
                recorder = Recorder()
                d = service.connect(reactor, protocol.Factory.forProtocol(lambda: recorder),
                                    slow_thread, timeout=5)
                await d.asFuture(asyncio.get_running_loop())
                await asyncio.sleep(0.05)
                recorder.transport.loseConnection()
                await asyncio.sleep(0.05)
                return recorder

        recorder = asyncio.run(asyncio.wait_for(main(), 30))
        assert recorder.events == ["made", b"SSH-2.0-banner\r\n"]
        checks[0].close()


def test_another_machines_service_is_not_checked_but_a_local_unknown_one_is_refused():
    service = LocalService.tcp("local port 22", "apps.forward", "127.0.0.1", 22, ())
    assert service._judge(None, "192.0.2.1") is None          # TEST-NET: not this machine
    with pytest.raises(errors.Unavailable, match="cannot tell who owns local port 22"):
        service._judge(None, "127.0.0.1")
    assert localservice.is_local_address("127.0.0.1") and localservice.is_local_address("::1")
    assert not localservice.is_local_address("192.0.2.1")


def test_endpoints_and_owners_in_the_config():
    assert parse_local_endpoint("unix:/run/vnc.sock", "k") == ("unix", "/run/vnc.sock")
    assert parse_local_endpoint("127.0.0.1:5900", "k") == ("tcp", "127.0.0.1", 5900)
    assert parse_local_endpoint("[::1]:5900", "k") == ("tcp", "::1", 5900)
    for bad in ("unix:relative.sock", "5900", "unix:", ""):
        with pytest.raises(ConfigError, match="^k"):
            parse_local_endpoint(bad, "k")
    assert resolve_owners(("nobody", 1234), "k") == {0, os.geteuid(), NOBODY, 1234}
    with pytest.raises(ConfigError, match="k: there is no user 'no-such-user-xyz'"):
        resolve_owners(("no-such-user-xyz",), "k")
    with pytest.raises(ConfigError, match="k lists user names or user ids, not -1"):
        resolve_owners((-1,), "k")
