"""A WAN emulator for the NAT topology: a wire with delay, loss and a rate limit.

This machine's kernel has no ``netem`` (nor ``fq`` or NFQUEUE), so delay cannot be
added with ``tc``.  The delay element is a small userspace *wire*: in a namespace of
its own, two bridges each join one side of the link to a TAP device, and a process
(``python wan.py``, run with ``ip netns exec``) copies every Ethernet frame from one
TAP device to the other after the one-way delay, dropping each with the given
probability.  It sits on layer 2, so nothing else in the topology changes: no
addresses, no routes, no conntrack or NAT in the wire.  The rate is the kernel's
``tbf`` qdisc on both egress ports of the wire (which this kernel has)::

    client router  wan ==veth== a  [bridge ba: a + tap ta]      (namespace "wan")
                                          |  wire process: ta <-> tb, delay d each way
    public bridge  cwan ==veth== b  [bridge bb: b + tap tb]
                   tbf on a (towards the client) and on b (towards the public side)

So everything the client's network exchanges with the rest (the coordinator, the
TURN relay, the home network) crosses one link with round-trip time ``rtt``
(``d = rtt / 2`` each way), loss ``loss`` per direction, and rate ``rate`` per
direction.  :meth:`nat.Topology.up` builds it when the topology has a ``wan``
(:class:`Wan`); :meth:`nat.Topology.set_wan` changes it while everything runs (the
wire process takes a new delay and loss on its stdin, ``tc`` a new rate), so a benchmark
compares link settings with the same daemons and browser; :func:`probe_rtt` checks
it with a ping-like UDP probe.

Run as a program it is the wire process itself::

    python wan.py TAP_A TAP_B DELAY_S LOSS SEED

and then reads lines ``DELAY_S LOSS`` on its stdin (each answered ``ok``).
"""

import dataclasses
import os
import random
import socket
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


@dataclasses.dataclass(frozen=True)
class Wan:
    """The emulated link: round-trip time (seconds), loss per direction (a
    probability) and rate per direction (bits per second; None: unlimited)."""

    rtt: float = 0.0
    loss: float = 0.0
    rate: float | None = None

    def __post_init__(self):
        if not 0 <= self.rtt <= 2 or not 0 <= self.loss < 1:
            raise ValueError(f"unreasonable WAN link {self}")
        if self.rate is not None and self.rate < 64_000:
            raise ValueError("rate below 64 kbit/s")

    def describe(self):
        rate = f"{self.rate / 1e6:g} Mbit/s" if self.rate else "no rate limit"
        return f"RTT {self.rtt * 1000:g} ms, loss {self.loss * 100:g}%, {rate}"


def tbf(rate):
    """``tc qdisc ... tbf`` arguments for *rate* bit/s: a burst of a few ms of
    traffic (at least a few frames) and a queue that holds at most ~100 ms."""
    burst = max(16 * 1514, int(rate / 8 * 0.004))
    limit = max(4 * burst, int(rate / 8 * 0.1))
    return ["tbf", "rate", f"{int(rate)}bit", "burst", str(burst), "limit", str(limit)]


# -- the wire process ------------------------------------------------------------------


