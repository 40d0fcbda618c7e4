"""Signaling throughput of one coordinator process: complete connect
operations per second, and requests per second for each HTTP route against a
bare Klein route measured in the same run.

Three child processes and this one:

* the real coordinator (``twistd -n homechannel-coordinator``, rate limits
  and session caps raised for the bench, its log to a discarded stdout).
  The whole bench runs twice: as deployed (``web.access_log = false``, the
  default) and with the per-request access log switched on;
* a simulator: N home servers on one Twisted reactor, each the real
  ``homechannel.server.udp.ServerUDP`` (own UDP port, own identity key,
  ``ChallengeSource(K)``) with an answerer that checks the client's proof,
  consumes the challenge and returns a signed fake answer at once;
* a bare Klein app (one route returning a constant) on ``twisted.web``'s
  ``Site`` and the default reactor: the reference (its Site also formats an
  access-log line per request; no observer writes it anywhere);
* this process: the load generator, asyncio with a small HTTP/1.1 keep-alive
  client on ``asyncio.Protocol`` (many connections).

A complete connect is ``GET /api/servers/{id}`` (challenge) ->
``POST /api/connect`` (answer = HMAC(K, challenge), real client proof, a
fake offer SDP with one ``a=fingerprint:sha-256`` line) -> ``GET
/api/sessions/{sid}`` until ``answered``.  Every answer's session and SDP
are checked; on a sample (1 in ``VERIFY_EVERY``) the coordinator signatures
of all three responses and the home server's answer signature are verified.

On a 2-core machine the generator shares the CPU with the coordinator and
the simulator, so the printed rates can be limited by the generator.  The
bench therefore also reads every child's CPU time from /proc and reports
coordinator CPU per operation: ``1 / (CPU-seconds per connect)`` is the
connects per core-second, which is what the target (>= 1,000 complete
connects/s per core) is about.

Run: python -m bench.signaling [seconds]   (inside tests/netns-run: loopback only)
"""

import asyncio
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench.udp_load import REPO, TWISTD, free_port
from homechannel import crypto, keyfiles
from homechannel.testing import local
from homechannel.protocol import connect as flow

SERVERS = 200
WORKERS = 48            # concurrent HTTP connections (and connect flows)
ROUNDS = 3
VERIFY_EVERY = 20
TICK = os.sysconf("SC_CLK_TCK")

CLIENT_FP = ":".join(f"{b:02X}" for b in bytes(range(32)))
SERVER_FP = ":".join(f"{b:02X}" for b in bytes(range(100, 132)))
OFFER = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
         "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
         "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
         f"a=fingerprint:sha-256 {CLIENT_FP}\r\na=setup:actpass\r\na=mid:0\r\n"
         "a=sctp-port:5000\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n")
ANSWER = ("v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
          "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
          "a=ice-ufrag:wxyz\r\na=ice-pwd:zyxwvutsrqponmlkjihgfedc\r\n"
          f"a=fingerprint:sha-256 {SERVER_FP}\r\na=setup:active\r\na=mid:0\r\n"
          "a=sctp-port:5000\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50001 typ host\r\n")
OFFER_HASH = crypto.offer_hash(OFFER)


BARE = r"""
import sys
from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site
app = Klein()
@app.route("/", methods=["GET"])
def root(request):
    return b'{"ok":true}'
reactor.listenTCP(int(sys.argv[1]), Site(app.resource()), interface="127.0.0.1")
reactor.run()
"""


