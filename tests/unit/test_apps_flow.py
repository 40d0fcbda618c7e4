"""ChannelLink flow control: a stalled reader pauses the producer (e.g. the VNC
TCP transport) and keeps the buffered bytes bounded; draining resumes it."""

import socket

from twisted.internet import defer

from homechannel.server.apps.channel import ChannelLink
from homechannel.server.apps.localservice import LocalService
from homechannel.server.apps.pipe import TCPPipe
from homechannel.server.statefiles import inline
from homechannel.testing.apps import FakeChannel


class Producer:
    def __init__(self, link, chunk=65536):
        self.link = link
        self.chunk = chunk
        self.paused = False
        self.pauses = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass

    def pump(self, limit=1000):
        """Produce until paused (a TCP transport stops reading when paused)."""
        n = 0
        while not self.paused and n < limit:
            self.link.write(b"x" * self.chunk)
            n += 1
        return n


def test_stalled_reader_pauses_the_producer_and_bounds_memory():
    ch = FakeChannel()
    link = ChannelLink(ch, high=1 << 20, low=256 << 10)
    p = Producer(link)
    link.registerProducer(p, True)
    produced = p.pump()
    assert p.paused and produced < 1000
    assert ch.bufferedAmount <= (1 << 20) + p.chunk
    # a partial drain above the low mark does not resume
    ch.drain(200 << 10)
    assert p.paused
    ch.drain()
    assert not p.paused
    p.pump()
    assert ch.max_buffered <= (1 << 20) + p.chunk


def test_wait_writable_and_close():
    ch = FakeChannel()
    link = ChannelLink(ch, high=1000, low=100)
    link.send(b"x" * 500)
    d = link.wait_writable()
    assert not d.called
    ch.drain(450)
    assert d.called
    link.send(b"x" * 500)
    d2 = link.wait_writable()
    ch.close()
    failures = []
    d2.addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)
    assert link.send(b"late") is False


class FakeSocket:
    def __init__(self):
        self.options = {}

    def setsockopt(self, level, name, value):
        self.options[(level, name)] = value


class FakeTransport:
    def __init__(self):
        self.written = []
        self.producer = None
        self.aborted = False
        self.paused = False
        self.socket = FakeSocket()

    def getHandle(self):
        return self.socket

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def write(self, data):
        self.written.append(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def abortConnection(self):
        self.aborted = True

    def loseConnection(self):
        pass


def test_pipe_ties_tcp_reading_to_the_channel_and_bounds_the_other_way():
    ch = FakeChannel("app:desktop:1")
    link = ChannelLink(ch, high=1 << 20, low=256 << 10)
    pipe = TCPPipe(link, None, LocalService.tcp("the VNC server", "apps.desktop", "127.0.0.1",
                                                5900, ()), inline)
    t = FakeTransport()
    pipe.tcp_connected(t)
    assert ch.sent[0] == '{"op": "open", "port": 5900}'
    for _ in range(40):
        if t.paused:
            break
        pipe.tcp_data(b"v" * 65536)
    assert t.paused  # VNC output stops being read while the browser is behind
    ch.drain()
    assert not t.paused
    # browser -> TCP: if the TCP side stops draining, the backlog is capped
    t.producer.pauseProducing()
    for _ in range(200):
        if ch.readyState != "open":
            break
        pipe.channel_data(b"k" * 65536)
    assert t.aborted and ch.readyState == "closed"
    assert sum(map(len, t.written)) <= 9 * 1024 * 1024


def test_desktop_reads_the_vnc_socket_only_while_little_is_queued(tmp_path):
    """The desktop app's channel (made by the AppHost's app table, as when the browser
    opens it) stops reading the VNC server's socket once more than ``desktop.HIGH``
    (64 KiB, not the 1 MiB other pipes queue) waits in the channel, and reads
    again once it drained to ``desktop.LOW``; the socket's receive buffer is
    ``desktop.RECEIVE_BUFFER``: screen updates wait in the VNC server, where it
    sees the backlog, not here where they go stale.  How this was shown to fail:
    without the ``set_marks`` in ``apps._desktop``, the socket was read until 1 MiB
    was queued."""
    from twisted.internet.testing import MemoryReactorClock

    from homechannel.config import DesktopApp, ServerApps
    from homechannel.server.apps import APPS, AppHost, desktop

    host = AppHost(ServerApps(desktop=DesktopApp(endpoint="127.0.0.1:5901")), "S",
                   str(tmp_path), MemoryReactorClock())
    ch = FakeChannel("app:desktop:1")
    # the desktop row of the app table, as AppHost.channel_opened uses it
    session = APPS["desktop"].session(host, host.config.desktop, ChannelLink(ch))
    t = FakeTransport()
    session.pipe.tcp_connected(t)    # (the owner check passed)
    assert ch.sent[0] == '{"op": "open", "port": 5901}'
    assert t.socket.options == {(socket.SOL_SOCKET, socket.SO_RCVBUF): desktop.RECEIVE_BUFFER}
    block = 16 * 1024
    for _ in range(100):
        if t.paused:
            break
        session.pipe.tcp_data(b"v" * block)
    assert t.paused
    assert desktop.HIGH < ch.bufferedAmount <= desktop.HIGH + block, ch.bufferedAmount
    ch.drain(ch.bufferedAmount - desktop.LOW - 1)
    assert t.paused          # not yet at the low mark
    ch.drain()
    assert not t.paused      # drained: the socket is read again
