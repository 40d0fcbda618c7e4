"""Key files and other secret files: the file I/O under :mod:`homechannel.crypto`.

``crypto`` is pure (bytes and keys in, bytes out); this module is where those
bytes meet the disk, with the rules every secret file follows:

- an identity key is a PEM (PKCS#8) P-256 private key with mode 0600, created
  once and never replaced (:func:`load_or_create_identity_key`);
- a secret file is refused when group or others may use it
  (:func:`check_private_mode`; :func:`read_private_file` reads one);
- a new secret file is written with ``O_EXCL`` and mode 0600
  (:func:`write_secret_file`), a changing one is replaced atomically
  (:func:`replace_file`, :func:`replace_secret_file`);
- the home server's password key file holds the derived key ``K``, never the
  password (:func:`save_password_key`, :func:`load_password_key`);
- a password or credential file is read as its first line
  (:func:`read_secret_line`), the one way every command reads one.

Every problem is a :class:`~homechannel.errors.KeyFileError` or
:class:`~homechannel.errors.ConfigError` whose message says what to do.
Blocking: call these at start-up, or from a thread.
"""

import contextlib
import json
import os
import stat

from homechannel import crypto
from homechannel.errors import ConfigError, KeyFileError, ProtocolError

# A file name as the functions below take it (a config string or a pathlib.Path).
StrPath = str | os.PathLike[str]


# -- identity keys ---------------------------------------------------------


def load_identity_key(path: StrPath) -> crypto.IdentityKey:
    """Load a PEM private key; raise KeyFileError with advice on any problem."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(
            f"identity key {path} does not exist: create it with "
            f"'homechannel keygen --key {path}'"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot read identity key {path}: {e.strerror}") from None
    check_private_mode(path, st.st_mode, "identity key")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyFileError(f"cannot read identity key {path}: {e.strerror}") from None
    try:
        return crypto.IdentityKey.from_pem(data)
    except TypeError:
        raise KeyFileError(f"identity key {path} is not an ECDSA P-256 key") from None
    except ValueError:
        raise KeyFileError(
            f"identity key {path} is not a PEM private key; it was not replaced. "
            "Restore it from a backup, or move it away and generate a new one "
            "(every pinned link to this key then stops working)"
        ) from None


def create_identity_key(path: StrPath) -> crypto.IdentityKey:
    """Create a new key at *path* (mode 0600).  Never overwrites."""
    key = crypto.IdentityKey.generate()
    write_secret_file(path, key.private_pem())
    return key


def load_or_create_identity_key(path: StrPath) -> tuple[crypto.IdentityKey, bool]:
    """Load *path*, creating it only if it does not exist at all.

    Returns ``(key, created)``.  An existing file that does not load is
    an error: a key is never silently replaced.
    """
    if os.path.lexists(path):
        return load_identity_key(path), False
    return create_identity_key(path), True


# -- secret files ----------------------------------------------------------


def check_private_mode(path: StrPath, mode: int, what: str) -> None:
    """Refuse a secret file (its ``st_mode`` *mode*) that group or others may use."""
    if mode & 0o077:
        raise KeyFileError(
            f"{what} {path} is readable by others "
            f"(mode {stat.S_IMODE(mode):04o}): run 'chmod 600 {path}'"
        )


def read_private_file(path: StrPath, what: str, missing: str = "") -> bytes:
    """The bytes of the secret file *path* (a shared secret, a password, a token),
    refused like a key when group or others may use it; the mode is checked on the
    open file.  *what* names it in messages (e.g. ``"turn.secret_file"``), *missing*
    says what to do when it does not exist.  Every problem is a ConfigError."""
    try:
        with open(path, "rb") as f:
            check_private_mode(path, os.fstat(f.fileno()).st_mode, what)
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist" +
                          (f": {missing}" if missing else "")) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def write_secret_file(path: StrPath, data: bytes) -> None:
    """Write *data* to a new file with mode 0600; refuse to overwrite."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; it was not replaced") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: StrPath, data: bytes, mode: int) -> None:
    """Atomically replace *path* with *data*, with exactly *mode* whatever the umask:
    written to a new temporary file next to it (``O_EXCL``: never through a link),
    then moved into place; the temporary file is removed on failure."""
    tmp = f"{path}.tmp.{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_secret_file(path: StrPath, data: bytes) -> None:
    """Atomically replace *path* with *data* (mode 0600).  For non-identity secrets."""
    replace_file(path, data, 0o600)


def read_secret_line(path: StrPath, what: str = "password file") -> str:
    """The first line of *path*, CR/LF stripped: the one way every command reads a
    password (``passwd``, ``join``, ``connect``, ``forward``) or a credential file.
    An empty first line is refused; every problem is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the {what} {path}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    if not line:
        raise ConfigError(f"the {what} {path} is empty (its first line is used)")
    return line


# -- the home server's password key file ----------------------------------


def save_password_key(path: StrPath, server_public_raw: bytes, password_key: bytes,
                      iterations: int = crypto.PBKDF2_ITERATIONS) -> None:
    """Store the derived key (never the password) as JSON, mode 0600."""
    doc = {
        "kdf": "pbkdf2-hmac-sha256",
        "iterations": iterations,
        "salt": "server public key",
        "server_id": crypto.b64u_encode(server_public_raw),
        "key": crypto.b64u_encode(password_key),
    }
    replace_secret_file(path, (json.dumps(doc, indent=2) + "\n").encode())


def load_password_key(path: StrPath, server_public_raw: bytes) -> bytes:
    """The derived key stored by :func:`save_password_key`; the file must be
    private (mode 0600, as for an identity key: ``K`` is password-equivalent)."""
    try:
        with open(path, "rb") as f:
            check_private_mode(path, os.fstat(f.fileno()).st_mode, "password key file")
            doc = json.loads(f.read())
        key = crypto.b64u_decode(doc["key"])
        server_id = doc["server_id"]
    except FileNotFoundError:
        raise KeyFileError(
            f"no password set ({path} does not exist): run 'homechannel passwd'"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, ProtocolError):
        raise KeyFileError(f"password key file {path} is unreadable or malformed: "
                           "set the password again with 'homechannel passwd'") from None
    if server_id != crypto.b64u_encode(server_public_raw) or len(key) != 32:
        raise KeyFileError(
            f"password key file {path} belongs to another identity key: "
            "set the password again with 'homechannel passwd'"
        )
    return key