# -- child processes ----------------------------------------------------------


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sys_seconds(pid):
    """The kernel's share of cpu_seconds(pid) (system calls: here mostly the loopback
    network stack, which runs the receiver's side inside the sender's syscall)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / TICK


def machine_busy():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def wait_port(port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_coordinator(tmp, twistd=TWISTD, access_log=False, cluster=None, key_path=None,
                      repo=REPO):
    """One coordinator (its logs discarded); *cluster* (its [cluster] settings) makes it
    a node of a cluster, *key_path* the identity key file (shared by a cluster's nodes),
    *repo* the source tree it runs (another checkout: an A/B comparison in one run)."""
    udp, web = free_port(), free_port()
    key_path = key_path or os.path.join(tmp, "coordinator.key")
    extra = {
        "udp": {"per_source_per_second": 1000000.0, "max_handshakes": 100000,
                "max_handshakes_per_source": 100000, "max_servers_per_source": 1000000},
        "web": {"per_ip_per_minute": 1000000000, "per_server_per_minute": 1000000000,
                "per_server_per_day": 1000000000,
                "max_sessions": 10000000, "max_waiters": 100000,
                # Every client is 127.0.0.1: lift the per-source shares too.
                "max_sessions_per_source": 10000000, "max_sessions_per_server": 10000000,
                "max_waiters_per_source": 100000, "max_connections_per_source": 10000,
                "access_log": access_log},
        "admin": {"listen": ""},
    }
    if cluster:
        extra["cluster"] = dict(cluster)
    cfg = local.write_toml(os.path.join(tmp, "coordinator.toml"), local.coordinator_config(
        tmp, udp_port=udp, web_port=web, identity_key=key_path, extra=extra))
    env = dict(os.environ, PYTHONPATH=repo)
    proc = subprocess.Popen(twistd + ["-n", "--pidfile=",
                                      "homechannel-coordinator", "--config", cfg],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=repo)
    wait_port(web)
    key = keyfiles.load_identity_key(key_path)
    return proc, udp, web, key


def start_simulator(udp_port, coordinator_key, n):
    """*n* home servers registered with *udp_port* (or, for a list of ports, spread
    over them in turn)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    ports = ",".join(str(p) for p in udp_port) if isinstance(udp_port, (list, tuple)) \
        else str(udp_port)
    proc = subprocess.Popen([sys.executable, "-m", "bench.signaling", "--simulate",
                             ports, coordinator_key.text, str(n)],
                            env=env, stdout=subprocess.PIPE, cwd=REPO)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        raise RuntimeError("the simulated home servers did not all register in 60 s")
    servers = [(s["id"], crypto.parse_server_id(s["id"]), crypto.b64u_decode(s["k"]))
               for s in json.loads(line)]
    return proc, servers


def start_bare():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    wait_port(port)
    return proc, port


# -- the simulator (child process) -----------------------------------------------


class FakeAnswerer:
    """Checks the proof and the challenge like the real home server, then answers
    at once with a signed fake SDP (no aiortc)."""

    def __init__(self, identity, password_key, challenges):
        self.identity, self.key, self.challenges = identity, password_key, challenges
        self.answered = self.refused = 0

    def handle_offer(self, payload):
        offer = flow.Offer.decode(payload)
        sid, challenge = offer.session, offer.challenge
        client_fp = flow.sdp_fingerprint(offer.sdp)
        digest = crypto.offer_hash(offer.sdp)
        if not (crypto.check_proof(self.key, sid, challenge, digest, offer.proof)
                and self.challenges.consume(challenge)):
            self.refused += 1
            return flow.Answer.refusal(sid, flow.BAD_PROOF).encode()
        now = int(time.time())
        sig = self.identity.sign(crypto.answer_signature_message(
            sid, challenge, digest, client_fp, SERVER_FP, now, ANSWER))
        self.answered += 1
        return flow.Answer(sid, ANSWER, now, sig).encode()


def simulate(udp_ports, coordinator_text, n):
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall
    from twisted.logger import LogLevel, formatEvent, globalLogBeginner

    from homechannel.config import ServerKeepalive
    from homechannel.server.challenges import ChallengeSource
    from homechannel.server.udp import ServerUDP

    def observer(event):
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            print("simulator:", formatEvent(event), file=sys.stderr)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    coordinator_raw = crypto.parse_server_id(coordinator_text)
    protos, out = [], []
    for i in range(n):
        identity = crypto.IdentityKey.generate()
        k = os.urandom(32)
        challenges = ChallengeSource(k)
        proto = ServerUDP(identity, challenges, ServerKeepalive(),
                          ("127.0.0.1", udp_ports[i % len(udp_ports)], coordinator_raw), reactor,
                          answerer=FakeAnswerer(identity, k, challenges))
        reactor.listenUDP(0, proto, interface="127.0.0.1")
        protos.append(proto)
        out.append({"id": identity.text, "k": crypto.b64u_encode(k)})

    def check():
        if all(p.registered for p in protos):
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
            poll.stop()

    poll = LoopingCall(check)
    poll.start(0.1)
    reactor.run()


# -- HTTP/1.1 keep-alive client ----------------------------------------------------


class HTTPError(Exception):
    pass


class Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, host):
        self.host = host
        self.buf = bytearray()
        self.waiter = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                      socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HTTPError(f"connection lost: {exc}"))

    def data_received(self, data):
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _parse(self):
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(buf[:end]).split(b"\r\n")
        status = int(lines[0][9:12])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        pos = end + 4
        length = headers.get(b"content-length")
        if length is not None:
            stop = pos + int(length)
            if len(buf) < stop:
                return
            body = bytes(buf[pos:stop])
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                start = eol + 2
                if size == 0:
                    if len(buf) < start + 2:    # no trailers expected: just CRLF
                        return
                    stop = start + 2
                    break
                if len(buf) < start + size + 2:
                    return
                parts.append(bytes(buf[start:start + size]))
                pos = start + size + 2
            body = b"".join(parts)
        else:
            raise HTTPError("response without a length")
        del buf[:stop]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, headers, body))

    def request(self, method, path, body=None):
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


