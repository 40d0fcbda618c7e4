"""Both real twistd daemons in the loopback-only namespace: registration, a
coordinator crash and restart healed by re-registration, and start-up errors
that are messages, not tracebacks."""

import os

from daemons import kill, make_pair


def test_register_then_coordinator_restart(tmp_path, twistd):
    pair = make_pair(tmp_path, keepalive={"interval": 2.0, "jitter": 0.1})
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    # Plain twistd, no --reactor: the tap installs the asyncio reactor itself.
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator 127.0.0.1", timeout=15)
    coordinator.wait_for_log("registered " + pair.server_key.text[:12])
    assert "AsyncioSelectorReactor" in server.output

    kill(coordinator)
    mark = server.mark()
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("registered " + pair.server_key.text[:12], timeout=20)
    server.wait_for_log("registered with coordinator", since=mark, timeout=5)
    assert "Traceback" not in server.output
    assert "Traceback" not in coordinator.output


def test_missing_coordinator_key_is_a_clear_error(tmp_path, twistd):
    pair = make_pair(tmp_path)
    text = open(pair.server_config).read()
    lines = [l for l in text.splitlines() if not l.startswith("public_key")]
    open(pair.server_config, "w").write("\n".join(lines) + "\n")
    server = twistd("homechannel-server", pair.server_config)
    assert server.proc.wait(30) != 0
    assert "coordinator key not configured" in server.output
    assert "Traceback" not in server.output


def test_wrong_reactor_is_a_clear_error(tmp_path, twistd):
    pair = make_pair(tmp_path)
    server = twistd("homechannel-server", pair.server_config, args=())
    server.stop()
    from helpers import Twistd
    t = Twistd("homechannel-server", pair.server_config)
    t.cmd.insert(t.cmd.index("--nodaemon"), "--reactor=poll")
    t.start()
    try:
        assert t.proc.wait(30) != 0
        assert "--reactor=asyncio" in t.output
        assert "Traceback" not in t.output
    finally:
        t.stop()


def test_corrupt_identity_key_stops_the_daemon(tmp_path, twistd):
    pair = make_pair(tmp_path)
    key = os.path.join(pair.base, "coordinator", "coordinator.key")
    with open(key, "wb") as f:
        f.write(b"garbage")
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    assert coordinator.proc.wait(30) != 0
    assert "not replaced" in coordinator.output
    assert open(key, "rb").read() == b"garbage"


