"""Confinement of file access to the configured roots (pure, no reactor).

A client names a file by ``(root index, relative path)``.  The relative path
uses ``/`` separators; it may be empty (the root itself) but never absolute,
never contains ``..`` or ``.`` or empty components, NUL bytes, or over-long
names.  After those lexical checks the path is resolved with
``os.path.realpath`` and must stay inside the root's real path
(``os.path.commonpath``), so a symlink pointing out of a root, or a root
whose parent is swapped for a symlink, is refused.  Openers use
``O_NOFOLLOW`` on the resolved path so a component swapped for a symlink
after the check is refused too.

Names on disk that are not UTF-8 travel as Python's surrogateescape strings
(JSON ``\\udcXX`` escapes) and come back unchanged.
"""

import os

from homechannel import errors

MAX_NAME = 255  # bytes, per component (NAME_MAX on Linux)
MAX_PATH = 4096  # bytes, whole relative path (PATH_MAX)


def split(relpath):
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


def check_name(name):
    """A single new file or directory name (for mkdir, upload, rename targets)."""
    parts = split(name)
    if len(parts) != 1:
        raise errors.BadRequest("a name must be one path component", "bad-path")
    return parts[0]


def inside(root, path):
    """Is the real path *path* inside (or equal to) the real path *root*?"""
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:
        return False


class Roots:
    """The configured roots, each resolved once to its real path."""

    def __init__(self, roots):
        self._roots = []
        seen = {}
        for configured in roots:
            real = os.path.realpath(os.path.expanduser(configured))
            base = os.path.basename(real) or real
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base} ({seen[base]})"
            self._roots.append((name, real))

    def describe(self):
        return [{"index": i, "name": name} for i, (name, _) in enumerate(self._roots)]

    def root(self, index):
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self._roots):
            raise errors.NotFound(f"there is no root number {index!r}", "no-root")
        return self._roots[index][1]

    def resolve(self, index, relpath):
        """The confined real path of *relpath* (symlinks followed, must stay inside)."""
        root = self.root(index)
        parts = split(relpath)
        real = os.path.realpath(os.path.join(root, *parts))
        if not inside(root, real):
            raise errors.Forbidden(f"{relpath!r} resolves outside its root", "outside-root")
        return real

    def resolve_parent(self, index, relpath):
        """``(real parent directory, final name)``: the final component is not
        followed, for operations on a link itself (delete, rename) and for
        creating new entries."""
        root = self.root(index)
        parts = split(relpath)
        if not parts:
            raise errors.Forbidden("the root itself cannot be changed", "is-root")
        parent = os.path.realpath(os.path.join(root, *parts[:-1]))
        if not inside(root, parent):
            raise errors.Forbidden(f"{relpath!r} resolves outside its root", "outside-root")
        return parent, parts[-1]

    def relative(self, index, real):
        """The client-side relative path of a confined real path."""
        root = self.root(index)
        rel = os.path.relpath(real, root)
        return "" if rel == "." else rel.replace(os.sep, "/")


def open_nofollow(path, flags, mode=0o600):
    """``os.open`` that refuses a symlink as the final component."""
    return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
