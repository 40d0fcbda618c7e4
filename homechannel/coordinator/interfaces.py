"""The seams of the coordinator, all in one place: small interfaces that the
cluster's Redis implementations (``coordinator/cluster/``) replace, and that the
fakes in :mod:`homechannel.testing.coordinator` stand in for (checked with
``verifyObject``).

**The connect flow's seams are ``async def``** (:class:`IRelay`,
:class:`ISessionStore`, :class:`IRateLimiter`, :class:`ILockout`): what the
broker (``coordinator/broker.py``) awaits.  The in-memory implementations
finish at once (awaiting them makes no Deferred); the cluster's wait for Redis.
A caller that wants several answers in one Redis round trip starts the
coroutines together (``broker._together``): each queues its command before
the first reply comes back.  A coroutine started from Twisted code (a UDP
datagram, a timer) goes through ``Deferred.fromCoroutine``.

**The registry (:class:`IRegistry`) stays synchronous**: the sans-I/O UDP core
(``rendezvous.Rendezvous.receive(data, addr, now)``) calls it for every
datagram and returns the datagrams to send, without a reactor and without
ever waiting (keepalives are the coordinator's busiest path, and a coroutine
per datagram would cost more than the lookup).  It is never shared between
processes: a home server's UDP session lives on the one node it registered
with, and what the cluster shares (the directory of owners and the challenge
pools, ``cluster/redisrelay.Directory``) is written behind from the core's
events, never awaited by it.
"""

from zope.interface import Attribute, Interface


class IRelay(Interface):
    """What the connect flow needs from the UDP side: the in-process relay
    (``udp.CoordinatorUDP`` over ``rendezvous``) or a cluster node's
    (``cluster.redisrelay.ClusterRelay``)."""

    async def server_status(server_key):
        """``(online, challenge)`` for the raw 65-byte public key *server_key*.

        ``online`` is False for an unknown or expired server; ``challenge`` is
        the next unused single-use challenge (16 bytes) or None if the pool is
        momentarily empty (the UDP side is already refilling it).
        """

    async def take_challenge(server_key, challenge):
        """Consume *challenge* from the server's pool and return what the pool held
        for it (its ``expectedAnswer``, or a cluster's keyed hash of it), or None if
        it is not (or no longer) in the pool.  Consuming triggers a refill request to
        the home server over UDP."""

    def answer_matches(server_key, challenge, answer, expected):
        """Constant time: does the client's *answer* to *challenge* match *expected*,
        what :meth:`take_challenge` returned?  Plain (not async): no I/O."""

    async def send_offer(server_key, payload):
        """Relay opaque *payload* bytes (at most 64 KiB) to the home server.

        Returns (None) once the home server has acknowledged every fragment;
        raises ``homechannel.errors.Unavailable`` if the server is offline or
        does not acknowledge in time."""

    async def notify(server_key, body):
        """Send the home server a NOTICE (*body*: UTF-8 JSON of at most 512
        bytes, e.g. ``connect.failure_notice(source, "wrong-password")``), so
        that it logs every failed login.  Best effort."""

    async def device_policy(server_key):
        """The server's ``connect.DevicePolicy`` (its password epoch and enrolled
        devices, told over UDP: DEVICES), or None if it told none (no devices, or
        not yet): then no device token is accepted at the door."""

    def set_answer_handler(handler):
        """``handler(kid, payload)`` is called once for each complete ANSWER
        transfer from a home server (*kid*: ``crypto.key_id`` of its key).
        Plain (not async): it is wiring, done once at start."""


class ISessionStore(Interface):
    """Pending connect sessions: ``sessions.MemorySessionStore`` (this process)
    or ``cluster.redissessions.RedisSessionStore`` (shared by a cluster)."""

    waiting = Attribute("long-polls waiting on this process (the metrics read it)")

    async def create(session_id, server_key, source=None, device=None):
        """Start a pending session for the server with raw key *server_key*,
        asked for by the client address *source* (and device id *device* if
        it came with a device token).

        Raises ``BadRequest`` (code ``session-exists``) if *session_id* is in
        use and ``CapacityError`` (code ``busy``) if the table, the share of
        the source's network or the server's share of it is full (a missing
        *source* counts as one source, "unknown")."""

    async def info(session_id):
        """The ``SessionInfo`` of *session_id* (server key, source, device),
        or None if it is unknown or forgotten."""

    async def is_pending(session_id):
        """True while the session waits for its answer."""

    async def wait(session_id, timeout, source=None):
        """The session's result dict once it is answered, or None if *timeout*
        seconds pass first; raises the ``HomeChannelError`` the session ended
        with (``NotFound`` for an unknown session, ``CapacityError`` if too
        many are waiting, in all, for the session or from the network of the
        client address *source*).  Cancelling the waiting coroutine's
        Deferred stops the wait and gives its place back."""

    async def answer(session_id, result):
        """Complete a pending session with *result* (a JSON-able dict).
        Returns False (and changes nothing) if it is unknown or complete."""

    async def fail(session_id, error):
        """Complete a pending session with the ``HomeChannelError`` *error*.
        Returns False if it is unknown or already complete."""


