"""Confinement of file access to the configured roots, held against races.

A client names a file by ``(root index, relative path)``.  The relative path
uses ``/`` separators; it may be empty (the root itself) but never absolute,
never contains ``..`` or ``.`` or empty components, NUL bytes, or over-long
names (:func:`split`).

**Resolution walks the path itself, one component at a time, with file
descriptors**, so that nothing is looked up by name twice:

- The root is opened for each operation from ``/``, one component at a time
  along the real path it had when the session started, each with
  ``O_PATH|O_DIRECTORY|O_NOFOLLOW``: a root whose parent is later swapped for
  a symlink is refused, not followed.
- Each component is opened with ``openat(dir, name, O_PATH|O_NOFOLLOW)``
  relative to the directory fd reached so far, and ``fstat``-ed through that
  fd.  A directory becomes the next directory fd.  A symlink is read through
  the same fd (``readlinkat(fd, "")``) and its target is walked in its place,
  inside the root: a relative target from the directory that holds the link,
  an absolute one only if it names the root's real path lexically (then from
  the root fd).  ``..`` (only link targets have it) steps back to the
  directory the walk came from and is checked by ``(st_dev, st_ino)`` against
  it, so a directory moved out of the root during the walk leads nowhere;
  ``..`` above the root is ``outside-root``.  More than :data:`MAX_LINKS`
  symlinks in one walk (Linux's own limit) is a loop: code ``symlink``.
- The result is a :class:`Location`: an ``O_PATH`` fd of the directory that
  holds the final entry, the entry's name, and what the entry was (``lstat``)
  when the walk looked at it.  Every operation then works on *(dir fd, name)*
  with the ``*at`` calls and without following the final name
  (``O_NOFOLLOW``; ``unlinkat``, ``renameat``, ``mkdirat``, ``linkat`` never
  follow it), so swapping any component for a symlink after the walk cannot
  lead out of the root: a swapped intermediate directory is not looked up
  again, and a swapped final entry is acted on as the link itself (inside the
  root) or refused.  When the final entry is a directory and symlinks are
  followed, the location is that directory's own fd with name ``"."``, so a
  listing reads exactly the directory that was checked.

**Why this walk and not ``openat2(RESOLVE_BENEATH)``.**  Python has no binding
for ``openat2``; a ctypes ``syscall(437, ...)`` would do it in one call where
the kernel has it (5.6+), but it needs the walk anyway as a fallback, so the
same rules would live in two code paths of which CI runs one.
``RESOLVE_BENEATH`` also refuses every absolute symlink, while HomeChannel
documents that symlinks are followed while they stay inside the root (an
absolute link to a place inside the root included), and the walk reports
*which* rule refused a path.  The walk costs one ``openat`` and one
``fstat`` per component, microseconds against the thread hop that every file
operation takes.  It needs Linux (``O_PATH``, ``readlinkat`` on an ``O_PATH``
fd), which the home server targets.

Names on disk that are not UTF-8 travel as Python's surrogateescape strings
(JSON ``\\udcXX`` escapes) and come back unchanged.
"""

import ctypes
import errno
import os
import stat as statmod
from collections.abc import Callable, Iterable

from homechannel import errors

MAX_NAME = 255  # bytes, per component (NAME_MAX on Linux)
MAX_PATH = 4096  # bytes, whole relative path (PATH_MAX)
MAX_LINKS = 40  # symlinks followed in one walk (Linux's MAXSYMLINKS)

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_PATH = os.O_PATH | os.O_NOFOLLOW | _CLOEXEC  # a handle on the entry itself, opened for nothing
# Opening a directory to read it (list, recursive delete).  O_NONBLOCK: if the
# name was swapped for a FIFO, the open fails (O_DIRECTORY) instead of waiting.
DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
# Opening a file to read it (download).  O_NONBLOCK: opening a FIFO returns at
# once instead of waiting for a writer; O_NOCTTY: a terminal never becomes ours.
FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC
# Creating a file that must be new (upload temp files).
FILE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | _CLOEXEC


def split(relpath: str) -> list[str]:
    """Lexically check *relpath* and return its components (a list of str)."""
    if not isinstance(relpath, str):
        raise errors.BadRequest("path must be a string", "bad-path")
    if relpath == "":
        return []
    if "\x00" in relpath:
        raise errors.BadRequest("path contains a NUL byte", "bad-path")
    try:
        raw = os.fsencode(relpath)
    except UnicodeError:
        raise errors.BadRequest("path is not encodable", "bad-path") from None
    if len(raw) > MAX_PATH:
        raise errors.BadRequest(f"path longer than {MAX_PATH} bytes", "bad-path")
    if relpath.startswith("/"):
        raise errors.BadRequest("absolute paths are refused; paths are relative to a root", "bad-path")
    parts = relpath.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise errors.BadRequest(f"path component {part!r} is refused (no '..', '.' or empty components)", "bad-path")
        if len(os.fsencode(part)) > MAX_NAME:
            raise errors.BadRequest(f"name longer than {MAX_NAME} bytes", "bad-path")
    return parts


