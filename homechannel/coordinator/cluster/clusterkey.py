"""The cluster key: what every node of a cluster holds and its Redis never sees
(sans I/O: bytes, keys and ``now`` in, bytes out).

A 32-byte secret in a 0600 file on each node (``cluster.key_file``, made by
``homechannel cluster-key`` and copied to every node like the identity key;
:mod:`homechannel.keyfiles` reads it).  Whoever reaches Redis can read, change
and delete anything in it, and publish on any channel; with this key the nodes
make what Redis holds and carries useless to them:

* **Messages between nodes** (OFFER, RESULT, NOTICE, REFILL on a node's
  channel, session completions on ``done``) are sealed: AES-256-GCM under a
  key used once, ``HMAC(messages key, salt)``, with a fresh random 16-byte
  salt; the channel's purpose, the format version and the time are
  authenticated.  A node opens every message before it acts on it: one that
  does not open, is more than :data:`WINDOW` seconds off the node's clock, or
  was seen before (its salt is remembered for ``2 x WINDOW``) is a counted drop
  (:class:`MessageSeal`).  So Redis can neither forge a message nor replay one,
  and it cannot read offers (their proofs and device tokens would let it check
  password guesses offline and sign in as a device).
* **Session records** (the server, source and device of a session, and its
  result) are sealed the same way under the records key, bound to the session
  id (and the result to its state), so Redis can neither read nor change them
  (:meth:`ClusterKey.seal_record`).
* **Pool entries** hold ``HMAC(pools key, key id || challenge ||
  expectedAnswer)`` instead of ``expectedAnswer`` (:meth:`ClusterKey.pool_entry`):
  what Redis holds cannot check a password guess, and an entry moved to another
  server or challenge matches nothing.
* **Names of the counters** (rate limits, lockouts, session shares) carry a
  keyed hash of the source, device or server they count, never the address or
  id itself (:meth:`ClusterKey.pseudonym`).

Each use has its own key, derived with HKDF-SHA256 and a label; the key's
``fingerprint`` (another derived value: it says nothing about the key) is
logged at start and printed by ``homechannel cluster-key``, so an operator can
see that two nodes hold the same key.
"""

import hmac
import os
import struct
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from homechannel import crypto
from homechannel.errors import ProtocolError

LABEL = b"homechannel cluster v1 "
VERSION = 1
SALT = 16
TAG = 16
# A message more than this many seconds off the receiver's clock is refused (keep the
# nodes' clocks in sync: NTP, as the device path already needs).
WINDOW = 30.0
# Salts remembered (the valid messages of 2 x WINDOW seconds); past it, messages are
# refused rather than a salt forgotten early.
MAX_SEEN = 1_000_000
_ZERO_NONCE = bytes(12)
_HEADER = struct.Struct(">BQ")          # version, time (ms)

# The purposes a message is sealed for (authenticated with it): a node channel's
# messages and the session completions are never taken for each other.
NODE, DONE = b"n", b"d"