async def connect(port):
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(f"127.0.0.1:{port}"),
                                           "127.0.0.1", port)
    return conn


def check_signature(coordinator_raw, path, headers, body):
    sig = crypto.b64u_decode(headers[b"x-homechannel-signature"].decode())
    crypto.verify(coordinator_raw, sig, crypto.response_signature_message(path, body))


# -- measurements -----------------------------------------------------------------


class Window:
    """Counts events inside [start, stop) and the CPU of the processes meanwhile."""

    def __init__(self, pids):
        self.pids = pids
        self.count = 0
        self.counting = False
        self.running = True

    async def run(self, warmup, seconds):
        await asyncio.sleep(warmup)
        cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sys0 = {name: sys_seconds(pid) for name, pid in self.pids.items()}
        busy0 = machine_busy()
        gen0, t0 = time.process_time(), time.perf_counter()
        self.counting = True
        await asyncio.sleep(seconds)
        self.counting = False
        wall = time.perf_counter() - t0
        self.cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in self.pids.items()}
        self.sys = {name: sys_seconds(pid) - sys0[name] for name, pid in self.pids.items()}
        self.cpu["generator"] = time.process_time() - gen0
        busy1 = machine_busy()
        self.machine = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1)
        self.running = False
        self.wall = wall
        self.rate = self.count / wall
        return self


async def blast(port, path, seconds, pids, n=WORKERS, method="GET", paths=None):
    """*n* connections each repeating one request; responses/s and CPU."""
    conns = [await connect(port) for _ in range(n)]
    win = Window(pids)
    bad = []

    async def worker(i, conn):
        my = paths[i::n] if paths else [path]
        j = 0
        while win.running:
            status, _, _ = await conn.request(method, my[j % len(my)])
            j += 1
            if status != 200:
                bad.append(status)
            if win.counting:
                win.count += 1

    tasks = [asyncio.ensure_future(worker(i, c)) for i, c in enumerate(conns)]
    await win.run(0.5, seconds)
    await asyncio.gather(*tasks)
    for c in conns:
        c.transport.close()
    if bad:
        raise HTTPError(f"{path}: {len(bad)} non-200 responses, e.g. {bad[:3]}")
    return win


