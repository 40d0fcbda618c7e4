"""The files app: list, stat, download, upload, mkdir, rename, delete.

Every request is a REQ frame with its own id, so transfers run side by side on
one channel (see ``docs/protocol.md`` section 3).  File system work runs in
threads (``defer_to_thread``); the reactor only moves frames.  Downloads are
pulled chunk by chunk as the channel drains (:meth:`ChannelLink.wait_writable`);
uploads are acknowledged as they reach the disk, and the client keeps at most
``UPLOAD_WINDOW`` unacknowledged bytes in flight, so both directions hold
bounded memory.  A download may carry a window too (``"window"`` in its REQ):
the server then sends at most that many bytes beyond what the client has
acknowledged taking (ACK ``received``), so a client whose disk is slower than
the network slows the sender instead of queueing.

Every operation finds its path with :class:`~.paths.Roots` (a walk with
directory fds that stays inside the root, see :mod:`.paths`) and then acts
relative to the directory fd it got, never by path name again: one helper
(:meth:`FilesSession._at`) does "locate, run in a thread, map OSError" for
all of them.  Only regular files are read (opened ``O_NONBLOCK``, so a FIFO
cannot hold a thread) and only regular files or links are replaced.
"""

import errno
import hashlib
import os
import stat as statmod

from twisted.internet import defer, threads

from homechannel import errors
from homechannel.ops.deadline import DeadlineTimer
from homechannel.ops.logsafe import Logger
from homechannel.server import audit
from homechannel.server.apps import paths
from homechannel.server.apps.uploads import TEMP_PREFIX, Uploads, temp_name
from homechannel.protocol import frames

log = Logger()

# Downloads: read (and hash) READ_BLOCK per thread hop, one block ahead of the one
# being sent; queue SEND_BLOCK each time the channel drains to its low mark, which
# is CHANNEL_LOW on files channels (AppHost sets it), so between 512 and 768 KiB
# stay queued: enough that aiortc never runs dry while the loop is busy elsewhere.
# Memory per download: two blocks plus CHANNEL_LOW + SEND_BLOCK queued, under 3 MiB.
READ_BLOCK = 1024 * 1024
SEND_BLOCK = 256 * 1024
CHANNEL_LOW = 512 * 1024
# Unacknowledged upload bytes a client may send: enough to keep a 100 ms link with
# its bottleneck queue full (about 250 ms) busy at 30 MB/s, the most a browser's
# datachannel carries (docs/performance.md, "Over a WAN link"); it is also what one
# upload may hold in memory here, while a write is in progress.
UPLOAD_WINDOW = 8 * 1024 * 1024
UPLOAD_SLACK = 256 * 1024  # tolerance above the window before it is a protocol error
# The download window a client may ask for (bytes sent and not yet acknowledged).
MIN_DOWNLOAD_WINDOW = 1024 * 1024
MAX_DOWNLOAD_WINDOW = 64 * 1024 * 1024
# Upload bytes are written (and acknowledged) in batches of at least this much, so a
# transfer costs one thread hop and one ACK per batch rather than per DATA frame.
# A smaller tail is written after WRITE_DELAY (or at once on END), so a client
# that waits for an ACK with less than this in flight still makes progress.
WRITE_BATCH = 512 * 1024
WRITE_DELAY = 0.01
MAX_LIST = 100_000  # directory entries returned by one list

_WRITES = {"upload", "mkdir", "rename", "delete"}