def test_migrate_with_the_cli_then_restart_uses_failover(tmp_path, twistd):
    """``homechannel migrate`` to a coordinator with another key: refused while the key is
    not in coordinator.allow_migrate (both logs say why, the server stays); followed
    once it is, with a warning that the pinned key is replaced, a ``coordinator key:``
    line in ``homechannel status`` and ``pin_overridden`` in status.json; a restart
    goes to the new coordinator, saying so again.  Shown to fail with the check removed
    (every key allowed, as before allow_migrate): the first migrate moved the server."""
    import json
    import subprocess
    import sys
    import tomllib

    from clirun import run as cli
    from helpers import REPO, free_tcp_port, free_udp_port, wait_until, write_toml

    from homechannel import keyfiles

    pair = make_pair(tmp_path, keepalive={"interval": 2.0, "jitter": 0.1})
    old = twistd("homechannel-coordinator", pair.coordinator_config)
    old.wait_for_log("coordinator: UDP")
    # A second coordinator, the migration target.
    new_dir = tmp_path / "new"
    new_key, _ = keyfiles.load_or_create_identity_key(str(new_dir / "coordinator.key"))
    new_udp = free_udp_port()
    new_cfg = write_toml(tmp_path / "new.toml", {
        "state_dir": str(new_dir),
        "udp": {"interface": "127.0.0.1", "port": new_udp},
        "web": {"listen": f"tcp:{free_tcp_port()}:interface=127.0.0.1"},
        "admin": {"listen": ""},
    })
    new = twistd("homechannel-coordinator", new_cfg)
    new.wait_for_log("coordinator: UDP")
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator 127.0.0.1:%d" % pair.udp_port, timeout=15)
    failover_path = os.path.join(pair.base, "server", "failover-coordinator.json")

    def migrate():
        env = dict(os.environ, PYTHONPATH=REPO)
        done = subprocess.run(
            [sys.executable, "-m", "homechannel.cli", "migrate",
             "--config", pair.coordinator_config, "--server", pair.server_key.text,
             "--to", f"127.0.0.1:{new_udp}", "--key", new_key.text],
            env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "1 server(s) asked to move" in done.stdout

    # Not allowed (the default): refused, with the reason on both sides.
    migrate()
    server.wait_for_log(r"asked this server to move to 127.0.0.1:%d with the key %s; "
                        r"refused" % (new_udp, new_key.text), timeout=15)
    old.wait_for_log(r"server \w+ refused the move: key not in coordinator.allow_migrate",
                     timeout=10)
    assert not os.path.exists(failover_path)
    assert "moved from coordinator" not in server.output

    # Allowed: the server moves, and says that the pinned key is replaced.
    server.stop()
    cfg = tomllib.load(open(pair.server_config, "rb"))
    cfg["coordinator"]["allow_migrate"] = [new_key.text]
    write_toml(pair.server_config, cfg)
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator 127.0.0.1:%d" % pair.udp_port, timeout=15)
    migrate()
    server.wait_for_log(f"moved from coordinator 127.0.0.1:{pair.udp_port} to "
                        f"127.0.0.1:{new_udp}", timeout=15)
    server.wait_for_log(r"\(%s\) now replaces the configured coordinator.public_key"
                        % new_key.text, timeout=5)
    new.wait_for_log("registered " + pair.server_key.text[:12])
    failover = json.load(open(failover_path))
    assert failover == {"host": "127.0.0.1", "port": new_udp, "public_key": new_key.text}
    status_path = os.path.join(pair.base, "server", "status.json")

    def overridden():
        try:
            doc = json.load(open(status_path))
        except (OSError, ValueError):
            return False
        return doc.get("pin_overridden") and doc.get("coordinator_key") == new_key.text

    wait_until(overridden, what="status.json with pin_overridden")
    status = cli("status", "--config", pair.server_config)
    assert f"coordinator key: {new_key.text}, not the configured" in status.stdout, \
        status.stdout

    # After a restart the server goes straight to the new coordinator, saying why.
    server.stop()
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log(f"using the coordinator from .*failover-coordinator.json", timeout=15)
    server.wait_for_log("replaces the configured coordinator.public_key", timeout=5)
    server.wait_for_log(f"registered with coordinator 127.0.0.1:{new_udp}", timeout=15)


def test_migrate_refuses_a_bad_request(tmp_path, twistd):
    import subprocess
    import sys

    from helpers import REPO

    pair = make_pair(tmp_path)
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, "-m", "homechannel.cli", "migrate",
         "--config", pair.coordinator_config, "--server", pair.server_key.text,
         "--to", "127.0.0.1:9", "--key", pair.coordinator_key.text],
        env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "not registered here" in done.stderr
    assert "Traceback" not in done.stderr


def test_coordinator_serves_https_from_an_ssl_endpoint(tmp_path, twistd):
    """TLS from a Twisted endpoint string, with HSTS on TLS responses."""
    import ssl
    import urllib.request

    from helpers import free_tcp_port, free_udp_port, self_signed_cert, write_toml

    self_signed_cert(tmp_path)
    port = free_tcp_port()
    cfg = write_toml(tmp_path / "c.toml", {
        "state_dir": str(tmp_path / "state"),
        "udp": {"interface": "127.0.0.1", "port": free_udp_port()},
        "web": {"listen": f"ssl:{port}:interface=127.0.0.1:privateKey={tmp_path}/key.pem:"
                          f"certKey={tmp_path}/cert.pem"},
        "admin": {"listen": ""},
    })
    coordinator = twistd("homechannel-coordinator", cfg)
    coordinator.wait_for_log("coordinator: UDP")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    ctx.check_hostname = False
    import time
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx,
                                        timeout=5) as resp:
                assert resp.status == 200
                assert resp.headers["Strict-Transport-Security"]
                assert resp.headers["X-HomeChannel-Signature"]
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise AssertionError("no HTTPS answer:\n" + coordinator.output)
