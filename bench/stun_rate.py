"""STUN Binding answers per second from one coordinator process (the real
``twistd homechannel-coordinator``, on its registry UDP port), against a bare
Twisted UDP echo measured in the same run, with the same generator (many
source ports on loopback, a window of requests in flight per port).

Requests are 28-byte Binding requests with FINGERPRINT (answered with
XOR-MAPPED-ADDRESS and FINGERPRINT, 40 bytes); the coordinator's STUN rate
limits are lifted for the run (every request comes from 127.0.0.1).

Run: python -m bench.stun_rate [seconds]   (inside tests/netns-run: loopback only)
"""

import os
import statistics
import struct
import sys
import tempfile

from bench.udp_load import blast, sockets, start_coordinator, start_echo
from homechannel.coordinator import stun


class _Sender:
    def __init__(self, sock):
        self.sock = sock


def binding_requests(count):
    out = []
    for _ in range(count):
        head = struct.pack(">HHI12s", stun.BINDING_REQUEST, 8, stun.MAGIC_COOKIE,
                           os.urandom(12))
        out.append(head + struct.pack(">HHI", stun.FINGERPRINT, 4, stun._fingerprint(head)))
    return out


def main(argv=()):
    seconds = float(argv[0]) if argv else 4.0
    rounds = 3
    with tempfile.TemporaryDirectory() as tmp:
        coord, target, _ = start_coordinator(tmp, {"stun_per_source_per_second": 10000000.0,
                                                   "stun_per_second": 10000000.0})
        echo, echo_target = start_echo()
        try:
            senders = [_Sender(s) for s in sockets(256)]
            requests = binding_requests(4000)
            stun_rates, echo_rates = [], []
            for _ in range(rounds):
                stun_rates.append(blast(senders, lambda c: target,
                                        lambda c: iter(requests), seconds))
                echo_rates.append(blast(senders, lambda c: echo_target,
                                        lambda c: iter(requests), seconds))
        finally:
            coord.terminate()
            echo.terminate()
            coord.wait()
            echo.wait()
    rate, ech = statistics.median(stun_rates), statistics.median(echo_rates)
    print(f"coordinator STUN Binding answers (one process, loopback, medians of {rounds} "
          f"runs of {seconds:.0f} s)")
    print(f"  STUN answers/s  : {rate:9.0f}   runs {[round(x) for x in stun_rates]}")
    print(f"  bare echo/s     : {ech:9.0f}   runs {[round(x) for x in echo_rates]}")
    print(f"  STUN/echo ratio : {rate / ech:9.2f}")
    return {"stun": rate, "echo": ech}


if __name__ == "__main__":
    main(sys.argv[1:])
