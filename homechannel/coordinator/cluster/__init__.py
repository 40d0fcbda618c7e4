"""A coordinator cluster: several nodes behind a load balancer, sharing Redis.

Only with the ``[cluster]`` install extra (redis-py); nothing here is imported by
a single coordinator process.

- :mod:`~homechannel.coordinator.cluster.node` -- builds one node's seams and services.
- :mod:`~homechannel.coordinator.cluster.redisstore` -- batched commands and Lua
  scripts on one Redis, and one meaning for "Redis is gone".
- :mod:`~homechannel.coordinator.cluster.redislimits` -- rate limits and lockouts.
- :mod:`~homechannel.coordinator.cluster.redissessions` -- connect sessions and answers.
- :mod:`~homechannel.coordinator.cluster.redisrelay` -- the directory of owners, the
  shared challenge pools, offers and notices relayed between nodes.
- :mod:`~homechannel.coordinator.cluster.noderelay` -- the messages between nodes (pure).
- :mod:`~homechannel.coordinator.cluster.clusterkey` -- the cluster key, which Redis never
  sees: sealed messages and records, keyed hashes of pools and key names (pure).

Redis is a party of its own (docs/security.md, "Redis"): the nodes log in
(``redisstore.check_login``), and what Redis holds and carries is sealed or
hashed with the cluster key.
"""