async def connect_flow(port, servers, coordinator_raw, seconds, pids, n=WORKERS, wait=0,
                       ports=None):
    """*n* concurrent complete connects, each worker over its own share of servers
    (so that no two flows race for one server's challenge).

    *wait* > 0: the two-request connect (``POST /api/connect?wait=N`` holds the
    answer).  *ports* (several coordinator nodes): each worker looks up on one
    node and connects on the next, so every connect's requests land on two
    nodes, as haproxy's round robin makes them."""
    ports = ports or [port]
    conns = [[await connect(p) for p in ports] for _ in range(n)]
    win = Window(pids)
    stats = {"no_challenge": 0, "errors": [], "verified": 0, "pending_polls": 0}
    phases = {"lookup": [], "connect": [], "answer": []}
    done_sessions = []
    counter = [0]

    async def one(conn_pair, sid_text, key_raw, k):
        conn, post_conn = conn_pair
        counter[0] += 1
        verify = counter[0] % VERIFY_EVERY == 0
        t0 = time.perf_counter()
        path = f"/api/servers/{sid_text}"
        status, headers, body = await conn.request("GET", path)
        if status != 200:
            raise HTTPError(f"lookup {status} {body[:200]!r}")
        if verify:
            check_signature(coordinator_raw, path, headers, body)
        challenge_text = json.loads(body)["challenge"]
        if challenge_text is None:
            stats["no_challenge"] += 1
            return False
        challenge = crypto.b64u_decode(challenge_text)
        t1 = time.perf_counter()
        session = crypto.b64u_encode(os.urandom(16))
        req = json.dumps({
            "server": sid_text, "session": session, "challenge": challenge_text,
            "answer": crypto.b64u_encode(crypto.challenge_answer(k, challenge)),
            "proof": crypto.b64u_encode(crypto.client_proof(k, session, challenge, OFFER_HASH)),
            "offer": OFFER}).encode()
        status, headers, body = await post_conn.request(
            "POST", f"/api/connect?wait={wait}" if wait else "/api/connect", req)
        if status not in (200, 202):
            raise HTTPError(f"connect {status} {body[:200]!r}")
        if verify:
            check_signature(coordinator_raw, "/api/connect", headers, body)
        t2 = time.perf_counter()
        doc = json.loads(body)
        path = "/api/connect"
        while doc.get("status") != "answered":
            path = f"/api/sessions/{session}"
            status, headers, body = await conn.request("GET", path)
            if status != 200:
                raise HTTPError(f"session {status} {body[:200]!r}")
            doc = json.loads(body)
            if doc["status"] == "pending":
                stats["pending_polls"] += 1
        t3 = time.perf_counter()
        if doc["status"] != "answered" or doc["session"] != session or doc["answer"] != ANSWER:
            raise HTTPError(f"unexpected answer {body[:200]!r}")
        if verify:
            check_signature(coordinator_raw, path, headers, body)
            crypto.verify(key_raw, crypto.b64u_decode(doc["signature"]),
                          crypto.answer_signature_message(session, challenge, OFFER_HASH,
                                                          CLIENT_FP, SERVER_FP, doc["time"],
                                                          doc["answer"]))
            if abs(doc["time"] - time.time()) > 300:
                raise HTTPError("answer time is off")
            stats["verified"] += 1
        if win.counting:
            win.count += 1
            phases["lookup"].append(t1 - t0)
            phases["connect"].append(t2 - t1)
            phases["answer"].append(t3 - t2)
        done_sessions.append(session)
        return True

    async def worker(i, mine_conns):
        mine = servers[i::n]
        pair = (mine_conns[i % len(ports)], mine_conns[(i + 1) % len(ports)])
        j = 0
        while win.running:
            sid_text, key_raw, k = mine[j % len(mine)]
            j += 1
            try:
                await one(pair, sid_text, key_raw, k)
            except HTTPError as e:
                stats["errors"].append(str(e))
                if len(stats["errors"]) > 50:
                    raise

    tasks = [asyncio.ensure_future(worker(i, c)) for i, c in enumerate(conns)]
    await win.run(0.5, seconds)
    await asyncio.gather(*tasks)
    for cs in conns:
        for c in cs:
            c.transport.close()
    win.stats, win.phases, win.sessions = stats, phases, done_sessions
    return win


