"""The device policies of the home servers registered with this process: what the
broker checks a device token against at the door (``broker.Broker.connect``).

Each home server tells its coordinator, over the authenticated UDP channel
(DEVICES, docs/protocol.md section 1.3), its current password epoch and the ids
of its enrolled devices (``connect.DevicePolicy``).  A token of another epoch
(issued before ``homechannel passwd``) or of a device that is no longer enrolled
(``homechannel devices revoke``) is refused before it spends anything, and a
server that told nothing (no devices, or not yet after a restart of this
process) accepts no token here: its clients sign in with the password, and the
home server, which checks every token itself, is the authority either way.

Only servers that have enrolled devices tell one (a home server without any
sends nothing), so the registry's 253 bytes a server stay as they are for the
rest; entries go when the server is forgotten.
"""

from homechannel.protocol.connect import DevicePolicy


class DevicePolicies:
    """``kid -> (session tag, generation, DevicePolicy)``: the newest policy of each
    server's current registration."""

    def __init__(self) -> None:
        self._table: dict[bytes, tuple[bytes, int, DevicePolicy]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def update(self, kid: bytes, session: bytes, generation: int,
               policy: DevicePolicy) -> bool:
        """Keep *policy* unless a newer generation of the same registration *session*
        is kept; True if it changed what :meth:`get` answers."""
        held = self._table.get(kid)
        if held is not None and held[0] == session and held[1] >= generation:
            return False
        before = held[2] if held is not None else None
        self._table[kid] = (session, generation, policy)
        return before != policy

    def get(self, kid: bytes) -> DevicePolicy | None:
        held = self._table.get(kid)
        return held[2] if held is not None and held[2].devices else None

    def forget(self, kid: bytes) -> None:
        self._table.pop(kid, None)
