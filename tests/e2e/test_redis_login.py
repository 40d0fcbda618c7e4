"""How a cluster node logs in to Redis, against real ``redis-server``s (Debian's
``redis-server`` 7, with TLS): ``conf/redis/users.acl`` as written (the default user
off, the nodes' user with only the cluster's keys, channels and commands), the login
check at start (``redisstore.check_login``), TLS with a CA file, a client certificate
and the name checked, and a ``twistd`` node that refuses to start without what it needs.

That the ACL as written is enough for everything the nodes do is shown by every cluster
test (``test_cluster_store.py``, ``test_cluster.py``: real nodes, haproxy, Chromium),
which run against it; ``test_cluster.py`` also finds Redis's ACL log empty after them."""

import asyncio
import os

import pytest

from helpers import Twistd, free_tcp_port, free_udp_port, require_module, write_toml
from services import RedisServer
from testca import TestCA

from homechannel import config, keyfiles
from homechannel.coordinator.cluster.clusterkey import ClusterKey
from homechannel.errors import ConfigError
from homechannel.testing import local

redis = require_module("redis", "pip install 'homechannel[cluster]' (make venv does it)")
from homechannel.coordinator.cluster import redisstore  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r


REFUSED = [
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "requirepass", ""),
    ("KEYS", "*"), ("SCAN", "0"), ("GET", "other:key"), ("SET", "other:key", "x"),
    ("DEL", "other:key"), ("HGETALL", "other:h"), ("PUBLISH", "other", "x"),
    ("EVAL", "return 1", "0"), ("ACL", "LIST"), ("ACL", "SETUSER", "homechannel", "+@all"),
    ("CLIENT", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("SCRIPT", "FLUSH"),
    ("FUNCTION", "FLUSH"), ("MODULE", "LIST"), ("SAVE",), ("BGREWRITEAOF",),
    ("REPLICAOF", "127.0.0.1", "1"), ("SLAVEOF", "127.0.0.1", "1"), ("DUMP", "hc:probe"),
    ("RENAME", "hc:probe", "other:key"), ("COPY", "hc:probe", "other:key"),
    ("EXPIRE", "hc:probe", "1"),
]


def test_the_nodes_user_reaches_only_the_clusters_keys_channels_and_commands(server):
    """The user of ``conf/redis/users.acl`` as written may use its own keys, and nothing
    else: no command outside the nodes' list (FLUSHALL, CONFIG, KEYS, SCAN, EVAL, ACL,
    CLIENT, ...), no key or channel outside ``hc:*``, and a script it loads runs with
    its rights (another prefix refused inside Lua too).  How this was shown to fail: with
    the user's line ending ``~* &* +@all`` (what a default user has) every command in
    REFUSED ran."""
    r = redis.Redis.from_url(server.url, **server.options())
    assert r.ping() and r.set("hc:probe", "1") and r.get("hc:probe") == b"1"
    for args in REFUSED:
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*args)
    for subscribe in ("subscribe", "psubscribe"):
        pubsub = r.pubsub()
        with pytest.raises(redis.exceptions.NoPermissionError):
            getattr(pubsub, subscribe)("other")
            pubsub.get_message(timeout=2.0)      # the refusal may come with the reply
        pubsub.close()
    for lua, keys in (("return redis.call('GET', 'other:key')", ()),
                      ("return redis.call('GET', KEYS[1])", ("other:key",)),
                      ("return redis.call('FLUSHALL')", ()),
                      ("return redis.call('PUBLISH', 'other', 'x')", ())):
        sha = r.script_load(lua)
        with pytest.raises(redis.exceptions.ResponseError,
                           match="no permissions|user executing the script can.t"):
            r.evalsha(sha, len(keys), *keys)
    # Without a password: nothing at all (the default user is off).
    anonymous = redis.Redis(host="127.0.0.1", port=server.port)
    with pytest.raises(redis.exceptions.RedisError):
        anonymous.ping()
    r.close()
    anonymous.close()


