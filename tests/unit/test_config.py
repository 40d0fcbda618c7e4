"""The example configs parse, document every key, and bad configs are clear errors."""

import dataclasses
import os
import re

import pytest

from homechannel import config
from homechannel.errors import ConfigError

from helpers import REPO

CONF = os.path.join(REPO, "conf")


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None) or \
                f.name in ("udp", "web", "admin", "metrics", "coordinator", "keepalive",
                           "webrtc", "apps", "files", "terminal", "desktop", "forward", "turn"):
            sub = type(f.default_factory()) if f.default_factory is not dataclasses.MISSING else None
            if sub is not None and dataclasses.is_dataclass(sub):
                yield from _keys(sub, prefix + f.name + ".")
                continue
        yield prefix + f.name


@pytest.mark.parametrize("name,cls", [("coordinator", config.CoordinatorConfig),
                                      ("server", config.ServerConfig)])
def test_examples_parse_and_mention_every_key(name, cls):
    path = os.path.join(CONF, f"{name}.example.toml")
    cfg = config.load(cls, path)
    assert cfg.state_dir
    text = open(path).read()
    for key in _keys(cls):
        leaf = key.rsplit(".", 1)[-1]
        assert re.search(rf"^#? ?{leaf} =", text, re.M), f"{key} is not documented in {path}"


def test_defaults_equal_examples():
    ex = config.load_coordinator(os.path.join(CONF, "coordinator.example.toml"))
    assert dataclasses.replace(ex, state_dir="", identity_key="") == \
        dataclasses.replace(config.load_coordinator(), state_dir="", identity_key="")


