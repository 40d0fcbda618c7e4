"""The seams of the coordinator: small interfaces that a later Redis- or
multi-process implementation can replace (see DESIGN.md, "Scale")."""

from zope.interface import Attribute, Interface


class IRelay(Interface):
    """What the HTTPS API needs from the UDP side (``rendezvous``)."""

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
    """The memory-compact table of registered servers (``registry``)."""

    count = Attribute("number of registered servers")

    def lookup_key(kid):
        """Slot of the server with 16-byte key id *kid*, or -1."""

    def lookup_addr(addr):
        """Slot of the server registered from *addr* (host, port), or -1."""
