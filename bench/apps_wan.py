"""The apps over an emulated WAN link, each against a reference over the same link
in the same run.

One ``tests/support/nat.py`` topology (cone NATs on both sides) whose client side
reaches everything through the WAN emulator of ``tests/support/wan.py``; the link
is changed between measurements (``Topology.set_wan``) while the daemons, sshd, the
VNC server and the browser keep running.  The home server, sshd and Xtigervnc run
in the home network; Chromium (and the ssh client, websockify) in the client's.
The home router forwards sshd's and the VNC server's ports (``forward_port``), so
the references cross the same link over plain TCP.

    tests/netns-run .venv/bin/python -m bench.apps_wan [--parts files,terminal,desktop,big]
        [--rtts 0,40,100] [--rounds 3]

Parts (each prints a table; "ratio" is the app against its reference):

- ``files``: the files app through Chromium (download to memory, upload), the raw
  aiortc <-> Chromium datachannel (``bench._rawpeer``, set up as the home server:
  the raw ceiling), the raw channel with aiortc's own 1 MiB receive window, and
  ``ssh cat`` over the forwarded port, at each RTT and ``--files-rate``;
- ``big``: a ``--big-mib`` download to disk through both save paths (the save
  picker, here backed by the origin-private file system; the service worker
  stream, saved by the browser's download manager) against the 50 MB in-memory
  download of the same run, on an unlimited link (``--big-rtt``);
- ``terminal``: keystroke to echo, the terminal app (xterm.js through the home
  server's SSH client) against ``ssh -tt`` from the client network (in a pty),
  at each RTT;
- ``desktop``: the Desktop tab (noVNC over the datachannel) against noVNC through
  websockify (run in the client network: plain TCP across the link) to the same
  Xtigervnc, at each RTT and ``--desktop-rate``: frames per second while a window
  is dragged and while a video plays (``bench._xapp``), and key-to-pixels latency
  with the screen still and while the video plays.

Needs root (namespaces, useradd).  Prints figures; no assertions.  (``bench._rawpeer``
and ``bench._xapp`` are its helper programs, not benchmarks: ``make bench`` skips
names that start with ``_``.)
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tests", "support"), REPO]

import nat  # noqa: E402
from helpers import CHROMIUM_ARGS, Twistd  # noqa: E402
from wan import Wan  # noqa: E402

from bench.apps_throughput import (MB, app_download, app_upload, choose_sink,  # noqa: E402
                                   open_session, terminal_echo)
from bench._rawpeer import RawChannel  # noqa: E402

SSH_PORT = 2222
VNC_PORT = 5901
WEBSOCKIFY_PORT = 6080
MiB = 1024 * 1024


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b):
    return a / b if b else float("nan")


def load():
    return os.getloadavg()[0]


# -- the setup ----------------------------------------------------------------------------


class Bench:
    """Everything one run needs, built once."""

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.stack = contextlib.ExitStack()

    def link(self, rtt_ms, rate=None, loss=0.0):
        wan = Wan(rtt=rtt_ms / 1000, loss=loss, rate=rate)
        if wan != self.topo.wan:
            self.topo.set_wan(wan)
        return wan

    def start(self):
        import pathlib

        import services

        stack = self.stack
        self.topo = nat.Topology(wan=Wan()).up()
        stack.callback(self.topo.down)
        home = self.topo.exec_prefix("home")
        tmp = pathlib.Path(self.tmp)
        # sshd and the VNC server in the home network, on every address (the home
        # server reaches them on 127.0.0.1, the references through the port forwards)
        self.password = "bench-" + os.urandom(6).hex()
        self.user = stack.enter_context(services.local_user("hcw", self.password))
        (tmp / "sshd").mkdir()
        stack.enter_context(services.sshd(tmp / "sshd", password_auth=True, key_auth=True,
                                          listen="0.0.0.0", prefix=home, port=SSH_PORT))
        self.ssh_key = services.authorize_key(self.user, tmp / "sshd")
        self.vnc_log = tmp / "xtigervnc.log"
        log = stack.enter_context(open(self.vnc_log, "w"))
        _, self.display = stack.enter_context(services.xtigervnc(
            "1280x720", prefix=home, port=VNC_PORT, localhost=False, stderr=log,
            args=["-Log", "*:stderr:30"]))
        for port in (SSH_PORT, VNC_PORT):
            self.topo.forward_port("home", port)
        self.xapp = self.topo.popen("home", [sys.executable, "-m", "bench._xapp"], cwd=REPO,
                                    env=dict(os.environ, DISPLAY=f":{self.display}"),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stack.callback(self.xapp.kill)
        ready = json.loads(self.xapp.stdout.readline())
        assert ready.get("ready"), ready

        procs = []

        def twistd(tapname, config, **kw):
            t = Twistd(tapname, config, **kw).start()
            procs.append(t)
            stack.callback(t.stop)
            return t

        from bench.nat_connect import lifted_limits
        self.pair, self.coordinator, self.server = nat.start_nat_pair(
            twistd, str(tmp / "pair"), self.topo, coordinator=lifted_limits(),
            server={"apps": {"terminal": {"port": SSH_PORT}, "desktop": {"endpoint": f"127.0.0.1:{VNC_PORT}"}}})
        self.stun = [f"stun:{nat.PUBLIC_HOST}:{nat.UDP_PORT}"]
        return self

    def xapp_command(self, cmd):
        self.xapp.stdin.write(cmd + "\n")
        self.xapp.stdin.flush()
        return json.loads(self.xapp.stdout.readline())

    def close(self):
        self.stack.close()


# -- files ---------------------------------------------------------------------------------


def ssh_argv(bench, *command, tty=False):
    return ["ssh", "-q", *(["-tt"] if tty else []), "-i", bench.ssh_key, "-p", str(SSH_PORT),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", f"{bench.user}@{nat.ROUTER_WAN['home']}",
            *command]


def ssh_cat(bench, path, size):
    """``ssh cat`` down and up across the link (client network -> port forward)."""
    topo = bench.topo
    t0 = time.perf_counter()
    proc = topo.popen("client", ssh_argv(bench, f"cat {path}"), stdout=subprocess.DEVNULL)
    proc.wait()
    down = size / (time.perf_counter() - t0) / MB
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        proc = topo.popen("client", ssh_argv(bench, "cat > /dev/null"), stdin=f)
        proc.wait()
        up = size / (time.perf_counter() - t0) / MB
    return down, up


async def files_part(bench, browser, page):
    args = bench.args
    size = args.size_mb * MB
    src = os.path.join(bench.pair.files_root, "bench.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(size))
    os.chmod(src, 0o644)
    os.chmod(bench.pair.files_root, 0o755)
    up_src = os.path.join(bench.tmp, "upload.bin")
    shutil.copy(src, up_src)
    raw = await RawChannel().open(browser, bench.pair.url, bench.topo.exec_prefix("home"),
                                  ice=bench.stun)
    small = await RawChannel().open(browser, bench.pair.url, bench.topo.exec_prefix("home"),
                                    ice=bench.stun, window=1024 * 1024)
    await choose_sink(page, "memory")
    rate = args.files_rate * 1e6 if args.files_rate else None
    rows = []
    for rtt in args.rtts:
        bench.link(rtt, rate)
        res = {k: [] for k in ("app_down", "raw_down", "app_up", "raw_up", "raw1m_up",
                               "ssh_down", "ssh_up")}
        for i in range(args.rounds):
            res["app_down"].append((await app_download(page, "bench.bin", size))[0])
            res["raw_down"].append(await raw.down(size))
            up = os.path.join(bench.tmp, f"upload-{rtt}-{i}.bin")
            os.link(up_src, up)
            res["app_up"].append(await app_upload(page, up, size))
            res["raw_up"].append(await raw.up(size))
            res["raw1m_up"].append(await small.up(size))
            d, u = ssh_cat(bench, src, size)
            res["ssh_down"].append(d)
            res["ssh_up"].append(u)
            os.unlink(os.path.join(bench.pair.files_root, os.path.basename(up)))
            print(f"  {rtt} ms, round {i + 1}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()),
                  flush=True)
        rows.append((rtt, {k: median(v) for k, v in res.items()}))
    await raw.close()
    await small.close()
    print()
    print(f"files, {args.size_mb} MB, link {args.files_rate or 'unlimited'} Mbit/s; MB/s, "
          f"medians of {args.rounds}; load {load():.1f}")
    print(f"{'RTT':>6s} {'app down':>9s} {'raw down':>9s} {'ratio':>6s} {'app up':>8s} "
          f"{'raw up':>8s} {'ratio':>6s} {'raw up 1MiB':>12s} {'ssh down':>9s} {'ssh up':>8s}")
    for rtt, m in rows:
        print(f"{rtt:4d}ms {m['app_down']:9.1f} {m['raw_down']:9.1f} "
              f"{m['app_down'] / m['raw_down']:6.0%} {m['app_up']:8.1f} {m['raw_up']:8.1f} "
              f"{m['app_up'] / m['raw_up']:6.0%} {m['raw1m_up']:12.1f} {m['ssh_down']:9.1f} "
              f"{m['ssh_up']:8.1f}")
    print(flush=True)


# -- big downloads to disk -----------------------------------------------------------------


async def big_part(bench, browser, page):
    args = bench.args
    size = args.big_mib * MiB
    big = os.path.join(bench.pair.files_root, "big.bin")
    with open(big, "wb") as f:   # not sparse: the home server reads a real file
        block = os.urandom(MiB)
        for _ in range(args.big_mib):
            f.write(block)
    os.chmod(big, 0o644)
    small = os.path.join(bench.pair.files_root, "bench.bin")
    if not os.path.exists(small):
        with open(small, "wb") as f:
            f.write(os.urandom(args.size_mb * MB))
        os.chmod(small, 0o644)
    bench.link(args.big_rtt)
    res = {k: [] for k in ("memory", "picker", "stream")}
    for i in range(args.big_rounds):
        await choose_sink(page, "memory")
        res["memory"].append((await app_download(page, "bench.bin", args.size_mb * MB))[1])
        await choose_sink(page, "picker")
        res["picker"].append((await app_download(page, "big.bin", size))[1])
        await page.evaluate("async () => (await navigator.storage.getDirectory())"
                            ".removeEntry('big.bin')")
        await choose_sink(page, "stream")
        async with page.expect_download(timeout=60_000) as info:
            got = asyncio.ensure_future(app_download(page, "big.bin", size))
        download = await info.value
        res["stream"].append((await got)[1])
        path = await download.path()
        ok = os.path.getsize(path) == size
        await download.delete()
        print(f"  round {i + 1}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in res.items())
              + ("" if ok else "  (stream: WRONG SIZE)"), flush=True)
    m = {k: median(v) for k, v in res.items()}
    print()
    print(f"big downloads to disk, {args.big_mib} MiB, RTT {args.big_rtt} ms, no rate limit; "
          f"MB/s to 'SHA-256 verified', medians of {args.big_rounds}; load {load():.1f}")
    print(f"  {args.size_mb} MB to memory (reference)   {m['memory']:7.1f}")
    for kind, what in (("picker", "save picker (OPFS)"), ("stream", "service worker stream")):
        print(f"  {args.big_mib} MiB, {what:24s}{m[kind]:7.1f}   {m[kind] / m['memory']:5.0%} of "
              "memory (target >= 90%)")
    print(flush=True)


# -- terminal ------------------------------------------------------------------------------

# keystroke -> echo on a pty running ssh -tt (the reference), in the client network
SSH_ECHO = r"""
import json, os, pty, select, sys, time
n = int(sys.argv[1]); argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
buf = b""
def read_until(pred, timeout=30):
    global buf
    deadline = time.monotonic() + timeout
    while not pred(buf):
        r, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        if not r:
            raise SystemExit(f"timeout; got {buf[-200:]!r}")
        buf += os.read(fd, 65536)
