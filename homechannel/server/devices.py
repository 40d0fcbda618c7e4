"""The devices enrolled with this home server: ``<state_dir>/enrolled-devices.json``.

A client that signed in enrols a key it holds (ECDSA P-256: a non-extractable
WebCrypto key in the browser, a 0600 file for the native client) on the control
channel (``hello``'s ``device``: docs/protocol.md section 3.1), with a signature
by that key over the session (``crypto.device_enrol_message``); the home server
keeps it here and issues a device token bound to the key and to the password
epoch (``connect.DeviceToken``).  A later connect on the device path is signed by
that key, and :meth:`EnrolledDevices.check` (``server/peer.py``) refuses a token
of another epoch, of a device no longer enrolled, or without the key's signature.

The file::

    {"version": 1, "devices": {"<device id>": {"key": "<b64u public key>",
     "name": "...", "enrolled": unix, "last_seen": unix}, ...}}

mode 0600, changed only under an exclusive lock (``enrolled-devices.json.lock``)
as a read-modify-write of what is in the file at that moment, by the running home
server (an enrolment, a sign-in's ``last_seen``: in a thread, never on the
reactor) and by ``homechannel devices list|revoke`` (the CLI works whether the
server runs or not).  The running server reads the file again when its
modification time changes (:meth:`EnrolledDevices.poll`, on the status tick,
every 2 s), and tells its coordinator the new :class:`~connect.DevicePolicy` at
once (the epoch and the enrolled ids, over UDP: DEVICES).

At most :data:`connect.MAX_POLICY_DEVICES` devices: enrolling one more removes the
one seen least recently (a browser whose storage was cleared enrols again with a
new key; its old entry ages out).  Revoking removes the entry: the device's token
no longer works, and it signs in with the password again (which enrols it again:
to keep someone out who knows the password, change the password).

Issue 19 (passkeys, people) builds on this store: an entry is where a device's
person and rights go, and a key-only sign-in (``homechannel connect --key``)
checks the same token and the same signature over the offer.
"""

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homechannel import crypto
from homechannel.errors import AuthenticationError, ConfigError, ProtocolError
from homechannel.keyfiles import replace_secret_file
from homechannel.protocol import connect
from homechannel.server.statefiles import inline
from homechannel.ops.logsafe import Logger

log = Logger()

FILE = "enrolled-devices.json"
MAX_NAME = 64
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def clean_name(name: object) -> str:
    """A device's name as a client gave it: printable ASCII, at most 64 characters
    (it is shown by ``devices list`` and written to logs)."""
    text = name if isinstance(name, str) else ""
    return _UNPRINTABLE.sub("?", text)[:MAX_NAME].strip() or "unnamed device"


@dataclass(frozen=True)
class Device:
    id: str
    key: bytes          # raw public key
    name: str
    enrolled: int
    last_seen: int

    def to_doc(self) -> dict[str, Any]:
        return {"key": crypto.b64u_encode(self.key), "name": self.name,
                "enrolled": self.enrolled, "last_seen": self.last_seen}

    @classmethod
    def from_doc(cls, device_id: str, doc: object) -> "Device":
        if not isinstance(doc, dict):
            raise ProtocolError("a device entry is an object")
        key = connect.parse_device_key(doc.get("key"))
        if crypto.device_id(key) != device_id:
            raise ProtocolError("a device's id is the hash of its key")
        enrolled, last_seen = doc.get("enrolled"), doc.get("last_seen")
        if not (isinstance(enrolled, int) and isinstance(last_seen, int)) \
                or isinstance(enrolled, bool) or isinstance(last_seen, bool):
            raise ProtocolError("a device's times are integers")
        return cls(device_id, key, clean_name(doc.get("name")), enrolled, last_seen)


# -- the file (blocking: the CLI, and the running server's threads) ----------------------


