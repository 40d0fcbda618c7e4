"""``make run``: a coordinator and a home server on this machine, for trying HomeChannel.

``python -m homechannel.demo`` keeps its state in ``.run/`` (or
``$HOMECHANNEL_RUN_DIR``): both identity keys (created once, never
replaced), a random demo password, the derived password key, both TOML
configurations and a demo folder ``files/`` that the files app serves.  It
starts the coordinator as a ``twistd`` child process, waits until it
listens (its UDP port answers a STUN Binding request and its web port
``/healthz``), then starts the home server the same way and waits until it has
registered.  Then the first thing it prints is a short banner: the link to
open, the password, where the logs are, and "Ctrl-C to stop".  The daemons'
logs go to ``.run/coordinator.log`` and ``.run/server.log`` (new each run);
``--verbose`` (``make run V=1``) streams them to the terminal too.  Ctrl-C
stops both children; when one exits early, the end of its log is printed.

Ports can be changed with ``HOMECHANNEL_WEB_PORT`` (8080),
``HOMECHANNEL_UDP_PORT`` (7777) and ``HOMECHANNEL_METRICS_PORT`` (9477 for the
coordinator's metrics, the next one for the home server's).  The admin API is
the coordinator's UNIX socket ``.run/coordinator/admin.sock``.

Only one demo runs per state directory (``.run/demo.lock``); a second one
says so and exits.  The children die with the demo even if it is killed
(``PR_SET_PDEATHSIG``).  The terminal app is enabled only when something listens
on 127.0.0.1:22 (sshd), the desktop app only when a VNC server listens at
``$HOMECHANNEL_VNC`` (``HOST:PORT`` or ``unix:/path``; default 127.0.0.1:5900),
which becomes its ``[apps.desktop] endpoint``.

The demo password is kept in clear in ``.run/password.txt`` (mode 0600) so
that later runs can show it again; a real home server stores only the
derived key (``homechannel passwd``).
"""

import argparse
import ctypes
import fcntl
import os
import re
import secrets
import socket
import signal
import subprocess
import sys
import time
import urllib.request

REGISTERED = re.compile(r"registered with coordinator")
# How many lines of a daemon's log to show when it exits early or does not start.
TAIL_LINES = 30


# -- state ------------------------------------------------------------------


def _port(name, default):
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        port = int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SystemExit(f"{name}={value!r} is not a port number")
    return port


