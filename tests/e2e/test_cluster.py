"""The coordinator cluster end to end: a real redis-server, two ``twistd
homechannel-coordinator`` nodes sharing one identity key, haproxy in front of
them (round robin, no stickiness: ``conf/haproxy/homechannel.cfg``), a real
home server, Chromium and the native client.

One cluster is shared by the tests of this module, in order (the last one
kills a node).  Missing redis-server or haproxy: skipped outside CI, naming the
package; in CI they fail."""

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from cluster import add_home_server, make_cluster, start_cluster
from helpers import Twistd
from daemons import kill
from browser import connect, open_link
from nativeclient import python_connect

from homechannel import crypto


KEEPALIVE = {"interval": 3.0, "jitter": 0.2, "missed_pongs": 3}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("cluster"))
    add_home_server(c, keepalive=KEEPALIVE)
    try:
        start_cluster(c)
        server = Twistd("homechannel-server", c.server_config).start()
        c.extra["server"] = server
        server.wait_for_log("registered with coordinator", timeout=30)
        yield c
    finally:
        server = c.extra.get("server")
        if server is not None:
            status = server.stop()
            print(f"--- home server (exit status {status}) ---\n{server.output[-20000:]}")
        c.stop()


def api(url, path, body=None, source=None, timeout=30):
    """``(status, doc)`` of one API request; *source* goes in X-Forwarded-For."""
    headers = {"Content-Type": "application/json"}
    if source:
        headers["X-Forwarded-For"] = source
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def served(cluster, marks, pattern):
    """The names of the nodes whose access log shows *pattern* since *marks*."""
    return [node.name for node in cluster.nodes
            if re.search(pattern, node.proc.output[marks[node.name]:])]


def marks(cluster):
    return {node.name: node.proc.mark() for node in cluster.nodes}


def test_chromium_and_the_native_client_connect_with_requests_on_both_nodes(
        cluster, chromium_page):
    """Each connect's lookup and connect land on different nodes (haproxy's round
    robin; read from the nodes' access logs): the offer crosses to the node the home
    server registered with, and the answer comes back, through Redis."""
    page = chromium_page
    open_link(page, cluster)
    before = marks(cluster)
    connect(page)
    lookup = served(cluster, before, r'"GET /api/servers/')
    posted = served(cluster, before, r'"POST /api/connect')
    assert lookup and posted and set(lookup) | set(posted) == {"node-1", "node-2"}, \
        (lookup, posted)
    page.get_by_role("button", name="Disconnect").click()

    before = marks(cluster)
    hello, state = python_connect(cluster)
    assert hello["op"] == "hello" and state == "connected"
    lookup = served(cluster, before, r'"GET /api/servers/')
    posted = served(cluster, before, r'"POST /api/connect')
    assert set(lookup) | set(posted) == {"node-1", "node-2"}, (lookup, posted)
    # The relayed offers were received by the node the home server is registered with.
    server = cluster.extra["server"]
    assert server.output.count("registered with coordinator 127.0.0.1:%d"
                               % cluster.nodes[0].udp_port) >= 1


def wrong_attempt(url, c, source, lookup_url=None):
    """A lookup (at *lookup_url*, default *url*) and a connect with a wrong password."""
    for _ in range(50):
        status, doc = api(lookup_url or url, f"/api/servers/{c.server_key.text}",
                          source=source)
        assert status == 200 and doc["online"], doc
        if doc["challenge"]:
            break
        time.sleep(0.1)        # the pool is being refilled
    challenge = crypto.b64u_decode(doc["challenge"])
    wrong = crypto.challenge_answer(bytes(32), challenge)
    body = {"server": c.server_key.text, "session": crypto.b64u_encode(bytes(16)[:8] +
                                                                        time.time_ns().to_bytes(8, "big")),
            "challenge": doc["challenge"], "answer": crypto.b64u_encode(wrong),
            "proof": crypto.b64u_encode(bytes(32)), "offer": OFFER}
    return api(url, "/api/connect", body, source=source)


FP = ":".join(["AB"] * 32)
OFFER = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
         "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
         "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
         f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\na=mid:0\r\n"
         "a=sctp-port:5000\r\n")


