"""The pure layer: HomeChannel's formats, bytes and ``now`` in, values and bytes out.

No reactor, no sockets, no aiortc; strictly typed as a folder (``setup.cfg``
``[mypy]``).  Every format both the Python and the browser side speak has a JS
twin checked against vectors made here.

- :mod:`~homechannel.protocol.udp` -- the UDP datagram codec between home servers
  and the coordinator (handshake, sealed messages, fragments, replay window).
- :mod:`~homechannel.protocol.retransmit` -- retransmission of requests until
  answered, for both UDP ends.
- :mod:`~homechannel.protocol.events` -- what the UDP cores return from every call:
  datagrams, events and the next deadline.
- :mod:`~homechannel.protocol.connect` -- the connect flow: the HTTP API's bodies,
  device tokens, the OFFER and ANSWER payloads, refusal codes, connect links.
- :mod:`~homechannel.protocol.sdp` -- the one SDP shape our clients produce (one
  datachannel section, exactly one sha-256 fingerprint), checked on every offer and
  answer.
- :mod:`~homechannel.protocol.join` -- the join string a coordinator hands to new
  home servers.
- :mod:`~homechannel.protocol.frames` -- binary frames of the datachannel apps.
- :mod:`~homechannel.protocol.ice` -- STUN and TURN servers: the one validator, in
  a config (ConfigError) and in a payload (ProtocolError).
- :mod:`~homechannel.protocol.hostport` -- ``HOST:PORT`` and ``[IPV6]:PORT``, the one
  address parser of the command line and the configuration.
"""
