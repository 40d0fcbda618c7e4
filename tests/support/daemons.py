"""Build a real coordinator + home server pair (configs, keys, password) for
end-to-end tests, used with the ``twistd`` fixture (tests/e2e/conftest.py); ``kill``
one of them; ``scrape`` a daemon's metrics."""

import os
import signal
import urllib.request
from dataclasses import dataclass

from helpers import free_tcp_port, free_udp_port, write_toml
from keymaterial import place_home_server_key

from homechannel import crypto

PASSWORD = "correct horse battery staple"


@dataclass
class Pair:
    base: str
    coordinator_config: str
    server_config: str
    coordinator_key: crypto.IdentityKey
    server_key: crypto.IdentityKey
    web_port: int
    udp_port: int
    metrics_port: int          # the coordinator's Prometheus listener
    server_metrics_port: int   # the home server's
    files_root: str

    @property
    def url(self):
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def link(self):
        return f"{self.url}/#server={self.server_key.text}"


def make_pair(tmp_path, keepalive=None, server_extra=None, password=PASSWORD, static_dir=None):
    base = str(tmp_path)
    cdir, sdir = os.path.join(base, "coordinator"), os.path.join(base, "server")
    files_root = os.path.join(base, "files")
    os.makedirs(files_root, exist_ok=True)
    ckey, _ = crypto.IdentityKey.load_or_create(os.path.join(cdir, "coordinator.key"))
    place_home_server_key(os.path.join(sdir, "server.key"))    # its password key: derived once
    skey, _ = crypto.IdentityKey.load_or_create(os.path.join(sdir, "server.key"))
    crypto.save_password_key(os.path.join(sdir, "password.json"), skey.public_raw,
                             crypto.derive_password_key(password, skey.public_raw))
    web, udp = free_tcp_port(), free_udp_port()
    metrics, server_metrics = free_tcp_port(), free_tcp_port()
    web_cfg = {"listen": f"tcp:{web}:interface=127.0.0.1",
               "public_url": f"http://127.0.0.1:{web}"}
    if static_dir:
        web_cfg["static_dir"] = static_dir
    ccfg = write_toml(os.path.join(base, "coordinator.toml"), {
        "state_dir": cdir,
        "udp": {"interface": "127.0.0.1", "port": udp, "sweep_interval": 1.0},
        "web": web_cfg,
        # admin: the default, a 0600 UNIX socket in state_dir ('migrate --config').
        "metrics": {"listen": f"tcp:{metrics}:interface=127.0.0.1"},
    })
    server = {
        "state_dir": sdir,
        "coordinator_url": f"http://127.0.0.1:{web}",
        "coordinator": {"host": "127.0.0.1", "port": udp, "public_key": ckey.text},
        "webrtc": {"advertise_addresses": ["127.0.0.1"]},
        "apps": {"files": {"roots": [files_root]}},
        "metrics": {"listen": f"tcp:{server_metrics}:interface=127.0.0.1"},
    }
    if keepalive:
        server["keepalive"] = keepalive
    for section, values in (server_extra or {}).items():
        server.setdefault(section, {}).update(values) if isinstance(values, dict) \
            else server.__setitem__(section, values)
    scfg = write_toml(os.path.join(base, "server.toml"), server)
    return Pair(base, ccfg, scfg, ckey, skey, web, udp, metrics, server_metrics, files_root)


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
