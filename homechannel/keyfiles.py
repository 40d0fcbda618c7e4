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
  (:func:`read_secret_line`), the one way every command reads one; a
  daemon's credential file must also be private (:func:`read_private_line`);
- a coordinator cluster's key is one line of base64url, mode 0600
  (:func:`create_cluster_key`, :func:`load_cluster_key`).

Every problem is a :class:`~homechannel.errors.KeyFileError` or
:class:`~homechannel.errors.ConfigError` whose message says what to do.
Blocking: call these at start-up, or from a thread.
"""

import contextlib
import json
import os
import stat
from collections.abc import Callable

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


def replace_file(path: StrPath, data: bytes, mode: int, durable: bool = True) -> None:
    """Atomically replace *path* with *data*, with exactly *mode* whatever the umask:
    written to a new temporary file next to it (``O_EXCL``: never through a link),
    synced to disk unless *durable* is False (a file rewritten every few seconds and
    made again at start, such as the status file: readers see the old or the new
    file whole either way, and an fsync may wait seconds on a busy disk), then moved
    into place; the temporary file is removed on failure."""
    tmp = f"{path}.tmp.{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_secret_file(path: StrPath, data: bytes, durable: bool = True) -> None:
    """Atomically replace *path* with *data* (mode 0600).  For non-identity secrets."""
    replace_file(path, data, 0o600, durable)


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


# -- the cluster key -------------------------------------------------------

CLUSTER_KEY_SIZE = 32


def create_cluster_key(path: StrPath,
                       random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """Make a new cluster key file (mode 0600: one line, 32 random bytes in
    base64url); never replaces one.  The same file goes to every node."""
    key = random_bytes(CLUSTER_KEY_SIZE)
    write_secret_file(path, (crypto.b64u_encode(key) + "\n").encode("ascii"))
    return key


def load_cluster_key(path: StrPath) -> bytes:
    """The key of a cluster key file; the file must be private (mode 0600)."""
    try:
        with open(path, "rb") as f:
            check_private_mode(path, os.fstat(f.fileno()).st_mode, "cluster key file")
            line = f.readline(200).strip()
    except FileNotFoundError:
        raise KeyFileError(
            f"cluster key file {path} does not exist: make it on one node with "
            f"'homechannel cluster-key --key-file {path}' and copy it to every node "
            "(mode 0600)") from None
    except OSError as e:
        raise KeyFileError(f"cannot read cluster key file {path}: {e.strerror}") from None
    try:
        key = crypto.b64u_decode(line.decode("ascii"))
    except (UnicodeDecodeError, ProtocolError):
        key = b""
    if len(key) != CLUSTER_KEY_SIZE:
        raise KeyFileError(f"cluster key file {path} is not a cluster key (one line of "
                           "base64url, 32 bytes): copy the file of the other nodes, or make "
                           "a new one with 'homechannel cluster-key' for every node")
    return key


def read_private_line(path: StrPath, what: str, missing: str = "") -> str:
    """The first line of the private secret file *path* (:func:`read_private_file`),
    CR/LF stripped; an empty first line or one that is not UTF-8 is refused."""
    try:
        line = read_private_file(path, what, missing).decode("utf-8").split("\n", 1)[0]
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    line = line.rstrip("\r")
    if not line:
        raise ConfigError(f"{what} {path} is empty (its first line is used)")
    return line


# -- the home server's password key file ----------------------------------


def save_password_key(path: StrPath, server_public_raw: bytes, password_key: bytes,
                      iterations: int = crypto.PBKDF2_ITERATIONS, *,
                      epoch: int | None = None) -> int:
    """Store the derived key (never the password) as JSON, mode 0600, with the
    password **epoch** that device tokens are bound to: one more than the file held
    before (a device token of the old password stops working), or a random one for
    a first password (so that a password file removed and made again never brings
    back tokens of its past).  Returns the epoch."""
    if epoch is None:
        previous = load_password_epoch(path)
        epoch = ((previous + 1) % 2 ** 32 if previous is not None
                 else int.from_bytes(os.urandom(4), "big") >> 1)
    doc = {
        "kdf": "pbkdf2-hmac-sha256",
        "iterations": iterations,
        "salt": "server public key",
        "server_id": crypto.b64u_encode(server_public_raw),
        "key": crypto.b64u_encode(password_key),
        "epoch": epoch,
    }
    replace_secret_file(path, (json.dumps(doc, indent=2) + "\n").encode())
    return epoch


def load_password_epoch(path: StrPath) -> int | None:
    """The password epoch kept with the password key (``save_password_key``): None
    when there is no readable file; 0 for a file written before epochs existed."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    epoch = doc.get("epoch", 0) if isinstance(doc, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 2 ** 32:
        return None
    return epoch


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
