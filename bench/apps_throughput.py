"""Apps throughput through Chromium over loopback, in one run with its yardsticks:

- files download (to memory: a Blob) and upload (default 50 MB) through the
  browser UI, real twistd coordinator + home server;
- (a) the raw aiortc <-> Chromium datachannel ceiling, same size, no app
  protocol (``bench._rawpeer``, an aiortc peer set up as the home server's;
  Chromium does the signaling through page.evaluate);
- (b) ``ssh cat`` of the same file, both ways, to a local sshd (key auth);
- terminal echo latency (keypress to the echo rendered by xterm.js), through
  the terminal app against the same sshd (password sign-in);
- the home server's RSS during a large download (default 1 GiB) to a slow
  reader (an aiortc client that reads at --slow-rate).

    tests/netns-run python -m bench.apps_throughput [--size-mb 50] [--rss-mb 1024]

Needs root (useradd for the sshd test user).  Prints figures; no assertions.
"""

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.connect_latency import CHROMIUM_ARGS, daemons, fmt
from bench._rawpeer import MB, RawChannel


# -- sshd with a test user (password for the terminal, key for ssh cat) --------------


class Sshd:
    def __init__(self, tmp):
        self.tmp = tmp
        self.user = "hcb" + secrets.token_hex(3)
        self.password = secrets.token_urlsafe(12)
        self.port = None
        self.proc = None

    def __enter__(self):
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if os.geteuid() != 0:
            sys.exit("the bench creates a test user with useradd: run it as root in tests/netns-run")
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", self.user], check=True)
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}".encode(), check=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        d = os.path.join(self.tmp, "ssh")
        os.makedirs(d)
        os.chmod(self.tmp, 0o755)
        os.chmod(d, 0o755)
        self.host_key = os.path.join(d, "host")
        self.client_key = os.path.join(d, "client")
        for k in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
        auth = os.path.join(d, "authorized_keys")
        shutil.copy(self.client_key + ".pub", auth)
        os.chmod(auth, 0o644)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        cfg = os.path.join(d, "sshd_config")
        with open(cfg, "w") as f:
            f.write(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {d}/sshd.pid
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {auth}
PermitRootLogin no
StrictModes no
""")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", cfg], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start")
                time.sleep(0.05)

    def ssh(self, command, stdin=None, stdout=None):
        return subprocess.run(
            ["ssh", "-q", "-i", self.client_key, "-p", str(self.port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             f"{self.user}@127.0.0.1", command], stdin=stdin, stdout=stdout, check=True)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(5)
        subprocess.run(["userdel", "-r", self.user], stderr=subprocess.DEVNULL)


def ssh_cat(sshd, path, size):
    t0 = time.perf_counter()
    sshd.ssh(f"cat {path}", stdout=subprocess.DEVNULL)
    down = size / (time.perf_counter() - t0) / MB
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        sshd.ssh("cat > /dev/null", stdin=f)
        up = size / (time.perf_counter() - t0) / MB
    return down, up


# -- browser helpers (async Playwright) -----------------------------------------------


async def open_session(page, pair):
    from daemons import PASSWORD
    await page.goto(pair.link)
    card = page.locator("#add-link")
    await card.get_by_role("button", name="Add server").click()
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Connect").click()
    await page.get_by_role("button", name="Disconnect").wait_for(timeout=30000)


# Where the files app saves a download (static/js/apps/savefile.js picks the first
# the browser has): "memory" (a Blob: the in-memory figure), "picker" (the save
# picker, backed here by the origin-private file system: headless Chromium cannot
# show the real one) or "stream" (the service worker stream to the browser's
# download manager).
CHOOSE_SINK = """(kind) => {
  delete window.showSaveFilePicker;
  delete Window.prototype.showSaveFilePicker;
  delete navigator.serviceWorker;
  if (kind === "memory") Object.defineProperty(navigator, "serviceWorker", {value: undefined, configurable: true});
  if (kind === "picker") window.showSaveFilePicker = async ({suggestedName}) =>
    (await navigator.storage.getDirectory()).getFileHandle(suggestedName, {create: true});
}"""


async def choose_sink(page, kind):
    await page.evaluate(CHOOSE_SINK, kind)


async def files_panel(page):
    await page.get_by_role("tab", name="Files").click()
    panel = page.locator(".app-files")
    await panel.locator(".files-table").wait_for()
    return panel


# Resolves (on the page's clock) when the transfer row *i* satisfies *cond*; checked
# on every DOM change of the files panel, so at the change itself (Playwright's own
# waits back off up to 500 ms; polling every animation frame instead would keep the
# page rendering 60 frames a second, CPU taken from the transfer being measured).
WAIT_ROW = """([i, cond, n]) => new Promise((resolve) => {
  const panel = document.querySelector('.app-files');
  const check = () => {
    const li = panel.querySelectorAll('.transfer')[i];
    const ok = li && (cond === 'bytes' ? li.querySelector('progress').value >= n
                                      : li.classList.contains('done') || li.classList.contains('failed'));
    if (ok) { observer.disconnect(); resolve([performance.now(), li.className, li.textContent]); }
  };
  const observer = new MutationObserver(check);
  observer.observe(panel, {subtree: true, childList: true, attributes: true, characterData: true});
  check();
})"""


async def app_download(page, name, size):
    """Click Download; returns (MB/s to the last byte, MB/s to 'SHA-256 verified')."""
    panel = await files_panel(page)
    before = await panel.locator(".transfer").count()
    row = panel.locator(".files-table tbody tr").filter(has=page.get_by_text(name, exact=True))
    if not await row.count():
        await panel.get_by_role("button", name="Refresh").click()
    await row.wait_for()
    t0 = await row.get_by_role("button", name="Download").evaluate(
        "(b) => { const t = performance.now(); b.click(); return t; }")
    t_bytes, _, _ = await page.evaluate(WAIT_ROW, [before, "bytes", size])
    t_end, cls, text = await page.evaluate(WAIT_ROW, [before, "end", size])
    if "done" not in cls:
        raise RuntimeError(f"download failed: {text}")
    return size / (t_bytes - t0) * 1000 / MB, size / (t_end - t0) * 1000 / MB


async def app_upload(page, src, size):
    """Pick *src* for upload; MB/s (page clock) from the file picked to the server's RES."""
    panel = await files_panel(page)
    before = await panel.locator(".transfer").count()
    picker = panel.locator("input[type=file]")
    await picker.evaluate("(i) => i.addEventListener('change', () => { window.__hcPicked = "
                          "performance.now(); }, {once: true, capture: true})")
    await picker.set_input_files(src)
    t_end, cls, text = await page.evaluate(WAIT_ROW, [before, "end", size])
    if "done" not in cls:
        raise RuntimeError(f"upload failed: {text}")
    t0 = await page.evaluate("window.__hcPicked")
    return size / (t_end - t0) * 1000 / MB


# Keypress to echo: [parsed by xterm.js, rendered] in ms, per key.
# (Each key waits for its own echo, the cursor one column on, and a line cleared with
# Ctrl-U for the cursor back at the prompt: over a long link an echo still on its way
# must not count for the next key.)
TERMINAL_ECHO = """async (n) => {
  const term = window.__hcTerminal, out = [], cursor = () => term.buffer.active.cursorX;
  const until = (pred) => new Promise((resolve) => {
    if (pred()) { resolve(performance.now()); return; }
    const d = term.onWriteParsed(() => { if (pred()) { d.dispose(); resolve(performance.now()); } });
  });
  const nextRender = () => new Promise((r) => { const d = term.onRender(() => { d.dispose(); r(performance.now()); }); });
  const x0 = cursor();
  for (let i = 0; i < n; i++) {
    const x = cursor();
    const t0 = performance.now();
    const echoed = until(() => cursor() === x + 1);
    const rendered = echoed.then(nextRender);
    term.input("x", true);
    const [parsed, drawn] = await Promise.all([echoed, rendered]);
    out.push([parsed - t0, drawn - t0]);
    await new Promise((r) => setTimeout(r, 20));
    if (i % 20 === 19) { term.input("\\x15", true); await until(() => cursor() === x0); }
  }
  term.input("\\x15", true);
  await until(() => cursor() === x0);
  return out;
}"""


async def terminal_echo(page, account, n, sign_in=True):
    """Keypress to echo in the Terminal tab, signing in as *account* (``.user``,
    ``.password``) first: ``[(parsed ms, rendered ms)]``."""
    await page.get_by_role("tab", name="Terminal").click()
    await page.locator(".app-terminal .xterm").wait_for()
    if not sign_in:
        return await page.evaluate(TERMINAL_ECHO, n)

    async def wait_for(text, timeout=20):
        deadline = time.monotonic() + timeout
        js = """(t) => { const b = window.__hcTerminal && window.__hcTerminal.buffer.active; if (!b) return false;
          let s = ""; for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + "\\n";
          return s.includes(t); }"""
        while not await page.evaluate(js, text):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{text!r} not seen in the terminal")
            await asyncio.sleep(0.05)

    await wait_for("login as:")
    await page.keyboard.type(account.user + "\r")
    await wait_for("password:")
    await page.keyboard.type(account.password + "\r")
    await wait_for("$ ")
    await asyncio.sleep(0.3)
    return await page.evaluate(TERMINAL_ECHO, n)


# -- RSS during a large download to a slow reader ----------------------------------------


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def slow_download_rss(pair, pid, name, size, rate):
    from daemons import PASSWORD
    from homechannel.client import session
    from homechannel.protocol import frames

    pc, control, hello = await session.connect(
        pair.url, pair.server_key.text, PASSWORD, coordinator_key=pair.coordinator_key.text,
        advertise_addresses=["127.0.0.1"])
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.monotonic(), rss_kib(pid)))
            stop.wait(0.5)

    try:
        ch = pc.createDataChannel("app:files:rss")
        done = asyncio.get_running_loop().create_future()
        state = {"got": 0, "t0": None}

        @ch.on("message")
        def on_message(m):
            if isinstance(m, str):
                return
            f = frames.decode(m)
            if f.type == frames.DATA:
                if state["t0"] is None:
                    state["t0"] = time.monotonic()
                state["got"] += len(f.data)
                # the slow reader: never faster than *rate* (blocks this loop, so SCTP
                # acknowledgements slow down too, as with a slow consumer)
                ahead = state["t0"] + state["got"] / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            elif f.type in (frames.END, frames.ERR) and not done.done():
                done.set_result(f)

        opened = asyncio.Event()
        ch.on("open", opened.set)
        await asyncio.wait_for(opened.wait(), 20)
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        base = rss_kib(pid)
        ch.send(frames.encode(frames.REQ, 1, {"op": "download", "root": 0, "path": name}))
        t0 = time.monotonic()
        end = await asyncio.wait_for(done, 3600)
        elapsed = time.monotonic() - t0
        stop.set()
        t.join()
        return base, samples, end, state["got"], elapsed
    finally:
        stop.set()
        await pc.close()


