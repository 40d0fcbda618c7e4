"""UDP load on one coordinator process: registrations per second, and
authenticated pings answered per second against a bare Twisted UDP echo
measured in the same run.

The coordinator is the real ``twistd homechannel-coordinator`` in a child
process (its per-source handshake rate and table shares raised, since every registration
here comes from 127.0.0.1).  This process is the load generator: it speaks
the wire protocol with ``homechannel.protocol.udp``/``crypto``, from many source
ports, keeping a window of requests in flight.  The generator does not
verify the coordinator's RESP signature (a real server does; skipping it
keeps the generator from being the bottleneck) and pre-seals its pings, so
the ping and echo runs cost the generator the same.

Targets: >= 1,500 registrations/s per core (Node.js original: ~540/s);
pings >= 60% of the bare echo rate (Node.js original: 84% of a bare Node
echo, unauthenticated).

Run: python -m bench.udp_load [seconds]   (inside tests/netns-run: loopback only)
"""

import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from homechannel import crypto, keyfiles
from homechannel.testing import local

from homechannel.protocol import udp as codec
from homechannel.coordinator.registry import POOL

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0]='twistd'; from twisted.scripts.twistd import run; run()"]

ECHO = r"""
import sys
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
class Echo(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)
reactor.listenUDP(int(sys.argv[1]), Echo(), interface="127.0.0.1")
reactor.run()
"""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every simulated home server is 127.0.0.1: lift the per-source limits.
UNLIMITED_UDP = {"per_source_per_second": 1000000.0, "max_handshakes": 100000,
                 "max_handshakes_per_source": 100000, "max_servers_per_source": 1000000}


def start_coordinator(tmp, udp=UNLIMITED_UDP, extra=None):
    """*udp*: settings of its [udp] table; *extra*: more tables merged into the config
    (e.g. [cluster])."""
    port, web = free_port(), free_port()
    cfg = local.write_toml(os.path.join(tmp, "c.toml"), local.coordinator_config(
        tmp, udp_port=port, web_port=web,
        extra=local.merge({"udp": dict(udp), "admin": {"listen": ""}}, extra)))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=",
                                      "homechannel-coordinator", "--config", cfg],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = None
    for _ in range(200):
        if os.path.exists(os.path.join(tmp, "coordinator.key")):
            try:
                key = keyfiles.load_identity_key(os.path.join(tmp, "coordinator.key"))
                break
            except Exception:
                pass
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, ("127.0.0.1", port), key


def start_echo():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ECHO, str(port)])
    time.sleep(0.5)
    return proc, ("127.0.0.1", port)


def sockets(n):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        socks.append(s)
    return socks


class Client:
    """One registration at a time over one socket (a source port)."""

    def __init__(self, sock, target):
        self.sock, self.target = sock, target
        self.identity = crypto.IdentityKey.generate()
        self.eph = crypto.Ephemeral()
        self.pair = [(os.urandom(16), os.urandom(32))] * POOL
        self.keys = None
        self.sent_at = 0.0

    def begin(self):
        self.nonce = os.urandom(16)
        self.state = "hello"
        self.last = codec.hello(self.nonce)
        self.send(self.last)

    def send(self, data):
        self.sent_at = time.perf_counter()
        try:
            self.sock.sendto(data, self.target)
        except BlockingIOError:
            pass

    def on(self, data):
        """Returns True when a registration completed."""
        kind = data[3]
        if kind == codec.COOKIE and self.state == "hello":
            _, value = codec.parse_cookie(data)
            self.init = codec.init(value, self.nonce, self.identity.public_raw, self.eph.public_raw)
            self.state, self.last = "init", self.init
            self.send(self.init)
        elif kind == codec.RESP and self.state == "init":
            _, eph_c, _sig = codec.parse_resp(data)
            th = codec.transcript_hash(self.init, eph_c)
            tx, rx = crypto.session_keys(self.eph.shared_secret(eph_c), th)
            self.keys = (tx, rx)
            self.last = codec.finish(self.nonce, self.identity.sign(codec.FINISH_LABEL + th), tx, 0,
                                    codec.inner(codec.REGISTER, 1, codec.pairs(self.pair)))
            self.state = "finish"
            self.send(self.last)
        elif kind == codec.DATA and self.state == "finish":
            self.state = "up"
            return True
        return False


def pump(socks, on_datagram, until, idle_resend=None):
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while time.perf_counter() < until:
        events = sel.select(0.05)
        for key, _ in events:
            s = key.fileobj
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                on_datagram(s, data)
        if idle_resend:
            idle_resend()
    sel.close()


