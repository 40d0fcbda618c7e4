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

Every credential of a person is an entry here, with the same id (the hash of its
public key), the same token and the same door at the coordinator: a browser's device
key (``device``: it signs with the password), a native client's sign-in key (``key``:
``homechannel connect --key`` signs in with it alone), a passkey (``passkey``: its
credential id, WebAuthn origin and sign count are kept too), and an invite
(``invite``: a one-time key in an invite link, with an expiry, usable once, only to
enrol a passkey).  Each entry names its person and their rights (``people.Rights``);
entries written before people existed are the owner's.  ``homechannel people
list|revoke|invite`` works on the same file.
"""

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer

from homechannel import crypto
from homechannel.errors import AuthenticationError, ConfigError, ProtocolError
from homechannel.keyfiles import replace_secret_file
from homechannel.protocol import connect, passkey
from homechannel.server.people import OWNER, OWNER_NAME, Rights, check_person
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


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Device:
    """One credential of a person (the module's docstring: the kinds)."""

    id: str
    key: bytes          # raw public key
    name: str
    enrolled: int
    last_seen: int
    kind: str = "device"
    person: str = OWNER_NAME
    rights: Rights = OWNER
    credential: bytes | None = None     # a passkey's credential id
    origin: str | None = None           # a passkey's WebAuthn origin
    sign_count: int = 0                 # a passkey's last sign count
    expires: int | None = None          # an invite's expiry

    @property
    def epoch_free(self) -> bool:
        """A passkey or an invite: not bound to the password epoch."""
        return self.kind in ("passkey", "invite")

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": crypto.b64u_encode(self.key), "name": self.name,
                               "enrolled": self.enrolled, "last_seen": self.last_seen}
        if self.kind != "device":
            doc["kind"] = self.kind
        if self.person != OWNER_NAME or self.rights != OWNER:
            doc["person"], doc["rights"] = self.person, self.rights.to_doc()
        if self.credential is not None:
            doc["credential"] = crypto.b64u_encode(self.credential)
            doc["origin"], doc["sign_count"] = self.origin, self.sign_count
        if self.expires is not None:
            doc["expires"] = self.expires
        return doc

    @classmethod
    def entry(cls, device_id: str, doc: Any) -> "Device":
        """A credential of the file: :meth:`from_doc`, and its kind, person, rights and
        the fields of a passkey or an invite (none of them: the owner's device key)."""
        device = cls.from_doc(device_id, doc)
        kind = doc.get("kind", "device")
        if kind not in connect.TOKEN_KINDS:
            raise ProtocolError(f"unknown credential kind {kind!r}")
        person = check_person(doc.get("person", OWNER_NAME))
        rights = Rights.from_doc(doc["rights"]) if "rights" in doc else OWNER
        credential = origin = expires = None
        count = 0
        if kind == "passkey":
            credential = crypto.b64u_decode(doc.get("credential"))
            origin, count = passkey.origin_of(doc.get("origin")), doc.get("sign_count")
            if not credential or not _integer(count) or count < 0:
                raise ProtocolError("a passkey has its credential id, origin and sign count")
        if kind == "invite":
            expires = doc.get("expires")
            if not _integer(expires):
                raise ProtocolError("an invite has an expiry")
        return replace(device, kind=kind, person=person, rights=rights, credential=credential,
                       origin=origin, sign_count=count, expires=expires)

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
        return {d: Device.entry(d, entry) for d, entry in doc["devices"].items()}
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
    """Add or refresh *device*; beyond *limit* the least recently seen go, browser
    device keys and invites before sign-in keys and passkeys (the ones a person
    cannot get back without the password or a new invite)."""
    held = devices.get(device.id)
    if held is not None:
        device = replace(device, enrolled=held.enrolled,
                         last_seen=max(held.last_seen, device.last_seen),
                         sign_count=max(held.sign_count, device.sign_count))
    devices[device.id] = device
    while len(devices) > limit:
        oldest = min(devices.values(), key=lambda d: (d.kind in ("key", "passkey"),
                                                       d.last_seen, d.enrolled))
        del devices[oldest.id]


def _used(devices: dict[str, Device], device: Device) -> None:
    """A sign-in with *device*: an invite is gone, a passkey's sign count and anyone's
    last sign-in move forward."""
    held = devices.get(device.id)
    if held is None:
        return
    if held.kind == "invite":
        del devices[held.id]
    else:
        devices[held.id] = replace(held, last_seen=max(held.last_seen, device.last_seen),
                                   sign_count=max(held.sign_count, device.sign_count))


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


def new_invite(identity: crypto.IdentityKey, person: str, rights: Rights, now: float,
               lifetime: float) -> tuple[Device, str, bytes]:
    """A one-time invite for *person* with *rights*: ``(its entry, its token, the
    invite key's private scalar)``; the caller enrols the entry and hands out
    ``connect.invite_link`` of the other two."""
    lifetime = min(float(lifetime), connect.INVITE_LIFETIME)
    if lifetime <= 0:
        raise ConfigError("an invite lives between a second and a day")
    key = crypto.IdentityKey.generate()
    device = Device(crypto.device_id(key.public_raw), key.public_raw,
                    clean_name(f"invite for {person}"), int(now), int(now), "invite",
                    check_person(person), rights, expires=int(now + lifetime))
    token = connect.DeviceToken.issue(identity, key.public_raw, connect.KEY_EPOCH, now,
                                      lifetime, kind="invite")
    return device, token, key.private_raw()


