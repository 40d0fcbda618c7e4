"""The files app: list, stat, download, upload, mkdir, rename, delete.

Every request is a REQ frame with its own id, so transfers run side by side on
one channel (see ``docs/protocol.md`` section 3).  File system work runs in
threads (``defer_to_thread``); the reactor only moves frames.  Downloads are
pulled chunk by chunk as the channel drains (:meth:`ChannelLink.wait_writable`);
uploads are acknowledged as they reach the disk, and the client keeps at most
``UPLOAD_WINDOW`` unacknowledged bytes in flight, so both directions hold
bounded memory.
"""

import hashlib
import os
import shutil
import stat as statmod
import uuid

from twisted.internet import defer, threads
from twisted.logger import Logger

from homechannel import errors
from homechannel.server.apps import frames, paths

log = Logger()

# Downloads: read (and hash) READ_BLOCK per thread hop, one block ahead of the one
# being sent; queue SEND_BLOCK each time the channel drains to its low mark, which
# is CHANNEL_LOW on files channels (AppHost sets it), so between 512 and 768 KiB
# stay queued: enough that aiortc never runs dry while the loop is busy elsewhere.
# Memory per download: two blocks plus CHANNEL_LOW + SEND_BLOCK queued, under 3 MiB.
READ_BLOCK = 1024 * 1024
SEND_BLOCK = 256 * 1024
CHANNEL_LOW = 512 * 1024
UPLOAD_WINDOW = 2 * 1024 * 1024  # unacknowledged upload bytes a client may send
UPLOAD_SLACK = 256 * 1024  # tolerance above the window before it is a protocol error
# Upload bytes are written (and acknowledged) in batches of at least this much, so a
# transfer costs one thread hop and one ACK per batch rather than per DATA frame.
# A smaller tail is written after WRITE_DELAY (or at once on END), so a client
# that waits for an ACK with less than this in flight still makes progress.
WRITE_BATCH = 512 * 1024
WRITE_DELAY = 0.01
MAX_LIST = 100_000  # directory entries returned by one list
TEMP_PREFIX = ".hcupload-"
TEMP_SUFFIX = ".part"

_WRITES = {"upload", "mkdir", "rename", "delete"}


