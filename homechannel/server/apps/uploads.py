"""What uploads may take from the home machine: one :class:`Uploads` per home server.

Every files channel of every session shares it (``AppHost.uploads``):

- **the reserve**: an upload is refused up front, before a byte is sent, when its
  declared size, plus what the uploads in progress to the same file system still
  have to write, would leave less than ``apps.files.min_free`` bytes free there
  (``no-space``, with ``free`` and ``minFree``);
- **uploads in progress at once**: at most ``apps.files.max_uploads`` on the whole
  home server (``too-many-uploads``); each holds two file descriptors, a temporary
  file and up to 8.25 MiB of buffers (its window), and the browser uploads one file at a time;
- **the idle timeout**: an upload that gets no data for ``apps.files.upload_idle_timeout``
  seconds fails (``idle``) and its temporary file is deleted (``files.py``);
- **the sweep** (:meth:`Uploads.sweep`, at start and every ``SWEEP_INTERVAL``, in a
  thread): a temporary file a previous run left behind (a crash, a power cut) is
  deleted once it is older than the idle timeout.  Only names this module makes
  (``.hcupload-`` + 32 hex digits + ``.part``), only regular files, never one of this
  process's live uploads; the walk (``os.fwalk``) starts from each root's
  directory fd opened without following a link and never follows one.

The checks run on the reactor's thread (the numbers are the reactor's to keep);
the free space is measured in the thread that created the temporary file.
"""

import os
import re
import stat as statmod
import uuid

from homechannel import errors
from homechannel.ops.logsafe import Logger
from homechannel.server.apps import paths

log = Logger()

TEMP_PREFIX = ".hcupload-"
TEMP_SUFFIX = ".part"
TEMP_NAME = re.compile(r"\A\.hcupload-[0-9a-f]{32}\.part\Z")
SWEEP_INTERVAL = 3600.0


def temp_name() -> str:
    """A new temporary file name (matches ``TEMP_NAME``)."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"


def human(n: int) -> str:
    """*n* bytes for a message: ``"512 bytes"``, ``"1.5 GiB"``."""
    if n < 1024:
        return f"{n} bytes"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


class Uploads:
    """The uploads in progress on this home server (see the module's docstring)."""

    def __init__(self, config, to_thread=None):
        """*config*: ``[apps.files]``; *to_thread* runs the sweep (the reactor's thread
        pool in the daemon)."""
        self.config = config
        self._to_thread = to_thread
        self._claims = {}     # temp name -> [st_dev, bytes still to write]
        self.swept = 0        # stale temporary files deleted

    @property
    def in_progress(self) -> int:
        return len(self._claims)

    def check_count(self):
        """Refuse a new upload while ``max_uploads`` are in progress (before any
        disk work; :meth:`claim` checks again)."""
        if len(self._claims) >= self.config.max_uploads:
            raise errors.CapacityError(
                f"{len(self._claims)} uploads are in progress on the home server, its "
                f"limit (apps.files.max_uploads): wait for one to finish",
                "too-many-uploads", maxUploads=self.config.max_uploads)

    def claim(self, temp: str, dev: int, size: int, free: int) -> None:
        """Admit the upload writing *size* bytes into *temp* on device *dev* with
        *free* bytes free there now (``f_bavail``), or refuse it: see the module."""
        self.check_count()
        promised = sum(left for d, left in self._claims.values() if d == dev)
        room = free - promised - self.config.min_free
        if size > room:
            held = f", {human(promised)} of it promised to uploads in progress" \
                if promised else ""
            raise errors.Unavailable(
                f"not enough free space on the home server for {human(size)}: "
                f"{human(free)} free{held}, and uploads leave "
                f"{human(self.config.min_free)} free (apps.files.min_free)",
                "no-space", free=max(0, free - promised), minFree=self.config.min_free)
        self._claims[temp] = [dev, size]

    def wrote(self, temp: str, n: int) -> None:
        claim = self._claims.get(temp)
        if claim is not None:
            claim[1] = max(0, claim[1] - n)

    def release(self, temp: str) -> None:
        self._claims.pop(temp, None)

    # -- the sweep -----------------------------------------------------------------

    def sweep(self, now: float):
        """Delete stale temporary files in every root (in a thread); a Deferred of how
        many.  Never fails: a problem is logged, and the next sweep tries again."""
        live = frozenset(self._claims)
        d = self._to_thread(sweep_roots, self.config.roots, live,
                            self.config.upload_idle_timeout, now)

        def done(n):
            self.swept += n
            if n:
                log.info("deleted {n} stale upload file(s) older than {age:g} s",
                         n=n, age=self.config.upload_idle_timeout)
            return n

        def failed(f):
            log.failure("sweeping stale upload files failed (tried again in {s:g} s)", f,
                        s=SWEEP_INTERVAL)
            return 0

        return d.addCallbacks(done, failed)


def sweep_roots(roots, live, older_than: float, now: float) -> int:
    """Blocking: delete every regular file named like ``TEMP_NAME`` under *roots*
    (not in *live*) last modified more than *older_than* seconds before *now*;
    returns how many.  Links are never followed; unreadable directories are skipped."""
    removed = 0
    located = paths.Roots(roots)
    for index in range(len(located.describe())):
        try:
            root_fd = located.open_root(index)
        except errors.HomeChannelError:
            continue
        try:
            top = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root_fd)
        except OSError:
            os.close(root_fd)
            continue
        os.close(root_fd)
        try:
            for _, _, files, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                for name in files:
                    if name in live or not TEMP_NAME.match(name):
                        continue
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        if statmod.S_ISREG(st.st_mode) and st.st_mtime < now - older_than:
                            os.unlink(name, dir_fd=dir_fd)
                            removed += 1
                    except OSError:
                        continue
        finally:
            os.close(top)
    return removed
