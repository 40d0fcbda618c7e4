"""The native client: the browser's connect flow from a terminal, with aiortc.

- :mod:`~homechannel.client.api` -- the coordinator's signed JSON API
  (:class:`~homechannel.client.api.Coordinator`): every response verified, no
  redirect followed, an unsigned refusal told as a proxy's.
- :mod:`~homechannel.client.trust` -- the canonical coordinator URL, the coordinator
  keys trusted per URL (``coordinators.json``, trust on first use) and the device
  tokens kept per home server (``devices.json``).
- :mod:`~homechannel.client.control` -- opening datachannels, requests on the
  control channel, ping.
- :mod:`~homechannel.client.session` -- the connect flow
  (:func:`~homechannel.client.session.connect`): lookup, proof, offer, the checks
  of the answer and of the DTLS certificate, the device token.
- :mod:`~homechannel.client.forward` -- ``homechannel forward``'s pipes: a listener
  or stdin/stdout, each stream through its own ``app:forward:<n>`` channel.

The command line (``homechannel connect``, ``homechannel forward``) is
:mod:`homechannel.cli.client`; this package never imports :mod:`homechannel.cli`.
Pure asyncio (aiortc is asyncio): it never touches Twisted.
"""