def _os_error(exc, what):
    """Map an OSError to the shared hierarchy with a specific code."""
    import errno

    table = {
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
    cls, code, text = table.get(exc.errno, (errors.Unavailable, "io-error", exc.strerror or "I/O error"))
    return cls(f"{what} {text}", code)


def entry_info(name, path):
    """``{"name","type","size","modified"}`` for one entry (lstat; links marked)."""
    st = os.lstat(path)
    info = {"name": name, "size": st.st_size, "modified": st.st_mtime}
    if statmod.S_ISLNK(st.st_mode):
        info["link"] = True
        try:
            st = os.stat(path)
        except OSError:
            info["type"] = "broken"
            return info
    if statmod.S_ISDIR(st.st_mode):
        info["type"] = "dir"
    elif statmod.S_ISREG(st.st_mode):
        info["type"] = "file"
    else:
        info["type"] = "other"
    info["size"] = st.st_size
    info["modified"] = st.st_mtime
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        info["undecodable"] = True
    return info


class _Cancelled(Exception):
    pass


class FilesSession:
    """One ``app:files:<n>`` channel."""

    def __init__(self, config, link, reactor, defer_to_thread=None):
        self.config = config
        self.link = link
        self.reactor = reactor
        self.roots = paths.Roots(config.roots)
        self._thread = defer_to_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
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
            if op in _WRITES and self.config.read_only:
                raise errors.Forbidden("the files app is read-only on this server", "read-only")
            self.requests[rid] = "busy"
            d = defer.maybeDeferred(handler, rid, frame.body)
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

    # -- operations -------------------------------------------------------------

    def op_roots(self, rid, body):
        return {"roots": self.roots.describe(), "readOnly": self.config.read_only,
                "maxUpload": self.config.max_upload, "uploadWindow": UPLOAD_WINDOW}

    def op_list(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str, "")

        def work():
            real = self.roots.resolve(root, rel)
            try:
                entries = []
                truncated = False
                with os.scandir(real) as it:
                    for de in it:
                        if len(entries) >= MAX_LIST:
                            truncated = True
                            break
                        try:
                            entries.append(entry_info(de.name, os.path.join(real, de.name)))
                        except OSError:
                            continue
            except OSError as e:
                raise _os_error(e, repr(rel or "/")) from None
            return {"root": root, "path": self.roots.relative(root, real), "entries": entries,
                    "truncated": truncated}

        return self._thread(work)

    def op_stat(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str, "")

        def work():
            real = self.roots.resolve(root, rel)
            try:
                info = entry_info(os.path.basename(real), real)
            except OSError as e:
                raise _os_error(e, repr(rel)) from None
            info["path"] = self.roots.relative(root, real)
            return {"entry": info}

        return self._thread(work)

    def op_mkdir(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str)

        def work():
            parent, name = self.roots.resolve_parent(root, rel)
            try:
                os.mkdir(os.path.join(parent, name), 0o755)
            except OSError as e:
                raise _os_error(e, repr(rel)) from None
            return {"ok": True}

        return self._thread(work)

    def op_rename(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str)
        to_root = self._arg(body, "toRoot", int, root)
        to = self._arg(body, "to", str)
        overwrite = body.get("overwrite") is True

        def work():
            sparent, sname = self.roots.resolve_parent(root, rel)
            tparent, tname = self.roots.resolve_parent(to_root, to)
            source = os.path.join(sparent, sname)
            target = os.path.join(tparent, tname)
            try:
                os.lstat(source)
                if os.path.isdir(source) and not os.path.islink(source):
                    real = os.path.realpath(source)
                    if paths.inside(real, os.path.realpath(tparent)):
                        raise errors.BadRequest("cannot move a directory into itself", "bad-request")
                if overwrite:
                    os.replace(source, target)
                else:
                    # rename without replacing: link-less atomic check is not
                    # portable, so refuse if the target exists (a tiny race).
                    if os.path.lexists(target):
                        raise errors.BadRequest(f"{to!r} already exists", "exists")
                    os.rename(source, target)
            except OSError as e:
                raise _os_error(e, repr(rel)) from None
            return {"ok": True}

        return self._thread(work)

    def op_delete(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str)
        recursive = body.get("recursive") is True

        def work():
            parent, name = self.roots.resolve_parent(root, rel)
            target = os.path.join(parent, name)
            try:
                st = os.lstat(target)
                if statmod.S_ISDIR(st.st_mode):
                    if recursive:
                        shutil.rmtree(target)
                    else:
                        os.rmdir(target)
                else:
                    os.unlink(target)
            except OSError as e:
                raise _os_error(e, repr(rel)) from None
            return {"ok": True}

        return self._thread(work)

    def op_download(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str)
        offset = self._arg(body, "offset", int, 0)
        if offset < 0:
            raise errors.BadRequest("offset must not be negative", "bad-request")
        job = _Download(self, rid, root, rel, offset)
        self.requests[rid] = job
        return job.run()

    def op_upload(self, rid, body):
        root = self._arg(body, "root", int)
        rel = self._arg(body, "path", str)
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
        job = _Upload(self, rid, root, rel, size, overwrite, sha)
        self.requests[rid] = job
        return job.run()


class _Download:
    def __init__(self, session, rid, root, rel, offset):
        self.s = session
        self.rid = rid
        self.root = root
        self.rel = rel
        self.offset = offset
        self.cancelled = False
        self.fd = None

    def cancel(self):
        self.cancelled = True

    def _check(self):
        if self.cancelled or self.s.closed:
            raise _Cancelled()

    def _read(self, h):
        block = os.read(self.fd, READ_BLOCK)
        h.update(block)
        return block

    @defer.inlineCallbacks
    def run(self):
        s = self.s

        def open_file():
            real = s.roots.resolve(self.root, self.rel)
            try:
                fd = paths.open_nofollow(real, os.O_RDONLY)
            except OSError as e:
                raise _os_error(e, repr(self.rel)) from None
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                os.close(fd)
                raise errors.BadRequest(f"{self.rel!r} is not a regular file", "not-a-file")
            if self.offset > st.st_size:
                os.close(fd)
                raise errors.BadRequest(f"offset {self.offset} is past the end ({st.st_size} bytes)", "bad-offset")
            h = hashlib.sha256()
            done = 0
            while done < self.offset:  # the hash covers the whole file, so hash the prefix
                block = os.read(fd, min(1024 * 1024, self.offset - done))
                if not block:
                    break
                h.update(block)
                done += len(block)
            return fd, st, h

        self.fd, st, h = yield s._thread(open_file)
        reading = None  # the read of the next block, in a thread, while this one is sent
        try:
            self._check()
            s._send(frames.RES, self.rid, {"size": st.st_size, "modified": st.st_mtime, "offset": self.offset})
            sent = self.offset
            reading = s._thread(self._read, h)
            while True:
                block = yield reading
                reading = None
                self._check()
                if not block:
                    break
                # read ahead, so the next block is in hand when the channel drains
                # (a thread hop is milliseconds; the buffer below ``low`` lasts about ten)
                reading = s._thread(self._read, h)
                view = memoryview(block)
                for start in range(0, len(block), SEND_BLOCK):
                    yield s.link.wait_writable()
                    self._check()
                    for i in range(start, min(start + SEND_BLOCK, len(block)), frames.CHUNK):
                        s._send(frames.DATA, self.rid, data=view[i:min(i + frames.CHUNK, start + SEND_BLOCK)])
                sent += len(block)
            s._send(frames.END, self.rid, {"size": sent, "sha256": h.hexdigest()})
        finally:
            if reading is not None:  # never close the fd under a read in flight
                try:
                    yield reading
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
        self.temp = None
        self.hash = hashlib.sha256()

    @defer.inlineCallbacks
    def run(self):
        s = self.s

        def prepare():
            parent, name = s.roots.resolve_parent(self.root, self.rel)
            target = os.path.join(parent, name)
            if name.startswith(TEMP_PREFIX):
                raise errors.BadRequest("names starting with .hcupload- are reserved", "bad-path")
            try:
                if os.path.isdir(target):
                    raise errors.BadRequest(f"{self.rel!r} is a directory", "is-a-directory")
                if os.path.lexists(target) and not self.overwrite:
                    raise errors.BadRequest(f"{self.rel!r} already exists", "exists")
                temp = os.path.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}")
                fd = paths.open_nofollow(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as e:
                raise _os_error(e, repr(self.rel)) from None
            return fd, temp, target

        self.fd, self.temp, self.target = yield s._thread(prepare)
        if self.failed or s.closed:
            self.done.addErrback(lambda _: None)
            yield self._abort()
            raise _Cancelled()
        # the go-ahead: an ACK of nothing, with the window the client must respect
        s._send(frames.ACK, self.rid, {"received": 0, "window": UPLOAD_WINDOW, "chunk": frames.CHUNK})
        try:
            yield self.done
        except BaseException:
            yield self._abort()
            raise
        return {"size": self.written, "sha256": self.hash.hexdigest()}

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
        os.fchmod(self.fd, 0o644)
        digest = self.hash.hexdigest()
        if self.expected_sha is not None and digest != self.expected_sha:
            raise errors.BadRequest("the uploaded bytes do not match the SHA-256 the client sent", "hash-mismatch")
        os.close(self.fd)
        self.fd = None
        try:
            if self.overwrite:
                os.replace(self.temp, self.target)
            else:
                os.link(self.temp, self.target)  # fails if the target appeared meanwhile
                os.unlink(self.temp)
        except OSError as e:
            raise _os_error(e, repr(self.rel)) from None
        self.temp = None

    def _finished(self, _):
        self.writing = False
        if self.failed is not None:
            self.done.errback(self.failed)
        else:
            self.done.callback(None)

    def _abort(self):
        self._cancel_timer()
        fd, temp = self.fd, self.temp
        self.fd = self.temp = None

        def clean():
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if temp is not None:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass

        return self.s._thread(clean)
