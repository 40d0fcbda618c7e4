"""Which host addresses a HomeChannel peer connection advertises as ICE candidates.

This is the one place that decides it, for the home server's answerer and for
the native client alike.

aioice gathers host candidates from every interface address except loopback
(``aioice.ice.get_host_addresses``), and aiortc has no public knob for it.  The
``webrtc.advertise_addresses`` setting lists extra host addresses (for example
``["127.0.0.1"]`` in a loopback-only test namespace, or one fixed LAN address).
They are added per connection, never by patching aioice's module globals: each
ICE gatherer's ``Connection.get_component_candidates`` (the coroutine that
binds one UDP socket per address and makes a host candidate of it) is wrapped
on that instance only, so every other connection in the process is untouched.
"""

import ipaddress

from homechannel.errors import ConfigError


def parse_addresses(addresses) -> tuple:
    """Validate a list of IP address strings; return them as a normalised tuple."""
    if isinstance(addresses, str):
        raise ConfigError("webrtc.advertise_addresses must be a list of IP addresses, "
                          f"e.g. [{addresses!r}]")
    result = []
    for text in addresses or ():
        try:
            address = str(ipaddress.ip_address(text))
        except (ValueError, TypeError):
            raise ConfigError(f"webrtc.advertise_addresses: {text!r} is not an IP address") from None
        if address not in result:
            result.append(address)
    return tuple(result)


def ice_gatherers(pc):
    """The ICE gatherers of *pc* (its SCTP transport and its transceivers), each once."""
    seen = []
    transports = []
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for transceiver in pc.getTransceivers():
        transports.append(transceiver.sender.transport)
    for dtls in transports:
        if dtls is None:
            continue
        gatherer = dtls.transport.iceGatherer
        if all(gatherer is not g for g in seen):
            seen.append(gatherer)
    return seen


def advertise_host_addresses(pc, addresses) -> None:
    """Make *pc* also gather host candidates on *addresses*.

    Call it after the transports exist and before gathering starts: for an
    answerer after ``setRemoteDescription``, for an offerer after
    ``createDataChannel``; in both cases before ``setLocalDescription``.
    Calling it again on the same connection does not add the addresses twice.
    """
    extra = parse_addresses(addresses)
    if not extra:
        return
    for gatherer in ice_gatherers(pc):
        if gatherer.state != "new":
            raise RuntimeError("advertise_host_addresses() called after ICE gathering started")
        connection = gatherer._connection  # aioice.Connection; no public accessor exists
        if getattr(connection, "_homechannel_extra_addresses", None) is not None:
            connection._homechannel_extra_addresses = extra
            continue
        connection._homechannel_extra_addresses = extra
        original = connection.get_component_candidates

        async def get_component_candidates(component, addresses, timeout=5,
                                           _original=original, _connection=connection):
            merged = list(addresses)
            for address in _connection._homechannel_extra_addresses:
                if address not in merged:
                    merged.append(address)
            return await _original(component=component, addresses=merged, timeout=timeout)

        connection.get_component_candidates = get_component_candidates
