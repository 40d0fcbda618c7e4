"""The seams of the coordinator: small interfaces that a later Redis- or
multi-process implementation can replace (see DESIGN.md, "Scale")."""

from zope.interface import Attribute, Interface


class IRelay(Interface):
    """What the HTTPS API needs from the UDP side (``rendezvous``).

    The in-process relay (``udp.CoordinatorUDP``) answers ``server_status``
    and ``take_challenge`` at once; the cluster's (``redisrelay.ClusterRelay``)
    with a Deferred of the same value.  The broker accepts both."""

    def server_status(server_key):
        """``(online, challenge)`` for the raw 65-byte public key *server_key*.

        ``online`` is False for an unknown or expired server; ``challenge`` is
        the next unused single-use challenge (16 bytes) or None if the pool is
        momentarily empty (the UDP side is already refilling it).
        """

    def take_challenge(server_key, challenge):
        """Consume *challenge* from the server's pool and return its 32-byte
        ``expectedAnswer``, or None if it is not (or no longer) in the pool.
        Consuming triggers a refill request to the home server over UDP."""

    def send_offer(server_key, payload):
        """Relay opaque *payload* bytes (at most 64 KiB) to the home server.

        Returns a Deferred that fires with None once the home server has
        acknowledged every fragment, or fails with
        ``homechannel.errors.Unavailable`` if the server is offline or does
        not acknowledge in time."""

    def notify(server_key, body):
        """Send the home server a NOTICE (*body*: UTF-8 JSON of at most 512
        bytes, e.g. ``connect.failure_notice(source, "wrong-password")``), so
        that it logs every failed login.  Best effort."""

    def set_answer_handler(handler):
        """``handler(kid, payload)`` is called once for each complete ANSWER
        transfer from a home server (*kid*: ``crypto.key_id`` of its key)."""


class IRegistry(Interface):
    """The memory-compact table of registered servers (``registry``), as the
    UDP side (``rendezvous``, ``udp``) and the operator API use it.

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