def kind(st: os.stat_result) -> str:
    """The wire type of an entry from its (l)stat: file, dir, link or other."""
    mode = st.st_mode
    if statmod.S_ISREG(mode):
        return "file"
    if statmod.S_ISDIR(mode):
        return "dir"
    if statmod.S_ISLNK(mode):
        return "link"
    return "other"  # FIFO, socket, character or block device


def _outside(what: str) -> errors.Forbidden:
    return errors.Forbidden(f"{what} resolves outside its root", "outside-root")


class Location:
    """Where a client path leads: ``dir_fd`` (an ``O_PATH`` fd of the directory
    that holds the entry, owned by this object), ``name`` (the entry in it, or
    ``"."`` for ``dir_fd`` itself), ``parts`` (the components from the root to
    the entry, symlinks resolved) and ``st`` (the entry's ``lstat`` when the walk
    looked at it, or None if it did not exist).  A context manager: leaving it
    closes the fd."""

    __slots__ = ("dir_fd", "name", "parts", "st")

    def __init__(self, dir_fd: int, name: str, parts: list[str], st: os.stat_result | None):
        self.dir_fd: int | None = dir_fd  # None once closed
        self.name = name
        self.parts = parts
        self.st = st

    @property
    def relpath(self) -> str:
        """The entry's path relative to its root, symlinks resolved (client form)."""
        return "/".join(self.parts)

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def __enter__(self) -> "Location":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Roots:
    """The configured roots, each resolved once to its real path (per session)."""

    def __init__(self, roots: Iterable[str]):
        self._roots: list[tuple[str, str]] = []  # (name shown, real path)
        seen: dict[str, int] = {}
        for configured in roots:
            real = os.path.realpath(os.path.expanduser(configured))
            base = os.path.basename(real) or real
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base} ({seen[base]})"
            self._roots.append((name, real))

    def describe(self) -> list[dict]:
        return [{"index": i, "name": name} for i, (name, _) in enumerate(self._roots)]

    def root(self, index: int) -> str:
        """The real path of root *index* (``no-root`` if there is no such root)."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self._roots):
            raise errors.NotFound(f"there is no root number {index!r}", "no-root")
        return self._roots[index][1]

    def open_root(self, index: int) -> int:
        """An ``O_PATH`` fd of root *index*, opened from ``/`` without following
        any symlink (the real path has none, unless one was planted since)."""
        real = self.root(index)
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | _CLOEXEC)
        try:
            for name in real.split("/"):
                if name:
                    nfd = os.open(name, _PATH | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = nfd
        except OSError as e:
            os.close(fd)
            raise errors.Unavailable(f"root {self._roots[index][0]!r} is not available on the home server "
                                     f"({e.strerror})", "no-root") from None
        return fd

    def locate(self, index: int, relpath: str) -> Location:
        """The :class:`Location` of *relpath*, every symlink followed (the final
        one too) while it stays inside the root.  The root itself is allowed."""
        return self._walk(index, split(relpath), True, relpath)

    def locate_entry(self, index: int, relpath: str) -> Location:
        """The :class:`Location` of the entry *relpath* itself: the final
        component is not followed (delete, rename and create act on a link, not
        its target).  The root itself is refused (``is-root``)."""
        parts = split(relpath)
        if not parts:
            raise errors.Forbidden("the root itself cannot be changed", "is-root")
        return self._walk(index, parts, False, relpath)

    def target_stat(self, index: int, parts: Iterable[str]) -> os.stat_result | None:
        """The ``stat`` of what the entry at *parts* leads to inside the root, or
        None if it cannot be followed here (missing, a loop, or outside)."""
        try:
            with self._walk(index, list(parts), True, "") as loc:
                return loc.st
        except (OSError, errors.HomeChannelError):
            return None

    def _walk(self, index: int, parts: list[str], follow: bool, what: str) -> Location:
        root_fd = self.open_root(index)
        cur: int | None = None  # the directory reached so far; None once returned in a Location
        try:
            root_st = os.fstat(root_fd)
            root_id = (root_st.st_dev, root_st.st_ino)
            root_parts = [p for p in self.root(index).split("/") if p]
            cur, cur_id, cur_st = os.dup(root_fd), root_id, root_st
            names: list[str] = []  # components from the root to ``cur``
            ids: list[tuple[int, int]] = []  # (st_dev, st_ino) of each directory above ``cur``
            todo = parts[::-1]  # a stack: the next component is todo[-1]
            links = 0
            while todo:
                name = todo.pop()
                last = not todo
                if name in ("", "."):
                    continue
                if name == "..":
                    if not names:
                        raise _outside(repr(what))
                    up = os.open("..", os.O_PATH | os.O_DIRECTORY | _CLOEXEC, dir_fd=cur)
                    old, cur = cur, up
                    os.close(old)
                    cur_st = os.fstat(cur)
                    cur_id = (cur_st.st_dev, cur_st.st_ino)
                    if cur_id != ids.pop():  # moved meanwhile: ".." leads elsewhere
                        raise _outside(repr(what))
                    names.pop()
                    continue
                if last and not follow:
                    try:
                        st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    loc, cur = Location(cur, name, names + [name], st), None
                    return loc
                fd: int | None  # None once it became ``cur``
                try:
                    fd = os.open(name, _PATH, dir_fd=cur)
                except FileNotFoundError:
                    if not last:
                        raise
                    loc, cur = Location(cur, name, names + [name], None), None
                    return loc
                try:
                    st = os.fstat(fd)
                    if statmod.S_ISLNK(st.st_mode):
                        links += 1
                        if links > MAX_LINKS:
                            raise errors.Forbidden(f"{what!r}: too many levels of symbolic links (a loop?)",
                                                   "symlink")
                        target = os.readlink("", dir_fd=fd)
                        if target.startswith("/"):
                            rest = [p for p in target.split("/") if p not in ("", ".")]
                            if rest[:len(root_parts)] != root_parts:
                                raise _outside(repr(what))
                            old, cur = cur, os.dup(root_fd)
                            os.close(old)
                            cur_id, cur_st = root_id, root_st
                            names, ids = [], []
                            target = "/".join(rest[len(root_parts):])
                        todo.extend(target.split("/")[::-1])
                        continue
                    if statmod.S_ISDIR(st.st_mode):
                        ids.append(cur_id)
                        names.append(name)
                        old, cur, fd = cur, fd, None
                        os.close(old)
                        cur_id, cur_st = (st.st_dev, st.st_ino), st
                        continue
                    if not last:
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
                    loc, cur = Location(cur, name, names + [name], st), None
                    return loc
                finally:
                    if fd is not None:
                        os.close(fd)
            # the path ended on a directory (or the root): the location is that directory itself
            loc, cur = Location(cur, ".", names, cur_st), None
            return loc
        finally:
            os.close(root_fd)
            if cur is not None:
                os.close(cur)


# -- operations relative to directory fds ---------------------------------------

RENAME_NOREPLACE = 1


def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()  # glibc >= 2.28; None elsewhere


def rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename *src* (in directory *src_fd*) to *dst* (in *dst_fd*), failing with
    ``EEXIST`` if *dst* exists, atomically: ``renameat2(RENAME_NOREPLACE)``.
    Where the C library or the file system lacks it: a file or link is hard
    linked to the new name (``linkat`` never replaces) and then unlinked; a
    directory takes the place of an empty placeholder directory made with
    ``mkdirat`` (which never replaces), since ``rename`` replaces only an empty
    directory and nothing can be created in it first without failing the
    rename (``ENOTEMPTY``)."""
    if _renameat2 is not None:
        if _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), dst)
        # EINVAL is also "a directory into itself": the fallback says so again
    _rename_noreplace_fallback(src_fd, src, dst_fd, dst)


