"""The files app against a FakeChannel, file work run synchronously.

Covers: list/stat, download from an offset (resume) with the whole-file
SHA-256, hash mismatch detection, upload size limit refused up front,
cancelled/broken uploads leave no partial file, read-only mode, and the
download backpressure bound (a reader that never drains keeps the server's
buffered bytes bounded).
"""

import hashlib
import os

import pytest
from twisted.internet import defer

from homechannel.config import FilesApp
from homechannel.server.apps import files, frames
from homechannel.server.apps.channel import ChannelLink
from homechannel.server.apps.testing import FakeChannel


def sync_thread(f, *args):
    return defer.maybeDeferred(f, *args)


class Client:
    def __init__(self, root, high=1024 * 1024, low=256 * 1024, **config):
        self.channel = FakeChannel()
        self.link = ChannelLink(self.channel, high=high, low=low)
        self.session = files.FilesSession(FilesApp(roots=(str(root),), **config), self.link,
                                          reactor=None, defer_to_thread=sync_thread)
        self.channel.on("message", self.session.message_received)
        self.seen = 0

    def send(self, ftype, rid, body=None, data=b""):
        self.channel.receive(frames.encode(ftype, rid, body, data))

    def new_frames(self):
        out = self.channel.frames()[self.seen:]
        self.seen += len(out)
        return out

    def request(self, rid, body):
        self.send(frames.REQ, rid, body)
        return self.new_frames()

    def download(self, path, offset=0):
        got = self.request(1, {"op": "download", "root": 0, "path": path, "offset": offset})
        while not got or got[-1].type not in (frames.END, frames.ERR):
            self.channel.drain()
            got += self.new_frames()
        return got

    def upload(self, path, data, rid=2, chunk=frames.CHUNK, end=True, **extra):
        got = self.request(rid, {"op": "upload", "root": 0, "path": path, "size": len(data), **extra})
        if got[-1].type == frames.ERR:
            return got
        assert got[-1].type == frames.ACK and got[-1].body["window"] > 0
        for i in range(0, len(data), chunk):
            self.send(frames.DATA, rid, data=data[i:i + chunk])
        if end:
            self.send(frames.END, rid, {})
        return got + self.new_frames()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_list_and_stat(root):
    (root / "d").mkdir()
    (root / "f").write_bytes(b"12345")
    os.symlink("/etc", root / "escape")
    c = Client(root)
    [res] = c.request(1, {"op": "list", "root": 0, "path": ""})
    assert res.type == frames.RES
    by_name = {e["name"]: e for e in res.body["entries"]}
    assert by_name["d"]["type"] == "dir"
    assert by_name["f"]["type"] == "file" and by_name["f"]["size"] == 5
    assert by_name["escape"]["link"] is True
    [res] = c.request(2, {"op": "stat", "root": 0, "path": "f"})
    assert res.body["entry"]["size"] == 5 and res.body["entry"]["path"] == "f"
    [err] = c.request(3, {"op": "list", "root": 0, "path": "escape"})
    assert err.type == frames.ERR and err.body["code"] == "outside-root"
    [err] = c.request(4, {"op": "list", "root": 0, "path": "../"})
    assert err.body["code"] == "bad-path"


def test_non_utf8_names_are_listed_and_usable(root):
    os.mkdir(os.fsencode(str(root)) + b"/caf\xe9")
    c = Client(root)
    [res] = c.request(1, {"op": "list", "root": 0, "path": ""})
    [entry] = res.body["entries"]
    assert entry["undecodable"] is True
    [res] = c.request(2, {"op": "list", "root": 0, "path": entry["name"]})
    assert res.type == frames.RES and res.body["entries"] == []


def test_download_whole_and_resumed(root):
    data = os.urandom(1_000_003)
    (root / "big.bin").write_bytes(data)
    c = Client(root)
    got = c.download("big.bin")
    assert got[0].type == frames.RES and got[0].body["size"] == len(data)
    body = b"".join(f.data for f in got if f.type == frames.DATA)
    assert body == data
    assert got[-1].body["sha256"] == hashlib.sha256(data).hexdigest()
    # resume from an offset: only the tail comes, the hash still covers the whole file
    c2 = Client(root)
    got = c2.download("big.bin", offset=600_000)
    tail = b"".join(f.data for f in got if f.type == frames.DATA)
    assert tail == data[600_000:]
    assert got[-1].body["sha256"] == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(data[:600_000] + tail).hexdigest() == got[-1].body["sha256"]


