"""The events of the home server's UDP core.

A :class:`~homechannel.server.registrant.Registrant` (one coordinator) raises
the first group; :class:`~homechannel.server.links.Links` (the active
coordinator and the one being moved to) passes them on as ``(link, event)``
pairs and adds the second group.  They come out of every call in
:class:`~homechannel.protocol.events.Output`; the adapter
(``server/udp.py``) dispatches them by class.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from homechannel.protocol.events import Event

if TYPE_CHECKING:
    from homechannel.server.links import Link


# -- from a registrant (one coordinator) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered(Event):
    """A registration completed (each time, also after a re-registration)."""


@dataclass(frozen=True, slots=True)
class AttemptFailed(Event):
    """One registration attempt failed, with a reason a person can act on (no
    answer: a firewall or the wrong address; a signature that does not match the
    pinned key; the coordinator refused, and why)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PingMissed(Event):
    """A ping went unanswered, *count* in a row (before ``Lost``: a home server
    with other coordinators to go to starts there)."""

    count: int


@dataclass(frozen=True, slots=True)
class Reregistering(Event):
    """A signed UNKNOWN: registering again while the session is kept (and answers
    offers) until the new one is up; a PONG on the session in the meantime cancels it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Lost(Event):
    """The link was declared dead; registering again has started."""

    reason: str


@dataclass(frozen=True, slots=True)
class OfferReceived(Event):
    """A complete OFFER transfer (once per transfer)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class NoticeReceived(Event):
    """A NOTICE (once per request): a failed login the coordinator caught."""

    body: bytes


@dataclass(frozen=True, slots=True)
class MigrateRequested(Event):
    """The coordinator asked the server to move to another one (once per request)."""

    host: str
    port: int
    public_key: bytes    # raw, pinned for the new coordinator

    @property
    def target(self) -> tuple[str, int, bytes]:
        return self.host, self.port, self.public_key


@dataclass(frozen=True, slots=True)
class MigrateRefused(Event):
    """The coordinator asked the server to move to a coordinator whose key it may not
    move to (not the configured ``coordinator.public_key``, nor in
    ``coordinator.allow_migrate``): acknowledged with the reason, not followed."""

    host: str
    port: int
    public_key: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Left(Event):
    """A ``leave`` is done: BYE acknowledged, the coordinator had already
    forgotten us, or we were not registered."""


# -- from the links (several coordinators) --------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolveNeeded(Event):
    """The link's host name must be resolved now: call ``Links.resolved`` or
    ``Links.resolve_failed`` with the answer."""


@dataclass(frozen=True, slots=True)
class ResolveFailed(Event):
    """The name did not resolve; the links try again in ``RESOLVE_RETRY`` seconds."""

    reason: str


@dataclass(frozen=True, slots=True)
class Moving(Event):
    """A MIGRATE started a move to the link (registering there first)."""


@dataclass(frozen=True, slots=True)
class Moved(Event):
    """The move is done: the link is the active one now (save it as the failover
    target, ``<state_dir>/failover-coordinator.json``)."""

    old: "Link"


@dataclass(frozen=True, slots=True)
class MoveFailed(Event):
    """The link did not register in time: the server stays where it is."""

    reason: str


@dataclass(frozen=True, slots=True)
class FailingOver(Event):
    """The active coordinator stopped answering: registering with the link, another
    address of the same cluster (``coordinator.addresses``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class FailedOver(Event):
    """The failover is done: the link is the active one now (not saved: the
    configured list stays the truth)."""

    old: "Link"