def listening(host, port, timeout=0.3):
    """True when something accepts TCP connections on (host, port)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


VNC_ENV = "HOMECHANNEL_VNC"
DEFAULT_VNC = "127.0.0.1:5900"


def vnc_endpoint(environ=os.environ):
    """Where the demo looks for a VNC server: ``$HOMECHANNEL_VNC`` or 127.0.0.1:5900."""
    return environ.get(VNC_ENV) or DEFAULT_VNC


def serving(endpoint, check=listening, timeout=0.3):
    """True when something accepts connections at *endpoint* (``HOST:PORT`` or
    ``unix:/path``); False for one that does not parse."""
    from homechannel.config import parse_local_endpoint
    from homechannel.errors import ConfigError

    try:
        address = parse_local_endpoint(endpoint, VNC_ENV)
    except ConfigError:
        return False
    if address[0] == "tcp":
        return check(address[1], address[2])
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        try:
            s.connect(address[1])
        except OSError:
            return False
    return True


def available_apps(check=listening, environ=os.environ):
    """``{app: reason it is off, or None}`` for the apps that need a local service."""
    vnc = vnc_endpoint(environ)
    return {
        "terminal": None if check("127.0.0.1", 22) else
        "no sshd listens on 127.0.0.1:22 (start sshd, then make run again)",
        "desktop": None if serving(vnc, check) else
        f"no VNC server listens at {vnc} (start one, e.g. Xtigervnc or x11vnc, or set "
        f"{VNC_ENV} to where yours listens, HOST:PORT or unix:/path; then make run again)",
    }


def prepare(run_dir, web_port=8080, udp_port=7777, metrics_port=9477, apps=None, say=print,
            vnc=DEFAULT_VNC):
    """Create or reuse the demo state in *run_dir*; write both configs
    (:func:`homechannel.testing.local.write_pair`, with the keys in *run_dir*).

    *apps* maps "terminal"/"desktop" to the reason they are off (None: on);
    default: all on, the desktop app with the VNC server at *vnc*.  *say* shows
    progress (a slow first key derivation).
    Returns ``(coordinator_toml, server_toml, link, password)``.
    """
    from homechannel import default_static_dir
    from homechannel.keyfiles import replace_secret_file
    from homechannel.testing.local import write_pair

    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    files = os.path.join(run_dir, "files")
    if not os.path.isdir(files):
        os.makedirs(files)
        with open(os.path.join(files, "hello.txt"), "w") as f:
            f.write("Hello from your HomeChannel demo server.\n")

    password_txt = os.path.join(run_dir, "password.txt")
    password = None
    if os.path.exists(password_txt):
        with open(password_txt, encoding="utf-8") as f:
            password = f.read().strip() or None
    if password is None:
        password = secrets.token_urlsafe(12)
        replace_secret_file(password_txt, (password + "\n").encode())
        if os.path.exists(os.path.join(run_dir, "password.json")):
            os.unlink(os.path.join(run_dir, "password.json"))

    apps = apps or {}
    tables = {name: {"enabled": reason is None} for name, reason in apps.items()}
    if apps.get("desktop") is None:
        tables["desktop"] = {"enabled": True, "endpoint": vnc}
    pair = write_pair(
        run_dir, web_port=web_port, udp_port=udp_port, password=password,
        metrics_port=metrics_port, server_metrics_port=metrics_port + 1,
        static_dir=default_static_dir(), keys_dir=run_dir, keep_password_key=True, say=say,
        server_extra={"apps": tables})
    return pair.coordinator_config, pair.server_config, pair.link, password


def _port_busy(port, kind):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# -- child processes --------------------------------------------------------


# ``python -m twisted`` is the newer ``twist`` runner, not ``twistd``.
TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def twistd_command(tapname, config, asyncio=False):
    cmd = TWISTD + ["--nodaemon", "--pidfile="]
    if asyncio:
        cmd.append("--reactor=asyncio")
    return cmd + [tapname, "--config", config]


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid):
    """preexec_fn: the child gets SIGTERM when the demo dies, however it dies."""
    def preexec():
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:      # the demo died before prctl
            os._exit(1)
    return preexec


class AlreadyRunning(Exception):
    pass


def lock(run_dir):
    """Hold ``run_dir/demo.lock`` (with our pid) for as long as we live.

    The kernel drops the lock when we die, however we die; a second demo finds
    it held and gets :class:`AlreadyRunning` with the first one's pid."""
    path = os.path.join(run_dir, "demo.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(pid) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def stun_answers(host, port, timeout=0.3):
    """True when a STUN Binding request to UDP (host, port) gets a Binding success
    response: the coordinator's UDP port is served (RFC 5389; STUN is on in the
    demo's coordinator)."""
    txid = secrets.token_bytes(12)
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + txid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(request, (host, port))
            data = s.recv(2048)
        except OSError:         # timeout, or ICMP port unreachable: nothing there yet
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == txid


def healthy(url, timeout=0.5):
    """True when GET *url* answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def tail(path, lines=TAIL_LINES):
    """The last *lines* lines of the file at *path* ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """A twistd child whose output goes to a log file of its own (new each run).

    :meth:`poll` reads what the child wrote since the last call, copies it to
    our stdout with a prefix when *echo* is set, and remembers whether a line
    matched *pattern*."""

    def __init__(self, name, cmd, cwd, log_path, pattern=None, echo=False):
        self.name = name
        self.log_path = log_path
        self.pattern = pattern
        self.echo = echo
        self.seen = False
        self._offset = 0
        self._partial = b""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Make sure twistd finds twisted/plugins/ of this checkout (homechannel/demo/
        # is two levels below it).
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def poll(self):
        """Read the log's new complete lines; the child's exit status, or None."""
        status = self.proc.poll()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            data = b""
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if self.echo:
                print(f"[{self.name}] {line}", flush=True)
            if self.pattern is not None and self.pattern.search(line):
                self.seen = True
        return status

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.poll()
        return self.proc.returncode


class Failed(Exception):
    """The demo cannot go on; ``str(e)`` says why (and shows the logs)."""


def _show_path(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _log_tail(child):
    text = tail(child.log_path)
    where = _show_path(child.log_path)
    if not text:
        return f"(its log {where} is empty)"
    return f"the end of its log ({where}):\n{text}"


def _wait(children, done, what, deadline):
    """Poll *children* until ``done()``; :class:`Failed` when one exits or at *deadline*."""
    while not done():
        for child in children:
            status = child.poll()
            if status is not None:
                raise Failed(f"the {child.name} exited (status {status}) before {what}; "
                             + _log_tail(child))
        if time.monotonic() > deadline:
            raise Failed(f"timed out waiting until {what}; "
                         + "\n".join(_log_tail(child) for child in children))
        time.sleep(0.1)


class Progress:
    """What the demo is doing while it starts.  On a terminal, one line that each step
    overwrites and :meth:`done` erases, so the banner is the first thing left on the
    screen; with *verbose*, plain lines among the logs; otherwise nothing."""

    def __init__(self, verbose, stream=sys.stdout):
        self.stream = stream
        self.verbose = verbose
        self.tty = not verbose and stream.isatty()

    def __call__(self, text):
        if self.verbose:
            print(text, file=self.stream, flush=True)
        elif self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def done(self):
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def banner(link, password, logs, verbose, notes):
    """The lines the demo shows once it runs: the link and the password first."""
    lines = [
        f"HomeChannel demo is running: open {link}",
        f"Password: {password}",
        f"Logs: {' and '.join(logs)}" + ("" if verbose else
                                         " (to see them here: make run V=1, or --verbose)"),
        "Ctrl-C to stop.",
    ]
    return "\n".join(lines + list(notes)) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m homechannel.demo",
        description="Start a demo coordinator and home server on 127.0.0.1 (what 'make run' "
                    "does), print the link to open and the password, and stop both on Ctrl-C. "
                    "State and logs: .run/ (HOMECHANNEL_RUN_DIR); ports: HOMECHANNEL_WEB_PORT "
                    "(8080), HOMECHANNEL_UDP_PORT (7777), HOMECHANNEL_METRICS_PORT (9477).")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="stream both daemons' logs to the terminal too (they always go "
                             "to .run/coordinator.log and .run/server.log); make run V=1")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = os.environ.get("HOMECHANNEL_RUN_DIR", ".run")
    web_port = _port("HOMECHANNEL_WEB_PORT", 8080)
    udp_port = _port("HOMECHANNEL_UDP_PORT", 7777)
    metrics_port = _port("HOMECHANNEL_METRICS_PORT", 9477)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    try:
        lock_fd = lock(run_dir)  # noqa: F841  (held until we exit)
    except AlreadyRunning as e:
        print(f"a HomeChannel demo is already running from {os.path.abspath(run_dir)} "
              f"(pid {e}): use that one, or stop it (Ctrl-C in its terminal, or "
              f"kill {e}) first", file=sys.stderr)
        return 1
    busy = [f"{what} port {port}" for what, port, kind in (
        ("web", web_port, socket.SOCK_STREAM), ("UDP", udp_port, socket.SOCK_DGRAM))
        if _port_busy(port, kind)]
    if busy:
        print(f"cannot start the demo: {' and '.join(busy)} on 127.0.0.1 in use by another "
              "program (choose others with HOMECHANNEL_WEB_PORT / HOMECHANNEL_UDP_PORT)",
              file=sys.stderr)
        return 1
    status = Progress(args.verbose)
    apps = available_apps()
    coordinator_toml, server_toml, link, password = prepare(
        run_dir, web_port, udp_port, metrics_port, apps, say=status, vnc=vnc_endpoint())
    cwd = os.path.abspath(run_dir)
    logs = {name: os.path.join(cwd, name + ".log") for name in ("coordinator", "server")}

    children = []
    interrupted = False

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        deadline = time.monotonic() + float(os.environ.get("HOMECHANNEL_START_TIMEOUT", "60"))
        status("starting the coordinator...")
        coordinator = Child("coordinator", twistd_command(
            "homechannel-coordinator", coordinator_toml), cwd, logs["coordinator"],
            echo=args.verbose)
        children.append(coordinator)
        # The home server starts once the coordinator answers on both ports: started
        # earlier, its first registration attempts find no one and it warns about a
        # firewall that is not there.
        _wait(children, lambda: stun_answers("127.0.0.1", udp_port) and healthy(
            f"http://127.0.0.1:{web_port}/healthz"), "the coordinator listened", deadline)
        status("starting the home server...")
        server = Child("server", twistd_command(
            "homechannel-server", server_toml, asyncio=True), cwd, logs["server"],
            pattern=REGISTERED, echo=args.verbose)
        children.append(server)
        _wait(children, lambda: server.seen, "the home server registered", deadline)

        status.done()
        notes = [f"the {name} app is off in this demo: {reason}"
                 for name, reason in apps.items() if reason]
        print(banner(link, password, [_show_path(p) for p in logs.values()], args.verbose,
                     notes), end="", flush=True)
        while True:
            for child in children:
                code = child.poll()
                if code is not None:
                    print(f"\nthe {child.name} exited (status {code}); {_log_tail(child)}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except Failed as e:
        status.done()
        print(f"cannot start the demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupted = True
        return 0
    finally:
        if interrupted:
            print("\nstopping...", file=sys.stderr, flush=True)
        for child in reversed(children):
            child.stop()