def read_file(path: str) -> dict[str, Device]:
    """The devices in *path* (none if it does not exist); ConfigError if it is damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e}): fix it, or remove it (every device "
                          "then signs in with the password once more)") from None
    try:
        if not isinstance(doc, dict) or doc.get("version") != 1 \
                or not isinstance(doc.get("devices"), dict):
            raise ProtocolError("not an enrolled-devices file")
        return {d: Device.from_doc(d, entry) for d, entry in doc["devices"].items()}
    except ProtocolError as e:
        raise ConfigError(f"{path} is damaged ({e}): fix it, or remove it (every device "
                          "then signs in with the password once more)") from None


def _encode(devices: dict[str, Device]) -> bytes:
    doc = {"version": 1, "devices": {d.id: d.to_doc() for d in
                                     sorted(devices.values(), key=lambda d: d.enrolled)}}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


@contextlib.contextmanager
def _locked(path: str):
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def change_file(path: str, change) -> dict[str, Device]:
    """Apply ``change(devices)`` (it changes the dict in place) to what *path* holds now,
    under the lock, and write it back (atomically, mode 0600) if it changed; the
    devices after the change."""
    with _locked(path):
        devices = read_file(path)
        before = dict(devices)
        change(devices)
        if devices != before or not os.path.exists(path):
            replace_secret_file(path, _encode(devices))
        return devices


def _upsert(devices: dict[str, Device], device: Device, limit: int) -> None:
    """Add or refresh *device*; the least recently seen go beyond *limit*."""
    held = devices.get(device.id)
    if held is not None:
        device = Device(device.id, device.key, device.name, held.enrolled,
                        max(held.last_seen, device.last_seen))
    devices[device.id] = device
    while len(devices) > limit:
        oldest = min(devices.values(), key=lambda d: (d.last_seen, d.enrolled))
        del devices[oldest.id]


def revoke(path: str, prefix: str) -> Device:
    """Remove the one device whose id starts with *prefix* (``devices revoke``)."""
    found = []

    def change(devices):
        matches = [d for d in devices.values() if d.id.startswith(prefix)]
        if len(matches) == 1:
            found.append(matches[0])
            del devices[matches[0].id]
        elif matches:
            found.extend(matches)

    if not prefix:
        raise ConfigError("name the device to revoke by its id (or a prefix of it), as "
                          "'homechannel devices list' shows it")
    change_file(path, change)
    if not found:
        raise ConfigError(f"no enrolled device has an id starting with {prefix!r}: see "
                          "'homechannel devices list'")
    if len(found) > 1:
        raise ConfigError(f"{len(found)} devices have ids starting with {prefix!r}: give "
                          "more of the id")
    return found[0]


# -- the running home server's view ---------------------------------------------------------


class EnrolledDevices:
    """The enrolled devices as the running home server checks them, kept in memory and
    in the file at *path* (None: memory only, for tests).  *epoch* is the password
    epoch (``keyfiles.load_password_epoch``).  ``on_change(policy)`` is called when the
    :class:`~connect.DevicePolicy` changes (an enrolment, a revocation read from the
    file).  *to_thread* runs the file's reads and writes
    (``statefiles.reactor_threads(reactor)``; ``inline`` for tests)."""

    def __init__(self, path, epoch, clock, to_thread=inline,
                 limit=connect.MAX_POLICY_DEVICES):
        self.path = path
        self.epoch = epoch
        self._clock = clock
        self._to_thread = to_thread
        self._limit = limit
        self._devices: dict[str, Device] = {}
        self._mtime = None
        self._polling = False
        self.on_change = lambda policy: None

    def load(self):
        """Read the file (blocking: once, at start)."""
        if self.path:
            self._mtime = _mtime(self.path)
            self._devices = read_file(self.path)

    def __len__(self):
        return len(self._devices)

    def policy(self) -> connect.DevicePolicy:
        return connect.DevicePolicy(self.epoch, frozenset(self._devices))

    def check(self, token: connect.DeviceToken, signature: bytes | None,
              message: bytes) -> Device:
        """The enrolled device a verified *token* stands for, if it is of this password
        epoch, still enrolled with that key, and its key signed *message*;
        AuthenticationError saying which is not so."""
        if token.epoch != self.epoch:
            raise AuthenticationError("the token was issued before the password was changed")
        device = self._devices.get(token.device)
        if device is None or device.key != token.key:
            raise AuthenticationError("the device is not enrolled (it was revoked, or "
                                      "removed to make room)")
        token.check_signature(signature, message)
        return device

    def enrol(self, key: bytes, name: str, now: float) -> Device:
        """Enrol (or refresh) the device with raw public key *key*; written to the file
        off the reactor; ``on_change`` if the policy changed."""
        device = Device(crypto.device_id(key), key, clean_name(name), int(now), int(now))
        before = self.policy()
        _upsert(self._devices, device, self._limit)
        after = self.policy()
        if after != before:
            self.on_change(after)
        if self.path:
            d = self._to_thread(change_file, self.path,
                                lambda devices: _upsert(devices, device, self._limit))
            d.addCallbacks(self._read, self._failed)
        return self._devices[device.id]

    def poll(self):
        """The status tick: read the file again if it changed (``devices revoke``)."""
        if not self.path or self._polling:
            return defer.succeed(None)
        self._polling = True
        d = self._to_thread(_read_if_changed, self.path, self._mtime)

        def done(result):
            self._polling = False
            if result is not None:
                self._mtime = result[0]
                self._read(result[1])

        d.addCallbacks(done, lambda f: (setattr(self, "_polling", False), self._failed(f)))
        return d

    def _read(self, devices):
        before = self.policy()
        removed = set(self._devices) - set(devices)
        self._devices = dict(devices)
        for device in removed:
            log.info("device {device} is no longer enrolled", device=device[:8])
        after = self.policy()
        if after != before:
            self.on_change(after)

    def _failed(self, failure):
        if failure.check(OSError, ConfigError):
            log.warn("cannot use {path}: {error}", path=self.path, error=failure.value)
        else:
            log.failure("bug with {path}", failure, path=self.path)


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _read_if_changed(path, known):
    """``(mtime, devices)`` if *path* changed since *known*, else None (in a thread)."""
    now = _mtime(path)
    if now == known:
        return None
    return now, read_file(path)


def describe(devices: dict[str, Device]) -> list[str]:
    """``devices list``'s lines, the most recently seen first."""
    lines = []
    for d in sorted(devices.values(), key=lambda d: -d.last_seen):
        seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.last_seen))
        since = time.strftime("%Y-%m-%d", time.localtime(d.enrolled))
        lines.append(f"{d.id}  {d.name}  (last sign-in {seen}, enrolled {since})")
    return lines
