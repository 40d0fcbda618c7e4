"""Click-to-open across kernel NAT (tests/support/nat.py topologies), in Chromium and
in the native client, with loopback as the reference measured in the same run.

    tests/netns-run python -m bench.nat_connect [--connects 10]
        [--cases loopback,cone,symmetric,ds-lite,ds-lite-v4] [--clients browser,native]

* loopback: the reference, everything on 127.0.0.1 (no NAT), as in bench.connect_latency;
* cone: cone NATs on both sides, no ICE settings anywhere (the coordinator's
  own STUN);
* symmetric: a symmetric client NAT, TURN (coturn, started here on the public
  host) configured only at the coordinator with a shared secret;
* ds-lite: symmetric NATs on both sides' IPv4 and IPv6 routed through stateful
  firewalls (tests/e2e/test_ipv6.py's topology (a)), no TURN: direct over IPv6;
* ds-lite-v4: the same NATs with IPv6 off, and TURN: the relay IPv4 needs there.

Browser: from the click on Connect to the session view, on the page's clock,
with the time of each step (lookup, password, gather, wait, open) and of the
"open" sub-phases (ICE checking, ICE connected, DTLS, channel open).  Native:
``homechannel.client.session.connect()`` in one process in the client namespace, from
the call to the hello reply, minus nothing (PBKDF2 is printed apart).
Prints medians and p95; no assertions.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tests", "support"), REPO]

import nat  # noqa: E402
from helpers import CHROMIUM_ARGS, Twistd  # noqa: E402
from daemons import PASSWORD  # noqa: E402

from bench.connect_latency import STEP_TIMES, fmt, timed_connect  # noqa: E402

TURN_SECRET = "bench-turn-secret-0123456789abcdef"

NATIVE = r"""
import asyncio, json, sys, time
sys.path.insert(0, {repo!r})
from homechannel import crypto
from homechannel.client import session
args = json.loads(sys.argv[1])

async def main():
    out = []
    t0 = time.monotonic()
    crypto.derive_password_key("x", crypto.IdentityKey.generate().public_raw)
    out.append(("pbkdf2", time.monotonic() - t0))
    for i in range(args["n"]):
        t0 = time.monotonic()
        pc, control, hello = await session.connect(args["url"], args["server"], args["password"],
                                                  coordinator_key=args["key"],
                                                  insecure_http=True,   # the test topology
                                                  advertise_addresses=args["advertise"])
        took = time.monotonic() - t0
        from homechannel.rtc import webrtc
        path = webrtc.describe_path(pc)
        await pc.close()
        out.append((path, took))
    print(json.dumps(out))