# -- report ---------------------------------------------------------------------------


def med(values):
    return statistics.median(values)


def us_per_op(win, name="coordinator"):
    return win.cpu[name] / max(1, win.count) * 1e6


async def measure(seconds, access_log):
    """All measurements against one coordinator (started with *twistd*)."""
    with tempfile.TemporaryDirectory() as tmp:
        coord, udp_port, web_port, key = start_coordinator(tmp, access_log=access_log)
        sim = bare = None
        try:
            sim, servers = start_simulator(udp_port, key, SERVERS)
            bare, bare_port = start_bare()
            pids = {"coordinator": coord.pid, "simulator": sim.pid, "bare": bare.pid}
            res = {name: [] for name in ("bare", "healthz", "config", "lookup", "flow",
                                         "sessions")}
            lookup_paths = [f"/api/servers/{s[0]}" for s in servers]
            for _ in range(ROUNDS):
                res["bare"].append(await blast(bare_port, "/", seconds, pids))
                res["healthz"].append(await blast(web_port, "/healthz", seconds, pids))
                res["config"].append(await blast(web_port, "/config.js", seconds, pids))
                res["lookup"].append(await blast(web_port, None, seconds, pids,
                                                 paths=lookup_paths))
                flow = await connect_flow(web_port, servers, key.public_raw, seconds, pids)
                res["flow"].append(flow)
                # Polls of answered sessions (kept 30 s after the answer): at once.
                session_paths = [f"/api/sessions/{s}" for s in flow.sessions[-5000:]]
                res["sessions"].append(await blast(web_port, None, seconds, pids,
                                                   paths=session_paths))
        finally:
            for p in (coord, sim, bare):
                if p is not None:
                    p.terminate()
                    p.wait()
    return res


async def run(seconds):
    print(f"coordinator signaling throughput (one coordinator process, loopback, "
          f"{SERVERS} simulated home servers, {WORKERS} keep-alive connections; medians of "
          f"{ROUNDS} runs of {seconds:g} s)")
    print(f"machine: {os.cpu_count()} cores, shared; generator, coordinator and simulator "
          "run on the same cores")
    deployed = await measure(seconds, access_log=False)
    print()
    print("== coordinator as deployed (web.access_log = false, the default)")
    b = report(deployed)
    logged = await measure(seconds, access_log=True)
    print()
    print("== the same coordinator with the per-request access log on (web.access_log = true)")
    a = report(logged)
    print()
    print(f"access log cost: {a - b:.0f} us of coordinator CPU per complete connect "
          f"({(a - b) / a:.0%}); connects per core-second {1e6 / a:.0f} with it, "
          f"{1e6 / b:.0f} without (target >= 1000)")
    return deployed, logged