def add_invite(path: str, device: Device) -> None:
    """Write the invite *device* to the file (``people invite``: the running server
    reads it on its next status tick and tells its coordinator)."""
    change_file(path, lambda devices: _upsert(devices, device, connect.MAX_POLICY_DEVICES))


def revoke_person(path: str, person: str) -> list[Device]:
    """Remove every credential of *person* (``people revoke``): their passkeys, keys,
    devices and invites."""
    removed: list[Device] = []

    def change(devices):
        for d in [d for d in devices.values() if d.person == person]:
            removed.append(d)
            del devices[d.id]

    change_file(path, change)
    if not removed:
        raise ConfigError(f"nobody called {person!r} has a credential here: see "
                          "'homechannel people list'")
    return removed


def describe_people(devices: dict[str, Device], now: float) -> list[str]:
    """``people list``'s lines: each person, their rights, then their credentials."""
    lines = []
    people: dict[str, list[Device]] = {}
    for d in devices.values():
        people.setdefault(d.person, []).append(d)
    for person in sorted(people, key=lambda p: (p != OWNER_NAME, p)):
        held = sorted(people[person], key=lambda d: -d.last_seen)
        lines.append(f"{person}: {held[0].rights.describe()}")
        for d in held:
            seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.last_seen))
            if d.kind == "invite":
                state = ("expired" if now >= (d.expires or 0) else "unused, expires " +
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(d.expires or 0)))
                lines.append(f"  {d.id}  invite ({state})")
            else:
                lines.append(f"  {d.id}  {d.kind}  {d.name}  (last sign-in {seen})")
    return lines


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
        # Called with the ids revoked from the file (``devices``/``people revoke``): the
        # answerer ends their live sessions.
        self.on_removed = lambda ids: None

    def load(self):
        """Read the file (blocking: once, at start)."""
        if self.path:
            self._mtime = _mtime(self.path)
            self._devices = read_file(self.path)

    def __len__(self):
        return len(self._devices)

    def policy(self) -> connect.DevicePolicy:
        return connect.DevicePolicy(self.epoch, frozenset(self._devices))

    def check(self, token: connect.DeviceToken, offer: connect.Offer, digest: bytes,
              now: float) -> Device:
        """The enrolled credential a verified *token* stands for, if it is still
        enrolled with that key and kind, of this password epoch (a passkey or an
        invite: of none), an invite not expired, and it signed this connect: a device
        key *offer*'s session, challenge and offer hash *digest*
        (``crypto.device_offer_message``), a passkey a WebAuthn assertion over them
        (``crypto.passkey_challenge``) from its origin, with user verification and a
        sign count beyond the last one.  Without the password proof only a credential
        that signs in by itself is accepted.  AuthenticationError saying what is not so.
        Nothing changes until :meth:`used`."""
        device = self._devices.get(token.device)
        if device is None or device.key != token.key or device.kind != token.kind:
            raise AuthenticationError("the credential is not enrolled (it was revoked, "
                                      "removed to make room, or an invite already used)")
        epoch = connect.KEY_EPOCH if device.epoch_free else self.epoch
        if token.epoch != epoch:
            raise AuthenticationError("the token was issued before the password was changed")
        if offer.proof is None and device.kind == "device":
            raise AuthenticationError("this device signs in with the password, and the "
                                      "password proof is missing")
        if device.kind == "invite" and not now < (device.expires or 0):
            raise AuthenticationError("the invite has expired: ask for a new one")
        if device.kind == "passkey":
            if offer.passkey is None or offer.passkey.credential != device.credential:
                raise AuthenticationError("the connect carries no assertion of this passkey")
            count = passkey.verify_assertion(
                device.key, offer.passkey,
                crypto.passkey_challenge(offer.session, offer.challenge, digest),
                device.origin or "", device.sign_count)
            return replace(device, sign_count=count, last_seen=int(now))
        token.check_signature(offer.device_signature, crypto.device_offer_message(
            offer.session, offer.challenge, digest))
        return replace(device, last_seen=int(now))

    def used(self, device: Device) -> None:
        """A sign-in with *device* (what :meth:`check` returned) was accepted: an invite
        is used up, a passkey's sign count moves forward (in memory at once, in the
        file off the reactor)."""
        before = self.policy()
        _used(self._devices, device)
        after = self.policy()
        if after != before:
            self.on_change(after)
        if self.path and (device.kind in ("invite", "passkey")):
            d = self._to_thread(change_file, self.path, lambda devices: _used(devices, device))
            d.addCallbacks(self._read, self._failed)

    def person_of(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def enrol(self, key: bytes, name: str, now: float, **fields) -> Device:
        """Enrol (or refresh) the device with raw public key *key* (*fields*: the
        :class:`Device` fields of another kind of credential); written to the file
        off the reactor; ``on_change`` if the policy changed."""
        device = Device(crypto.device_id(key), key, clean_name(name), int(now), int(now),
                        **fields)
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
        for added in set(devices) - set(before.devices):
            d = devices[added]
            log.info("{kind} {device} of {person} added to {path}", kind=d.kind,
                     device=added[:8], person=d.person, path=self.path)
        after = self.policy()
        if after != before:
            self.on_change(after)
        if removed:
            self.on_removed(frozenset(removed))

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
