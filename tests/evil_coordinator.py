"""A malicious coordinator, for tests only: the real coordinator service (the
Klein API, the UDP registry and relay from ``homechannel.coordinator.tap``)
with one tampering hook that rewrites the SDP it relays.

    python tests/evil_coordinator.py MODE --config coordinator.toml

MODE is one of:

- ``honest``: relay unchanged (a control: the harness itself connects);
- ``offer-fingerprint``: rewrite the ``a=fingerprint:sha-256`` line of the
  browser's offer on its way to the home server (``CoordinatorUDP.send_offer``);
- ``answer-fingerprint``: rewrite the fingerprint in the home server's answer
  on its way to the browser (``CoordinatorWeb.on_answer``);
- ``answer-candidate``: leave the fingerprint alone but move every ICE
  candidate of the answer to another port (what a coordinator that wants to
  sit in the middle would do).

Every rewrite is logged as ``evil: rewrote ...`` so a test can tell that the
tampering really happened.  Runs the service with ``startService(); reactor.run()``
and logs to stdout in twistd's format.
"""

import json
import re
import sys

MODES = ("honest", "offer-fingerprint", "answer-fingerprint", "answer-candidate")

_FINGERPRINT = re.compile(r"^(a=fingerprint:sha-256 )([0-9A-Fa-f:]+)", re.MULTILINE)
_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ \S+ )(\d+)( typ )", re.MULTILINE)


def rewrite_fingerprint(sdp):
    """Flip the first byte of every sha-256 fingerprint; return (new sdp, count)."""
    def flip(m):
        fp = m.group(2)
        first = "%02X" % (int(fp[:2], 16) ^ 0xFF)
        return m.group(1) + first + fp[2:]
    return _FINGERPRINT.subn(flip, sdp)


def rewrite_candidates(sdp):
    """Move every ICE candidate to port + 1 (wrapping); return (new sdp, count)."""
    def move(m):
        port = int(m.group(2))
        return m.group(1) + str(port + 1 if port < 65535 else 1024) + m.group(3)
    return _CANDIDATE.subn(move, sdp)


def install(mode, log):
    from homechannel.coordinator.udp import CoordinatorUDP
    from homechannel.coordinator.web import CoordinatorWeb

    if mode not in MODES:
        raise SystemExit(f"evil_coordinator: unknown mode {mode!r} (one of {', '.join(MODES)})")

    send_offer = CoordinatorUDP.send_offer
    on_answer = CoordinatorWeb.on_answer

    def evil_send_offer(self, server_key, payload):
        if mode == "offer-fingerprint":
            doc = json.loads(bytes(payload).decode("utf-8"))
            doc["offer"], n = rewrite_fingerprint(doc["offer"])
            log.info("evil: rewrote {n} fingerprint(s) in the offer of session {session}",
                     n=n, session=doc["session"])
            payload = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        return send_offer(self, server_key, payload)

    def evil_on_answer(self, server_key, payload):
        if mode in ("answer-fingerprint", "answer-candidate"):
            doc = json.loads(bytes(payload).decode("utf-8"))
            if isinstance(doc.get("answer"), str):
                if mode == "answer-fingerprint":
                    doc["answer"], n = rewrite_fingerprint(doc["answer"])
                    what = "fingerprint(s)"
                else:
                    doc["answer"], n = rewrite_candidates(doc["answer"])
                    what = "candidate(s)"
                log.info("evil: rewrote {n} " + what + " in the answer of session {session}",
                         n=n, session=doc["session"])
                payload = json.dumps(doc).encode("utf-8")
        return on_answer(self, server_key, payload)

    # Patched on the classes before makeService builds the service, so the
    # relay the web API holds and the answer handler the UDP side calls
    # (``web.on_answer``, bound at construction) are the tampering ones.
    CoordinatorUDP.send_offer = evil_send_offer
    CoordinatorWeb.on_answer = evil_on_answer


def main(argv):
    if len(argv) < 1:
        raise SystemExit(__doc__)
    mode, rest = argv[0], argv[1:]
    from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    log = Logger(namespace="evil")
    install(mode, log)

    from homechannel.coordinator import tap

    options = tap.Options()
    options.parseOptions(rest)
    top = tap.makeService(options)

    from twisted.internet import reactor

    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("evil coordinator running, mode {mode}", mode=mode)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
