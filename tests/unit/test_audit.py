"""The home server's audit log: one line per file upload, download, rename and
delete (done or refused), none for listings; login lines come from the UDP
adapter (tests/unit/test_udp_adapters.py, tests/e2e/test_nginx.py)."""

import pytest
from twisted.logger import globalLogPublisher

from homechannel.protocol import frames
from filesclient import Client


@pytest.fixture
def audit_lines():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield lambda: [e for e in seen if e.get("audit") == "file"]
    globalLogPublisher.removeObserver(seen.append)


def test_every_file_change_and_download_is_one_line(tmp_path, audit_lines):
    root = tmp_path / "root"
    root.mkdir()
    c = Client(root)
    assert c.upload("up.txt", b"hello")[-1].type == frames.RES
    assert c.download("up.txt")[-1].type == frames.END
    c.request(3, {"op": "list", "root": 0, "path": ""})
    assert c.request(4, {"op": "rename", "root": 0, "path": "up.txt",
                         "to": "moved.txt"})[-1].type == frames.RES
    assert c.request(5, {"op": "delete", "root": 0, "path": "moved.txt"})[-1].type == frames.RES
    assert c.request(6, {"op": "delete", "root": 0, "path": "../outside"})[-1].type == frames.ERR
    lines = audit_lines()
    got = [(e["op"], e["result"], e["path"]) for e in lines]
    assert got == [("upload", "done", "up.txt"), ("download", "done", "up.txt"),
                   ("rename", "done", "up.txt"), ("delete", "done", "moved.txt"),
                   ("delete", "refused", "../outside")]
    assert lines[0]["size"] == 5 and lines[2]["to"] == "moved.txt"
    assert all(e["log_format"].startswith("audit: file ") for e in lines)


def test_conch_debug_lines_stay_out_of_the_log():
    """The SSH client's per-step debug lines (kex, services, channel requests) are
    dropped; its info lines (connection lost) still reach the log."""
    from homechannel.server.apps import terminal

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for cls in (terminal._Transport, terminal._UserAuth, terminal._Connection,
                    terminal._Shell):
            cls._log.debug("NEW KEYS from {cls}", cls=cls.__name__)
            cls._log.info("connection lost in {cls}", cls=cls.__name__)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    texts = [e["log_format"] for e in seen]
    assert "NEW KEYS from {cls}" not in texts
    assert texts.count("connection lost in {cls}") == 4
