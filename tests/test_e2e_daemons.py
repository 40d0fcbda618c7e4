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
    from conftest import Twistd
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
