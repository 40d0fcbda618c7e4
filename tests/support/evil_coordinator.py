"""A malicious coordinator, for tests only: the real coordinator service (the
Klein API, the broker, the UDP registry and relay from
``homechannel.coordinator.tap``) with tampering hooks that rewrite the SDP it
relays, in either direction.

    python tests/support/evil_coordinator.py --mode-file FILE --config coordinator.toml

The mode is read from FILE (one word) at every relayed offer and answer, so one
running coordinator serves a whole matrix of attacks.  ``honest`` relays
unchanged; ``offer-<rewrite>`` rewrites the browser's offer on its way to the
home server (``CoordinatorUDP.send_offer``); ``answer-<rewrite>`` rewrites the
home server's answer on its way to the client (``Broker.on_answer``).  The
rewrites (:data:`REWRITES`) are what a coordinator that wants its own DTLS
certificate accepted, or wants to sit in the middle, would try.

Every rewrite is logged as ``evil: rewrote <where> with <rewrite> in session
<sid>`` so a test can tell that the tampering really happened.  Runs the
service with ``startService(); reactor.run()`` and logs to stdout in twistd's
format.
"""

import json
import re
import sys

# A certificate the attacker holds (any fingerprint but the client's or server's).
ATTACKER_FP = ":".join(["5A"] * 32)


def _hexes(n):
    return ":".join(["C3"] * n)


def _after_media(sdp, lines):
    """Insert *lines* right after the m= line (inside the media section)."""
    return re.sub(r"(?m)^(m=application[^\r\n]*\r?\n)", lambda m: m.group(1) + lines, sdp,
                  count=1)


def _second_media(mid, fp):
    return ("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
            f"a=mid:{mid}\r\na=ice-ufrag:evil\r\na=ice-pwd:evilevilevilevilevilevil\r\n"
            f"a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\na=sctp-port:5000\r\n")


def _flip_setup(sdp):
    for a, b in (("actpass", "passive"), ("active", "passive"), ("passive", "active")):
        if f"a=setup:{a}" in sdp:
            return sdp.replace(f"a=setup:{a}", f"a=setup:{b}", 1)
    return sdp


def _swap_ice(sdp):
    sdp = re.sub(r"(?m)^a=ice-ufrag:\S+", "a=ice-ufrag:EVIL", sdp)
    return re.sub(r"(?m)^a=ice-pwd:\S+", "a=ice-pwd:evilevilevilevilevilevil", sdp)


def _move_candidates(sdp):
    def move(m):
        port = int(m.group(2))
        return m.group(1) + str(port + 1 if port < 65535 else 1024) + m.group(3)
    return re.sub(r"(?m)^(a=candidate:\S+ \d+ \S+ \d+ \S+ )(\d+)( typ )", move, sdp)


def _inject_candidate(sdp):
    return _after_media(sdp, "a=candidate:9 1 udp 2130706431 127.0.0.1 9 typ host\r\n")


# name -> (rewrite, does it keep the shape the home server accepts?)
REWRITES = {
    "replace-fingerprint": (lambda s: re.sub(r"(?m)^(a=fingerprint:sha-256 )\S+",
                                             lambda m: m.group(1) + ATTACKER_FP, s), True),
    "second-media-after": (lambda s: s.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1")
                           + _second_media(1, ATTACKER_FP), False),
    "second-media-before-same-mid": (lambda s: re.sub(
        r"(?m)^(m=application)", lambda m: _second_media(0, ATTACKER_FP) + m.group(1), s,
        count=1), False),
    "extra-sha-1": (lambda s: _after_media(s, f"a=fingerprint:sha-1 {_hexes(20)}\r\n"), False),
    "extra-sha-384": (lambda s: _after_media(s, f"a=fingerprint:sha-384 {_hexes(48)}\r\n"),
                      False),
    "extra-sha-512": (lambda s: _after_media(s, f"a=fingerprint:sha-512 {_hexes(64)}\r\n"),
                      False),
    "extra-upper-case": (lambda s: _after_media(s, f"A=FINGERPRINT:SHA-256 {ATTACKER_FP}\r\n"),
                         False),
    "extra-mixed-case": (lambda s: _after_media(s, f"a=FingerPrint:sha-256 {ATTACKER_FP}\r\n"),
                         False),
    "extra-session-level": (lambda s: re.sub(
        r"(?m)^(m=application)", lambda m: f"a=fingerprint:sha-256 {ATTACKER_FP}\r\n"
        + m.group(1), s, count=1), False),
    "bundle-group": (lambda s: s.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1"), True),
    "setup-flip": (_flip_setup, True),
    "ice-credentials": (_swap_ice, True),
    "move-candidates": (_move_candidates, True),
    "inject-candidate": (_inject_candidate, True),
}
OFFER_MODES = [f"offer-{name}" for name in REWRITES]
ANSWER_MODES = [f"answer-{name}" for name in REWRITES]


def rewrite(mode, sdp):
    """Apply *mode*'s rewrite; return the new SDP (which must differ)."""
    new = REWRITES[mode.split("-", 1)[1]][0](sdp)
    if new == sdp:
        raise AssertionError(f"evil: {mode} did not change the SDP:\n{sdp}")
    return new


def install(mode_file, log):
    from homechannel.protocol import connect
    from homechannel.coordinator.broker import Broker
    from homechannel.coordinator.udp import CoordinatorUDP

    def mode():
        with open(mode_file) as f:
            return f.read().strip()

    send_offer = CoordinatorUDP.send_offer
    on_answer = Broker.on_answer

    async def evil_send_offer(self, server_key, payload):
        m = mode()
        if m.startswith("offer-"):
            doc = json.loads(bytes(payload).decode("utf-8"))
            doc["offer"] = rewrite(m, doc["offer"])
            log.info("evil: rewrote the offer with {mode} in session {session}",
                     mode=m, session=doc["session"])
            payload = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        await send_offer(self, server_key, payload)

    def evil_on_answer(self, kid, payload):
        m = mode()
        if m.startswith("answer-"):
            doc = json.loads(bytes(payload).decode("utf-8"))
            if isinstance(doc.get("answer"), str):
                doc["answer"] = rewrite(m, doc["answer"])
                log.info("evil: rewrote the answer with {mode} in session {session}",
                         mode=m, session=doc["session"])
                payload = json.dumps(doc).encode("utf-8")
        return on_answer(self, kid, payload)

    # Patched on the classes before makeService builds the service, so the relay
    # the broker holds and the answer handler the broker registers are the
    # tampering ones.
    CoordinatorUDP.send_offer = evil_send_offer
    Broker.on_answer = evil_on_answer
    assert connect  # the payload format is homechannel.protocol.connect's


def main(argv):
    if len(argv) < 2 or argv[0] != "--mode-file":
        raise SystemExit(__doc__)
    mode_file, rest = argv[1], argv[2:]
    from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    log = Logger(namespace="evil")
    install(mode_file, log)

    from homechannel.coordinator import tap

    options = tap.Options()
    options.parseOptions(rest)
    top = tap.makeService(options)

    from twisted.internet import reactor

    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("evil coordinator running")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
