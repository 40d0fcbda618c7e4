"""Helpers for the file-system race tests (tests/unit/test_paths.py, tests/unit/test_files.py).

:class:`Interleave` lets an attacker act between any two file-system calls
the code under test makes: it replaces the ``os`` module seen by the given
modules with a proxy that runs a hook just before each call of a built-in
``os`` function (``open``, ``stat``, ``rename``, ``scandir``, ...).  Tests
enumerate every position: "act just before the k-th call", and "act before
every call from the k-th on", for each k.  So a check followed by a use by
name (the race that a symlink swap exploits) is found deterministically, not
by luck of thread scheduling.

:func:`exchange` swaps two names atomically (``renameat2(RENAME_EXCHANGE)``),
for an attacker thread that flips a directory and a symlink many times.
"""

import ctypes
import os
import threading
import types

RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a, b):
    """Atomically swap the names *a* and *b* (both must exist)."""
    if _libc.renameat2(-100, os.fsencode(str(a)), -100, os.fsencode(str(b)), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


class _OsProxy:
    def __init__(self, hook):
        self._hook = hook

    def __getattr__(self, name):
        value = getattr(os, name)
        if isinstance(value, types.BuiltinFunctionType):
            hook = self._hook

            def call(*args, **kwargs):
                hook(name)
                return value(*args, **kwargs)

            return call
        return value


class Interleave:
    """Run *attack* just before the file-system calls of *modules*.

    ``mode="once"``: only before call number *at*; ``mode="every"``: before
    each call from number *at* on; ``at=None``: never (just count).
    ``calls`` counts the calls made while installed."""

    def __init__(self, monkeypatch, modules, attack, at=None, mode="once"):
        self.attack = attack
        self.at = at
        self.mode = mode
        self.calls = 0
        self.attacks = 0
        proxy = _OsProxy(self._before)
        for module in modules:
            monkeypatch.setattr(module, "os", proxy)

    def _before(self, name):
        n = self.calls
        self.calls += 1
        if self.at is None:
            return
        if n == self.at or (self.mode == "every" and n > self.at):
            self.attacks += 1
            self.attack()


def snapshot(top):
    """``{relative path: (kind, bytes or link target)}`` of everything under *top*."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", None)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


def run_with_timeout(f, timeout=5):
    """Run *f* in a thread; fail (not hang) if it blocks longer than *timeout*."""
    result = {}

    def target():
        try:
            result["value"] = f()
        except BaseException as e:  # re-raised below
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"blocked for more than {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


_FLIPPER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = (os.fsencode(p) for p in sys.argv[1:3])
flips = 0
def stop(*_):
    print(flips, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    if libc.renameat2(-100, a, -100, b, 2) == 0:
        flips += 1
"""


class Flipper:
    """A separate process that exchanges *a* and *b* as fast as it can (its own
    interpreter, so it does not wait for this one's GIL).  ``flips`` is how
    many exchanges it made, once stopped."""

    def __init__(self, a, b):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", _FLIPPER, str(a), str(b)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.flips = None

    def stop(self):
        if self.flips is None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.flips = int(out.strip() or 0)
        return self.flips

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
