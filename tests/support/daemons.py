"""Build a real coordinator + home server pair (configs, keys, password) for
end-to-end tests, with ``homechannel.testing.local`` (the demo's and the
benchmarks' builder too) on free loopback ports; used with the ``twistd`` fixture
(tests/e2e/conftest.py); ``kill`` one of them; ``scrape`` a daemon's metrics."""

import os
import signal
import urllib.request

from helpers import free_tcp_port, free_udp_port
from keymaterial import place_home_server_key

from homechannel.testing.local import LocalPair, merge, write_pair

PASSWORD = "correct horse battery staple"

# What make_pair returns: configs, keys, ports, ``url`` and ``link``.
Pair = LocalPair


def make_pair(tmp_path, keepalive=None, server_extra=None, password=PASSWORD, static_dir=None,
              coordinator_extra=None, web_port=None, udp_port=None, **kwargs):
    """A pair on free ports (or *web_port*, *udp_port*); *server_extra* and
    *coordinator_extra* are tables merged into the configs (``local.merge``), *kwargs*
    go to ``local.write_pair``."""
    keys_dir = kwargs.get("keys_dir") or os.path.join(str(tmp_path), "server")
    place_home_server_key(os.path.join(keys_dir, "server.key"))    # its password key: derived once
    return write_pair(
        str(tmp_path), web_port=web_port or free_tcp_port(),
        udp_port=udp_port or free_udp_port(), password=password,
        metrics_port=free_tcp_port(), server_metrics_port=free_tcp_port(),
        static_dir=static_dir,
        # admin: the default, a 0600 UNIX socket in state_dir ('migrate --config').
        coordinator_extra=merge({"udp": {"sweep_interval": 1.0}}, coordinator_extra),
        server_extra=merge({"keepalive": keepalive} if keepalive else {}, server_extra),
        **kwargs)


def kill(proc_wrapper):
    """SIGKILL a Twistd child (a crash, not a clean stop)."""
    os.killpg(proc_wrapper.proc.pid, signal.SIGKILL)
    proc_wrapper.proc.wait(10)


def scrape(port):
    """``{(name, labels tuple): value}`` of a daemon's Prometheus listener on *port*,
    parsed with Prometheus's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        status, body = resp.status, resp.read()
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples
