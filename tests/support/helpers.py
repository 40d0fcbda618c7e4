"""Helpers shared by HomeChannel's tests (import them: ``from helpers import ...``).

- ``REPO``: the checkout; ``SUPPORT``: this directory (on the ``PYTHONPATH`` of a
  child that imports these modules); ``TWISTD``: the command line of ``twistd`` in this venv;
  ``TAPNAMES``: the tapnames of the two twistd plugins;
  ``CHROMIUM_ARGS``: the flags Chromium needs for WebRTC in a loopback-only netns.
- ``in_ci()``: true when ``$CI`` is set (and not "0"/"false").
- ``require_tool(name, package) -> str``: path of an executable; when it is
  missing, ``pytest.fail`` in CI and ``pytest.skip`` elsewhere, naming the
  Debian package.  ``require_module(name, advice)``: the same for a Python module.
- ``free_tcp_port()`` / ``free_udp_port()``: an unused port on 127.0.0.1.
- ``write_toml(path, dict)``: write a config file (nested dicts are tables).
- ``self_signed_cert(directory, name="127.0.0.1") -> (key path, cert path)``: a
  fresh P-256 key and a self-signed certificate (PEM) valid for a day, for
  ``ssl:`` endpoints.
- ``loopback_only()``: whether this process's network namespace has only ``lo``.
- ``Twistd(tapname, config, asyncio=False, cwd=None, env=None, args=(), prefix=(),
  python=None)``: a real ``twistd --nodaemon`` child (*prefix*: e.g. ``ip netns exec
  NS``; *python*: run it from another venv); ``.wait_for_log(pattern, timeout)``,
  ``.mark()``, ``.output``, ``.stop()``.

The fixtures (``twistd``, ``chromium``, ``chromium_page``, ``sshd``) are in
``tests/e2e/conftest.py``, the session hooks in ``tests/conftest.py``.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

# tests/support/helpers.py: the checkout is two directories up.
SUPPORT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(SUPPORT))

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

TAPNAMES = ("homechannel-coordinator", "homechannel-server")

# ``python -m twisted`` is the ``twist`` runner, not ``twistd``.
TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name, package):
    """Return the path of *name*; fail in CI, skip elsewhere, when it is missing."""
    path = shutil.which(name)
    if path is None and os.path.isabs(name) and os.access(name, os.X_OK):
        path = name
    if path is None:
        msg = f"{name} not found: install the Debian package {package!r} (make sysdeps)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_module(name, advice):
    """Import and return module *name*; fail in CI, skip elsewhere (the whole
    module when called at import time), when it is missing (*advice* says how
    to install it)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        msg = f"{name} is not installed: {advice}"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg, allow_module_level=True)


def free_tcp_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_port(host="127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(check, timeout=20.0, what="condition"):
    """Poll *check* every 0.1 s until it returns something true (returned), or fail
    naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def write_toml(path, data: dict):
    """Write *data* (nested dicts are tables) as TOML to *path*; return *path*."""
    from homechannel.testing.local import write_toml as _write
    _write(os.fspath(path), data)
    return path


def self_signed_cert(directory, name="127.0.0.1"):
    """Write ``key.pem`` and ``cert.pem`` (self-signed for *name*) into
    *directory*; return their paths as strings."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_path = os.path.join(os.fspath(directory), "key.pem")
    cert_path = os.path.join(os.fspath(directory), "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def loopback_only() -> bool:
    """True when this process's network namespace has only ``lo``.

    (``/sys/class/net`` shows the namespace sysfs was mounted in, so ask the
    kernel instead.)
    """
    return [name for _, name in socket.if_nameindex()] == ["lo"]


# -- twistd child processes --------------------------------------------------


class Twistd:
    """A real ``twistd --nodaemon <tapname> --config <file>`` child process.

    Output (stdout and stderr, merged) is collected on a thread into
    ``.output``.  Always call ``stop()`` (the ``twistd`` fixture does).
    """

    def __init__(self, tapname, config, asyncio=False, cwd=None, env=None, args=(),
                 prefix=(), python=None):
        self.tapname = tapname
        # *python*: another interpreter (an installed venv); then the checkout is
        # not put on its path.
        self.cmd = list(prefix) + ([python] + TWISTD[1:] if python else list(TWISTD)) + \
            ["--nodaemon", "--pidfile="]
        if asyncio:
            self.cmd.append("--reactor=asyncio")
        self.cmd += [tapname, "--config", os.fspath(config), *args]
        self.cwd = os.fspath(cwd) if cwd else os.path.dirname(os.path.abspath(config))
        self.env = dict(os.environ)
        # A config without state_dir must not touch ~/.config/homechannel.
        self.env["XDG_CONFIG_HOME"] = os.path.join(self.cwd, ".config")
        self.env.pop("STATE_DIRECTORY", None)
        self.env.update(env or {})
        self.env["PYTHONUNBUFFERED"] = "1"
        if python:
            self.env.pop("PYTHONPATH", None)
        else:
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [REPO, self.env.get("PYTHONPATH")]))
        self._chunks = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.proc = None
        self._reader = None

    def start(self):
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"twistd-{self.tapname}")
        self._reader.start()
        return self

    def _read(self):
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            with self._changed:
                if data:
                    self._chunks.append(data.decode("utf-8", "replace"))
                self._changed.notify_all()
            if not data:
                return

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def mark(self) -> int:
        """The current output length: pass it as ``since`` to wait for new lines only."""
        return len(self.output)

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def wait_for_log(self, pattern, timeout=30.0, since=0):
        """Wait until *pattern* (regex string or compiled) appears in the output.

        Returns the ``re.Match``.  Fails the test, showing the output, on
        timeout or if the process exits first.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                m = rx.search("".join(self._chunks), since)
                if m:
                    return m
                exited = self.proc.poll() is not None and not self._reader.is_alive()
                left = deadline - time.monotonic()
                if exited or left <= 0:
                    break
                self._changed.wait(min(left, 0.2))
        why = (f"exited with status {self.proc.returncode}" if exited
               else f"did not log it within {timeout}s")
        pytest.fail(f"{self.tapname} {why}: waiting for {rx.pattern!r}\n"
                    f"--- {self.tapname} output ---\n{self.output[-8000:]}")

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after *timeout*; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


