"""Real local services for end-to-end tests: sshd with a throwaway user, and
Xtigervnc.  Each is a context manager that starts the service on a free
loopback port, waits until it accepts connections, and always cleans up.
Missing tools fail in CI and skip elsewhere (``helpers.require_tool``)."""

import contextlib
import os
import re
import secrets
import socket
import subprocess
import time

import pytest

from helpers import REPO, free_tcp_port, free_udp_port, require_tool


_PROBE = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()"


def wait_for_port(proc, port, what, log_text, timeout=15.0, prefix=()):
    """Wait until 127.0.0.1:*port* accepts (in the network namespace *prefix* runs
    commands in, e.g. ``ip netns exec NS``), or fail with the service's log."""
    import sys

    deadline = time.monotonic() + timeout
    while True:
        try:
            if prefix:
                subprocess.run([*prefix, sys.executable, "-c", _PROBE, str(port)], check=True,
                               capture_output=True)
            else:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except (OSError, subprocess.CalledProcessError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"{what} did not start: {log_text()}")
            time.sleep(0.05)


@contextlib.contextmanager
def local_user(prefix, password=None):
    """A fresh local account; with *password* it can sign in with it, else
    only with a key.  Removed (with its home) afterwards."""
    if os.geteuid() != 0:
        pytest.fail("this test creates a user with useradd: run it as root in tests/netns-run")
    user = prefix + secrets.token_hex(3)
    with accounts_lock():
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
    try:
        with accounts_lock():
            if password is not None:
                subprocess.run(["chpasswd"], input=f"{user}:{password}".encode(), check=True)
            else:
                # A locked account ("!") is refused by sshd even for key auth
                # without PAM: give it an unusable but unlocked hash.
                subprocess.run(["usermod", "-p", "*", user], check=True)
        yield user
    finally:
        with accounts_lock():
            subprocess.run(["userdel", "-r", user], stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def accounts_lock():
    """One user-account change at a time across parallel test workers: useradd and
    friends refuse to wait for each other's lock on /etc/passwd ("cannot lock
    /etc/passwd; try again later")."""
    import fcntl

    with open("/tmp/homechannel-tests-accounts.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def sshd(tmp_path, password_auth=True, authorized_key=None, key_auth=None, listen="127.0.0.1",
         prefix=(), port=None):
    """``/usr/sbin/sshd -D -e`` on a loopback port; yields its port.

    *password_auth*: password sign-in (no keys, unless *key_auth*); otherwise key
    sign-in only, with *authorized_key* (a ``.pub`` text) installed for the caller's
    user beforehand.  *listen*: its address (``0.0.0.0`` for a port forward);
    *prefix*: run it in a network namespace (``ip netns exec NS``), on *port*."""
    binary = require_tool("/usr/sbin/sshd", "openssh-server")
    keygen = require_tool("ssh-keygen", "openssh-client")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host_key = tmp_path / "host_ed25519"
    if not host_key.exists():
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                       check=True)
    port = port or free_tcp_port()
    cfg = tmp_path / "sshd_config"
    if key_auth is None:
        key_auth = not password_auth
    yes_no = ("yes" if password_auth else "no", "yes" if key_auth else "no")
    cfg.write_text(f"""Port {port}
ListenAddress {listen}
HostKey {host_key}
PidFile {tmp_path}/sshd.pid
UsePAM no
PasswordAuthentication {yes_no[0]}
KbdInteractiveAuthentication no
PubkeyAuthentication {yes_no[1]}
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
StrictModes no
""")
    log_path = tmp_path / "sshd.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*prefix, binary, "-D", "-e", "-f", str(cfg)], stderr=log)
        try:
            wait_for_port(proc, port, "sshd", log_path.read_text, timeout=10, prefix=prefix)
            yield port
        finally:
            proc.terminate()
            proc.wait(5)


def authorize_key(user, tmp_path):
    """Create a client key pair and authorize it for *user*; return the key path."""
    keygen = require_tool("ssh-keygen", "openssh-client")
    home = f"/home/{user}"
    os.makedirs(f"{home}/.ssh", mode=0o700, exist_ok=True)
    client_key = tmp_path / "id_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
    with open(f"{home}/.ssh/authorized_keys", "w") as f:
        f.write(open(f"{client_key}.pub").read())
    subprocess.run(["chown", "-R", f"{user}:{user}", f"{home}/.ssh"], check=True)
    os.chmod(f"{home}/.ssh/authorized_keys", 0o600)
    return str(client_key)


