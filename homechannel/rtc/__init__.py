"""The aiortc glue: the only modules that touch aiortc and aioice internals.

- :mod:`~homechannel.rtc.webrtc` -- peer connections, ICE servers, host addresses
  to advertise, the selected candidate pair, the peer's certificate.
- :mod:`~homechannel.rtc.icechecks` -- prompt triggered checks (an aioice fix).
"""