asyncio.run(main())
"""


def lifted_limits():
    """The coordinator's settings for many connects from one address: merged into
    its config (the ones this tree has)."""
    from homechannel.config import CoordinatorWeb
    fields = set(CoordinatorWeb.__dataclass_fields__)
    return {"web": {key: 1_000_000 for key in (
        "per_ip_per_minute", "per_server_per_minute", "per_server_per_day",
        "per_device_per_minute") if key in fields}}


class _Here:
    """Stands in for a topology when everything runs here, on loopback."""

    def exec_prefix(self, ns):
        return []

    def run(self, ns, *argv, check=True):
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    def down(self):
        pass


@contextlib.contextmanager
def loopback(tmp):
    from daemons import make_pair
    procs = []
    try:
        pair = make_pair(tmp, coordinator_extra=lifted_limits())
        procs.append(Twistd("homechannel-coordinator", pair.coordinator_config).start())
        procs[-1].wait_for_log("coordinator: UDP")
        procs.append(Twistd("homechannel-server", pair.server_config).start())
        procs[-1].wait_for_log("registered with coordinator", timeout=30)
        yield _Here(), pair, procs[-1]
    finally:
        for p in reversed(procs):
            p.stop()


# case: (home NAT, client NAT, TURN at the coordinator, IPv6)
CASES = {
    "cone": ("cone", "cone", False, False),
    "symmetric": ("cone", "symmetric", True, False),
    "ds-lite": ("symmetric", "symmetric", False, True),
    "ds-lite-v4": ("symmetric", "symmetric", True, False),
}


@contextlib.contextmanager
def setup(case, tmp):
    if case == "loopback":
        with loopback(tmp) as result:
            yield result
        return
    home_nat, client_nat, turn, ipv6 = CASES[case]
    topo = nat.Topology(home_nat=home_nat, client_nat=client_nat, ipv6=ipv6).up()
    procs = []

    def start(tapname, config, **kw):
        t = Twistd(tapname, config, **kw).start()
        procs.append(t)
        return t

    try:
        coordinator = lifted_limits()
        with contextlib.ExitStack() as stack:
            if turn:
                from services import coturn
                secret = os.path.join(tmp, "turn-secret")
                with open(secret, "w") as f:
                    f.write(TURN_SECRET + "\n")
                os.chmod(secret, 0o600)     # the coordinator refuses a secret others read
                os.makedirs(os.path.join(tmp, "coturn"), exist_ok=True)
                import pathlib
                stack.enter_context(coturn(pathlib.Path(tmp) / "coturn", TURN_SECRET,
                                           listen=nat.PUBLIC_HOST,
                                           prefix=topo.exec_prefix("pub"), quiet=True))
                coordinator["turn"] = {"urls": [f"turn:{nat.PUBLIC_HOST}:3478?transport=udp"],
                                       "secret_file": secret}
            if ipv6:
                pair, c, s = nat.start_dual_stack_pair(start, tmp, topo,
                                                       coordinator=coordinator)
            else:
                pair, c, s = nat.start_nat_pair(start, tmp, topo, coordinator=coordinator)
            yield topo, pair, s
    finally:
        for p in reversed(procs):
            p.stop()
        topo.down()


def browser_runs(topo, pair, server, n, warmup):
    from playwright.sync_api import sync_playwright

    from browser import open_link

    out = []
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        wrapper = nat.chromium_wrapper(topo, "client", d)
        browser = p.chromium.launch(
            executable_path=wrapper, headless=True,
            args=CHROMIUM_ARGS + [f"--unsafely-treat-insecure-origin-as-secure={pair.url}"])
        page = browser.new_page()
        page.add_init_script(STEP_TIMES)
        open_link(page, pair)
        for i in range(warmup + n):
            total, steps = timed_connect(page, server, timeout=60000)
            if i < warmup:
                continue
            order = [k for k in ("lookup", "password", "gather", "wait", "open") if k in steps]
            parts = "  ".join(f"{a} {steps[b] - steps[a]:6.1f}" for a, b in zip(order, order[1:]))
            sub = [k for k in ("open", "ice-checking", "ice-connected", "dtls-connected",
                               "channel-open", "hello-reply", "session-shown") if k in steps]
            parts += "  |" + "".join(f" {b} +{steps[b] - steps[a]:.1f}" for a, b in zip(sub, sub[1:]))
            print(f"    browser {i - warmup + 1:2d}: {total:7.1f} ms  [{parts}]", flush=True)
            out.append(total)
        browser.close()
    return out


def native_runs(topo, pair, n):
    advertise = ["127.0.0.1"] if isinstance(topo, _Here) else []
    args = json.dumps({"n": n + 1, "url": pair.url, "server": pair.server_key.text,
                       "password": PASSWORD, "key": pair.coordinator_key.text,
                       "advertise": advertise})
    r = topo.run("client", sys.executable, "-c", NATIVE.format(repo=REPO), args, check=False)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        return [], None
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    pbkdf2 = rows[0][1] * 1000
    runs = rows[2:]          # the first connect warms up
    for i, (path, took) in enumerate(runs):
        print(f"    native  {i + 1:2d}: {took * 1000:7.1f} ms  ({path or 'path unknown'})",
              flush=True)
    return [t * 1000 for _, t in runs], pbkdf2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connects", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cases", default="loopback,cone,symmetric,ds-lite,ds-lite-v4")
    ap.add_argument("--clients", default="browser,native")
    args = ap.parse_args(argv)
    why = nat.Topology.check_environment()
    if why:
        sys.exit(f"bench.nat_connect: {why}")
    results = {}
    for case in args.cases.split(","):
        with tempfile.TemporaryDirectory() as tmp, setup(case, tmp) as (topo, pair, server):
            print(f"== {case}", flush=True)
            if "browser" in args.clients:
                results[(case, "browser")] = browser_runs(topo, pair, server, args.connects,
                                                          args.warmup)
            if "native" in args.clients:
                runs, pbkdf2 = native_runs(topo, pair, args.connects)
                results[(case, "native")] = runs
                if pbkdf2:
                    print(f"    native PBKDF2 (in each connect): {pbkdf2:.0f} ms")
    print()
    for (case, who), values in results.items():
        if values:
            ref = results.get(("loopback", who))
            ratio = (f"  x{statistics.median(values) / statistics.median(ref):.1f} loopback"
                     if ref and case != "loopback" else "")
            v4 = results.get(("ds-lite-v4", who))
            if case == "ds-lite" and v4:
                ratio += f"  x{statistics.median(values) / statistics.median(v4):.2f} ds-lite-v4"
            print(f"{case:10s} {who:8s} click-to-open  {fmt(values)}{ratio}")


if __name__ == "__main__":
    main()
