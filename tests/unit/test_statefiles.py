"""The home server's state files are written off the reactor: ``statefiles.FileWriter``
(one write at a time per file, the newest content wins) under the status file and
the failover file."""

import json
import os
import queue
import stat
import threading

from twisted.internet import task
from twisted.python.threadpool import ThreadPool

from homechannel.server.statefiles import FailoverFile, FileWriter, reactor_threads
from homechannel.server.status import StatusFile
from homechannel.testing.threads import ManualThreads


def test_one_write_at_a_time_and_the_newest_wins(tmp_path):
    """While a write runs, later ones wait, and only the newest of them is written;
    every caller learns when its content (or newer) is in the file.  Without the
    serialisation two writes of one file would run at once (their temporary files
    share a name); without the coalescing every waiting write would run."""
    path = str(tmp_path / "f.json")
    threads = ManualThreads()
    writer = FileWriter(path, threads)
    done = []
    for data in (b"one", b"two", b"three"):
        writer.write(data).addCallback(lambda _, data=data: done.append(data))
    assert len(threads.jobs) == 1 and threads.jobs[0][1] == (path, b"one")
    threads.finish()
    assert open(path, "rb").read() == b"one" and done == [b"one"]
    assert len(threads.jobs) == 1 and threads.jobs[0][1] == (path, b"three")
    threads.finish()
    assert open(path, "rb").read() == b"three" and done == [b"one", b"two", b"three"]
    assert threads.jobs == [] and writer.writes == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_write_asked_for_by_a_callback_waits_for_the_next_one(tmp_path):
    path = str(tmp_path / "f.json")
    threads = ManualThreads()
    writer = FileWriter(path, threads)
    writer.write(b"one")
    writer.write(b"two").addCallback(lambda _: writer.write(b"three"))
    threads.finish()                       # "one"; "two" starts
    threads.finish()                       # "two"; its callback asks for "three"
    assert len(threads.jobs) == 1 and threads.jobs[0][1] == (path, b"three")
    threads.finish()
    assert open(path, "rb").read() == b"three"


def test_a_failed_write_fails_its_callers_and_the_next_one_still_runs(tmp_path):
    a_file = str(tmp_path / "a-file")
    open(a_file, "w").close()
    threads = ManualThreads()
    writer = FileWriter(os.path.join(a_file, "f.json"), threads)    # under a file: ENOTDIR
    failures = []
    writer.write(b"one").addErrback(failures.append)
    threads.finish()
    assert len(failures) == 1 and failures[0].check(OSError)
    writer.write(b"two").addErrback(failures.append)
    assert len(threads.jobs) == 1


def test_reactor_threads_runs_the_write_in_the_reactor_s_thread_pool(tmp_path):
    """The real ``to_thread`` the tap passes: the write runs in another thread than
    the one that asked (the reactor's), and the result comes back through
    ``callFromThread``."""

    class Reactor:
        """The two calls ``deferToThreadPool`` makes, with a real thread pool."""

        def __init__(self):
            self.pool = ThreadPool(1, 1)
            self.pool.start()
            self.from_threads = queue.Queue()

        def getThreadPool(self):
            return self.pool

        def callFromThread(self, f, *args, **kw):
            self.from_threads.put((f, args, kw))

    reactor = Reactor()
    seen = []

    def write(path, data):
        seen.append(threading.current_thread())
        with open(path, "wb") as f:
            f.write(data)

    try:
        path = str(tmp_path / "f")
        d = FileWriter(path, reactor_threads(reactor), write=write).write(b"x")
        f, args, kw = reactor.from_threads.get(timeout=30)
        assert not d.called                   # not before the reactor thread runs it
        f(*args, **kw)
        assert d.called and open(path, "rb").read() == b"x"
        assert seen and seen[0] is not threading.current_thread()
    finally:
        reactor.pool.stop()


def test_failover_file_round_trip(tmp_path):
    from homechannel import crypto

    key = crypto.IdentityKey.generate().public_raw
    path = str(tmp_path / "failover-coordinator.json")
    failover = FailoverFile(path)
    assert failover.load() is None
    done = []
    failover.save("c.example", 7777, key).addCallback(done.append)
    assert done == [None]
    assert FailoverFile(path).load() == ("c.example", 7777, key)
    assert json.load(open(path))["port"] == 7777


class Udp:
    def __init__(self):
        self.state = {"state": "up"}

    def status(self):
        return dict(self.state)


def test_status_file_is_written_through_its_thread(tmp_path):
    """Every write of ``status.json`` goes through *to_thread*; nothing touches the
    file on the caller's side."""
    path = str(tmp_path / "status.json")
    threads = ManualThreads()
    status = StatusFile(path, Udp(), None, task.Clock(), to_thread=threads)
    status.changed()
    assert not os.path.exists(path) and len(threads.jobs) == 1
    threads.finish()
    doc = json.load(open(path))
    assert doc["state"] == "up" and doc["live_sessions"] == 0


def test_status_file_write_failure_is_a_warning(tmp_path):
    from twisted.logger import LogLevel, globalLogPublisher

    blocker = tmp_path / "file"
    blocker.write_text("")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        status = StatusFile(str(blocker / "status.json"), Udp(), None, task.Clock())
        status.changed()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if e.get("log_format", "").startswith("cannot write the status")]
    assert len(warned) == 1 and warned[0]["log_level"] == LogLevel.warn

