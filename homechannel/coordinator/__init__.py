"""The coordinator: the public introducer that home servers register with over UDP and
browsers reach over HTTPS.  It relays one offer and one answer per connect, checks every
attempt before it relays it, and never sees a session's keys.

The composition root, then the rings from the outside in:

- :mod:`~homechannel.coordinator.tap` -- ``twistd homechannel-coordinator``: config in,
  services wired (the only module with the reactor, with ``udp`` and ``httpserver``).
- HTTPS: :mod:`~homechannel.coordinator.httpserver` (the listener's limits for
  strangers), :mod:`~homechannel.coordinator.tls` (its certificate, reloaded on
  SIGHUP), :mod:`~homechannel.coordinator.web` (the Klein API and the browser client),
  :mod:`~homechannel.coordinator.admin` (the operator's endpoint: ``homechannel migrate``).
- The connect use-case: :mod:`~homechannel.coordinator.broker` (lookups, connects,
  answers, over the seams of :mod:`~homechannel.coordinator.interfaces`: registry,
  sessions, relay, limits, lockouts), :mod:`~homechannel.coordinator.sessions`
  (pending connects, in memory), :mod:`~homechannel.coordinator.ratelimit` (token
  buckets, lockouts, trusted proxies), :mod:`~homechannel.coordinator.shares` (a capped
  table's share per source), :mod:`~homechannel.coordinator.devicepolicy` (the device
  policies home servers told), :mod:`~homechannel.coordinator.turn` (relay credentials
  for proven clients).
- UDP: :mod:`~homechannel.coordinator.udp` (the ``DatagramProtocol`` adapter),
  :mod:`~homechannel.coordinator.rendezvous` (the sans-I/O core, emitting the events of
  :mod:`~homechannel.coordinator.events`), :mod:`~homechannel.coordinator.registry` and
  :mod:`~homechannel.coordinator.slotindex` (registered servers, memory-compact),
  :mod:`~homechannel.coordinator.udplimits` (limits per source network, a sketch),
  :mod:`~homechannel.coordinator.stun` (STUN Binding on the same port).
- :mod:`homechannel.coordinator.cluster` -- several nodes sharing Redis (the
  ``[cluster]`` extra).
"""
