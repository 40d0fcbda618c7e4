"""What a sans-I/O protocol core hands back from every call, in aioquic's shape.

Bytes and ``now`` go in; an :class:`Output` comes out: the datagrams to send,
the events the application acts on, and the next deadline (when to call the
core's ``poll`` again; None when nothing is pending).  Events are small frozen
dataclasses, one class per kind, all subclasses of :class:`Event`; an adapter
dispatches them through a table (event class -> handler), and a test compares
them with ``==``.

The cores: :class:`~homechannel.coordinator.rendezvous.Rendezvous` (its events
in :mod:`homechannel.coordinator.events`), and
:class:`~homechannel.server.registrant.Registrant` with
:class:`~homechannel.server.links.Links` over it (theirs in
:mod:`homechannel.server.events`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

D = TypeVar("D")     # a datagram: bytes to the one peer, or (bytes, address)
E = TypeVar("E")     # an event, or (link, event) where there are several peers


class Event:
    """Base class of the events of the protocol cores."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Output(Generic[D, E]):
    """What one call into a core produced."""

    datagrams: Sequence[D]
    events: Sequence[E]
    deadline: float | None   # call ``poll`` at this time (None: no timer needed)
