"""``homechannel forward`` end to end: real twistd coordinator and home server,
the native client as a subprocess (``python -m homechannel.cli forward``), and
real TCP services behind the home server (an echo server; sshd with key auth
for the ``--stdio`` ProxyCommand mode).  Runs inside tests/netns-run."""

import hashlib
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time

import pytest

import services
from helpers import REPO, free_tcp_port, require_tool
from daemons import PASSWORD, make_pair

ECHO_BYTES = 5 * 1024 * 1024


# -- helpers ----------------------------------------------------------------------------


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1 (closes when the peer closes)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
                except OSError:
                    return

    def close(self):
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def start_daemons(twistd, tmp_path, ports):
    pair = make_pair(tmp_path, server_extra={
        "apps": {"forward": {"enabled": True, "ports": list(ports)}}})
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator", timeout=20)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    return pair, coordinator, server, str(password_file)


def forward_cmd(pair, password_file, port, *mode):
    return [sys.executable, "-m", "homechannel.cli", "forward",
            "--server", pair.link, "--coordinator-key", pair.coordinator_key.text,
            "--password-file", password_file, "--advertise-address", "127.0.0.1",
            "--port", str(port), *mode]


def client_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Forward:
    """``homechannel forward --listen`` as a child process, stderr collected."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=client_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.decode("utf-8", "replace"))

    @property
    def output(self):
        return "".join(self.lines)

    def wait_for(self, pattern, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output)
            if m:
                return m
            if self.proc.poll() is not None:
                self._reader.join(5)
                m = re.search(pattern, self.output)
                if m:
                    return m
                break
            time.sleep(0.05)
        pytest.fail(f"forward did not print {pattern!r} (status {self.proc.poll()}):\n"
                    + self.output)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def forwards():
    started = []

    def start(cmd):
        f = Forward(cmd)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()
        print(f"--- homechannel forward (exit status {f.proc.returncode}) ---\n{f.output}")


def echo_round_trip(port, payload, timeout=120):
    """Send *payload* through 127.0.0.1:*port* while reading it back; return what came back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = bytearray()
    errors = []

    def send():
        try:
            view = memoryview(payload)
            for i in range(0, len(payload), 100_000):
                sock.sendall(view[i:i + 100_000])
        except OSError as e:
            errors.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        while len(received) < len(payload):
            data = sock.recv(262144)
            if not data:
                break
            received += data
    finally:
        sender.join(timeout)
        sock.close()
    assert not errors, errors
    return bytes(received)


# -- the tests ------------------------------------------------------------------------------


