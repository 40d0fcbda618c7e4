"""The coordinator cluster on this machine, in one run:

1. **Complete connects** (the two-request flow: lookup, then ``POST
   /api/connect?wait=10`` that holds the answer), with the one-process default
   (no Redis), a one-node cluster and a two-node cluster, against a bare Klein
   request measured in the same run.  ``bench.signaling``'s generator (48
   keep-alive connections) and simulator (200 home servers, real
   ``ServerUDP``, spread over the nodes) are reused.  With two nodes each
   worker looks up on one node and connects on the other, so every connect
   crosses nodes (what haproxy's round robin does to half of them; haproxy
   itself is left out so that its CPU is not counted).  Figures: connects/s
   (wall), the coordinators' CPU per connect (all nodes together, from
   /proc), Redis's CPU per connect, and that CPU as a multiple of the bare
   Klein request's.  On 2 shared cores the wall rate of two nodes cannot show
   their capacity (the generator, the simulator, Redis and other sessions share
   those cores): the capacity figure is connects per core-second per node.
2. **Redis memory per registered server** at 100,000 servers (directory entry
   with a pool of two challenges, written by the real scripts), from
   ``INFO memory``.
3. **Registrations per second** of a two-node cluster (the ``bench.udp_load``
   generator, half its sockets on each node) against one default process.
4. **Keepalive capacity per node** with Redis on: authenticated pings answered
   per second by a cluster node against the one-process default, same run.

Run: python -m bench.cluster [seconds]   (inside tests/netns-run: loopback only)
"""

import asyncio
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench import signaling, udp_load

ROUNDS = 3
WAIT = 10
MEMORY_SERVERS = 100_000
ONLY_DEFAULT = False    # --only-default: the one-process flow and the reference only
AGAINST = None          # --against DIR: also the default process as DIR's source tree
                        # runs it (e.g. a worktree of main), in the same rounds
PROFILE = None          # --profile FILE: py-spy (if installed) samples the default
                        # coordinator during its runs, a flame graph to FILE


def start_redis(tmp):
    """A redis-server as the tests run it (tests/support/services.RedisServer: the
    shipped ACL, a password file), and a cluster key file for the nodes."""
    sys.path.insert(0, os.path.join(signaling.REPO, "tests", "support"))
    from services import RedisServer

    from homechannel import keyfiles

    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found: apt-get install redis-server")
    redis = RedisServer(pathlib.Path(tmp)).start()
    key_file = os.path.join(tmp, "cluster.key")
    keyfiles.create_cluster_key(key_file)
    return redis, dict(redis.cluster_config(), key_file=key_file)


class Setup:
    """A coordinator setup: one default process, or N cluster nodes on one Redis."""

    def __init__(self, tmp, name, nodes, cluster=None, repo=signaling.REPO):
        self.name = name
        self.procs, self.udp, self.web = [], [], []
        slug = "".join(ch if ch.isalnum() else "-" for ch in name)
        key_path = os.path.join(tmp, slug + "-coordinator.key")
        for i in range(nodes):
            d = os.path.join(tmp, f"{slug}-{i}")
            os.makedirs(d)
            node = dict(cluster, node_id=f"{slug}-{i}") if cluster else None
            proc, udp, web, key = signaling.start_coordinator(d, cluster=node,
                                                              key_path=key_path, repo=repo)
            self.procs.append(proc)
            self.udp.append(udp)
            self.web.append(web)
            self.key = key
        self.sim, self.servers = signaling.start_simulator(self.udp, self.key,
                                                           signaling.SERVERS)

    def pids(self):
        pids = {f"node-{i}": p.pid for i, p in enumerate(self.procs)}
        pids["simulator"] = self.sim.pid
        return pids

    def stop(self):
        for p in self.procs + [self.sim]:
            p.terminate()
            p.wait()


