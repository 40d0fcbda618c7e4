"""Test doubles shipped with the package (as treq ships ``StubTreq``), each checked
against the interface it stands in for.

- :mod:`~homechannel.testing.udp` -- a lossy in-memory UDP wire joining the real
  sans-I/O cores (``Rendezvous``, ``Registrant``) under a fake clock.
- :mod:`~homechannel.testing.coordinator` -- ``FakeRelay``, ``AnswererRelay``,
  ``LoopClock``: the coordinator's seams in memory; ``at_once`` runs a seam's
  coroutine that finishes without waiting.
- :mod:`~homechannel.testing.apps` -- fake and paired datachannels for the apps.
- :mod:`~homechannel.testing.local` -- a coordinator and a home server on this
  machine: both configs, keys and password key (for the demo, the end-to-end tests
  and the benchmarks).
- :mod:`~homechannel.testing.threads` -- ``ManualThreads``, a thread pool whose
  jobs run when the test says.
"""