def test_listen_echoes_5_mb_byte_identical(tmp_path, twistd, forwards, echo):
    pair, coordinator, server, password_file = start_daemons(twistd, tmp_path, [echo.port])
    listen = free_tcp_port()
    fwd = forwards(forward_cmd(pair, password_file, echo.port, "--listen", f"127.0.0.1:{listen}"))
    fwd.wait_for(rf"forwarding 127\.0\.0\.1:{listen} to port {echo.port}")

    payload = os.urandom(ECHO_BYTES)
    start = time.monotonic()
    back = echo_round_trip(listen, payload)
    elapsed = time.monotonic() - start
    assert len(back) == len(payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    print(f"5 MB echoed through the forward in {elapsed:.2f} s")
    # Closing the local socket closes the channel, and the home server's TCP connection.
    fwd.wait_for(rf"app:forward:1 .*closed \({ECHO_BYTES} bytes out, {ECHO_BYTES} bytes in\)",
                 timeout=15)

    # A second local connection gets its own channel over the same peer connection.
    assert echo_round_trip(listen, b"second connection\n") == b"second connection\n"
    fwd.wait_for(r"app:forward:2 .*closed", timeout=15)
    assert echo.connections == 2
    assert server.output.count("login accepted") == 1
    assert fwd.proc.poll() is None
    assert "Traceback" not in fwd.output + server.output


def test_port_not_allowed_is_a_clear_error(tmp_path, twistd, echo):
    pair, coordinator, server, password_file = start_daemons(twistd, tmp_path, [echo.port])
    other = free_tcp_port()
    for mode in (["--listen", f"127.0.0.1:{free_tcp_port()}"], ["--stdio"]):
        proc = subprocess.run(forward_cmd(pair, password_file, other, *mode), cwd=REPO,
                              env=client_env(), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=90)
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert f"does not forward port {other} (allowed: {echo.port})" in err
        assert "Traceback" not in err


def test_home_server_refusal_and_connect_failure_are_clear(tmp_path, twistd, forwards, echo):
    """The server's own checks (not just the client's early hello check): a port
    the server allows but nothing listens on gives connect_failed; the local
    connection is closed and the forward keeps serving."""
    dead = free_tcp_port()
    pair, coordinator, server, password_file = start_daemons(
        twistd, tmp_path, [echo.port, dead])
    listen = free_tcp_port()
    fwd = forwards(forward_cmd(pair, password_file, dead, "--listen", f"127.0.0.1:{listen}"))
    fwd.wait_for(rf"forwarding 127\.0\.0\.1:{listen} to port {dead}")
    sock = socket.create_connection(("127.0.0.1", listen), timeout=30)
    assert sock.recv(10) == b""   # closed by the client after the refusal
    sock.close()
    fwd.wait_for(rf"could not connect to its port {dead}: .*is it running\?")
    assert fwd.proc.poll() is None

    # --stdio: the same refusal ends the process with status 1 and the message.
    proc = subprocess.run(forward_cmd(pair, password_file, dead, "--stdio"), cwd=REPO,
                          env=client_env(), stdin=subprocess.PIPE, capture_output=True,
                          timeout=90)
    assert proc.returncode == 1, proc.stderr.decode()
    assert f"could not connect to its port {dead}" in proc.stderr.decode()


def test_server_refuses_port_itself(tmp_path, twistd, echo):
    """Bypass the client's early check: the home server's port_not_allowed reply."""
    import asyncio

    from homechannel.client import forward, session

    pair, coordinator, server, password_file = start_daemons(twistd, tmp_path, [echo.port])
    other = free_tcp_port()

    async def main():
        pc, control, hello = await session.connect(
            pair.url, pair.server_key.text, PASSWORD, pair.coordinator_key.text,
            advertise_addresses=("127.0.0.1",), timeout=30)
        try:
            pipe = forward.ForwardPipe(pc, 1, other)
            await pipe.open(15)
        finally:
            await pc.close()

    with pytest.raises(forward.ForwardRefused, match=rf"refused port {other}: port {other} "
                                                     r"is not forwarded by this server"):
        asyncio.run(asyncio.wait_for(main(), 90))


# -- ssh through --stdio ----------------------------------------------------------------------


@pytest.fixture
def sshd_keyauth(tmp_path):
    """sshd on a loopback port, key authentication only, for a fresh test user."""
    with services.local_user("hcf") as user:
        key = services.authorize_key(user, tmp_path)
        with services.sshd(tmp_path, password_auth=False) as port:
            yield {"port": port, "user": user, "key": key, "log": tmp_path / "sshd.log"}


def test_ssh_proxycommand_stdio(tmp_path, twistd, sshd_keyauth):
    ssh = require_tool("ssh", "openssh-client")
    pair, coordinator, server, password_file = start_daemons(
        twistd, tmp_path, [sshd_keyauth["port"]])
    proxy = " ".join(shlex.quote(a) for a in forward_cmd(
        pair, password_file, sshd_keyauth["port"], "--stdio"))
    ssh_config = tmp_path / "ssh_config"   # no user or system ssh_config
    ssh_config.write_text("")
    cmd = [ssh, "-F", str(ssh_config), "-o", f"ProxyCommand={proxy}",
           "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path}/known_hosts",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=60",
           "-i", sshd_keyauth["key"], f"{sshd_keyauth['user']}@homechannel",
           "echo HC-$((6*7))"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=client_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=120)
    elapsed = time.monotonic() - start
    err = proc.stderr.decode()
    assert proc.returncode == 0, err + "\n--- sshd ---\n" + sshd_keyauth["log"].read_text()
    assert proc.stdout.decode().strip() == "HC-42"
    print(f"ssh through --stdio in {elapsed:.2f} s")
    assert "Accepted publickey for " + sshd_keyauth["user"] in sshd_keyauth["log"].read_text()
    assert server.output.count("login accepted") == 1
    assert "Traceback" not in err + server.output
