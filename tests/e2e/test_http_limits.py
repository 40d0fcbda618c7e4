"""The HTTP limits in a real ``twistd homechannel-coordinator``: the tap builds
the limited site from the configuration (body limit, connection caps, header
timeout) and raises the open-file limit for its connections."""

import json
import socket
import time
import tomllib

from helpers import write_toml
from daemons import make_pair

from homechannel import crypto


def start(tmp_path, twistd, **web):
    pair = make_pair(tmp_path)
    with open(pair.coordinator_config, "rb") as f:
        cfg = tomllib.load(f)
    cfg["web"].update(web)
    write_toml(pair.coordinator_config, cfg)
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log(rf"starting on {pair.web_port}\b")
    return pair, coordinator


def connect(pair):
    return socket.create_connection(("127.0.0.1", pair.web_port), timeout=30)


def read_all(s):
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def test_oversized_body_refused_unread_and_signed(tmp_path, twistd):
    pair, coordinator = start(tmp_path, twistd, max_body=4096)
    s = connect(pair)
    s.sendall(b"POST /api/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 50000000\r\n\r\n")
    data = read_all(s)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 ")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    signature = crypto.b64u_decode(headers[b"X-HomeChannel-Signature"].decode())
    crypto.verify(pair.coordinator_key.public_raw, signature,
                  crypto.response_signature_message("/api/connect", body))
    assert json.loads(body)["code"] == "too-large"
    assert "Traceback" not in coordinator.output


def test_connection_cap_and_header_timeout(tmp_path, twistd):
    pair, coordinator = start(tmp_path, twistd, max_connections_per_source=3,
                              header_timeout=1.0)
    held = [connect(pair) for _ in range(3)]
    time.sleep(0.3)
    start_refused = time.monotonic()
    try:
        extra = connect(pair)
    except ConnectionResetError:
        # Reset before connect() returned: a loaded machine may run the coordinator's
        # accept-and-close before this thread is back from connect().
        pass
    else:
        assert read_all(extra) == b""                # closed at once, nothing said
    assert time.monotonic() - start_refused < 5.0
    # The held ones send nothing: each is cut after the header timeout (408).
    for s in held:
        assert read_all(s).startswith(b"HTTP/1.1 408 ")
    # Then the source has its places back.
    s = connect(pair)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert read_all(s).startswith(b"HTTP/1.1 200 ")
    # The tap raised the open-file limit for max_connections (10,000 + 1,024).
    with open(f"/proc/{coordinator.proc.pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert int(soft) >= min(11_024, int(hard))
