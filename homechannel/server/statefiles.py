"""Files the running home server writes, written off the reactor.

``keyfiles.replace_secret_file`` writes a temporary file, fsyncs it and moves it
into place, so a crash never leaves a torn file.  The fsync can take a long
time on a busy disk, and the reactor also runs aiortc's SCTP: every transfer
would stall meanwhile.  So a :class:`FileWriter` runs each write in a thread
(the reactor's pool, ``to_thread``), one at a time for each file (the
temporary file's name is per process, so two writes of one file must never
overlap), and the newest content wins: what is asked for while a write runs
waits for it, and replaces anything else that was waiting.

- :class:`FileWriter` -- one file, written as above.
- :class:`FailoverFile` -- ``failover-coordinator.json``: where a completed
  move points (read at start, written after a move).
- ``status.json`` is :class:`homechannel.server.status.StatusFile`'s.
"""

import json
from functools import partial

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from homechannel import crypto, keyfiles
from homechannel.crypto import b64u_encode
from homechannel.errors import ConfigError, ProtocolError


def reactor_threads(reactor):
    """``to_thread`` for a :class:`FileWriter`: *reactor*'s thread pool."""
    return partial(threads.deferToThreadPool, reactor, reactor.getThreadPool())


def inline(f, *args):
    """``to_thread`` that runs *f* at once, in the caller's thread (tests under
    ``task.Clock``, where no reactor runs to bring a thread's result back)."""
    return defer.maybeDeferred(f, *args)


class FileWriter:
    """Replaces one file (mode 0600), off the reactor, one write at a time."""

    def __init__(self, path, to_thread=inline, write=keyfiles.replace_secret_file):
        self.path = path
        self._to_thread = to_thread
        self._write = write
        self._running = False
        self._next = None          # (data, [Deferred, ...]) waiting for the running write
        self.writes = 0            # started (the superseded ones are never started)

    def write(self, data):
        """Write *data*: a Deferred that fires (None) once it, or newer content, is in
        the file, or fails with the error of that write."""
        d = defer.Deferred()
        if self._running:
            waiting = self._next[1] if self._next is not None else []
            waiting.append(d)
            self._next = (data, waiting)
        else:
            self._start(data, [d])
        return d

    def _start(self, data, waiting):
        self._running = True
        self.writes += 1
        self._to_thread(self._write, self.path, data).addBoth(self._finished, waiting)

    def _finished(self, result, waiting):
        self._running = False
        if self._next is not None:
            # Started before the callbacks run, so a write they ask for waits for it.
            (data, later), self._next = self._next, None
            self._start(data, later)
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)


class FailoverFile:
    """``failover-coordinator.json``: where a completed move points (mode 0600)."""

    def __init__(self, path, to_thread=inline):
        self.path = path
        self._writer = FileWriter(path, to_thread)

    def load(self):
        """``(host, port, public_raw)``, or None when there is no file.  Blocking:
        called once, before the reactor runs."""
        try:
            with open(self.path) as f:
                doc = json.load(f)
            host, port = doc["host"], int(doc["port"])
            return host, port, crypto.parse_server_id(doc["public_key"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ProtocolError) as e:
            raise ConfigError(f"{self.path} is unreadable ({e}); remove it to use the "
                              "configured coordinator") from None

    def save(self, host, port, key):
        """A Deferred, fired once the file is written (see :class:`FileWriter`)."""
        doc = {"host": host, "port": port, "public_key": b64u_encode(key)}
        return self._writer.write((json.dumps(doc, indent=2) + "\n").encode())