read_until(lambda b: b.rstrip().endswith(b"$"))
time.sleep(0.3)
out = []
for i in range(n):
    buf = b""
    t0 = time.monotonic()
    os.write(fd, b"x")
    read_until(lambda b: b"x" in b)
    out.append(time.monotonic() - t0)
    if i % 20 == 19:
        os.write(fd, b"\x15")
        time.sleep(0.05)
        read_until(lambda b: True, 1)
    time.sleep(0.02)
print(json.dumps(out))
"""


def ssh_echo(bench, n):
    out = bench.topo.run("client", sys.executable, "-c", SSH_ECHO, str(n),
                         *ssh_argv(bench, tty=True)).stdout
    return [x * 1000 for x in json.loads(out.strip().splitlines()[-1])]


async def terminal_part(bench, page):
    args = bench.args
    rows = []
    signed_in = False
    for rtt in args.rtts:
        bench.link(rtt, args.files_rate * 1e6 if args.files_rate else None)
        app = await terminal_echo(page, bench, args.echo, sign_in=not signed_in)
        signed_in = True
        ssh = ssh_echo(bench, args.echo)
        parsed = [p for p, _ in app]
        rendered = [r for _, r in app]
        rows.append((rtt, median(parsed), median(rendered), median(ssh),
                     statistics.quantiles(parsed, n=20)[-1], statistics.quantiles(ssh, n=20)[-1]))
        print(f"  {rtt} ms: app {rows[-1][1]:.1f} ms (rendered {rows[-1][2]:.1f}), "
              f"ssh {rows[-1][3]:.1f} ms", flush=True)
    print()
    print(f"terminal, keystroke to echo (ms), {args.echo} keys, medians (p95); load {load():.1f}")
    print(f"{'RTT':>6s} {'app':>14s} {'app rendered':>13s} {'ssh -tt':>14s} {'app - ssh':>10s}")
    for rtt, p, r, s, p95, s95 in rows:
        print(f"{rtt:4d}ms {p:7.1f} ({p95:4.0f}) {r:13.1f} {s:7.1f} ({s95:4.0f}) {p - s:+10.1f}"
              "   (target: within 10 ms of ssh)")
    print(flush=True)


# -- desktop --------------------------------------------------------------------------------

# Counts the frames noVNC draws (Display.flip that really flips, not the ones queued
# behind an image decode) and checks a pixel after each.
FPS_HOOK = """() => {
  const rfb = window.__hcRfb, d = rfb._display;
  if (d.__hcHooked) return true;
  d.__hcHooked = true;
  window.__hcFlips = [];
  window.__hcOnFlip = [];
  const flip = d.flip;
  d.flip = function (fromQueue) {
    const real = fromQueue || this._renderQ.length === 0;
    flip.call(this, fromQueue);
    if (real) {
      const t = performance.now();
      window.__hcFlips.push(t);
      for (const f of window.__hcOnFlip.splice(0)) f(t);
    }
  };
  return true;
}"""

FRAMES_SINCE = "(t) => window.__hcFlips.filter((x) => x >= t).length"

# Key press -> the key square shows the next colour: times in ms.
KEY_LATENCY = """async ([n, x, y, colours, first]) => {
  const rfb = window.__hcRfb, d = rfb._display;
  const want = (c) => { const p = d._drawCtx.getImageData(x, y, 1, 1).data;
    return c === "#0000ff" ? p[2] > 180 && p[1] < 80 : p[1] > 180 && p[2] < 80; };
  const out = [];
  let next = colours.indexOf(first) ^ 1;
  for (let i = 0; i < n; i++) {
    const colour = colours[next];
    const t0 = performance.now();
    const seen = new Promise((resolve) => {
      const check = (t) => { if (want(colour)) resolve(t); else window.__hcOnFlip.push(check); };
      window.__hcOnFlip.push(check);
    });
    rfb.sendKey(0x61, "KeyA");
    const t = await Promise.race([seen, new Promise((r) => setTimeout(() => r(null), 5000))]);
    out.push(t === null ? null : t - t0);
    next ^= 1;
    await new Promise((r) => setTimeout(r, 150 + Math.random() * 100));
  }
  return out;
}"""

DIRECT_PAGE = """<!doctype html>
<meta charset="utf-8"><title>noVNC over TCP</title>
<style>html, body, #screen { margin: 0; width: 100%%; height: 100%%; overflow: hidden; }</style>
<div id="screen"></div>
<script type="module">
import RFB from "./novnc/core/rfb.js";
const rfb = new RFB(document.getElementById("screen"), "ws://127.0.0.1:%d/");
rfb.scaleViewport = true;
window.__hcRfb = rfb;
rfb.addEventListener("connect", () => { window.__hcConnected = true; });
</script>
"""


async def direct_vnc_page(bench, browser):
    """noVNC in a page of its own, through websockify in the client network: the
    RFB stream crosses the link over plain TCP (the home router's port forward)."""
    web = os.path.join(bench.tmp, "novnc-direct")
    os.makedirs(web, exist_ok=True)
    with open(os.path.join(web, "vnc.html"), "w") as f:
        f.write(DIRECT_PAGE % WEBSOCKIFY_PORT)
    os.symlink(os.path.join(REPO, "static", "node_modules", "@novnc", "novnc"),
               os.path.join(web, "novnc"))
    proc = bench.topo.popen("client", [shutil.which("websockify") or "websockify", "--web", web,
                                       f"127.0.0.1:{WEBSOCKIFY_PORT}",
                                       f"{nat.ROUTER_WAN['home']}:{VNC_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.stack.callback(proc.kill)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    for _ in range(50):
        try:
            await page.goto(f"http://127.0.0.1:{WEBSOCKIFY_PORT}/vnc.html")
            break
        except Exception:
            await asyncio.sleep(0.2)
    await wait_js(page, "window.__hcConnected === true", 30)
    return page


async def wait_js(page, expression, timeout):
    deadline = time.monotonic() + timeout
    while not await page.evaluate(f"() => {expression}"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not true within {timeout} s: {expression}")
        await asyncio.sleep(0.1)


async def desktop_measure(bench, page, seconds):
    """(drag fps, video fps, key latency still, key latency during video) on *page*."""
    from _xapp import COLOURS, KEY_SIZE, KEY_X, KEY_Y  # noqa: F401  (bench/ on the path)

    await page.evaluate(FPS_HOOK)
    out = {}
    for mode in ("drag", "video"):
        bench.xapp_command(mode)
        await asyncio.sleep(1.0)
        t0 = await page.evaluate("performance.now()")
        bench.xapp_command("stats")
        await asyncio.sleep(seconds)
        frames = await page.evaluate(FRAMES_SINCE, t0)
        t1 = await page.evaluate("performance.now()")
        stats = bench.xapp_command("stats")
        out[mode] = frames / ((t1 - t0) / 1000)
        out[mode + "_app"] = stats["updates"] / stats["seconds"]
    centre = (KEY_X + KEY_SIZE // 2, KEY_Y + KEY_SIZE // 2)
    for mode in ("still", "video"):
        first = bench.xapp_command(mode)["key"]
        await asyncio.sleep(1.0)
        lat = await page.evaluate(KEY_LATENCY, [bench.args.keys, *centre, list(COLOURS), first])
        out["key_" + mode] = lat
    bench.xapp_command("still")
    return out


async def desktop_part(bench, browser, page):
    args = bench.args
    sys.path.insert(0, os.path.join(REPO, "bench"))
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.get_by_role("tab", name="Desktop").click()
    await page.locator(".app-desktop [role=status]", has_text="Connected.").wait_for(timeout=30_000)
    direct = await direct_vnc_page(bench, browser)
    rate = args.desktop_rate * 1e6 if args.desktop_rate else None
    rows = []
    for rtt in args.rtts:
        bench.link(rtt, rate)
        res = {}
        for name, p in (("app", page), ("tcp", direct)):
            await p.bring_to_front()
            res[name] = await desktop_measure(bench, p, args.seconds)
            k = res[name]
            print(f"  {rtt} ms {name}: drag {k['drag']:.1f} fps (app {k['drag_app']:.0f}), video "
                  f"{k['video']:.1f} fps (app {k['video_app']:.0f}), key still "
                  f"{median([x for x in k['key_still'] if x is not None]):.0f} ms, key during "
                  f"video {median([x for x in k['key_video'] if x is not None]):.0f} ms", flush=True)
        rows.append((rtt, res))
    print()
    print(f"desktop, Xtigervnc 1280x720, link {args.desktop_rate or 'unlimited'} Mbit/s: frames "
          f"per second over {args.seconds} s, key to pixels (ms, median of {args.keys}); "
          f"load {load():.1f}")
    print(f"{'RTT':>6s} {'':5s} {'drag fps':>9s} {'video fps':>10s} {'key still':>10s} "
          f"{'key video':>10s}")
    for rtt, res in rows:
        for name in ("app", "tcp"):
            k = res[name]
            lost = sum(x is None for x in k["key_still"] + k["key_video"])
            print(f"{rtt:4d}ms {name:5s} {k['drag']:9.1f} {k['video']:10.1f} "
                  f"{median([x for x in k['key_still'] if x is not None]):10.0f} "
                  f"{median([x for x in k['key_video'] if x is not None]):10.0f}"
                  + (f"   ({lost} keys not seen)" if lost else ""))
        a, t = res["app"], res["tcp"]
        print(f"{'':6s} {'ratio':5s} {ratio(a['drag'], t['drag']):9.2f} "
              f"{ratio(a['video'], t['video']):10.2f}"
              "   (target >= 0.8 at 40 ms)")
    await direct.close()
    print(flush=True)


# -- main -----------------------------------------------------------------------------------


async def run(args, tmp):
    from playwright.async_api import async_playwright

    bench = Bench(args, tmp).start()
    try:
        print(f"apps over an emulated WAN link; {os.cpu_count()} CPUs, load average "
              f"{load():.1f}", flush=True)
        async with async_playwright() as p:
            wrapper = nat.chromium_wrapper(bench.topo, "client", tmp)
            browser = await p.chromium.launch(
                executable_path=wrapper, headless=True,
                args=CHROMIUM_ARGS + [f"--unsafely-treat-insecure-origin-as-secure={bench.pair.url}"])
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda e: print(f"[page error] {e}"))
            await open_session(page, bench.pair)
            for part in args.parts:
                if part == "files":
                    await files_part(bench, browser, page)
                elif part == "big":
                    await big_part(bench, browser, page)
                elif part == "terminal":
                    await terminal_part(bench, page)
                elif part == "desktop":
                    await desktop_part(bench, browser, page)
            await browser.close()
    finally:
        bench.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="files,big,terminal,desktop",
                    type=lambda s: s.split(","))
    ap.add_argument("--rtts", default="0,40,100", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--files-rate", type=float, default=100, help="Mbit/s (0: unlimited)")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--big-rtt", type=int, default=0)
    ap.add_argument("--big-rounds", type=int, default=2)
    ap.add_argument("--echo", type=int, default=40, help="terminal keystrokes per RTT")
    ap.add_argument("--desktop-rate", type=float, default=20, help="Mbit/s (0: unlimited)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per frame-rate measurement")
    ap.add_argument("--keys", type=int, default=15, help="key presses per latency measurement")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        asyncio.run(run(args, tmp))
    print(f"(bench took {time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
