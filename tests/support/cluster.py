"""A real coordinator cluster for end-to-end tests and benches: a redis-server
(with ``conf/redis/users.acl`` as written: ``services.RedisServer``), N ``twistd
homechannel-coordinator`` nodes sharing one identity key and one cluster key, haproxy
in front of them (``conf/haproxy/homechannel.cfg`` as written, with loopback
ports), and home server configs that list every node's UDP address."""

import os
import re
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from helpers import (REPO, Twistd, free_tcp_port, free_udp_port, require_module,
                      require_tool, write_toml)
from daemons import PASSWORD
from keymaterial import place_home_server_key
from services import RedisServer, wait_for_port

from homechannel import crypto, keyfiles
from homechannel.testing import local

HAPROXY_EXAMPLE = os.path.join(REPO, "conf", "haproxy", "homechannel.cfg")


def haproxy_config(frontend_port, nodes, maxconn=None):
    """The example configuration with loopback addresses: a plain bind on
    *frontend_port* instead of TLS, and one server line per ``(name, port)``;
    *maxconn* (if given) in place of the example's, to scale a test down."""
    with open(HAPROXY_EXAMPLE) as f:
        text = f.read()
    text = re.sub(r"(?m)^    bind .*$", f"    bind 127.0.0.1:{frontend_port}", text)
    if maxconn is not None:
        text, n = re.subn(r"(?m)^    maxconn \d+$", f"    maxconn {maxconn}", text)
        assert n == 1, "the example no longer has one maxconn line: update this helper"
    text = re.sub(r"(?m)^    server .*\n", "", text)
    text = text.rstrip("\n") + "\n" + "".join(
        f"    server {name} 127.0.0.1:{port}\n" for name, port in nodes)
    assert "ssl" not in text.split("frontend", 1)[1]
    return text


class Haproxy:
    def __init__(self, base, nodes, maxconn=None):
        self.binary = require_tool("haproxy", "haproxy")
        self.port = free_tcp_port()
        self.config = os.path.join(base, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(haproxy_config(self.port, nodes, maxconn))
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        subprocess.run([self.binary, "-c", "-q", "-f", self.config], check=True)
        self.log = open(self.config + ".log", "w")
        self.proc = subprocess.Popen([self.binary, "-db", "-f", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.proc, self.port, "haproxy", lambda: open(self.config + ".log").read())
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


@dataclass
class Node:
    name: str
    config: str
    web_port: int
    udp_port: int
    metrics_port: int = None
    proc: Twistd = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.web_port}"


@dataclass
class Cluster:
    base: str
    redis: RedisServer
    haproxy: Haproxy
    nodes: list
    coordinator_key: crypto.IdentityKey
    server_key: crypto.IdentityKey = None
    server_config: str = ""
    files_root: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def url(self):
        return self.haproxy.url

    @property
    def link(self):
        return f"{self.url}/#server={self.server_key.text}"

    def start_node(self, node):
        node.proc = Twistd("homechannel-coordinator", node.config).start()
        node.proc.tapname = node.name
        node.proc.wait_for_log("coordinator: UDP", timeout=60)
        return node.proc

    def stop(self):
        for node in self.nodes:
            if node.proc is not None:
                status = node.proc.stop()
                print(f"--- {node.name} (exit status {status}) ---\n{node.proc.output[-20000:]}")
        self.haproxy.stop()
        self.redis.stop()


def make_cluster(tmp_path, n=2, web=None, udp=None, cluster=None, access_log=True):
    """Configs for a redis-server, *n* nodes and haproxy (not started)."""
    base = str(tmp_path)
    require_tool("haproxy", "haproxy")
    require_module("redis", "pip install 'homechannel[cluster]' (make venv does it)")
    redis = RedisServer(tmp_path)
    key_path = os.path.join(base, "cluster", "coordinator.key")
    ckey, _ = keyfiles.load_or_create_identity_key(key_path)
    cluster_key = os.path.join(base, "cluster", "cluster.key")
    keyfiles.create_cluster_key(cluster_key)
    nodes = []
    for i in range(1, n + 1):
        name = f"node-{i}"
        web_port, udp_port, metrics_port = free_tcp_port(), free_udp_port(), free_tcp_port()
        cfg = local.coordinator_config(
            os.path.join(base, name), udp_port=udp_port, web_port=web_port,
            metrics_port=metrics_port, identity_key=key_path, extra={
                "udp": {"sweep_interval": 1.0, **(udp or {})},
                "web": {"public_url": "http://127.0.0.1", "trusted_proxies": ["127.0.0.1"],
                        "access_log": access_log, **(web or {})},
                "admin": {"listen": ""},
                "cluster": {**redis.cluster_config(), "node_id": name,
                            "key_file": cluster_key, **(cluster or {})},
            })
        path = write_toml(os.path.join(base, f"{name}.toml"), cfg)
        nodes.append(Node(name, path, web_port, udp_port, metrics_port))
    haproxy = Haproxy(base, [(node.name, node.web_port) for node in nodes])
    c = Cluster(base, redis, haproxy, nodes, ckey)
    c.extra["cluster_key"] = cluster_key
    return c


def add_home_server(c, keepalive=None, password=PASSWORD):
    """A home server config listing every node's UDP address."""
    sdir = os.path.join(c.base, "server")
    c.files_root = os.path.join(c.base, "files")
    os.makedirs(c.files_root, exist_ok=True)
    place_home_server_key(os.path.join(sdir, "server.key"))    # its password key: derived once
    c.server_key = local.server_keys(os.path.join(sdir, "server.key"),
                                     os.path.join(sdir, "password.json"), password)
    server = local.server_config(
        sdir, coordinator_key_text=c.coordinator_key.text, udp_port=c.nodes[0].udp_port,
        web_port=c.haproxy.port, files_root=c.files_root, extra={
            # every node: host and port are not used
            "coordinator": {"addresses": [f"127.0.0.1:{node.udp_port}" for node in c.nodes]},
            "webrtc": {"ice_servers": []},
            "keepalive": keepalive or {},
        })
    c.server_config = write_toml(os.path.join(c.base, "server.toml"), server)
    return c.server_config


def start_cluster(c):
    c.redis.start()
    for node in c.nodes:
        c.start_node(node)
    c.haproxy.start()
    deadline = time.monotonic() + 20
    import urllib.request
    while True:
        try:
            with urllib.request.urlopen(c.url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return c
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("haproxy did not reach the nodes")
        time.sleep(0.2)
