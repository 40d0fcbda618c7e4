"""``homechannel.testing.local``: the one builder of a coordinator + home server pair
on this machine, behind the demo, the end-to-end tests and the benchmarks.  What it
writes loads as configuration, the two daemons agree (ports, key, URL), the keys
are where each caller wants them, the password key is the password's, and each
caller's tables merge in section by section."""

import os
import stat

from homechannel import config, crypto, keyfiles
from homechannel.testing import local


def test_a_pair_with_the_keys_in_the_state_directories(tmp_path):
    """The tests' layout: nothing about keys in the configs, so the daemons find them
    at their default places, where the builder put them."""
    pair = local.write_pair(tmp_path, web_port=8081, udp_port=7778, password="pw",
                            metrics_port=9001, server_metrics_port=9002,
                            coordinator_extra={"udp": {"sweep_interval": 1.0}},
                            server_extra={"webrtc": {"max_sessions": 1},
                                          "keepalive": {"interval": 2.0}})
    c = config.load_coordinator(pair.coordinator_config)
    s = config.load_server(pair.server_config)
    assert (c.udp.interface, c.udp.port, c.udp.sweep_interval) == ("127.0.0.1", 7778, 1.0)
    assert c.web.listen == "tcp:8081:interface=127.0.0.1"
    assert c.web.public_url == pair.url == s.coordinator_url == "http://127.0.0.1:8081"
    assert c.metrics.listen == "tcp:9001:interface=127.0.0.1"
    assert s.metrics.listen == "tcp:9002:interface=127.0.0.1"
    assert (s.coordinator.host, s.coordinator.port) == ("127.0.0.1", 7778)
    assert s.coordinator.public_key == pair.coordinator_key.text
    assert keyfiles.load_identity_key(c.identity_key).text == pair.coordinator_key.text
    assert keyfiles.load_identity_key(s.identity_key).text == pair.server_key.text
    assert c.identity_key == os.path.join(pair.base, "coordinator", "coordinator.key")
    assert s.password_key == os.path.join(pair.base, "server", "password.json")
    assert keyfiles.load_password_key(s.password_key, pair.server_key.public_raw) == \
        crypto.derive_password_key("pw", pair.server_key.public_raw)
    # merged, not replaced: the builder's settings of those sections stay
    assert s.webrtc.max_sessions == 1 and s.webrtc.advertise_addresses == ("127.0.0.1",)
    assert s.keepalive.interval == 2.0
    assert s.apps.files.roots == (pair.files_root,) and os.path.isdir(pair.files_root)
    assert pair.link == f"http://127.0.0.1:8081/#server={pair.server_key.text}"


def test_the_demo_layout_keeps_keys_and_a_known_password_key(tmp_path):
    """The demo's layout: the keys in one directory, named in the configs; a second
    run keeps both identity keys, and with *keep_password_key* the stored password
    key (no second derivation; shown to fail by dropping *keep*: the file is then
    written again).  Without *keep* it is derived again for the password given."""
    said = []
    first = local.write_pair(tmp_path, web_port=8080, udp_port=7777, password="one",
                             keys_dir=str(tmp_path), keep_password_key=True, say=said.append)
    s = config.load_server(first.server_config)
    assert s.identity_key == str(tmp_path / "server.key")
    assert s.password_key == str(tmp_path / "password.json")
    assert config.load_coordinator(first.coordinator_config).identity_key == \
        str(tmp_path / "coordinator.key")
    assert stat.S_IMODE(os.stat(s.password_key).st_mode) == 0o600
    assert len(said) == 1 and "PBKDF2" in said[0]
    stored = os.stat(s.password_key).st_mtime_ns
    again = local.write_pair(tmp_path, web_port=8080, udp_port=7777, password="one",
                             keys_dir=str(tmp_path), keep_password_key=True, say=said.append)
    assert again.server_key.text == first.server_key.text
    assert again.coordinator_key.text == first.coordinator_key.text
    assert len(said) == 1 and os.stat(s.password_key).st_mtime_ns == stored
    local.write_pair(tmp_path, web_port=8080, udp_port=7777, password="two",
                     keys_dir=str(tmp_path))
    assert keyfiles.load_password_key(s.password_key, first.server_key.public_raw) == \
        crypto.derive_password_key("two", first.server_key.public_raw)


def test_another_host_and_one_half(tmp_path):
    """A coordinator on another address (the NAT tests' public host), a home server
    that advertises no loopback candidate, and a coordinator alone (a benchmark's)."""
    pair = local.write_pair(tmp_path, web_port=80, udp_port=7777, password="pw",
                            host="203.0.113.1", udp_interface="0.0.0.0",
                            advertise_loopback=False)
    c = config.load_coordinator(pair.coordinator_config)
    s = config.load_server(pair.server_config)
    assert c.udp.interface == "0.0.0.0" and c.web.listen == "tcp:80:interface=203.0.113.1"
    assert pair.url == c.web.public_url == "http://203.0.113.1:80"
    assert s.coordinator.host == "203.0.113.1" and s.webrtc.advertise_addresses == ()
    assert c.metrics.listen == "" and s.metrics.listen == ""
    alone = local.write_toml(tmp_path / "alone.toml", local.coordinator_config(
        str(tmp_path / "alone"), udp_port=1, web_port=2, identity_key="/k",
        extra={"admin": {"listen": ""}, "cluster": {"redis_url": "rediss://r:6379/0",
                                                    "redis_password_file": "/p",
                                                    "node_id": "n1"}}))
    c = config.load_coordinator(str(alone))
    assert (c.identity_key, c.admin.listen, c.cluster.node_id) == ("/k", "", "n1")