class MessageRefused(ProtocolError):
    """A message that is not acted on; ``reason`` is its drop counter's label."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def _seal(key, salt, plaintext, aad):
    return AESGCM(hmac.digest(key, salt, "sha256")).encrypt(_ZERO_NONCE, plaintext, aad)


def _open(key, salt, ciphertext, aad):
    return AESGCM(hmac.digest(key, salt, "sha256")).decrypt(_ZERO_NONCE, ciphertext, aad)


class ClusterKey:
    """The keys derived from one cluster key (32 bytes)."""

    def __init__(self, secret: bytes, random_bytes=os.urandom):
        if len(secret) != 32:
            raise ValueError("a cluster key is 32 bytes")

        def derive(label, length=32):
            return crypto.hkdf(secret, b"", LABEL + label, length)

        self._messages = derive(b"messages")
        self._records = derive(b"session records")
        self._pools = derive(b"pool entries")
        self._names = derive(b"key names")
        self.fingerprint = crypto.b64u_encode(derive(b"fingerprint", 9))
        self.random_bytes = random_bytes

    def __repr__(self):
        return f"<ClusterKey {self.fingerprint}>"

    # -- pool entries ------------------------------------------------------------------

    def pool_entry(self, kid: bytes, challenge: bytes, expected: bytes) -> bytes:
        """What Redis holds for a challenge instead of its ``expectedAnswer``."""
        return hmac.digest(self._pools, kid + challenge + expected, "sha256")

    def answer_matches(self, kid: bytes, challenge: bytes, answer: bytes,
                       entry: bytes) -> bool:
        """Constant time: does the client's *answer* match the pool *entry*?"""
        return hmac.compare_digest(
            self.pool_entry(kid, challenge, crypto.expected_answer(answer)), entry)

    # -- names -------------------------------------------------------------------------

    def pseudonym(self, value) -> bytes:
        """A keyed hash of *value* (str or bytes) for a Redis key name: 22 characters of
        base64url (128 bits), the same on every node, meaningless without the key."""
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return crypto.b64u_encode(hmac.digest(self._names, data, "sha256")[:16]).encode()

    # -- session records -----------------------------------------------------------------

    def seal_record(self, aad: bytes, plaintext: bytes) -> bytes:
        salt = self.random_bytes(SALT)
        return salt + _seal(self._records, salt, plaintext, b"record " + aad)

    def open_record(self, aad: bytes, blob: bytes) -> bytes:
        """The plaintext of a sealed record; ``MessageRefused`` if it does not open
        (Redis changed it, or moved it to another session)."""
        try:
            return _open(self._records, blob[:SALT], blob[SALT:], b"record " + aad)
        except (InvalidTag, ValueError, TypeError):
            raise MessageRefused("bad-record", "a session record that does not "
                                 "verify") from None


class MessageSeal:
    """Seals the messages this node publishes and opens the ones it receives, once
    each (the replay table is this node's)."""

    def __init__(self, key: ClusterKey, window=WINDOW, max_seen=MAX_SEEN):
        self._key = key._messages
        self._random = key.random_bytes
        self.window = window
        self._max_seen = max_seen
        self._seen: OrderedDict[bytes, float] = OrderedDict()         # salt -> forget at (arrival + 2 x window)

    def __len__(self):
        return len(self._seen)

    def seal(self, purpose: bytes, message: bytes, now: float) -> bytes:
        header = _HEADER.pack(VERSION, max(0, int(now * 1000)))
        salt = self._random(SALT)
        return header + salt + _seal(self._key, salt, message, purpose + header)

    def open(self, purpose: bytes, data: bytes, now: float) -> bytes:
        """The message sealed in *data* for *purpose*; raise :class:`MessageRefused`
        (reason ``malformed``, ``bad-mac``, ``stale``, ``replayed`` or ``busy``)."""
        if not isinstance(data, bytes) or len(data) < _HEADER.size + SALT + TAG:
            raise MessageRefused("malformed", "a cluster message too short to be one")
        header = data[:_HEADER.size]
        version, sent = _HEADER.unpack(header)
        if version != VERSION:
            raise MessageRefused("malformed", f"a cluster message of version {version}")
        salt = data[_HEADER.size:_HEADER.size + SALT]
        try:
            message = _open(self._key, salt, data[_HEADER.size + SALT:], purpose + header)
        except InvalidTag:
            raise MessageRefused("bad-mac", "a cluster message that does not verify "
                                 "(not sealed with this cluster key)") from None
        if not abs(sent / 1000.0 - now) <= self.window:
            raise MessageRefused("stale", "a cluster message sent more than "
                                 f"{self.window:g} s from now (replayed, or the nodes' "
                                 "clocks differ)")
        self._forget(now)
        if salt in self._seen:
            raise MessageRefused("replayed", "a cluster message seen before")
        if len(self._seen) >= self._max_seen:
            raise MessageRefused("busy", "too many cluster messages to remember")
        self._seen[salt] = now + 2 * self.window
        return message

    def _forget(self, now):
        seen = self._seen
        while seen:
            salt, until = next(iter(seen.items()))
            if until > now:
                break
            del seen[salt]