# -- main ------------------------------------------------------------------------------------


async def run(args, tmp):
    from playwright.async_api import async_playwright

    size = args.size_mb * MB
    rss_size = args.rss_mb * 1024 * 1024
    with Sshd(tmp) as sshd, daemons(
            os.path.join(tmp, "pair"),
            server_extra={"apps": {"terminal": {"port": sshd.port}}}) as (pair, coord, server):
        src = os.path.join(pair.files_root, "bench.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        os.chmod(src, 0o644)
        up_src = os.path.join(tmp, "upload.bin")
        shutil.copy(src, up_src)
        os.chmod(up_src, 0o644)
        with open(os.path.join(pair.files_root, "huge.bin"), "wb") as f:
            f.truncate(rss_size)

        print(f"files: {args.size_mb} MB, loopback, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; {args.rounds} interleaved rounds, medians")
        res = {k: [] for k in ("app_down", "app_verified", "app_up", "raw_down", "raw_up",
                               "ssh_down", "ssh_up")}
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"),
                                              headless=True, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            await open_session(page, pair)
            await choose_sink(page, "memory")
            raw = await RawChannel().open(browser, pair.url, advertise=["127.0.0.1"])
            for i in range(args.rounds):
                d, v = await app_download(page, "bench.bin", size)
                res["app_down"].append(d)
                res["app_verified"].append(v)
                res["raw_down"].append(await raw.down(size))
                up = os.path.join(tmp, f"upload-{i}.bin")
                os.link(up_src, up)
                res["app_up"].append(await app_upload(page, up, size))
                res["raw_up"].append(await raw.up(size))
                d, u = ssh_cat(sshd, src, size)
                res["ssh_down"].append(d)
                res["ssh_up"].append(u)
                print(f"  round {i + 1}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()))
            await raw.close()
            echo = [rendered for _, rendered in await terminal_echo(page, sshd, args.echo)]
            await browser.close()
        m = {k: statistics.median(v) for k, v in res.items()}
        app_down, app_up, raw_down, raw_up = m["app_down"], m["app_up"], m["raw_down"], m["raw_up"]
        ssh_down, ssh_up = m["ssh_down"], m["ssh_up"]

        print()
        print(f"{'':34s}{'download':>10s}{'upload':>10s}   (MB/s, medians)")
        print(f"{'files app through Chromium':34s}{app_down:10.1f}{app_up:10.1f}")
        print(f"{'  download incl. SHA-256 check':34s}{m['app_verified']:10.1f}")
        print(f"{'(a) raw aiortc<->Chromium channel':34s}{raw_down:10.1f}{raw_up:10.1f}")
        print(f"{'(b) ssh cat over loopback':34s}{ssh_down:10.1f}{ssh_up:10.1f}")
        print(f"{'files app / raw ceiling':34s}{app_down / raw_down:10.0%}{app_up / raw_up:10.0%}"
              "   (target >= 80%)")
        print(f"{'files app / ssh':34s}{app_down / ssh_down:10.0%}{app_up / ssh_up:10.0%}")
        print()
        print(f"terminal echo, keypress to rendered echo   {fmt(echo)}")
        print()
        rate = args.slow_rate * MB
        print(f"home server RSS during a {args.rss_mb} MiB download to a reader capped at "
              f"{args.slow_rate} MB/s ...")
        base, samples, end, got, elapsed = await slow_download_rss(
            pair, server.proc.pid, "huge.bin", rss_size, rate)
        rss = [r for _, r in samples]
        n = len(rss)
        q = [rss[:n // 4], rss[n // 4:n // 2], rss[n // 2:3 * n // 4], rss[3 * n // 4:]]
        print(f"  received {got / 2**20:.0f} MiB in {elapsed:.1f} s ({got / elapsed / MB:.1f} MB/s); "
              f"end frame {frames_name(end)}")
        print(f"  RSS before {base / 1024:.1f} MiB; during: min {min(rss) / 1024:.1f}, "
              f"max {max(rss) / 1024:.1f} MiB; median per quarter: "
              + ", ".join(f"{statistics.median(x) / 1024:.1f}" for x in q if x) + " MiB")


def frames_name(f):
    from homechannel.protocol import frames
    return f"{frames.TYPES.get(f.type)} {f.body}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--rss-mb", type=int, default=1024, help="MiB for the slow-reader download")
    ap.add_argument("--slow-rate", type=float, default=12.0, help="slow reader's MB/s")
    ap.add_argument("--echo", type=int, default=60, help="terminal echo samples")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, tmp))
    print(f"(bench took {time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