def bench_registrations(target, seconds, concurrency=128):
    """Complete registrations/s; *target* may be a list (the sockets spread over them)."""
    targets = target if isinstance(target, list) else [target]
    socks = sockets(concurrency)
    clients = {s: Client(s, targets[i % len(targets)]) for i, s in enumerate(socks)}
    done = []

    def on(s, data):
        c = clients[s]
        if c.on(data):
            done.append(time.perf_counter())
            c.begin()

    def resend():
        now = time.perf_counter()
        for c in clients.values():
            if now - c.sent_at > 1.0:
                c.send(c.last)

    for c in clients.values():
        c.begin()
    start = time.perf_counter()
    pump(socks, on, start + seconds, resend)
    for s in socks:
        s.close()
    # Rate over the steady part: the last 80% of the run.
    cut = start + seconds * 0.2
    steady = [t for t in done if t >= cut]
    return len(steady) / (seconds * 0.8), len(done)


def register_for_pings(target, n):
    socks = sockets(n)
    clients = {s: Client(s, target) for s in socks}
    up = set()

    def on(s, data):
        if clients[s].on(data):
            up.add(s)

    for c in clients.values():
        c.begin()
    deadline = time.perf_counter() + 20
    while len(up) < n and time.perf_counter() < deadline:
        pump(socks, on, time.perf_counter() + 0.2,
             lambda: [c.send(c.last) for s, c in clients.items()
                      if s not in up and time.perf_counter() - c.sent_at > 1.0])
    return [clients[s] for s in socks if s in up]


def blast(clients, target_of, datagrams_of, seconds, window=4):
    """Keep *window* datagrams in flight per socket; return replies/second."""
    socks = [c.sock for c in clients]
    sel = selectors.DefaultSelector()
    queues = {c.sock: iter(datagrams_of(c)) for c in clients}
    targets = {c.sock: target_of(c) for c in clients}
    inflight = dict.fromkeys(socks, 0)
    for s in socks:
        sel.register(s, selectors.EVENT_READ)

    def top_up(s):
        while inflight[s] < window:
            d = next(queues[s], None)
            if d is None:
                return
            try:
                s.sendto(d, targets[s])
            except BlockingIOError:
                return
            inflight[s] += 1

    replies = 0
    start = time.perf_counter()
    for s in socks:
        top_up(s)
    last_progress = start
    while time.perf_counter() - start < seconds:
        events = sel.select(0.2)
        if not events:
            # lost datagrams: reset the windows
            if time.perf_counter() - last_progress > 0.2:
                for s in socks:
                    inflight[s] = 0
                    top_up(s)
            continue
        last_progress = time.perf_counter()
        for key, _ in events:
            s = key.fileobj
            while True:
                try:
                    s.recv(2048)
                except BlockingIOError:
                    break
                replies += 1
                inflight[s] -= 1
            top_up(s)
    elapsed = time.perf_counter() - start
    sel.close()
    return replies / elapsed


def sealed_pings(client, count):
    tx, _ = client.keys
    return [codec.seal_data(tx, ctr, codec.inner(codec.PING, ctr), codec.MIN_SERVER_DATAGRAM)
            for ctr in range(1, count + 1)]


def main(argv=()):
    seconds = float(argv[0]) if argv else 4.0
    rounds = 3
    with tempfile.TemporaryDirectory() as tmp:
        coord, target, _ = start_coordinator(tmp)
        echo, echo_target = start_echo()
        try:
            regs = [bench_registrations(target, seconds)[0] for _ in range(rounds)]
            clients = register_for_pings(target, 256)
            per_client = 6000
            pings = {c.sock: sealed_pings(c, per_client) for c in clients}
            ping_rates, echo_rates = [], []
            for r in range(rounds):
                # fresh counters each round: slice a different part of the pre-sealed pings
                part = per_client // rounds
                ping_rates.append(blast(clients, lambda c: target,
                                        lambda c: pings[c.sock][r * part:(r + 1) * part],
                                        seconds))
                echo_rates.append(blast(clients, lambda c: echo_target,
                                        lambda c: pings[c.sock][:part], seconds))
        finally:
            coord.terminate()
            echo.terminate()
            coord.wait()
            echo.wait()
    reg = statistics.median(regs)
    ping = statistics.median(ping_rates)
    ech = statistics.median(echo_rates)
    print("coordinator UDP load (one coordinator process, loopback, medians of "
          f"{rounds} runs of {seconds:.0f} s)")
    print(f"  registrations/s : {reg:9.0f}   runs {[round(x) for x in regs]}  "
          "(target >= 1500/core; Node.js original ~540)")
    print(f"  pings answered/s: {ping:9.0f}   runs {[round(x) for x in ping_rates]}  "
          f"({len(clients)} registered senders)")
    print(f"  bare echo/s     : {ech:9.0f}   runs {[round(x) for x in echo_rates]}")
    print(f"  ping/echo ratio : {ping / ech:9.2f}   (target >= 0.60; Node.js original 0.84, "
          "unauthenticated)")
    print(f"  servers/core at 25 s keepalive: {ping * 25 / 1e6:.2f} million")
    return {"registrations": reg, "pings": ping, "echo": ech}


if __name__ == "__main__":
    main(sys.argv[1:])