@contextlib.contextmanager
def xtigervnc(geometry="320x200", unix_path=None, prefix=(), port=None, localhost=True, args=(),
              stderr=None):
    """Xtigervnc without a VNC password on a loopback port; yields (port, display).
    With *unix_path*: on that UNIX socket instead (``-rfbunixpath``, mode 0600, no TCP
    port); yields (unix_path, display).  *prefix*: run it in a network namespace
    (``ip netns exec NS``), on *port*, and listening on every address unless
    *localhost*; *args*: more options; *stderr*: a file for its log (default: a pipe,
    read if it fails to start)."""
    binary = require_tool("Xtigervnc", "tigervnc-standalone-server")
    display = next(n for n in range(60, 200) if not os.path.exists(f"/tmp/.X11-unix/X{n}")
                   and not os.path.exists(f"/tmp/.X{n}-lock"))
    if unix_path is None:
        port = port or free_tcp_port()
        listen = ["-rfbport", str(port), *(["-localhost"] if localhost else [])]
    else:
        listen = ["-rfbunixpath", str(unix_path)]
    proc = subprocess.Popen([*prefix, binary, f":{display}", *listen, "-SecurityTypes", "None",
                             "-geometry", geometry, *args],
                            stdout=subprocess.DEVNULL, stderr=stderr or subprocess.PIPE)
    try:
        log_text = lambda: proc.stderr.read().decode(errors="replace") if proc.stderr else ""  # noqa: E731
        if unix_path is None:
            wait_for_port(proc, port, "Xtigervnc", log_text, prefix=prefix)
            yield port, display
            return
        deadline = time.monotonic() + 15
        while not os.path.exists(unix_path):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"Xtigervnc did not start: {log_text()}")
            time.sleep(0.05)
        yield str(unix_path), display
    finally:
        proc.terminate()
        proc.wait(5)


# The relay policy lines of the README's /etc/turnserver.conf example.
_README_POLICY = re.compile(r"^ {7}((?:denied|allowed)-peer-ip=\S+|no-tcp-relay|no-udp-relay"
                            r"|no-multicast-peers|allow-loopback-peers"
                            r"|(?:user-quota|total-quota|max-bps)=\d+)$", re.M)
# The README's example of the relay host's own public address (its deny line).
README_RELAY_ADDRESS = "203.0.113.10"