def test_five_wrong_passwords_over_both_nodes_lock_the_source_out_on_both(cluster):
    source = "203.0.113.77"
    before = marks(cluster)
    for i in range(5):
        # Lookups straight to a node, so the connects alone alternate in haproxy.
        status, doc = wrong_attempt(cluster.url, cluster, source, cluster.nodes[i % 2].url)
        assert (status, doc["code"]) == (403, "wrong-password"), doc
    assert served(cluster, before, r'"POST /api/connect') == ["node-1", "node-2"]
    for node in cluster.nodes:
        assert node.proc.output[before[node.name]:].count('"POST /api/connect') >= 2
    for node in cluster.nodes:       # straight to each node, past haproxy
        status, doc = wrong_attempt(node.url, cluster, source)
        assert (status, doc["code"]) == (429, "locked-out"), (node.name, doc)
        assert 50 <= doc["retry_after"] <= 60
    # The home server logged every failed login (NOTICEs relayed to its node).
    server = cluster.extra["server"]
    deadline = time.monotonic() + 10
    while server.output.count(f"refused login, session -, source {source}") < 5:
        assert time.monotonic() < deadline, server.output[-3000:]
        time.sleep(0.2)


def test_redis_restart_gives_clear_errors_then_recovers_without_restarting_anything(cluster):
    cluster.redis.stop()
    for node in cluster.nodes:
        status, doc = api(node.url, f"/api/servers/{cluster.server_key.text}")
        assert status == 503 and doc["code"] == "unavailable", doc
        assert doc["error"] == ("the coordinator cluster's store is unavailable: "
                                "try again shortly")
        node.proc.wait_for_log("lost the cluster's Redis store", timeout=10)
    cluster.redis.start()            # empty: it kept nothing
    for node in cluster.nodes:
        node.proc.wait_for_log("the cluster's Redis store is back", timeout=15)
    # The owning node wrote its directory entry again and asked for fresh challenges.
    deadline = time.monotonic() + 10
    while True:
        status, doc = api(cluster.url, f"/api/servers/{cluster.server_key.text}")
        if status == 200 and doc["challenge"]:
            break
        assert time.monotonic() < deadline, (status, doc)
        time.sleep(0.2)
    hello, state = python_connect(cluster)
    assert hello["op"] == "hello" and state == "connected"
    for node in cluster.nodes:
        assert node.proc.returncode is None
    assert cluster.extra["server"].returncode is None


def test_a_killed_node_is_replaced_within_one_keepalive_and_the_next_connect_succeeds(cluster):
    """SIGKILL the node the home server is registered with: it registers with the other
    node within one keepalive interval of its first unanswered ping (the ping comes at
    most interval x 1.2 after the kill), haproxy takes the dead node out, and the next
    connect (Chromium-free: the native client) succeeds."""
    server = cluster.extra["server"]
    first, second = cluster.nodes
    mark = server.mark()
    killed_at = time.monotonic()
    kill(first.proc)
    interval = KEEPALIVE["interval"]
    bound = interval * (1 + KEEPALIVE["jitter"]) + interval
    server.wait_for_log(r"failed over from coordinator 127\.0\.0\.1:%d to "
                        r"127\.0\.0\.1:%d" % (first.udp_port, second.udp_port),
                        timeout=bound + 10, since=mark)
    took = time.monotonic() - killed_at
    print(f"re-registered with {second.name} {took:.1f} s after the kill (keepalive "
          f"{interval:g} s)")
    assert took <= bound + 2.0, took
    m = server.wait_for_log(r"coordinator \S+ stopped answering \((\d) ping", since=mark)
    assert m.group(1) == "1"       # at the first unanswered ping, not after 3
    deadline = time.monotonic() + 15
    while True:                    # haproxy's health check takes node-1 out (2 s)
        try:
            hello, state = python_connect(cluster)
            break
        except Exception as e:  # noqa: BLE001 - a request that reached the dead node
            assert time.monotonic() < deadline, e
            time.sleep(1)
    assert hello["op"] == "hello" and state == "connected"


def test_a_cluster_node_on_another_reactor_is_a_clear_error(tmp_path):
    """[cluster] needs the asyncio reactor (installed by itself without --reactor);
    given another, the node stops with advice, not a traceback."""
    from helpers import write_toml

    cfg = write_toml(tmp_path / "node.toml", {
        "state_dir": str(tmp_path), "admin": {"listen": ""},
        "web": {"listen": "tcp:0:interface=127.0.0.1"},
        "udp": {"interface": "127.0.0.1", "port": 0},
        "metrics": {"listen": ""},
        "cluster": {"redis_url": "redis://127.0.0.1:1/0", "node_id": "n1",
                    "redis_password_file": str(tmp_path / "redis-password")}})
    node = Twistd("homechannel-coordinator", cfg)
    node.cmd.insert(node.cmd.index("homechannel-coordinator"), "--reactor=poll")
    node.start()
    try:
        node.wait_for_log("needs Twisted's asyncio reactor", timeout=30)
        assert node.proc.wait(30) != 0
        assert "Traceback" not in node.output
    finally:
        node.stop()