def report(res):
    """Print one coordinator's figures; return its CPU us per complete connect."""
    bare = med([w.rate for w in res["bare"]])
    bare_us = med([us_per_op(w, "bare") for w in res["bare"]])
    flows = res["flow"]
    rate = med([w.rate for w in flows])
    cpu_per = med([us_per_op(w) for w in flows])
    sim_per = med([us_per_op(w, "simulator") for w in flows])
    gen_per = med([us_per_op(w, "generator") for w in flows])
    coord_load = med([w.cpu["coordinator"] / w.wall for w in flows])
    gen_load = med([w.cpu["generator"] / w.wall for w in flows])
    sim_load = med([w.cpu["simulator"] / w.wall for w in flows])
    machine = med([w.machine for w in flows])
    ncpu = os.cpu_count() or 2
    print("complete connects (lookup -> connect -> answered session)")
    print(f"  connects/s (wall)        : {rate:8.0f}   runs {[round(w.rate) for w in flows]}")
    print(f"  coordinator CPU/connect  : {cpu_per:8.0f} us  runs "
          f"{[round(us_per_op(w)) for w in flows]}")
    print(f"  => connects per core-s   : {1e6 / cpu_per:8.0f}   (target >= 1000: "
          f"{'met' if 1e6 / cpu_per >= 1000 else 'NOT met'})")
    print(f"  CPU during the run       : coordinator {coord_load:.2f}, generator {gen_load:.2f}, "
          f"simulator {sim_load:.2f} cores; whole machine busy {machine:.2f} of {ncpu} "
          "(the rest is other processes)")
    print(f"  per connect elsewhere    : generator {gen_per:.0f} us, simulator {sim_per:.0f} us")
    if coord_load > 0.8:
        limited = "the coordinator (about one core busy)"
    elif machine > 0.85 * ncpu:
        limited = "the machine (all cores busy: generator, simulator and other processes)"
    else:
        limited = "latency / concurrency"
    print(f"  wall rate limited by     : {limited}")
    lat = {p: med([med(w.phases[p]) * 1e3 for w in flows if w.phases[p]])
           for p in ("lookup", "connect", "answer")}
    print(f"  median latency per phase : lookup {lat['lookup']:.1f} ms, connect "
          f"{lat['connect']:.1f} ms, answer (UDP relay + home server + poll) "
          f"{lat['answer']:.1f} ms   (under load, {WORKERS} flows in flight)")
    st = [w.stats for w in flows]
    errors = [e for s in st for e in s["errors"]]
    print(f"  checks: every answer's session+SDP; signatures verified on "
          f"{sum(s['verified'] for s in st)} connects (1 in {VERIFY_EVERY}); "
          f"lookups without a challenge {sum(s['no_challenge'] for s in st)}; "
          f"errors {len(errors)}" + (f", e.g. {errors[0]}" if errors else ""))
    print("per route: requests/s with this generator, ratio to the bare Klein route; "
          "server CPU per request and requests per core-second")
    print(f"  {'route':34s} {'req/s':>8s} {'ratio':>6s} {'CPU/req':>9s} {'req/core-s':>10s}")

    def row(name, wins, proc="coordinator"):
        r = med([w.rate for w in wins])
        u = med([us_per_op(w, proc) for w in wins])
        print(f"  {name:34s} {r:8.0f} {r / bare:6.2f} {u:7.0f}us {1e6 / u:10.0f}   "
              f"runs {[round(w.rate) for w in wins]}")

    row("bare Klein GET / (reference)", res["bare"], "bare")
    row("GET /healthz", res["healthz"])
    row("GET /config.js", res["config"])
    row("GET /api/servers/{id}", res["lookup"])
    row("GET /api/sessions/{sid} (answered)", res["sessions"])
    lookup_us = med([us_per_op(w) for w in res["lookup"]])
    sess_us = med([us_per_op(w) for w in res["sessions"]])
    post_us = cpu_per - lookup_us - sess_us
    print(f"  {'POST /api/connect + UDP relay':34s} {'-':>8s} {'-':>6s} {post_us:7.0f}us "
          f"{1e6 / post_us:10.0f}   (estimate: CPU per complete connect minus one lookup "
          "and one answered poll)")
    print(f"  {'complete connect (3 requests)':34s} {rate:8.0f} {rate / bare:6.2f} "
          f"{cpu_per:7.0f}us {1e6 / cpu_per:10.0f}")
    print(f"  (bare Klein: {bare_us:.0f} us CPU per request; a complete connect costs the "
          f"coordinator {cpu_per / bare_us:.1f} bare Klein requests)")
    return cpu_per


def main(argv=()):
    argv = list(argv)
    if argv and argv[0] == "--simulate":
        return simulate([int(p) for p in argv[1].split(",")], argv[2], int(argv[3]))
    seconds = float(argv[0]) if argv else 3.0
    return asyncio.run(run(seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