def test_the_login_check_refuses_what_lets_anyone_in_and_a_wrong_password(server, tmp_path):
    """At start a node logs in once: its user and password work (None); a wrong password,
    a Redis that lets a client in without a password (Redis's own default, which the
    shipped ACL turns off) and a user without PING are refused with advice; the default
    user (which may do anything) is a warning; a Redis not reachable yet is a warning
    (the node starts and answers 503 until it is).  How this was shown to fail: without
    the anonymous PING the check passed against the open Redis as user "default" (a
    warning only), and the node would have started."""
    assert redisstore.check_login(server.url, server.options()) is None
    with pytest.raises(ConfigError, match="refused the login.*redis_password_file"):
        redisstore.check_login(server.url, server.options(password="wrong"))
    assert redisstore.check_login(server.url, server.admin_options()) is None
    server.cli("ACL", "SETUSER", "default", "on", ">pw", "~*", "&*", "+@all")
    try:
        warning = redisstore.check_login(server.url, dict(server.options(),
                                                          username="default", password="pw"))
        assert "may do anything" in warning and "conf/redis/users.acl" in warning
    finally:
        server.cli("ACL", "SETUSER", "default", "off")
    server.cli("ACL", "SETUSER", "noping", "on", ">pw", "~hc:*", "-@all", "+get")
    with pytest.raises(ConfigError, match="refused PING"):
        redisstore.check_login(server.url, dict(server.options(), username="noping",
                                                password="pw"))
    closed = f"redis://127.0.0.1:{free_tcp_port()}/0"
    assert "not reachable yet" in redisstore.check_login(closed, server.options(), 0.5)
    with RedisServer(tmp_path, acl=False) as open_redis:
        with pytest.raises(ConfigError, match="lets anyone in"):
            redisstore.check_login(open_redis.url, dict(server.options(), username="default"))
        with pytest.raises(ConfigError, match="refused the login"):
            redisstore.check_login(open_redis.url, server.options())


def test_tls_with_the_ca_file_and_a_client_certificate_and_the_name_checked(tmp_path):
    """``rediss://`` as the config gives it (``client_options``): Redis's certificate
    checked against ``redis_tls_ca_file`` and its name against the URL's host, the
    client certificate sent; the nodes' stores work over it.  Without the CA file (the
    system's CAs do not know the test CA), with a name the certificate does not carry,
    or without the client certificate Redis requires, the login check stops the node.
    How this was shown to fail: with ``ssl_check_hostname=False`` in ``client_options``
    the login to rediss://localhost (a certificate for 127.0.0.1 only) passed."""
    with RedisServer(tmp_path, tls=TestCA(), client_certs=True) as tls:
        cfg = config.CoordinatorCluster(**tls.cluster_config(), node_id="n1")
        options = redisstore.client_options(cfg, tls.password)
        assert tls.url.startswith("rediss://")
        assert redisstore.check_login(tls.url, options) is None

        async def roundtrip():
            store = redisstore.RedisStore(redisstore.connect(tls.url, **options),
                                          ClusterKey(os.urandom(32)), prefix="hc:tls:")
            from homechannel.coordinator.cluster.redissessions import RedisSessionStore
            from homechannel.testing.coordinator import LoopClock
            from homechannel import aio
            from twisted.internet import defer
            sessions = RedisSessionStore(store, LoopClock())
            await aio.as_future(defer.Deferred.fromCoroutine(
                sessions.create("t" * 22, b"\x04" * 65, source="192.0.2.1")))
            info = await aio.as_future(defer.Deferred.fromCoroutine(sessions.info("t" * 22)))
            await aio.as_future(store.close())
            return info

        assert asyncio.run(roundtrip()).source == "192.0.2.1"
        for change, name in (({"ssl_ca_certs": None}, "no CA file"),
                             ({"ssl_certfile": None, "ssl_keyfile": None}, "no client cert")):
            with pytest.raises(ConfigError, match="TLS to"):
                redisstore.check_login(tls.url, dict(options, **change))
        other_name = tls.url.replace("127.0.0.1", "localhost")
        with pytest.raises(ConfigError, match="TLS to.*names the host"):
            redisstore.check_login(other_name, options)


def node_config(tmp_path, redis, **cluster):
    return write_toml(tmp_path / "node.toml", local.coordinator_config(
        str(tmp_path / "node"), udp_port=free_udp_port(), web_port=free_tcp_port(), extra={
            "admin": {"listen": ""},
            "cluster": {**redis.cluster_config(), "node_id": "n1",
                        "key_file": str(tmp_path / "cluster.key"), **cluster}}))


def test_a_node_does_not_start_with_a_wrong_password_or_without_its_cluster_key(server,
                                                                                 tmp_path):
    """The daemon itself: ``twistd homechannel-coordinator`` with a wrong Redis password,
    and then without the cluster key file, exits at once with a line that says what to
    do, no traceback.  How this was shown to fail: without ``check_login`` in
    ``cluster.build`` the node started with the wrong password (and answered 503)."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    os.chmod(wrong, 0o600)
    keyfiles.create_cluster_key(tmp_path / "cluster.key")
    for cluster, expected in (
            ({"redis_password_file": str(wrong)}, "refused the login"),
            ({"key_file": str(tmp_path / "missing.key")},
             "homechannel cluster-key --key-file")):
        node = Twistd("homechannel-coordinator", node_config(tmp_path, server, **cluster))
        node.start()
        try:
            node.wait_for_log(expected, timeout=30)
            assert node.proc.wait(30) != 0
            assert "Traceback" not in node.output
        finally:
            node.stop()
