"""Key material that is slow to make, made once per test process (each pytest-xdist
worker is one process) and shared by its tests.

- ``password_key(password, server_public_raw, iterations=...)``: the PBKDF2 password
  key (600,000 iterations, about a quarter of a second), derived once per
  (password, server key).  ``tests/conftest.py`` puts it in place of
  ``crypto.derive_password_key`` for the whole session, so that the code under test
  in this process shares it too (the native client derives on every connect, and
  ``make_pair`` through whatever writes the home server's ``password.json``);
  a subprocess derives its own.
- ``home_server_key()``: one home server identity per process, and
  ``place_home_server_key(path)`` writes it (mode 0600) where a home server's key goes,
  so that the home servers of ``daemons.make_pair`` and ``cluster.add_home_server``
  all have it and their password key is derived once.  Each pair still has its own
  coordinator, state and client state, so a test sees nothing of another's; a test
  that needs another identity makes one.

Identity keys and certificates cost well under a millisecond and a few
milliseconds: they are made where they are used.
"""

import functools
import os

from homechannel import crypto

_derive = crypto.derive_password_key   # the real one: this module is imported first


@functools.cache
def password_key(password, server_public_raw, iterations=crypto.PBKDF2_ITERATIONS):
    return _derive(password, server_public_raw, iterations)


@functools.cache
def home_server_key():
    return crypto.IdentityKey.generate()


def place_home_server_key(path):
    """Write ``home_server_key()`` as a new private key file at *path* (its directory
    made 0700), unless a file is there already; the code that loads or creates the
    key at *path* then loads it."""
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(home_server_key().private_pem())
