"""The events of the coordinator's UDP core (:class:`~homechannel.coordinator.rendezvous.Rendezvous`).

They come out of its calls in :class:`~homechannel.protocol.events.Output`;
the adapter (``coordinator/udp.py``) dispatches them by class.  *kid* is the
home server's key id (``crypto.key_id`` of its public key).
"""

from dataclasses import dataclass

from typing import TYPE_CHECKING

from homechannel.protocol.events import Event

if TYPE_CHECKING:
    from homechannel.protocol.connect import DevicePolicy


@dataclass(frozen=True, slots=True)
class AnswerReceived(Event):
    """A complete ANSWER transfer from a home server (for the broker)."""

    kid: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class OfferAcknowledged(Event):
    """Every fragment of the offer ``send_offer(..., offer_id)`` was acknowledged."""

    kid: bytes
    offer_id: int


@dataclass(frozen=True, slots=True)
class OfferFailed(Event):
    """The offer ``send_offer(..., offer_id)`` did not reach the home server: it is
    not registered, the coordinator is busy, or it did not acknowledge in time."""

    kid: bytes
    offer_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PoolUpdated(Event):
    """A server's challenge pool was set: *replace* on registration and on a
    CHALLENGES refresh, not on a REFILL reply (free places filled).  For a cluster's
    directory (``redisrelay.Directory.pool``)."""

    kid: bytes
    pairs: tuple[tuple[bytes, bytes], ...]
    replace: bool


@dataclass(frozen=True, slots=True)
class ServerForgotten(Event):
    """A server expired (silent for longer than the expiry time) or left (BYE).  For
    a cluster's directory (``redisrelay.Directory.forget``)."""

    kid: bytes


@dataclass(frozen=True, slots=True)
class DevicesUpdated(Event):
    """A server told its device policy (DEVICES): *policy* is a
    ``connect.DevicePolicy``, *generation* counts up within the
    registration *session* (a tag of its session keys), so that a late copy never
    undoes a newer one.  For the in-memory table (``devicepolicy.DevicePolicies``)
    and a cluster's store of them."""

    kid: bytes
    session: bytes
    generation: int
    policy: "DevicePolicy"
