"""One address must not take the API down behind haproxy: a real ``twistd
homechannel-coordinator`` (trusting 127.0.0.1) behind haproxy with
``conf/haproxy/homechannel.cfg`` as shipped (its ports replaced, the TLS bind a plain
loopback one, and maxconn scaled down with the attack), attacked from 127.0.0.2
while 127.0.0.3 uses it."""

import http.client
import time
import tomllib

import pytest

from helpers import write_toml
from daemons import make_pair
from cluster import Haproxy
from slowloris import Slowloris, assert_served_during, timed_get

# The example's maxconn is 8,000; an attack as big would take minutes to set up, so
# both are scaled down together: the attacker opens more than all of them.
MAXCONN = 256
ATTACK = 300


@pytest.fixture
def behind_haproxy(tmp_path, twistd):
    pair = make_pair(tmp_path)
    with open(pair.coordinator_config, "rb") as f:
        cfg = tomllib.load(f)
    cfg["web"]["trusted_proxies"] = ["127.0.0.1"]
    write_toml(pair.coordinator_config, cfg)
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log(rf"starting on {pair.web_port}\b")
    haproxy = Haproxy(str(tmp_path), [("node-1", pair.web_port)], maxconn=MAXCONN).start()
    deadline = time.monotonic() + 15
    while timed_get(haproxy.port, "127.0.0.3")[0] != 200:   # the health check passed
        assert time.monotonic() < deadline, open(haproxy.config + ".log").read()
        time.sleep(0.2)
    yield pair, coordinator, haproxy
    haproxy.stop()
    print("--- haproxy ---\n" + open(haproxy.config + ".log").read()[-5000:])


def test_a_slowloris_from_one_address_does_not_stop_another(behind_haproxy):
    """300 connections from 127.0.0.2, each sending a request head a byte at a time
    (and opened again whenever haproxy closes one), against a maxconn of 256:
    127.0.0.3 is still answered at once, because haproxy holds at most 64 connections
    per source from the moment it accepts them, and cuts each slow head after 5 s
    (``timeout http-request``).  How this was shown to fail: with the example before
    (no per-source limit, no ``timeout http-request``), the attack held all 256
    places and 127.0.0.3 got no answer; with only the ``tcp-request connection``
    lines taken out, 127.0.0.3 was answered only once the first slow heads were cut,
    3.5 s later; with only ``timeout http-request`` taken out, the heads were held as
    long as they trickled (8.6 s at the check)."""
    _, _, haproxy = behind_haproxy
    attack = Slowloris(haproxy.port, "127.0.0.2", ATTACK).start()
    try:
        attack.wait_in_full_swing()
        assert_served_during(attack, haproxy.port, "127.0.0.3")
        # Slow heads are cut, not held: none lives past the 5 s head timeout (+ slack).
        time.sleep(7.0)
        assert 0 < attack.cut and attack.held_now() < 7.0, (attack.cut, attack.held_now())
        assert attack.holding <= 64 + 1, attack.holding
        assert any(a.startswith(b"HTTP/1.1 408") for a in attack.answers), attack.answers[:5]
        # And still served.
        assert timed_get(haproxy.port, "127.0.0.3")[0] == 200
    finally:
        attack.stop()


def _api_flood(port, source, count, path):
    """*count* requests on one kept-alive connection from *source* (fewer if the
    server closes it): ``[(status, signed)]``."""
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": "coordinator.test"})
            response = conn.getresponse()
            response.read()
            out.append((response.status,
                        response.getheader("X-HomeChannel-Signature") is not None))
            if response.will_close:
                break
    finally:
        conn.close()
    return out


def test_a_request_flood_from_one_address_gets_429_while_another_is_served(behind_haproxy):
    """150 API requests from 127.0.0.2 in a burst: haproxy passes 100 (the
    coordinator's signed answers) and refuses the rest itself (429, unsigned: the
    nodes never see them), while 127.0.0.3's API request is still answered by the
    coordinator.  How this was shown to fail: with the example before (no rate
    limit), all 150 were the coordinator's signed 404s."""
    _, _, haproxy = behind_haproxy
    flood = []
    while len(flood) < 150:     # haproxy closes the connection after its refusal
        flood += _api_flood(haproxy.port, "127.0.0.2", 150 - len(flood), "/api/nothing")
    passed = [r for r in flood if r == (404, True)]
    assert 95 <= len(passed) <= 101, flood
    assert flood[:len(passed)] == passed, flood
    assert set(flood[len(passed):]) == {(429, False)}, flood
    assert _api_flood(haproxy.port, "127.0.0.3", 1, "/api/nothing") == [(404, True)]