def readme_coturn_policy(relay_address=README_RELAY_ADDRESS):
    """The peer, transport and quota policy of the README's coturn example, as config
    lines (what an operator who follows the README runs), with *relay_address* as the
    relay host's own public address (the README's example is 203.0.113.10, which is
    also the NAT topology's public host)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        lines = _README_POLICY.findall(f.read())
    assert any(line.startswith("denied-peer-ip=") for line in lines), "README changed?"
    own = f"denied-peer-ip={README_RELAY_ADDRESS}"
    assert own in lines, "the README's coturn example lost its own-address line"
    return [f"denied-peer-ip={relay_address}" if line == own else line for line in lines]


@contextlib.contextmanager
def coturn(tmp_path, secret, listen="127.0.0.1", port=None, prefix=(), extra=(), quiet=False):
    """Debian's coturn (``turnserver``) with a shared secret (``use-auth-secret``):
    the TURN REST API scheme the coordinator mints credentials for.  Listens on
    *listen*:*port* (UDP and TCP, no TLS) and relays from *listen*; *prefix* runs it
    inside a network namespace (e.g. ``ip netns exec NS``).  Yields the port.
    The secret goes in a config file, never on the command line."""
    binary = require_tool("turnserver", "coturn")
    if port is None:
        port = 3478 if prefix else free_udp_port(listen)
    cfg = tmp_path / "turnserver.conf"
    log_path = tmp_path / "turnserver.log"
    cfg.write_text("\n".join([
        f"listening-ip={listen}", f"relay-ip={listen}", f"listening-port={port}",
        "use-auth-secret", f"static-auth-secret={secret}", "realm=homechannel.test",
        "no-tls", "no-dtls", "no-cli", "no-multicast-peers", "fingerprint",
        "min-port=49152", "max-port=49500", f"log-file={log_path}", "simple-log",
        f"pidfile={tmp_path}/turnserver.pid", "no-stdout-log", *extra, ""]))
    log_path.write_text("")
    proc = subprocess.Popen([*prefix, binary, "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while "listener opened on" not in log_path.read_text() \
                and "Total General servers" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"coturn did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not quiet:
            print(f"--- coturn log ---\n{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def red_xtigervnc(geometry, prefix=()):
    """:func:`xtigervnc` with its root window painted red (easy to find in a screenshot);
    yields (port, display).  *prefix*: in a network namespace, as for :func:`xtigervnc`."""
    xsetroot = require_tool("xsetroot", "x11-xserver-utils")
    with xtigervnc(geometry, prefix=prefix) as (port, display):
        subprocess.run([xsetroot, "-display", f":{display}", "-solid", "#ff0000"], check=True,
                       timeout=10)
        yield port, display


REDIS_ACL = os.path.join(REPO, "conf", "redis", "users.acl")
NODE_USER = "homechannel"


def redis_acl(password, extra=()):
    """``conf/redis/users.acl`` as written, with *password*'s SHA-256 in place of its
    zeros (as README's setup step does), and the *extra* lines after it."""
    import hashlib

    with open(REDIS_ACL) as f:
        text = f.read()
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert text.count("#" + "0" * 64) == 1
    return text.replace("#" + "0" * 64, "#" + digest).rstrip("\n") + "\n" + "".join(
        line + "\n" for line in extra)


class RedisServer:
    """Debian's ``redis-server`` on a loopback port, in memory only (no RDB or
    AOF files).  ``stop()``/``start()`` keep the port, so ``restart()`` is what
    a Redis restart looks like to its clients: connections reset, data gone.

    Logins as in production: ``conf/redis/users.acl`` as written (the default user
    off; the nodes' user ``homechannel`` with only the cluster's keys, channels and
    commands), its password in :attr:`password_file` (0600).  An ``admin`` user
    with every right is added for the tests' own looks (:meth:`cli`,
    :meth:`admin_options`); *acl* False leaves Redis's own default (a default user
    without a password).  With *tls* (a ``testca.TestCA``): TLS only
    (``rediss://``), a certificate for 127.0.0.1 from that CA, and with
    *client_certs* a client certificate required (:attr:`client_cert`)."""

    def __init__(self, tmp_path, port=None, tls=None, client_certs=False, acl=True):
        self.binary = require_tool("redis-server", "redis-server")
        self.dir = tmp_path
        self.port = port or free_tcp_port()
        self.proc = None
        self.password = secrets.token_urlsafe(18)
        self.admin_password = secrets.token_urlsafe(18)
        self.password_file = str(tmp_path / f"redis-{self.port}.password")
        self._private(self.password_file, self.password + "\n")
        self.acl_file = str(tmp_path / f"redis-{self.port}.acl")
        self._private(self.acl_file, redis_acl(self.password, [
            f"user admin on >{self.admin_password} ~* &* +@all"]))
        self.acl = acl        # False: Redis's own default, a default user with no password
        self.tls = tls
        self.client_certs = client_certs
        self.tls_args = []
        self.client_cert = None
        if tls is not None:
            self._tls_files(tls)

    @staticmethod
    def _private(path, text):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _tls_files(self, ca):
        base = str(self.dir / f"redis-{self.port}-tls")
        os.makedirs(base, exist_ok=True)
        key, chain, _ = ca.issue(["127.0.0.1"], serial=self.port)
        files = {"ca": ca.root_pem, "key": key, "cert": chain}
        ckey, cchain, _ = ca.issue(["homechannel-node"], serial=self.port + 100_000)
        files.update(client_key=ckey, client_cert=cchain)
        paths = {}
        for name, data in files.items():
            paths[name] = os.path.join(base, name + ".pem")
            with open(paths[name], "wb") as f:
                f.write(data)
            os.chmod(paths[name], 0o600)
        self.ca_file = paths["ca"]
        self.client_cert = (paths["client_cert"], paths["client_key"])
        self.tls_args = ["--port", "0", "--tls-port", str(self.port),
                         "--tls-cert-file", paths["cert"], "--tls-key-file", paths["key"],
                         "--tls-ca-cert-file", paths["ca"],
                         "--tls-auth-clients", "yes" if self.client_certs else "no"]

    @property
    def url(self):
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def cluster_config(self, client_cert=True):
        """The ``[cluster]`` settings a node logs in with (node_id and key_file apart)."""
        cfg = {"redis_url": self.url, "redis_username": NODE_USER,
               "redis_password_file": self.password_file}
        if self.tls:
            cfg["redis_tls_ca_file"] = self.ca_file
            if client_cert and self.client_cert:
                cfg["redis_tls_cert_file"], cfg["redis_tls_key_file"] = self.client_cert
        return cfg

    def options(self, user=NODE_USER, password=None):
        """redis-py options (``redisstore.connect(url, **options)``) of the nodes' user."""
        from homechannel.config import CoordinatorCluster
        from homechannel.coordinator.cluster import redisstore

        cfg = dict(self.cluster_config(), node_id="test", redis_username=user)
        return redisstore.client_options(CoordinatorCluster(**cfg), password or self.password)

    def admin_options(self):
        return self.options("admin", self.admin_password)

    def start(self):
        log = self.dir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(log),
             *(["--aclfile", self.acl_file] if self.acl else []), *self.tls_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.proc, self.port, "redis-server",
                      lambda: log.read_text() if log.exists() else "")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def cli(self, *args, user="admin", password=None, check=True):
        """Run one command with redis-cli as *user* (default: the tests' admin); its
        output.  The password goes in the environment, never on the command line."""
        cli = require_tool("redis-cli", "redis-tools")
        tls = []
        if self.tls:
            tls = ["--tls", "--cacert", self.ca_file]
            if self.client_certs:
                tls += ["--cert", self.client_cert[0], "--key", self.client_cert[1]]
        env = dict(os.environ, REDISCLI_AUTH=password or (
            self.admin_password if user == "admin" else self.password))
        return subprocess.run([cli, "-p", str(self.port), "--user", user, *tls, *args],
                              capture_output=True, text=True, check=check, env=env).stdout

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