def test_hash_detects_a_corrupted_transfer(root):
    data = os.urandom(100_000)
    (root / "f").write_bytes(data)
    got = Client(root).download("f")
    received = bytearray(b"".join(f.data for f in got if f.type == frames.DATA))
    received[5000] ^= 1
    assert hashlib.sha256(received).hexdigest() != got[-1].body["sha256"]


def test_download_bad_offset_and_not_a_file(root):
    (root / "f").write_bytes(b"abc")
    (root / "d").mkdir()
    c = Client(root)
    assert c.download("f", offset=4)[-1].body["code"] == "bad-offset"
    assert c.download("d")[-1].body["code"] == "not-a-file"
    assert c.download("missing")[-1].body["code"] == "not-found"


def test_stalled_reader_keeps_buffered_bytes_bounded(root):
    (root / "huge.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    c = Client(root, high=1024 * 1024, low=256 * 1024)
    got = c.request(1, {"op": "download", "root": 0, "path": "huge.bin"})
    assert got[0].type == frames.RES
    # the reader never drains: the server stops after about one read past the low mark
    bound = 256 * 1024 + files.READ_BLOCK + 64 * 1024
    assert c.channel.bufferedAmount <= bound
    assert c.channel.sent_bytes <= bound
    # draining a little lets exactly a bit more through, never the whole file
    for _ in range(5):
        c.channel.drain(c.channel.bufferedAmount - 100 * 1024)
        assert c.channel.bufferedAmount <= bound
    assert c.channel.max_buffered <= bound
    assert c.channel.sent_bytes < 3 * 1024 * 1024
    # closing the channel stops the transfer
    c.channel.close()
    assert 1 not in c.session.requests


def test_upload_and_sizes(root):
    data = os.urandom(300_001)
    c = Client(root)
    got = c.upload("up.bin", data)
    assert got[-1].type == frames.RES, got[-1]
    assert got[-1].body == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    acks = [f for f in got if f.type == frames.ACK]
    assert acks[-1].body["received"] == len(data)
    assert (root / "up.bin").read_bytes() == data
    assert os.listdir(root) == ["up.bin"]
    # exists without overwrite
    assert c.upload("up.bin", b"x", rid=3)[-1].body["code"] == "exists"
    got = c.upload("up.bin", b"new", rid=4, overwrite=True)
    assert got[-1].type == frames.RES and (root / "up.bin").read_bytes() == b"new"


def test_upload_too_large_refused_up_front(root):
    c = Client(root, max_upload=1000)
    got = c.request(1, {"op": "upload", "root": 0, "path": "x", "size": 1001})
    assert [f.type for f in got] == [frames.ERR]
    assert got[0].body["code"] == "too-large" and got[0].body["maxUpload"] == 1000
    assert os.listdir(root) == []


def test_upload_sending_more_than_declared_fails_and_cleans_up(root):
    c = Client(root)
    got = c.request(1, {"op": "upload", "root": 0, "path": "x", "size": 10})
    assert got[-1].type == frames.ACK
    c.send(frames.DATA, 1, data=b"y" * 11)
    assert c.new_frames()[-1].body["code"] == "too-large"
    assert os.listdir(root) == []


def test_upload_short_or_wrong_hash_is_not_renamed(root):
    c = Client(root)
    got = c.request(1, {"op": "upload", "root": 0, "path": "short", "size": 10})
    c.send(frames.DATA, 1, data=b"abc")
    c.send(frames.END, 1, {})
    assert c.new_frames()[-1].body["code"] == "size-mismatch"
    got = c.upload("bad-hash", b"abc", rid=5, sha256="00" * 32)
    assert got[-1].body["code"] == "hash-mismatch"
    got = c.upload("good-hash", b"abc", rid=6, sha256=hashlib.sha256(b"abc").hexdigest())
    assert got[-1].type == frames.RES
    assert sorted(os.listdir(root)) == ["good-hash"]


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancelled_or_broken_upload_leaves_no_partial_file(root, how):
    c = Client(root)
    got = c.request(1, {"op": "upload", "root": 0, "path": "partial.bin", "size": 500_000})
    assert got[-1].type == frames.ACK
    c.send(frames.DATA, 1, data=os.urandom(frames.CHUNK))
    assert any(n.startswith(files.TEMP_PREFIX) for n in os.listdir(root))  # streaming to a temp file
    if how == "cancel":
        c.send(frames.CANCEL, 1, {})
        assert c.new_frames()[-1].body["code"] == "cancelled"
    else:
        c.channel.close()
    assert os.listdir(root) == []
    assert c.session.requests == {}


def test_upload_beyond_window_is_a_protocol_error(root):
    held = []

    def slow_disk(f, *args):  # writes never finish until released
        if f.__name__ == "_write":
            d = defer.Deferred()
            held.append((d, f, args))
            return d
        return sync_thread(f, *args)

    c = Client(root)
    c.session._thread = slow_disk
    c.request(1, {"op": "upload", "root": 0, "path": "x", "size": 10 * 1024 * 1024})
    for _ in range((files.UPLOAD_WINDOW + files.UPLOAD_SLACK) // frames.CHUNK + 2):
        c.send(frames.DATA, 1, data=b"z" * frames.CHUNK)
    job = c.session.requests[1]
    assert job.pending_bytes <= files.UPLOAD_WINDOW + files.UPLOAD_SLACK  # memory bounded
    for d, f, args in held:
        d.callback(f(*args))
    assert c.new_frames()[-1].body["code"] == "window"
    assert os.listdir(root) == []


def test_mkdir_rename_delete(root):
    c = Client(root)
    assert c.request(1, {"op": "mkdir", "root": 0, "path": "a"})[0].type == frames.RES
    (root / "a" / "f").write_text("x")
    assert c.request(2, {"op": "rename", "root": 0, "path": "a/f", "to": "g"})[0].type == frames.RES
    assert (root / "g").exists()
    assert c.request(3, {"op": "rename", "root": 0, "path": "a", "to": "a/b"})[0].body["code"] == "bad-request"
    (root / "a" / "inner").write_text("y")
    assert c.request(4, {"op": "delete", "root": 0, "path": "a"})[0].body["code"] == "not-empty"
    assert c.request(5, {"op": "delete", "root": 0, "path": "a", "recursive": True})[0].type == frames.RES
    assert c.request(6, {"op": "delete", "root": 0, "path": ""})[0].body["code"] == "is-root"
    os.symlink("/etc", root / "etc-link")
    # deleting a link removes the link, never what it points to
    assert c.request(7, {"op": "delete", "root": 0, "path": "etc-link", "recursive": True})[0].type == frames.RES
    assert os.path.exists("/etc/passwd")
    assert sorted(os.listdir(root)) == ["g"]


def test_read_only_refuses_writes(root):
    (root / "f").write_text("x")
    c = Client(root, read_only=True)
    for rid, body in enumerate([
        {"op": "upload", "root": 0, "path": "n", "size": 1},
        {"op": "mkdir", "root": 0, "path": "d"},
        {"op": "rename", "root": 0, "path": "f", "to": "g"},
        {"op": "delete", "root": 0, "path": "f"},
    ], start=1):
        [err] = c.request(rid, body)
        assert err.body["code"] == "read-only"
    assert os.listdir(root) == ["f"]
    assert c.download("f")[-1].type == frames.END


def test_garbage_and_unknown_ops_get_structured_errors(root):
    c = Client(root)
    c.channel.receive(b"\x99garbage")
    [err] = c.new_frames()
    assert err.type == frames.ERR and err.body["code"] == "protocol"
    [err] = c.request(1, {"op": "format_disk"})
    assert err.body["code"] == "unknown-op"
    [err] = c.request(2, {"op": "list", "root": "zero"})
    assert err.body["code"] == "bad-request"