def _rename_noreplace_fallback(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    st = os.stat(src, dir_fd=src_fd, follow_symlinks=False)
    if not statmod.S_ISDIR(st.st_mode):
        os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        try:
            os.unlink(src, dir_fd=src_fd)
        except OSError:
            os.unlink(dst, dir_fd=dst_fd)
            raise
        return
    os.mkdir(dst, 0o700, dir_fd=dst_fd)
    try:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except OSError:
        try:
            os.rmdir(dst, dir_fd=dst_fd)
        except OSError:
            pass
        raise


def remove_tree(dir_fd: int, name: str) -> None:
    """Delete the directory *name* in *dir_fd* and everything under it.

    Every directory is opened relative to its parent's fd with
    ``O_DIRECTORY|O_NOFOLLOW`` and every entry is removed relative to the fd
    of the directory that holds it, so a symlink (there from the start or
    swapped in meanwhile) is unlinked itself and never followed.  Entries are
    unlinked first and descended into only when ``unlink`` says they are a
    directory, so no check can go stale before its use.  No recursion: depth
    is bounded by the open file limit, not the Python stack."""
    stack: list[tuple[int, str, list[str]]] = []  # (fd, name, names left), top directory first

    def enter(parent_fd: int, dname: str) -> None:
        fd = os.open(dname, DIR_READ, dir_fd=parent_fd)
        stack.append((fd, dname, []))
        with os.scandir(fd) as it:
            stack[-1][2].extend(e.name for e in it)

    try:
        enter(dir_fd, name)
        while stack:
            fd, dname, names = stack[-1]
            if names:
                entry = names.pop()
                try:
                    os.unlink(entry, dir_fd=fd)
                except IsADirectoryError:
                    enter(fd, entry)
                except FileNotFoundError:
                    pass
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=stack[-1][0] if stack else dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