class IRateLimiter(Interface):
    """A budget per key (a source network, a server, a device): in memory
    (``ratelimit.MemoryRateLimiter``) or shared by a cluster's nodes
    (``cluster.redislimits.RedisRateLimiter``)."""

    async def hit(key):
        """Count one event for *key*.

        Returns None if it is allowed, else the number of seconds (float > 0)
        after which it would be allowed.  A refused hit is not counted."""

    async def peek(key):
        """What :meth:`hit` would return for *key*, without counting anything
        (and without making an entry for a key it has not seen)."""


class ILockout(Interface):
    """Failed-answer lockouts per key (a source network, a device): in memory
    (``ratelimit.MemoryLockout``) or shared (``cluster.redislimits.RedisLockout``)."""

    async def check(key):
        """None if *key* may try, else the seconds until its lockout ends."""

    async def failure(key, weight=1.0):
        """Count a failed attempt by *key* (*weight* of one failure); return the
        new lockout's length in seconds if this failure started one, else None."""

    async def success(key):
        """*key* succeeded: forget its failures."""


class IRegistry(Interface):
    """The memory-compact table of registered servers (``registry``), as the
    UDP side (``rendezvous``, ``udp``) and the operator API use it.
    Synchronous (see the module's docstring).

    A server is addressed by its *slot* (an int >= 0, stable while it stays
    registered); *kid* is a 16-byte key id (``crypto.key_id``), *addr* a
    ``(host, port)`` tuple and *now* reactor time in seconds (float)."""

    count = Attribute("number of registered servers")
    slot_count = Attribute("slots in use or free (what a full expiry pass scans)")

    def lookup_key(kid):
        """Slot of the server with key id *kid*, or -1."""

    def lookup_addr(addr):
        """Slot of the server registered from *addr*, or -1 (also for an
        address that does not parse)."""

    def register(kid, addr, rx_key, tx_key, now):
        """Insert or replace the registration of *kid* with fresh session
        keys; return its slot.  A server that registers again keeps its slot;
        a server that held *addr* before is removed.  Raises
        ``CapacityError`` when the registry (or the source's share of it) is
        full."""

    def remove(slot):
        """Forget the server in *slot* (nothing if the slot is free)."""

    def addr(slot):
        """The ``(host, port)`` the server in *slot* registered from."""

    def key_id(slot):
        """The key id of the server in *slot*."""

    def keys(slot):
        """``(server_to_coordinator, coordinator_to_server)`` session keys."""

    def open(slot, data, now):
        """Open a DATA datagram from the server in *slot*: ``(counter,
        plaintext)``, None for a replay; raises ``ProtocolError`` or
        ``AuthenticationError`` for a bad one."""

    def seal(slot, message):
        """A DATA datagram carrying *message* to the server in *slot*."""

    def accept_counter(slot, counter):
        """Mark *counter* from the server as seen: False for a replay."""

    def set_pool(slot, pairs, replace=True):
        """Store ``(challenge, expectedAnswer)`` pairs (``replace=False``
        keeps the unconsumed ones and fills free places)."""

    def replace_pool(slot, generation, pairs):
        """Apply a CHALLENGES refresh unless one at least as new was applied:
        True if applied."""

    def pool(slot):
        """The ``(challenge, expectedAnswer)`` pairs in the pool."""

    def peek_challenge(slot):
        """The next unused challenge, or None when the pool is empty."""

    def take_challenge(slot, challenge):
        """Remove *challenge* from the pool; its expectedAnswer or None."""

    def expire(now, max_age, budget=None, forgotten=None):
        """Remove servers silent for more than *max_age* seconds, scanning at
        most *budget* slots; return how many were removed.  ``forgotten(kid)``
        (optional) is called for each."""

    def slots():
        """The slots in use."""
