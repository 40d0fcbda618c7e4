"""The running home server's status file (``state_dir/status.json``, mode 0600),
which ``homechannel status`` reads.

Written atomically and off the reactor (``statefiles.FileWriter``: in a thread,
one write at a time, the newest wins), when the coordinator link changes and
otherwise at most once every ``interval`` seconds if something (live
sessions) changed."""

import json
import os
from functools import partial


from homechannel import keyfiles
from homechannel.errors import ConfigError, HomeChannelError
from homechannel.ops.logsafe import Logger
from homechannel.server.statefiles import FileWriter, inline

log = Logger()


def read_status(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no status in {path}: the home server has not run with this "
                          "configuration (or runs with another state_dir)") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: run this as the home server's user "
                          "(or root)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a status file")
    return doc


class StatusFile:
    def __init__(self, path, udp, answerer, clock, interval=2.0, to_thread=inline):
        """*to_thread* runs the writes (``statefiles.reactor_threads(reactor)``; the
        default, ``inline``, only for tests under ``task.Clock``)."""
        self.path = path
        # Rewritten every few seconds and made again at start: atomic, not synced
        # (an fsync can wait seconds on a busy disk, in the thread and at stop).
        self._writer = FileWriter(path, to_thread, write=partial(keyfiles.replace_secret_file,
                                                                 durable=False))
        self.udp = udp
        self.answerer = answerer
        self.clock = clock
        self.interval = interval
        self._last = None
        self._written_at = None
        self._pending = None

    def snapshot(self):
        doc = dict(self.udp.status())
        doc["live_sessions"] = self.answerer.live_sessions if self.answerer else 0
        doc["pid"] = os.getpid()
        return doc

    def changed(self):
        """The link changed: write now."""
        self._write(self.snapshot())

    def tick(self):
        """Periodic: write if anything changed and the last write is old enough."""
        doc = self.snapshot()
        if doc != self._last:
            now = self.clock.seconds()
            if self._written_at is None or now - self._written_at >= self.interval:
                self._write(doc)

    def _write(self, doc):
        self._last = doc
        self._written_at = self.clock.seconds()
        body = dict(doc, updated=self._written_at)
        d = self._writer.write((json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
        d.addErrback(self._failed)

    def _failed(self, f):
        if f.check(OSError, HomeChannelError):
            log.warn("cannot write the status file {path}: {err}", path=self.path, err=f.value)
        else:
            log.failure("bug writing the status file {path}", f, path=self.path)