def start_profiler(pid):
    """py-spy sampling *pid* (without pausing it) into PROFILE (raw, one file per round)."""
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if spy is None:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    n = len([f for f in os.listdir(os.path.dirname(os.path.abspath(PROFILE)) or ".")
             if f.startswith(os.path.basename(PROFILE))])
    # $PYSPY_ARGS: more py-spy options, e.g. --gil (only samples holding the GIL: Python
    # code running, not a process preempted in a syscall or waiting for the CPU).
    return subprocess.Popen([spy, "record", "--nonblocking", "--rate", "200", "--format",
                             "raw", "--pid", str(pid), "-o", f"{PROFILE}.{n}",
                             *os.environ.get("PYSPY_ARGS", "").split()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def flows(setups, bare_port, bare_pid, redis_pid, seconds):
    results = {s.name: [] for s in setups}
    results["bare"] = []
    for _ in range(ROUNDS):
        pids = {"bare": bare_pid}
        results["bare"].append(await signaling.blast(bare_port, "/", seconds, pids))
        for s in setups:
            pids = dict(s.pids(), redis=redis_pid)
            spy = start_profiler(s.procs[0].pid) if PROFILE and s.name == "default" else None
            win = await signaling.connect_flow(None, s.servers, s.key.public_raw, seconds,
                                               pids, wait=WAIT, ports=s.web)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait()
            win.coordinators = sum(v for k, v in win.cpu.items() if k.startswith("node-"))
            results[s.name].append(win)
    return results


def report_flows(results, setups):
    med = statistics.median
    bare_us = med([signaling.us_per_op(w, "bare") for w in results["bare"]])
    bare_sys = med([w.sys["bare"] / max(1e-9, w.cpu["bare"]) for w in results["bare"]])
    print(f"bare Klein GET / (reference): {bare_us:.0f} us CPU per request "
          f"({1e6 / bare_us:.0f} per core-second; {bare_sys:.0%} in the kernel)")
    print(f"  {'setup':26s} {'connects/s':>10s} {'coord CPU':>10s} {'x bare':>7s} "
          f"{'per node':>9s} {'redis':>7s} {'conn/core-s':>11s}  errors")
    out = {}
    for s in setups:
        wins = results[s.name]
        rate = med([w.rate for w in wins])
        cpu = med([w.coordinators / max(1, w.count) * 1e6 for w in wins])
        redis = med([w.cpu.get("redis", 0) / max(1, w.count) * 1e6 for w in wins])
        errors = sum(len(w.stats["errors"]) for w in wins)
        polls = sum(w.stats["pending_polls"] for w in wins)
        no_challenge = sum(w.stats["no_challenge"] for w in wins)
        per_node = cpu / len(s.procs)
        out[s.name] = (rate, cpu)
        print(f"  {s.name:26s} {rate:10.0f} {cpu:8.0f}us {cpu / bare_us:7.1f} "
              f"{per_node:7.0f}us {redis if s.name != 'default' else 0:5.0f}us "
              f"{1e6 / cpu:11.0f}  {errors} (runs {[round(w.rate) for w in wins]}; "
              f"extra polls {polls}, lookups without challenge {no_challenge})")
        print(f"  {'':26s} CPU during the runs: " + ", ".join(
            f"{k} {med([w.cpu[k] / w.wall for w in wins]):.2f}"
            for k in sorted(wins[0].cpu)) + f"; machine busy "
            f"{med([w.machine for w in wins]):.2f} of {os.cpu_count()} cores; in the kernel: "
            + ", ".join(f"{k} {med([w.sys[k] / max(1e-9, w.cpu[k]) for w in wins]):.0%}"
                        for k in sorted(wins[0].sys) if k.startswith("node-")))
    return bare_us, out


def redis_memory(redis):
    """Bytes of Redis memory per registered server (directory entry + pool of two)."""
    from homechannel.coordinator.cluster import redisrelay, redisstore
    from homechannel.coordinator.cluster.clusterkey import ClusterKey
    from homechannel.testing.coordinator import LoopClock
    from homechannel import aio

    async def main():
        store = redisstore.RedisStore(redisstore.connect(redis.url, **redis.options()),
                                      ClusterKey(os.urandom(32)), prefix="hc:mem:")
        directory = redisrelay.Directory(store, "node-1", LoopClock(), None, ttl=3600.0)
        before = int(redis_info(redis)["used_memory"])
        t0 = time.perf_counter()
        for start in range(0, MEMORY_SERVERS, 5000):
            for i in range(start, start + 5000):
                kid = os.urandom(16)
                directory.pool(kid, [(os.urandom(16), os.urandom(32)) for _ in range(2)], True)
            while directory._ops or directory._flushing:
                await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        after = int(redis_info(redis)["used_memory"])
        keys = int(redis.cli("DBSIZE").strip())
        await aio.as_future(store.close())
        return (after - before) / MEMORY_SERVERS, keys, MEMORY_SERVERS / elapsed

    return asyncio.run(main())


def redis_info(redis):
    out = {}
    for line in redis.cli("INFO", "memory").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


def registrations(targets, seconds):
    """Complete registrations/s, the generator's sockets spread over *targets*."""
    return udp_load.bench_registrations(list(targets), seconds)[0]


def start_udp_node(tmp, name, cluster=None):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    extra = {"cluster": dict(cluster, node_id=name)} if cluster else None
    return udp_load.start_coordinator(d, extra=extra)


def udp_figures(tmp, cluster, seconds):
    med = statistics.median
    default = start_udp_node(tmp, "udp-default")
    nodes = [start_udp_node(tmp, f"udp-node-{i}", cluster) for i in (1, 2)]
    try:
        single = [registrations([default[1]], seconds) for _ in range(ROUNDS)]
        both = [registrations([n[1] for n in nodes], seconds) for _ in range(ROUNDS)]
        clients_d = udp_load.register_for_pings(default[1], 256)
        clients_c = udp_load.register_for_pings(nodes[0][1], 256)
        per = 6000
        pings_d = {c.sock: udp_load.sealed_pings(c, per) for c in clients_d}
        pings_c = {c.sock: udp_load.sealed_pings(c, per) for c in clients_c}
        rate_d, rate_c = [], []
        part = per // ROUNDS
        for r in range(ROUNDS):
            rate_d.append(udp_load.blast(clients_d, lambda c: default[1],
                                         lambda c: pings_d[c.sock][r * part:(r + 1) * part],
                                         seconds))
            rate_c.append(udp_load.blast(clients_c, lambda c: nodes[0][1],
                                         lambda c: pings_c[c.sock][r * part:(r + 1) * part],
                                         seconds))
    finally:
        for proc, _, _ in [default, *nodes]:
            proc.terminate()
            proc.wait()
    print(f"registrations/s: one default process {med(single):.0f} (runs "
          f"{[round(x) for x in single]}); two-node cluster {med(both):.0f} (runs "
          f"{[round(x) for x in both]}), ratio {med(both) / med(single):.2f}")
    print(f"pings answered/s: one default process {med(rate_d):.0f} (runs "
          f"{[round(x) for x in rate_d]}); a cluster node (Redis on) {med(rate_c):.0f} (runs "
          f"{[round(x) for x in rate_c]}), ratio {med(rate_c) / med(rate_d):.2f} "
          "(target: within 10%, >= 0.90)")


def main(argv=()):
    argv = list(argv)
    parts = {"flows", "memory", "udp"}
    global ONLY_DEFAULT, PROFILE, AGAINST
    if "--against" in argv:
        i = argv.index("--against")
        AGAINST = os.path.abspath(argv[i + 1])
        del argv[i:i + 2]
    if "--only-default" in argv:
        argv.remove("--only-default")
        ONLY_DEFAULT, parts = True, {"flows"}
    if "--profile" in argv:
        i = argv.index("--profile")
        PROFILE = argv[i + 1]
        del argv[i:i + 2]
    for name in list(parts):
        if f"--only-{name}" in argv:
            argv.remove(f"--only-{name}")
            parts = {name}
    seconds = float(argv[0]) if argv else 3.0
    with tempfile.TemporaryDirectory() as tmp:
        redis, cluster = start_redis(tmp)
        try:
            print(f"coordinator cluster on this machine ({os.cpu_count()} cores, shared): "
                  f"medians of {ROUNDS} runs of {seconds:g} s")
            if "flows" in parts:
                flow_figures(tmp, cluster, redis, seconds)
            if "memory" in parts:
                print()
                print(f"== Redis memory at {MEMORY_SERVERS:,} registered servers")
                per_server, keys, rate = redis_memory(redis)
                print(f"  {per_server:.0f} bytes per server ({keys:,} keys; written at "
                      f"{rate:,.0f} entries/s from one node)")
            if "udp" in parts:
                print()
                print("== UDP: registrations and keepalives")
                udp_figures(tmp, cluster, seconds)
        finally:
            redis.stop()


def flow_figures(tmp, cluster, redis, seconds):
    print()
    print(f"== complete connects, two-request flow ({signaling.SERVERS} home servers, "
          f"{signaling.WORKERS} connections)")
    setups = []
    try:
        setups.append(Setup(tmp, "default", 1))
        if AGAINST:
            setups.append(Setup(tmp, "default @" + os.path.basename(AGAINST), 1,
                                repo=AGAINST))
        if not ONLY_DEFAULT:
            setups.append(Setup(tmp, "cluster, 1 node", 1, cluster))
            setups.append(Setup(tmp, "cluster, 2 nodes", 2, cluster))
        bare, bare_port = signaling.start_bare()
        try:
            results = asyncio.run(flows(setups, bare_port, bare.pid, redis.proc.pid,
                                        seconds))
        finally:
            bare.terminate()
            bare.wait()
    finally:
        for s in setups:
            s.stop()
    bare_us, out = report_flows(results, setups)
    if ONLY_DEFAULT:
        return
    one, two = out["cluster, 1 node"], out["cluster, 2 nodes"]
    print(f"  two nodes / one node: wall {two[0] / one[0]:.2f}x (target 1.7x; bounded "
          f"by the 2 shared cores), capacity per node-core "
          f"{(2e6 / two[1]) / (1e6 / one[1]):.2f}x (coordinator CPU per connect "
          f"{one[1]:.0f} us on one node, {two[1] / 2:.0f} us per node on two)")


if __name__ == "__main__":
    main(sys.argv[1:])