def _proc_umask(status="/proc/self/status"):
    """The umask from the ``Umask:`` line of *status* (Linux 4.7+), or None."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    return None


def _swap_umask():
    # Without /proc, os.umask() can only be read by setting it, and the umask is
    # process-wide: so this runs once, while the module is imported (before the
    # reactor's thread pool creates files), and sets 0077 for that instant, so a
    # file created meanwhile could only be more private, never less.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _proc_umask()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _swap_umask()


def process_umask(status="/proc/self/status"):
    """The process's umask, read without changing it (``/proc/self/status``), or,
    without /proc, as it was when this module was imported."""
    mask = _proc_umask(status)
    return mask if mask is not None else _IMPORT_UMASK


_OS_ERRORS = {
    errno.ENOENT: (errors.NotFound, "not-found", "does not exist"),
    errno.ENOTDIR: (errors.BadRequest, "not-a-directory", "is not a directory"),
    errno.EISDIR: (errors.BadRequest, "is-a-directory", "is a directory"),
    errno.EEXIST: (errors.BadRequest, "exists", "already exists"),
    errno.ENOTEMPTY: (errors.BadRequest, "not-empty", "is a directory that is not empty (delete recursively)"),
    errno.EACCES: (errors.Forbidden, "permission-denied", "permission denied"),
    errno.EPERM: (errors.Forbidden, "permission-denied", "operation not permitted"),
    errno.ELOOP: (errors.Forbidden, "symlink", "is a symlink (refused here)"),
    errno.ENOSPC: (errors.Unavailable, "no-space", "no space left on the home server's disk"),
    errno.EXDEV: (errors.BadRequest, "cross-device", "cannot move across file systems"),
    errno.ENAMETOOLONG: (errors.BadRequest, "bad-path", "name too long"),
}


def _os_error(exc, what):
    """Map an OSError to the shared hierarchy with a specific code."""
    cls, code, text = _OS_ERRORS.get(exc.errno, (errors.Unavailable, "io-error", exc.strerror or "I/O error"))
    return cls(f"{what} {text}", code)


def _not_a_file(rel):
    return errors.BadRequest(f"{rel!r} is not a regular file", "not-a-file")


def entry_info(name, st, target=None):
    """``{"name","type","size","modified"}`` for one entry from its ``lstat``
    *st*.  A symlink is marked ``"link": true`` and described by *target*, the
    ``stat`` of what it leads to inside its root, or typed ``broken`` when it
    leads nowhere there (*target* None: missing, a loop, or outside the root)."""
    info = {"name": name}
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        info["undecodable"] = True
    if statmod.S_ISLNK(st.st_mode):
        info["link"] = True
        if target is None:
            info.update(type="broken", size=st.st_size, modified=st.st_mtime)
            return info
        st = target
    kind = paths.kind(st)
    info.update(type="other" if kind == "link" else kind, size=st.st_size, modified=st.st_mtime)
    return info


class _Cancelled(Exception):
    pass


class FilesSession:
    """One ``app:files:<n>`` channel."""

    def __init__(self, config, link, reactor, defer_to_thread=None, uploads=None, clock=None):
        """*uploads*: the home server's :class:`~.uploads.Uploads` (shared by every
        files channel; a channel of its own by default); *clock* times idle uploads
        (default *reactor*; none without either)."""
        self.config = config
        self.link = link
        self.reactor = reactor
        self.clock = clock or reactor
        self.roots = paths.Roots(config.roots)
        # The mode of a new uploaded file, as mkdir and every other program honour the
        # umask (the systemd unit's UMask=0077 gives 0600); read once per session.
        self.upload_mode = 0o666 & ~process_umask()
        self.person = None   # who signed in (the audit lines; set by the app host)
        self._thread = defer_to_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self.uploads = uploads or Uploads(config, self._thread)
        self.requests = {}  # id -> _Download | _Upload | "busy"
        self.closed = False
        link.on_close(self.connection_lost)

    # -- framing --------------------------------------------------------------

    def message_received(self, message):
        try:
            frame = frames.decode(message)
        except errors.ProtocolError as e:
            log.debug("bad frame on {label}: {err}", label=self.link.label, err=e)
            self._send(frames.ERR, 0, frames.error_body(e))
            return
        try:
            self.frame_received(frame)
        except errors.HomeChannelError as e:
            self._send(frames.ERR, frame.id, frames.error_body(e))

    def _send(self, ftype, rid, body=None, data=b""):
        return self.link.send(frames.encode(ftype, rid, body, data))

    def _error(self, rid, exc):
        if isinstance(exc, defer.CancelledError) or isinstance(exc, _Cancelled):
            exc = errors.BadRequest("transfer cancelled", "cancelled")
        if not isinstance(exc, errors.HomeChannelError):
            log.error("files request {rid} failed: {exc!r}", rid=rid, exc=exc)
        self._send(frames.ERR, rid, frames.error_body(exc))

    def frame_received(self, frame):
        rid = frame.id
        if frame.type == frames.REQ:
            if rid in self.requests:
                raise errors.ProtocolError(f"request id {rid} is in use", "duplicate-id")
            op = frame.body.get("op")
            handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                raise errors.BadRequest(f"unknown files operation {op!r}", "unknown-op")
            self.requests[rid] = "busy"
            if op in _WRITES and self.config.read_only:
                # Refused, and audited as such (a person with read-only rights: people.py).
                d = defer.fail(errors.Forbidden("the files app is read-only here", "read-only"))
            else:
                d = defer.maybeDeferred(handler, rid, frame.body)
            d.addBoth(audit.file_request, op, frame.body, self.person)
            d.addCallback(lambda body: body is not None and self._send(frames.RES, rid, body))
            d.addErrback(lambda f: self._error(rid, f.value))
            d.addBoth(lambda _: self.requests.pop(rid, None))
            return
        job = self.requests.get(rid)
        if frame.type == frames.CANCEL:
            if hasattr(job, "cancel"):
                job.cancel()
            return
        if frame.type in (frames.DATA, frames.END) and isinstance(job, _Upload):
            job.frame_received(frame)
            return
        if frame.type == frames.ACK and isinstance(job, _Download):
            job.ack(frame.body)
            return
        if frame.type in (frames.ACK, frames.RES, frames.ERR):
            return  # nothing the server asked for; ignore
        raise errors.ProtocolError(f"unexpected {frames.TYPES[frame.type]} frame for request {rid}", "unexpected-frame")

    def connection_lost(self):
        self.closed = True
        for job in list(self.requests.values()):
            if hasattr(job, "cancel"):
                job.cancel()

    # -- helpers --------------------------------------------------------------

    @staticmethod
    def _arg(body, name, typ, default=None):
        value = body.get(name, default)
        if value is None or not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise errors.BadRequest(f"{name!r} missing or not a {typ.__name__}", "bad-request")
        return value

    def _where(self, body, required=True):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str, None if required else "")
        return root, rel

    def _at(self, locate, root, rel, work):
        """The one way a file operation runs: in a thread, *locate* the path
        (``Roots.locate`` or ``Roots.locate_entry``), call ``work(location)``,
        close the location, and turn an OSError into a coded error naming
        *rel*.  Returns a Deferred."""

        def run():
            try:
                with locate(root, rel) as loc:
                    return work(loc)
            except OSError as e:
                raise _os_error(e, repr(rel or "/")) from None

        return self._thread(run)

    # -- operations -------------------------------------------------------------

    def op_roots(self, rid, body):
        return {"roots": self.roots.describe(), "readOnly": self.config.read_only,
                "maxUpload": self.config.max_upload, "uploadWindow": UPLOAD_WINDOW}

    def op_list(self, rid, body):
        root, rel = self._where(body, required=False)

        def work(loc):
            if loc.st is None:
                raise FileNotFoundError(errno.ENOENT, "listed", rel)
            if not statmod.S_ISDIR(loc.st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "listed", rel)
            entries = []
            truncated = False
            fd = os.open(loc.name, paths.DIR_READ, dir_fd=loc.dir_fd)  # "." : the directory walked to
            try:
                with os.scandir(fd) as it:
                    for de in it:
                        if len(entries) >= MAX_LIST:
                            truncated = True
                            break
                        try:
                            st = de.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        target = None
                        if statmod.S_ISLNK(st.st_mode):
                            target = self.roots.target_stat(root, loc.parts + [de.name])
                        entries.append(entry_info(de.name, st, target))
            finally:
                os.close(fd)
            return {"root": root, "path": loc.relpath, "entries": entries, "truncated": truncated}

        return self._at(self.roots.locate, root, rel, work)

    def op_stat(self, rid, body):
        root, rel = self._where(body, required=False)

        def work(loc):
            if loc.st is None:
                raise FileNotFoundError(errno.ENOENT, "stat", rel)
            name = loc.parts[-1] if loc.parts else os.path.basename(self.roots.root(root))
            info = entry_info(name, loc.st)
            info["path"] = loc.relpath
            return {"entry": info}

        return self._at(self.roots.locate, root, rel, work)

    def op_mkdir(self, rid, body):
        root, rel = self._where(body)

        def work(loc):
            os.mkdir(loc.name, 0o755, dir_fd=loc.dir_fd)
            return {"ok": True}

        return self._at(self.roots.locate_entry, root, rel, work)

    def op_rename(self, rid, body):
        root, rel = self._where(body)
        to_root = self._arg(body, "toRoot", int, root)
        to = self._arg(body, "to", str)
        overwrite = body.get("overwrite") is True

        def work(src):
            with self.roots.locate_entry(to_root, to) as dst:
                try:
                    if overwrite:
                        os.replace(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
                    else:
                        paths.rename_noreplace(src.dir_fd, src.name, dst.dir_fd, dst.name)
                except OSError as e:
                    if e.errno == errno.EINVAL:  # the only EINVAL left: a directory into itself
                        raise errors.BadRequest("cannot move a directory into itself", "bad-request") from None
                    if e.errno == errno.EEXIST:
                        raise errors.BadRequest(f"{to!r} already exists", "exists") from None
                    raise
            return {"ok": True}

        return self._at(self.roots.locate_entry, root, rel, work)

    def op_delete(self, rid, body):
        root, rel = self._where(body)
        recursive = body.get("recursive") is True

        def work(loc):
            if loc.st is None:
                raise FileNotFoundError(errno.ENOENT, "delete", rel)
            if not statmod.S_ISDIR(loc.st.st_mode):
                os.unlink(loc.name, dir_fd=loc.dir_fd)  # a link itself, never its target
            elif recursive:
                paths.remove_tree(loc.dir_fd, loc.name)
            else:
                os.rmdir(loc.name, dir_fd=loc.dir_fd)
            return {"ok": True}

        return self._at(self.roots.locate_entry, root, rel, work)

    def op_download(self, rid, body):
        root, rel = self._where(body)
        offset = self._arg(body, "offset", int, 0)
        if offset < 0:
            raise errors.BadRequest("offset must not be negative", "bad-request")
        window = body.get("window")
        if window is not None:
            window = self._arg(body, "window", int)
            if not MIN_DOWNLOAD_WINDOW <= window <= MAX_DOWNLOAD_WINDOW:
                raise errors.BadRequest(f"window must be {MIN_DOWNLOAD_WINDOW} to "
                                        f"{MAX_DOWNLOAD_WINDOW} bytes", "bad-request")
        job = _Download(self, rid, root, rel, offset, window)
        self.requests[rid] = job
        return defer.Deferred.fromCoroutine(job.run())

    def op_upload(self, rid, body):
        root, rel = self._where(body)
        size = self._arg(body, "size", int)
        overwrite = body.get("overwrite") is True
        if size < 0:
            raise errors.BadRequest("size must not be negative", "bad-request")
        if size > self.config.max_upload:
            raise errors.PayloadTooLarge(f"{size} bytes is more than this server accepts ({self.config.max_upload})", "too-large",
                            maxUpload=self.config.max_upload)
        sha = body.get("sha256")
        if sha is not None and not isinstance(sha, str):
            raise errors.BadRequest("'sha256' must be a hex string", "bad-request")
        self.uploads.check_count()
        job = _Upload(self, rid, root, rel, size, overwrite, sha)
        self.requests[rid] = job
        return defer.Deferred.fromCoroutine(job.run())


class _Download:
    def __init__(self, session, rid, root, rel, offset, window=None):
        self.s = session
        self.rid = rid
        self.root = root
        self.rel = rel
        self.offset = offset
        self.window = window  # None: no window (the channel's flow control only)
        self.sent = offset    # bytes of the file queued on the channel
        self.acked = offset   # bytes the client acknowledged taking
        self._room = None     # a Deferred while waiting for an ACK
        self.cancelled = False
        self.failed = None    # why the download ends early (a bad ACK)
        self.fd = None

    def cancel(self):
        self.cancelled = True
        self._wake()

    def ack(self, body):
        """An ACK ``{"received": n}``: the client has taken the file's first *n*
        bytes.  Never moves back; one that is not an int, or beyond what was sent,
        ends the download with ERR."""
        n = body.get("received")
        if not isinstance(n, int) or isinstance(n, bool):
            self._fail(errors.BadRequest("ACK 'received' missing or not an int", "bad-request"))
        elif n > self.sent:
            self._fail(errors.ProtocolError(f"ACK of {n} bytes, only {self.sent} were sent",
                                            "window"))
        elif n > self.acked:
            self.acked = n
            self._wake()

    def _fail(self, exc):
        if self.failed is None:
            self.failed = exc
            self.cancel()

    def _wake(self):
        room, self._room = self._room, None
        if room is not None:
            room.callback(None)

    async def _wait_room(self, n):
        """Until *n* more bytes fit in the window (at once without one)."""
        while self.window is not None and self.sent + n - self.acked > self.window:
            self._room = defer.Deferred()
            await self._room
            self._check()

    def _check(self):
        if self.failed is not None:
            raise self.failed
        if self.cancelled or self.s.closed:
            raise _Cancelled()

    def _read(self, h):
        block = os.read(self.fd, READ_BLOCK)
        h.update(block)
        return block

    async def run(self):
        s = self.s

        def open_file(loc):
            # Never open what is not a regular file (a device may act on open),
            # and open with O_NONBLOCK|O_NOFOLLOW, then check the fd itself, in
            # case the entry was swapped since the walk looked at it: opening a
            # FIFO that way returns at once instead of waiting for a writer.
            if loc.st is not None and not statmod.S_ISREG(loc.st.st_mode):
                raise _not_a_file(self.rel)
            fd = os.open(loc.name, paths.FILE_READ, dir_fd=loc.dir_fd)
            try:
                st = os.fstat(fd)
                if not statmod.S_ISREG(st.st_mode):
                    raise _not_a_file(self.rel)
                if self.offset > st.st_size:
                    raise errors.BadRequest(f"offset {self.offset} is past the end ({st.st_size} bytes)", "bad-offset")
                h = hashlib.sha256()
                done = 0
                while done < self.offset:  # the hash covers the whole file, so hash the prefix
                    block = os.read(fd, min(READ_BLOCK, self.offset - done))
                    if not block:
                        break
                    h.update(block)
                    done += len(block)
            except BaseException:
                os.close(fd)
                raise
            return fd, st, h

        self.fd, st, h = await s._at(s.roots.locate, self.root, self.rel, open_file)
        reading = None  # the read of the next block, in a thread, while this one is sent
        try:
            self._check()
            s._send(frames.RES, self.rid, {"size": st.st_size, "modified": st.st_mtime, "offset": self.offset})
            reading = s._thread(self._read, h)
            while True:
                block = await reading
                reading = None
                self._check()
                if not block:
                    break
                # read ahead, so the next block is in hand when the channel drains
                # (a thread hop is milliseconds; the buffer below ``low`` lasts about ten)
                reading = s._thread(self._read, h)
                view = memoryview(block)
                for start in range(0, len(block), SEND_BLOCK):
                    end = min(start + SEND_BLOCK, len(block))
                    await self._wait_room(end - start)
                    await s.link.wait_writable()
                    self._check()
                    for i in range(start, end, frames.CHUNK):
                        s._send(frames.DATA, self.rid, data=view[i:min(i + frames.CHUNK, end)])
                    self.sent += end - start
            s._send(frames.END, self.rid, {"size": self.sent, "sha256": h.hexdigest()})
        finally:
            if reading is not None:  # never close the fd under a read in flight
                try:
                    await reading
                except Exception:
                    pass
            os.close(self.fd)
        return None


class _Upload:
    def __init__(self, session, rid, root, rel, size, overwrite, sha256):
        self.s = session
        self.rid = rid
        self.root = root
        self.rel = rel
        self.size = size
        self.overwrite = overwrite
        self.expected_sha = sha256.lower() if sha256 else None
        self.received = 0  # bytes received from the channel
        self.written = 0  # bytes on disk
        self.pending = []  # chunks not yet written
        self.pending_bytes = 0
        self.writing = False
        self.flush_timer = None  # delayed write of a batch smaller than WRITE_BATCH
        self.ended = None  # END body once received
        self.failed = None
        self.done = defer.Deferred()
        self.fd = None
        self.dir_fd = None  # the target's directory, held from the walk to the rename
        self.temp = None
        self.name = None
        self.mode = session.upload_mode   # a replaced regular file's permissions are kept
        self.hash = hashlib.sha256()
        # fails the upload after upload_idle_timeout without data (a DeadlineTimer, set
        # once per idle period: each frame only notes its time in last_data)
        self.idle = None
        self.last_data = None

    async def run(self):
        s = self.s

        def prepare(loc):
            if loc.name.startswith(TEMP_PREFIX):
                raise errors.BadRequest("names starting with .hcupload- are reserved", "bad-path")
            st = loc.st
            if st is not None:
                if statmod.S_ISDIR(st.st_mode):
                    raise errors.BadRequest(f"{self.rel!r} is a directory", "is-a-directory")
                if not self.overwrite:
                    raise errors.BadRequest(f"{self.rel!r} already exists", "exists")
                if not (statmod.S_ISREG(st.st_mode) or statmod.S_ISLNK(st.st_mode)):
                    raise _not_a_file(self.rel)  # a FIFO, device or socket is not replaced either
                if statmod.S_ISREG(st.st_mode):
                    self.mode = statmod.S_IMODE(st.st_mode) & 0o777   # never setuid/setgid
            # the bytes go to a new file (O_EXCL|O_NOFOLLOW) in the target's own
            # directory fd, which the final rename uses too: nothing is resolved again
            temp = temp_name()
            fd = os.open(temp, paths.FILE_CREATE, 0o600, dir_fd=loc.dir_fd)
            try:
                space = os.fstatvfs(fd)
                dev = os.fstat(fd).st_dev
            except BaseException:
                os.close(fd)
                os.unlink(temp, dir_fd=loc.dir_fd)
                raise
            dir_fd, loc.dir_fd = loc.dir_fd, None  # kept open until the rename or the clean-up
            return dir_fd, fd, temp, loc.name, dev, space.f_bavail * space.f_frsize

        self.dir_fd, self.fd, self.temp, self.name, dev, free = await s._at(
            s.roots.locate_entry, self.root, self.rel, prepare)
        claimed = self.temp
        try:
            s.uploads.claim(claimed, dev, self.size, free)
        except errors.HomeChannelError:
            self.done.addErrback(lambda _: None)
            await self._abort()
            raise
        try:
            if self.failed or s.closed:
                self.done.addErrback(lambda _: None)
                await self._abort()
                raise _Cancelled()
            # the go-ahead: an ACK of nothing, with the window the client must respect
            s._send(frames.ACK, self.rid, {"received": 0, "window": UPLOAD_WINDOW,
                                           "chunk": frames.CHUNK})
            self._idle_reset()
            try:
                await self.done
            except BaseException:
                await self._abort()
                raise
        finally:
            self._idle_stop()
            s.uploads.release(claimed)
        return {"size": self.written, "sha256": self.hash.hexdigest()}

    def _idle_reset(self):
        clock = self.s.clock
        if clock is None or self.ended is not None:
            return
        self.last_data = clock.seconds()
        if self.idle is None:
            self.idle = DeadlineTimer(clock, self._idle_check)
        if self.idle.when is None:
            self.idle.schedule(self.last_data + self.s.config.upload_idle_timeout)

    def _idle_stop(self):
        if self.idle is not None:
            self.idle.cancel()

    def _idle_check(self):
        timeout = self.s.config.upload_idle_timeout
        due = self.last_data + timeout
        if self.s.clock.seconds() < due:
            self.idle.schedule(due)         # data came meanwhile
            return
        self._fail(errors.RequestTimeout(
            f"no upload data for {timeout:g} s (apps.files.upload_idle_timeout): the upload "
            f"was abandoned and its partial file deleted", "idle"))

    def cancel(self):
        self._fail(_Cancelled())

    def _fail(self, exc):
        if self.failed is None and not self.done.called:
            self.failed = exc
            self.pending = []
            self.pending_bytes = 0
            self._cancel_timer()
            if not self.writing:
                self.done.errback(exc)

    def frame_received(self, frame):
        if self.failed is not None or self.ended is not None:
            return
        if frame.type == frames.END:
            self._idle_stop()       # the rest is the home server's work (fsync, rename)
        else:
            self._idle_reset()
        if frame.type == frames.DATA:
            self.received += len(frame.data)
            if self.received > self.size:
                self._fail(errors.PayloadTooLarge(f"more data than the declared {self.size} bytes", "too-large"))
                return
            if self.pending_bytes + len(frame.data) > UPLOAD_WINDOW + UPLOAD_SLACK:
                self._fail(errors.ProtocolError("upload data beyond the flow-control window", "window"))
                return
            self.pending.append(frame.data)
            self.pending_bytes += len(frame.data)
        else:
            self.ended = frame.body
            sha = frame.body.get("sha256")
            if isinstance(sha, str):
                self.expected_sha = sha.lower()
        self._pump()

    def _cancel_timer(self):
        if self.flush_timer is not None:
            if self.flush_timer.active():
                self.flush_timer.cancel()
            self.flush_timer = None

    def _flush_later(self):
        self.flush_timer = None
        self._pump(force=True)

    def _pump(self, force=False):
        if self.writing or self.failed is not None or self.done.called:
            return
        if self.pending:
            if not (force or self.ended is not None or self.pending_bytes >= WRITE_BATCH
                    or self.s.reactor is None):
                if self.flush_timer is None:
                    self.flush_timer = self.s.reactor.callLater(WRITE_DELAY, self._flush_later)
                return
            self._cancel_timer()
            chunks, self.pending, self.pending_bytes = self.pending, [], 0
            self.writing = True
            d = self.s._thread(self._write, chunks)
            d.addCallbacks(self._wrote, self._write_failed)
        elif self.ended is not None:
            self.writing = True
            self.s._thread(self._finish).addCallbacks(self._finished, self._write_failed)

    def _write(self, chunks):
        # One buffer, so one write and one hash call per batch: each call releases
        # and retakes the GIL, and every retake stalls the reactor thread a little.
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        view = memoryview(data)
        while view:
            k = os.write(self.fd, view)
            view = view[k:]
        self.hash.update(data)
        return len(data)

    def _wrote(self, n):
        self.writing = False
        self.written += n
        if self.temp is not None:
            self.s.uploads.wrote(self.temp, n)
        if self.failed is not None:
            self.done.errback(self.failed)
            return
        self.s._send(frames.ACK, self.rid, {"received": self.written})
        self._pump()

    def _write_failed(self, failure):
        self.writing = False
        exc = failure.value
        if isinstance(exc, OSError):
            exc = _os_error(exc, repr(self.rel))
        self.failed = self.failed or exc
        if not self.done.called:
            self.done.errback(self.failed)

    def _finish(self):
        if self.written != self.size:
            raise errors.BadRequest(f"received {self.written} bytes, the upload declared {self.size}", "size-mismatch")
        os.fsync(self.fd)
        os.fchmod(self.fd, self.mode)
        digest = self.hash.hexdigest()
        if self.expected_sha is not None and digest != self.expected_sha:
            raise errors.BadRequest("the uploaded bytes do not match the SHA-256 the client sent", "hash-mismatch")
        os.close(self.fd)
        self.fd = None
        try:
            if self.overwrite:
                os.replace(self.temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:  # never replaces a file that appeared meanwhile
                paths.rename_noreplace(self.dir_fd, self.temp, self.dir_fd, self.name)
        except OSError as e:
            raise _os_error(e, repr(self.rel)) from None
        self.temp = None
        os.close(self.dir_fd)
        self.dir_fd = None

    def _finished(self, _):
        self.writing = False
        if self.failed is not None:
            self.done.errback(self.failed)
        else:
            self.done.callback(None)

    def _abort(self):
        self._cancel_timer()
        self._idle_stop()
        fd, temp, dir_fd = self.fd, self.temp, self.dir_fd
        self.fd = self.temp = self.dir_fd = None

        def clean():
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if dir_fd is not None:
                try:
                    if temp is not None:
                        os.unlink(temp, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(dir_fd)

        return self.s._thread(clean)