def test_unknown_key_and_wrong_type(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[udp]\nprot = 5\n")
    with pytest.raises(ConfigError, match="udp.prot"):
        config.load_coordinator(str(p))
    p.write_text("[udp]\nport = 'x'\n")
    with pytest.raises(ConfigError, match="udp.port must be of type int"):
        config.load_coordinator(str(p))
    p.write_text("[udp\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_coordinator(str(p))


def test_overrides_win(tmp_path):
    cfg = config.load_server(os.path.join(CONF, "server.example.toml"),
                             {"coordinator.port": 9, "state_dir": str(tmp_path)})
    assert cfg.coordinator.port == 9
    assert cfg.password_key == os.path.join(str(tmp_path), "password.json")


def test_state_directory_from_systemd(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/homechannel")
    assert config.load_server().state_dir == "/var/lib/homechannel"


@pytest.mark.parametrize("key", ["udp.max_servers_per_source", "udp.reassembly_bytes",
                                 "web.max_sessions_per_source", "web.max_waiters_per_source"])
def test_caps_and_shares_must_be_positive(key):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} must be positive"):
        config.load_coordinator(None, {key: 0})


# -- ICE servers -------------------------------------------------------------------


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


def test_ice_servers_accept_strings_and_tables_on_both_daemons(tmp_path):
    coordinator = config.load_coordinator(_write(tmp_path, """[web]
ice_servers = ["stun:stun.example.org:3478", { urls = ["stun:[2001:db8::1]:7777"] }]
"""))
    assert coordinator.web.ice_servers == (
        {"urls": "stun:stun.example.org:3478"}, {"urls": ["stun:[2001:db8::1]:7777"]})
    server = config.load_server(_write(tmp_path, """[webrtc]
ice_servers = ["stun:a.example:1",
  { urls = "turn:t.example:3478?transport=tcp", username = "u", credential = "p" }]
"""))
    assert server.webrtc.ice_servers[1] == {
        "urls": "turn:t.example:3478?transport=tcp", "username": "u", "credential": "p"}


@pytest.mark.parametrize("value,message", [
    ('"stun:a:1"', "must be a list"),
    ("[5]", r"ice_servers\[0\] must be a URL string or a table"),
    ('["http://a"]', "is not a STUN or TURN URL"),
    ('["stun:a:99999"]', "invalid port"),
    ('[{ url = "stun:a" }]', "unknown key 'url'"),
    ("[{ urls = [] }]", "urls must be a URL string or a list"),
    ('["turn:t.example:3478"]', "needs username and credential"),
    ('[{ urls = "turn:t", username = 1, credential = "p" }]', "username must be a string"),
])
def test_bad_ice_servers_are_clear_errors(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        config.load_server(_write(tmp_path, f"[webrtc]\nice_servers = {value}\n"))


def test_coordinator_refuses_public_turn_credentials(tmp_path):
    with pytest.raises(ConfigError, match=r"\[turn\]"):
        config.load_coordinator(_write(tmp_path, """[web]
ice_servers = [{ urls = "turn:t:3478", username = "u", credential = "p" }]
"""))


def test_default_ice_servers_are_the_coordinators_stun(tmp_path):
    cfg = config.load_coordinator(_write(tmp_path, """[udp]
port = 7000
[web]
public_url = "https://coordinator.example.org"
"""))
    assert cfg.web.ice_servers is None           # not set
    assert config.coordinator_ice_servers(cfg) == ({"urls": "stun:coordinator.example.org:7000"},)
    cfg = config.load_coordinator(_write(tmp_path, """[udp]
public_host = "2001:db8::7"
stun = false
stun_port = 3478
"""))
    assert config.coordinator_ice_servers(cfg) == ({"urls": "stun:[2001:db8::7]:3478"},)
    cfg = config.load_coordinator(_write(tmp_path, "[udp]\nstun = false\n"))
    assert config.coordinator_ice_servers(cfg) == ()
    cfg = config.load_coordinator(_write(tmp_path, "[web]\nice_servers = []\n"))
    assert config.coordinator_ice_servers(cfg) == ()   # explicitly none

    server = config.load_server()
    assert config.server_ice_servers(server, "203.0.113.10", 7777) == (
        {"urls": "stun:203.0.113.10:7777"},)
    server = config.load_server(_write(tmp_path, "[webrtc]\nice_servers = []\n"))
    assert config.server_ice_servers(server, "203.0.113.10", 7777) == ()


CLUSTER = {"cluster.redis_url": "rediss://redis.internal:6379/0", "cluster.node_id": "n1",
           "cluster.redis_password_file": "/etc/homechannel/redis-password"}


def test_cluster_settings_are_checked():
    """No [cluster]: one process, nothing to check.  With a Redis URL, a node id and a
    password file are required (a Redis without a password gives whoever reaches it the
    cluster), the URL must be Redis's and carry no credentials, and the cluster key
    file defaults to the state directory.  How this was shown to fail: without the
    ``redis_password_file`` check a config without one loaded."""
    assert config.load_coordinator(overrides={}).cluster.redis_url == ""
    ok = config.load_coordinator(overrides=dict(CLUSTER, state_dir="/var/lib/hc"))
    assert ok.cluster.node_id == "n1" and ok.cluster.key_prefix == "hc:"
    assert ok.cluster.redis_username == "homechannel"
    assert ok.cluster.key_file == "/var/lib/hc/cluster.key"
    for change, message in [
        ({"cluster.node_id": None}, "cluster.node_id"),
        ({"cluster.node_id": "a b"}, "node_id"),
        ({"cluster.redis_url": "http://r:6379"}, "redis_url"),
        ({"cluster.key_prefix": ""}, "key_prefix"),
        ({"cluster.redis_password_file": None}, "redis_password_file is required"),
        ({"cluster.redis_username": ""}, "redis_username"),
        ({"cluster.redis_url": "rediss://hc:secret@r:6379/0"}, "must not carry a user"),
        ({"cluster.redis_url": "rediss://:secret@r:6379/0"}, "must not carry a user"),
        ({"cluster.redis_url": "rediss://r:6379/0?password=x"}, "must not carry a user"),
    ]:
        overrides = dict(CLUSTER, **{k: v for k, v in change.items() if v is not None})
        for k, v in change.items():
            if v is None:
                del overrides[k]
        with pytest.raises(ConfigError, match=message):
            config.load_coordinator(overrides=overrides)


def test_plaintext_redis_is_refused_off_this_machine_unless_the_risk_is_taken():
    """redis:// sends the password and every session in clear: to loopback or a UNIX
    socket only, unless cluster.insecure_plaintext_redis says the operator takes that
    risk; the TLS settings need rediss://.  How this was shown to fail: without the
    check in ``CoordinatorCluster.__post_init__`` the plaintext URL to 10.0.0.20 loads."""
    for url in ("redis://10.0.0.20:6379/0", "redis://redis.internal/0",
                "redis://[2001:db8::1]:6379/0"):
        with pytest.raises(ConfigError, match="insecure_plaintext_redis = true"):
            config.load_coordinator(overrides=dict(CLUSTER, **{"cluster.redis_url": url}))
        c = config.load_coordinator(overrides=dict(CLUSTER, **{
            "cluster.redis_url": url, "cluster.insecure_plaintext_redis": True}))
        assert c.cluster.redis_url == url
    for url in ("redis://127.0.0.1:6379/0", "redis://localhost/1", "redis://[::1]:6379/0",
                "unix:///run/redis/redis-server.sock"):
        config.load_coordinator(overrides=dict(CLUSTER, **{"cluster.redis_url": url}))
    with pytest.raises(ConfigError, match="not rediss://"):
        config.load_coordinator(overrides=dict(CLUSTER, **{
            "cluster.redis_url": "redis://127.0.0.1/0", "cluster.redis_tls_ca_file": "/ca"}))
    with pytest.raises(ConfigError, match="go together"):
        config.load_coordinator(overrides=dict(CLUSTER, **{
            "cluster.redis_tls_cert_file": "/c"}))


@pytest.mark.parametrize("load", [config.load_coordinator, config.load_server])
def test_metrics_allowed_hosts_are_host_names(load):
    """Names pass (the listener also answers addresses and localhost by itself); an
    address, a port, a wildcard or a URL is a clear error naming the key."""
    ok = load(overrides={"metrics.allowed_hosts": ["prom.internal", "node-1."]})
    assert ok.metrics.allowed_hosts == ("prom.internal", "node-1.")
    for bad in ("prom.internal:9477", "*.internal", "http://prom", "", "a b", 7):
        with pytest.raises(ConfigError, match="metrics.allowed_hosts"):
            load(overrides={"metrics.allowed_hosts": [bad]})


def test_allow_migrate_is_false_or_a_list_of_coordinator_keys():
    """Off by default; ``false`` or ``[]`` for none; each key checked at load, by
    position; ``true`` (any coordinator at all) is refused with what to write instead."""
    from homechannel import crypto

    key = crypto.IdentityKey.generate().text
    assert config.load_server(None).coordinator.allow_migrate == ()
    for value in (False, []):
        assert config.load_server(
            None, {"coordinator.allow_migrate": value}).coordinator.allow_migrate == ()
    assert config.load_server(
        None, {"coordinator.allow_migrate": [key]}).coordinator.allow_migrate == (key,)
    with pytest.raises(ConfigError, match=r"coordinator.allow_migrate\[1\] is not a "
                                          r"coordinator public key"):
        config.load_server(None, {"coordinator.allow_migrate": [key, "nope"]})
    with pytest.raises(ConfigError, match="list the public keys"):
        config.load_server(None, {"coordinator.allow_migrate": True})
    with pytest.raises(ConfigError, match="false or a list"):
        config.load_server(None, {"coordinator.allow_migrate": key})
