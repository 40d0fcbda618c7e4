"""HTTPS a person can keep running.

(a) The coordinator's own ``ssl:`` endpoint with certbot's files, renewed:
new files in certbot's layout, SIGHUP, and the next TLS connection gets the
new certificate while the UDP registry keeps every server (no registration
again).  A broken renewal (key and certificate that do not match) keeps the
old certificate.
"""

import os
import signal
import socket
import ssl
import time

from daemons import scrape
from helpers import free_tcp_port
from browser import start_pair
from testca import TestCA, certbot_layout


def served_serial(port, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            from cryptography import x509
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)) \
                .serial_number


def wait_serial(port, cafile, want, timeout=20):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            got = served_serial(port, cafile)
            if got == want:
                return got
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"served serial {got}, want {want}")


def test_certbot_renewal_reloads_on_sighup(tmp_path, twistd):
    ca = TestCA()
    cafile = str(tmp_path / "root.pem")
    open(cafile, "wb").write(ca.root_pem)
    letsencrypt = str(tmp_path / "letsencrypt")
    key1, chain1, _ = ca.issue(["127.0.0.1", "localhost"], serial=1001)
    key_path, chain_path = certbot_layout(letsencrypt, "hc", key1, chain1, 1)

    port = free_tcp_port()
    pair, coordinator, server = start_pair(twistd, tmp_path, coordinator_web={
        "listen": f"ssl:{port}:interface=127.0.0.1:privateKey={key_path}:certKey={chain_path}"})
    # The chain (intermediate) is sent: a client trusting only the root verifies it.
    assert wait_serial(port, cafile, 1001) == 1001
    before = scrape(pair.metrics_port)
    mark = server.mark()

    # certbot renews: new files, same live/ paths; its deploy hook signals.
    key2, chain2, _ = ca.issue(["127.0.0.1", "localhost"], serial=2002)
    certbot_layout(letsencrypt, "hc", key2, chain2, 2)
    os.kill(coordinator.proc.pid, signal.SIGHUP)
    coordinator.wait_for_log("TLS certificate reloaded: serial 7d2")   # 2002 in hex
    assert wait_serial(port, cafile, 2002) == 2002
    after = scrape(pair.metrics_port)
    reg = ("homechannel_coordinator_registered_servers", ())
    regs = ("homechannel_coordinator_registrations_total", ())
    assert after[reg] == before[reg] == 1
    assert after[regs] == before[regs]        # nobody had to register again
    assert "registered with coordinator" not in server.output[mark:]

    # A broken renewal (a key from another certificate) keeps the old one.
    key3, _, _ = ca.issue(["127.0.0.1"], serial=3003)
    _, chain4, _ = ca.issue(["127.0.0.1"], serial=4004)
    certbot_layout(letsencrypt, "hc", key3, chain4, 3)
    os.kill(coordinator.proc.pid, signal.SIGHUP)
    coordinator.wait_for_log("TLS certificate not reloaded, the old one stays in use: "
                             "the private key .* does not belong")
    assert served_serial(port, cafile) == 2002
    assert coordinator.returncode is None
    assert "Traceback" not in coordinator.output
