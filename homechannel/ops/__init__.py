"""What both daemons need to be operated: endpoints, metrics, logs, timers.

- :mod:`~homechannel.ops.endpoints` -- Twisted endpoint strings, split and joined.
- :mod:`~homechannel.ops.metrics` -- Prometheus collectors and their loopback listener.
- :mod:`~homechannel.ops.logfilter` -- quieter loggers for libraries' protocol chatter.
- :mod:`~homechannel.ops.deadline` -- the one timer of an adapter around a sans-I/O core.
- :mod:`~homechannel.ops.dualstack` -- one UDP port (and web endpoints) for IPv6 and IPv4.
"""
