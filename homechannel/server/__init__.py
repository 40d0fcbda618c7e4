"""The home server: registers with a coordinator over UDP, answers the offers it relays,
and serves the apps over the end-to-end datachannel.

- :mod:`~homechannel.server.tap` -- ``twistd homechannel-server``: config in, services
  wired (the only module with the reactor, with ``udp``).
- UDP: :mod:`~homechannel.server.udp` (the ``DatagramProtocol`` adapter),
  :mod:`~homechannel.server.links` (the active coordinator and the one moved or failed
  over to, sans I/O), :mod:`~homechannel.server.registrant` (one coordinator's
  sans-I/O core, emitting the events of :mod:`~homechannel.server.events`),
  :mod:`~homechannel.server.eyeballs` (IPv6 or IPv4: Happy Eyeballs).
- Sign-in: :mod:`~homechannel.server.peer` (the WebRTC answerer: the proof checked, the
  answer signed, the DTLS certificate compared), :mod:`~homechannel.server.challenges`
  (single-use challenges), :mod:`~homechannel.server.devices` (enrolled devices, the
  password epoch), :mod:`~homechannel.server.offerice` (the ICE servers an offer
  brings, checked), :mod:`~homechannel.server.audit` (one line per login and file
  operation).
- State: :mod:`~homechannel.server.status` (``status.json`` for ``homechannel
  status``), :mod:`~homechannel.server.statefiles` (files written off the reactor).
- :mod:`homechannel.server.apps` -- files, terminal, desktop and port forwarding over
  the datachannel.
"""