def realtime():
    """Run this process at a real-time priority when allowed (root in the test's
    namespaces): on a loaded machine an ordinary process is scheduled late by
    milliseconds, which would show as extra delay (netem runs in the kernel).  It
    sleeps in epoll between frames, so it does not starve anything."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        pass


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    import fcntl
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def run_wire(tap_a, tap_b, delay, loss, seed):
    """Copy frames both ways between two TAP devices, each after *delay* seconds,
    dropping each with probability *loss*; a line ``DELAY LOSS`` on stdin sets new
    ones.  Runs until killed (or stdin closes)."""
    import asyncio
    import collections

    realtime()
    rng = random.Random(seed)
    link = {"delay": delay, "loss": loss}
    fds = {"a": open_tap(tap_a), "b": open_tap(tap_b)}
    for fd in fds.values():
        os.set_blocking(fd, False)

    async def main():
        loop = asyncio.get_running_loop()
        queues = {side: collections.deque() for side in fds}   # frames going *to* side
        timers = {}

        def deliver(side):
            timers.pop(side, None)
            queue, fd, now = queues[side], fds[side], loop.time()
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                try:
                    os.write(fd, frame)
                except OSError:
                    pass     # the link is going down, or the TAP queue is full: a drop
            if queue:
                timers[side] = loop.call_at(queue[0][0], deliver, side)

        def readable(src, dst):
            fd = fds[src]
            now = loop.time()
            delay, loss = link["delay"], link["loss"]
            for _ in range(64):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if loss and rng.random() < loss:
                    continue
                if not delay:
                    try:
                        os.write(fds[dst], frame)
                    except OSError:
                        pass
                    continue
                queues[dst].append((now + delay, frame))
                if dst not in timers:
                    timers[dst] = loop.call_at(now + delay, deliver, dst)

        stopped = asyncio.Event()

        def command():
            line = sys.stdin.readline()
            if not line:
                stopped.set()
                return
            new_delay, new_loss = (float(x) for x in line.split())
            link.update(delay=new_delay, loss=new_loss)
            print("ok", flush=True)

        loop.add_reader(fds["a"], readable, "a", "b")
        loop.add_reader(fds["b"], readable, "b", "a")
        loop.add_reader(sys.stdin.fileno(), command)
        print("wire up", flush=True)
        await stopped.wait()

    asyncio.run(main())


# -- building it into a topology ----------------------------------------------------------


def build(topology, ns, wan, router_side_veth, public_side_veth):
    """Make namespace *ns* the wire between two veth ends already moved into it
    (*router_side_veth* towards the client router, *public_side_veth* towards the
    public bridge); start the wire process.  Returns the process."""
    ip = lambda *a: topology.ip(ns, *a)  # noqa: E731
    for bridge, port, tap in (("bra", router_side_veth, "tapa"), ("brb", public_side_veth, "tapb")):
        ip("tuntap", "add", "dev", tap, "mode", "tap")
        ip("link", "add", bridge, "type", "bridge")
        # No spanning tree delay, no multicast snooping surprises: a plain wire.
        ip("link", "set", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        for dev in (port, tap):
            ip("link", "set", dev, "master", bridge)
            ip("link", "set", dev, "up")
        ip("link", "set", bridge, "up")
    set_rate(topology, ns, wan, (router_side_veth, public_side_veth))
    proc = topology.popen(ns, [sys.executable, os.path.abspath(__file__), "tapa", "tapb",
                               repr(wan.rtt / 2), repr(wan.loss), "1"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = proc.stdout.readline()
    if b"wire up" not in line:
        proc.kill()
        raise RuntimeError(f"the WAN wire did not start: {line!r} {proc.stdout.read()!r}")
    return proc


def set_rate(topology, ns, wan, ports):
    """``tbf`` at *wan*'s rate on both egress *ports* of the wire, or none."""
    for port in ports:
        if wan.rate:
            topology.run(ns, "tc", "qdisc", "replace", "dev", port, "root", *tbf(wan.rate))
        else:
            topology.run(ns, "tc", "qdisc", "del", "dev", port, "root", check=False)


def change(topology, ns, proc, wan, ports):
    """Give the running wire *proc* (from :func:`build`) the link *wan*."""
    set_rate(topology, ns, wan, ports)
    proc.stdin.write(f"{wan.rtt / 2!r} {wan.loss!r}\n".encode())
    proc.stdin.flush()
    line = proc.stdout.readline()
    if line.strip() != b"ok":
        raise RuntimeError(f"the WAN wire did not take the new link: {line!r}")


# -- checking it -------------------------------------------------------------------------


def echo_server(topology, ns, host, port):
    """A UDP echo server in namespace *ns* on host:port (a process); for probe_rtt."""
    code = ("import os, socket\n"
            "try:\n    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))\n"
            "except OSError:\n    pass\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(({host!r}, {port}))\nprint('ready', flush=True)\n"
            "while True:\n    data, addr = s.recvfrom(2048)\n    s.sendto(data, addr)\n")
    proc = topology.popen(ns, [sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


PROBE = r"""
import json, os, socket, sys, time
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))   # as the wire: see realtime()
except OSError:
    pass
host, port, count, interval, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(wait)
rtts, lost = [], 0
for i in range(count):
    t0 = time.monotonic()
    s.sendto(i.to_bytes(4, "big") + b"x" * 60, (host, port))
    while True:
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            lost += 1
            break
        if int.from_bytes(data[:4], "big") == i:
            rtts.append(time.monotonic() - t0)
            break
    time.sleep(interval)
print(json.dumps({"rtts": rtts, "lost": lost}))
"""


def probe_rtt(topology, ns, host, port, count=20, interval=0.02, wait=1.0):
    """Round-trip times (seconds) of *count* UDP echoes from namespace *ns* to
    host:port, one at a time, and how many were lost (no echo within *wait*
    seconds): ``(sorted rtts, lost)``."""
    import json

    out = topology.run(ns, sys.executable, "-c", PROBE, host, str(port), str(count),
                       str(interval), str(wait)).stdout
    doc = json.loads(out)
    return sorted(doc["rtts"]), doc["lost"]


if __name__ == "__main__":
    a, b, delay, loss, seed = sys.argv[1:6]
    run_wire(a, b, float(delay), float(loss), int(seed))
