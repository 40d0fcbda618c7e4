"""The files app against a FakeChannel, file work run synchronously.

Covers: list/stat, download from an offset (resume) with the whole-file
SHA-256, hash mismatch detection, upload size limit refused up front,
cancelled/broken uploads leave no partial file, read-only mode, and the
download backpressure bound (a reader that never drains keeps the server's
buffered bytes bounded); special files (FIFOs, devices, sockets) never read or
replaced; and the races: a directory swapped for a symlink to outside before
each file-system call in turn (``fsrace.Interleave``) and by a concurrent
process, a target that appears during a rename without overwrite, and
recursive delete through links.
"""

import hashlib
import os
import socket
import stat

import pytest
from twisted.internet import defer

from homechannel.server.apps import files, paths
from homechannel.protocol import frames

from filesclient import Client, sync_thread
from fsrace import Flipper, Interleave, exchange, run_with_timeout, snapshot


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


def test_download_window_holds_the_sender_until_the_client_acknowledges(root):
    """A download with a window: the server sends at most that many bytes beyond the
    client's ACK ``received``, however fast the channel drains, and goes on as ACKs
    come.  How this was shown to fail: with ``_wait_room`` returning at once, the
    whole 5 MiB went out before the first ACK."""
    data = os.urandom(5 * 1024 * 1024 + 17)
    (root / "big.bin").write_bytes(data)
    window = files.MIN_DOWNLOAD_WINDOW
    c = Client(root)
    got = c.request(1, {"op": "download", "root": 0, "path": "big.bin", "window": window})
    assert got[0].type == frames.RES

    def sent():
        return sum(len(f.data) for f in c.channel.frames() if f.type == frames.DATA)

    def drained():
        for _ in range(40):     # as far as the channel alone would let it go
            c.channel.drain()

    drained()
    assert 0 < sent() <= window   # the channel is drained: only the window holds it back
    taken = 0
    while got[-1].type not in (frames.END, frames.ERR):
        assert sent() - taken <= window
        taken = sent()
        c.send(frames.ACK, 1, {"received": taken})
        drained()
        got += c.new_frames()
    assert got[-1].type == frames.END and got[-1].body["size"] == len(data)
    assert b"".join(f.data for f in got if f.type == frames.DATA) == data
    assert got[-1].body["sha256"] == hashlib.sha256(data).hexdigest()


def test_download_window_bad_values_and_bad_acks(root):
    """A window out of bounds is refused; an ACK that is not an int, or beyond what was
    sent, ends the download with ERR (and nothing more is sent for it); an ACK for no
    download, or moving back, is ignored."""
    (root / "f").write_bytes(os.urandom(3 * 1024 * 1024))
    c = Client(root)
    for rid, window in ((1, 1024), (2, 10 ** 12), (3, "big"), (4, True)):
        [err] = c.request(rid, {"op": "download", "root": 0, "path": "f", "window": window})
        assert err.type == frames.ERR and err.body["code"] == "bad-request", err
    for rid, ack in ((5, {"received": "all"}), (6, {"received": 10 ** 9}), (7, {})):
        got = c.request(rid, {"op": "download", "root": 0, "path": "f",
                              "window": files.MIN_DOWNLOAD_WINDOW})
        c.channel.drain()
        c.send(frames.ACK, rid, ack)
        c.channel.drain()
        got += c.new_frames()
        assert got[-1].type == frames.ERR, (ack, got[-1])
        assert got[-1].body["code"] == ("window" if ack.get("received") == 10 ** 9
                                        else "bad-request")
        assert rid not in c.session.requests
        c.channel.drain()
        assert c.new_frames() == []
    c.send(frames.ACK, 99, {"received": 5})          # no such download: ignored
    got = c.request(8, {"op": "download", "root": 0, "path": "f",
                        "window": files.MIN_DOWNLOAD_WINDOW})
    c.channel.drain()
    c.send(frames.ACK, 8, {"received": 0})            # backwards: ignored
    c.send(frames.CANCEL, 8, {})
    c.channel.drain()
    got += c.new_frames()
    assert got[-1].type == frames.ERR and got[-1].body["code"] == "cancelled"


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


@pytest.fixture
def umask():
    """Set the process's umask for one test (restored after it)."""
    old = os.umask(0o022)

    def set_umask(mask):
        os.umask(mask)
    try:
        yield set_umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o077, 0o600), (0o027, 0o640), (0o022, 0o644),
                                        (0o002, 0o664)], ids=["077", "027", "022", "002"])
def test_uploaded_file_mode_follows_the_umask(root, umask, mask, mode):
    """A new upload gets ``0666 & ~umask`` (mkdir honours the umask too), so the
    unit's UMask=0077 keeps uploads private.  How this was shown to fail: with the
    old fixed ``fchmod(0o644)`` the 077 case gave 0644."""
    umask(mask)
    c = Client(root)
    assert c.upload("new.txt", b"private")[-1].type == frames.RES
    assert stat.S_IMODE(os.stat(root / "new.txt").st_mode) == mode
    assert c.request(3, {"op": "mkdir", "root": 0, "path": "d"})[-1].type == frames.RES
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o777 & ~mask & 0o755


def test_overwriting_upload_keeps_the_replaced_files_mode(root, umask):
    """Replacing a file keeps its permission bits (an executable stays one, a private
    file private), but never setuid or setgid.  How this was shown to fail: the old
    code made every upload 0644."""
    umask(0o022)
    c = Client(root)
    for rid, (before, after) in enumerate([(0o600, 0o600), (0o750, 0o750),
                                           (0o4755, 0o755)], start=2):
        target = root / f"f{rid}"
        target.write_bytes(b"old")
        os.chmod(target, before)
        got = c.upload(target.name, b"new", rid=rid, overwrite=True)
        assert got[-1].type == frames.RES, got[-1]
        assert target.read_bytes() == b"new"
        assert stat.S_IMODE(os.stat(target).st_mode) == after


def test_process_umask_without_proc(tmp_path):
    """Without /proc the umask read once at import is used (never set again later)."""
    mask = os.umask(0o022)
    os.umask(mask)
    assert files.process_umask() == files._proc_umask() == mask
    assert files.process_umask(str(tmp_path / "no-proc")) == files._IMPORT_UMASK
    # what the import does without /proc: reads the umask and leaves it as it was
    assert files._swap_umask() == mask
    assert files._proc_umask() == mask
    (tmp_path / "status").write_text("Name:\tx\nUmask:\t0027\nState:\tR\n")
    assert files.process_umask(str(tmp_path / "status")) == 0o027


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


# -- special files ---------------------------------------------------------------

def make_char_device(path):
    """A /dev/zero twin (character device 1:5), or skip the calling test (and
    only it: the FIFO, socket and /dev cases are separate tests) if mknod is
    not permitted."""
    try:
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("mknod of a character device is not permitted here (needs CAP_MKNOD); "
                    "the /dev root test still covers devices")


def test_fifo_download_is_refused_promptly(root):
    """A FIFO is ``not-a-file`` and never opened for a blocking read.  Shown to
    fail without the checks: with the pre-open type check removed and
    ``O_NONBLOCK`` dropped from ``paths.FILE_READ`` in a scratch copy, the
    download blocked in ``open`` and this test failed on its timeout."""
    os.mkfifo(root / "fifo")
    (root / "fifo-link").symlink_to("fifo")
    c = Client(root)
    for path in ["fifo", "fifo-link"]:
        got = run_with_timeout(lambda: c.download(path))
        assert got[-1].type == frames.ERR and got[-1].body["code"] == "not-a-file", got


def test_fifo_swapped_in_after_the_check_does_not_block(root, monkeypatch):
    """The entry is a regular file when the walk looks at it and a FIFO when
    the download opens it (the attacker swaps them just before each file-system
    call in turn).  ``O_NONBLOCK`` makes the open return at once and the
    ``fstat`` of the fd refuses it.  Shown to fail without it: with
    ``O_NONBLOCK`` dropped from ``paths.FILE_READ`` in a scratch copy, the
    download blocked in ``open`` at one position and the test hit its timeout."""
    (root / "f").write_bytes(b"regular")
    os.mkfifo(root / "fifo")
    c = Client(root)
    counter = Interleave(monkeypatch, [files, paths], lambda: None)
    assert c.download("f")[-1].type == frames.END
    total = counter.calls
    codes = set()
    for at in range(total + 1):
        if stat.S_ISFIFO(os.lstat(root / "f").st_mode):
            exchange(root / "f", root / "fifo")
        Interleave(monkeypatch, [files, paths], lambda: exchange(root / "f", root / "fifo"), at=at)
        got = run_with_timeout(lambda: Client(root).download("f"))
        codes.add(got[-1].body.get("code") if got[-1].type == frames.ERR else "ok")
        if got[-1].type == frames.END:
            assert b"".join(f.data for f in got if f.type == frames.DATA) == b"regular"
    assert "not-a-file" in codes and "ok" in codes


def test_fifos_and_sockets_are_listed_as_other_and_never_read(root):
    """Shown to fail without the checks: with both ``S_ISREG`` checks of the
    download removed in a scratch copy, the FIFO (opened ``O_NONBLOCK``, no
    writer) was sent as an empty file: RES, END with size 0."""
    os.mkfifo(root / "fifo")
    (root / "outside-zero").symlink_to("/dev/zero")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    (root / "sock-link").symlink_to("sock")
    try:
        c = Client(root)
        [res] = c.request(1, {"op": "list", "root": 0, "path": ""})
        types = {e["name"]: (e["type"], e.get("link", False)) for e in res.body["entries"]}
        assert types == {"fifo": ("other", False), "sock": ("other", False), "sock-link": ("other", True),
                         "outside-zero": ("broken", True)}
        [res] = c.request(2, {"op": "stat", "root": 0, "path": "sock-link"})
        assert res.body["entry"]["type"] == "other" and res.body["entry"]["path"] == "sock"
        for path, code in [("fifo", "not-a-file"), ("sock", "not-a-file"), ("sock-link", "not-a-file"),
                           ("outside-zero", "outside-root")]:
            got = run_with_timeout(lambda: c.download(path))
            assert [f.type for f in got] == [frames.ERR] and got[0].body["code"] == code, (path, got)
    finally:
        sock.close()


def test_devices_in_a_root_are_listed_as_other_and_never_read():
    """``/dev`` as a root (no mknod needed): its devices are ``other`` and never
    read.  Shown to fail without the checks: with both ``S_ISREG`` checks of
    the download removed in a scratch copy, the download of ``zero`` streamed
    zeros until the test gave up on it."""
    c = Client("/dev", read_only=True)
    [res] = c.request(1, {"op": "list", "root": 0, "path": ""})
    types = {e["name"]: e["type"] for e in res.body["entries"]}
    assert types["zero"] == types["null"] == "other"
    for path in ["zero", "null", "urandom"]:
        got = run_with_timeout(lambda: c.download(path))
        assert [f.type for f in got] == [frames.ERR] and got[0].body["code"] == "not-a-file", (path, got)


def test_a_device_made_with_mknod_is_never_read_nor_replaced(root):
    """A /dev/zero twin made inside the root, reached directly and through an
    in-root link.  Shown to fail without the checks: with both ``S_ISREG``
    checks of the download removed in a scratch copy, the download of ``zero``
    streamed zeros until the test gave up; with the upload's non-regular-target
    refusal removed, the overwrite replaced the device."""
    make_char_device(root / "zero")
    (root / "zero-link").symlink_to("zero")
    c = Client(root)
    [res] = c.request(1, {"op": "stat", "root": 0, "path": "zero-link"})
    assert res.body["entry"]["type"] == "other" and res.body["entry"]["path"] == "zero"
    for path in ["zero", "zero-link"]:
        got = run_with_timeout(lambda: c.download(path))
        assert [f.type for f in got] == [frames.ERR] and got[0].body["code"] == "not-a-file", (path, got)
    got = run_with_timeout(lambda: c.upload("zero", b"data", rid=3, overwrite=True))
    assert got[-1].body["code"] == "not-a-file", got
    assert stat.S_ISCHR(os.lstat(root / "zero").st_mode)
    assert sorted(os.listdir(root)) == ["zero", "zero-link"]


def test_upload_never_replaces_a_fifo_or_a_socket(root):
    """Shown to fail without the check: with the non-regular-target refusal
    removed in a scratch copy, the overwrite replaced the FIFO."""
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        c = Client(root)
        for rid, path in enumerate(["fifo", "sock"], start=1):
            got = run_with_timeout(lambda: c.upload(path, b"data", rid=rid, overwrite=True))
            assert got[-1].body["code"] == "not-a-file", got
        assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
        assert stat.S_ISSOCK(os.lstat(root / "sock").st_mode)
        assert sorted(os.listdir(root)) == ["fifo", "sock"]
    finally:
        sock.close()


# -- races: a directory swapped for a symlink to outside ---------------------------

INSIDE = {"secret": b"inside secret", "victim": b"inside victim", "a": b"inside a", "sub/f": b"inside f"}
OUTSIDE = {"secret": b"OUTSIDE SECRET!", "victim": b"OUTSIDE victim", "a": b"OUTSIDE a", "sub/f": b"OUTSIDE f",
           "only-outside": b"OUTSIDE only", "sub/only-outside": b"OUTSIDE only"}


def write_tree(top, content):
    for rel, data in content.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class SwapWorld:
    """``root/d`` is a real directory; ``spare/d`` is a symlink to ``outside``.
    ``flip()`` exchanges them atomically, so ``root/d`` becomes the symlink.
    Each ``reset()`` makes a fresh ``root`` and ``spare`` (cheaper than
    deleting the old ones)."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.outside = tmp_path / "outside"
        write_tree(self.outside, OUTSIDE)
        self.outside_before = snapshot(self.outside)
        self.resets = 0

    def reset(self):
        self.resets += 1
        self.root = self.tmp_path / f"root{self.resets}"
        self.spare = self.tmp_path / f"spare{self.resets}"
        write_tree(self.root / "d", INSIDE)
        (self.root / "top").write_bytes(b"inside top")
        self.spare.mkdir()
        (self.spare / "d").symlink_to(self.outside)

    def flip(self):
        exchange(self.root / "d", self.spare / "d")

    def check_outside_untouched(self, what):
        assert snapshot(self.outside) == self.outside_before, f"{what} changed something outside the root"


def race_ops():
    """(name, run(client) -> frames, check(frames)) for every files operation."""

    def data(got):
        return b"".join(f.data for f in got if f.type == frames.DATA)

    def no_outside_names(got):
        for f in got:
            if f.type == frames.RES and "entries" in f.body:
                assert "only-outside" not in {e["name"] for e in f.body["entries"]}
                sizes = {e["name"]: e["size"] for e in f.body["entries"]}
                assert sizes.get("secret", 7) in (len(INSIDE["secret"]), 7)  # inside, or overwritten by upload

    def no_outside_bytes(got):
        assert b"OUTSIDE" not in data(got)

    def inside_size(got):
        for f in got:
            if f.type == frames.RES and "entry" in f.body:
                assert f.body["entry"]["size"] in (len(INSIDE["secret"]), 7)

    def ok(got):
        pass

    return [
        ("list", lambda c: c.request(1, {"op": "list", "root": 0, "path": "d"}), no_outside_names),
        ("list-sub", lambda c: c.request(1, {"op": "list", "root": 0, "path": "d/sub"}), no_outside_names),
        ("stat", lambda c: c.request(1, {"op": "stat", "root": 0, "path": "d/secret"}), inside_size),
        ("download", lambda c: c.download("d/secret"), no_outside_bytes),
        ("download-sub", lambda c: c.download("d/sub/f"), no_outside_bytes),
        ("upload", lambda c: c.upload("d/new", b"x" * 7), ok),  # 7 bytes: the sizes the checks allow
        ("upload-overwrite", lambda c: c.upload("d/secret", b"x" * 7, overwrite=True), ok),
        ("mkdir", lambda c: c.request(1, {"op": "mkdir", "root": 0, "path": "d/m"}), ok),
        ("rename", lambda c: c.request(1, {"op": "rename", "root": 0, "path": "d/a", "to": "d/b"}), ok),
        ("rename-out", lambda c: c.request(1, {"op": "rename", "root": 0, "path": "d/a", "to": "moved"}), ok),
        ("rename-in", lambda c: c.request(1, {"op": "rename", "root": 0, "path": "top", "to": "d/top",
                                              "overwrite": True}), ok),
        ("delete", lambda c: c.request(1, {"op": "delete", "root": 0, "path": "d/victim"}), ok),
        ("delete-tree", lambda c: c.request(1, {"op": "delete", "root": 0, "path": "d/sub", "recursive": True}), ok),
    ]


@pytest.mark.parametrize("name,run,check", race_ops(), ids=[op[0] for op in race_ops()])
def test_swapping_a_directory_for_a_symlink_never_reaches_outside(tmp_path, monkeypatch, name, run, check):
    """The attacker exchanges ``root/d`` with a symlink to ``outside`` just
    before the k-th file-system call of the operation (and, in a second pass,
    before every call from the k-th on), for every k.  Nothing outside the root
    is ever read, listed, written, renamed or deleted.  Shown to fail without
    the fd walk: against the previous ``realpath``-then-use-by-name code
    (paths.py and files.py from commit 2d0f8c9), every one of these operations
    reached ``outside`` at some position; so did every one with ``O_NOFOLLOW``
    dropped from ``paths._PATH`` in a scratch copy."""
    world = SwapWorld(tmp_path)
    world.reset()
    counter = Interleave(monkeypatch, [files, paths], world.flip)
    got = run(Client(world.root))
    assert got[-1].type in (frames.RES, frames.END), got  # works when nobody interferes
    total = counter.calls
    outcomes = set()
    for mode in ("once", "every"):
        for at in range(total + 1):
            world.reset()
            Interleave(monkeypatch, [files, paths], world.flip, at=at, mode=mode)
            got = run(Client(world.root))
            monkeypatch.undo()
            check(got)
            world.check_outside_untouched(f"{name} with a swap at call {at} ({mode})")
            outcomes.add(got[-1].body.get("code", "ok") if got[-1].type == frames.ERR else "ok")
    assert len(outcomes) > 1, outcomes  # the swaps did land: some positions were refused


def test_swapping_concurrently_never_reaches_outside(tmp_path):
    """The same attack from another process that flips ``root/d`` as fast as
    it can while listings, stats, downloads and uploads run.  Shown to fail
    without the fd walk: against the previous code (paths.py and files.py from
    commit 2d0f8c9) outside bytes showed up, and so they did with ``O_NOFOLLOW``
    dropped from ``paths._PATH``."""
    world = SwapWorld(tmp_path)
    world.reset()
    results = {"ok": 0, "refused": 0}
    c = Client(world.root)
    with Flipper(world.root / "d", world.spare / "d") as flipper:
        for _ in range(60):
            for name, run, check in race_ops()[:7]:
                got = run(c)
                check(got)
                results["ok" if got[-1].type != frames.ERR else "refused"] += 1
    world.check_outside_untouched("the concurrent race")
    assert flipper.flips > 100 and results["ok"] > 0 and results["refused"] > 0, (flipper.flips, results)


def test_rename_without_overwrite_never_replaces_a_target_that_appears(root, monkeypatch):
    """A file appears at the target just before the k-th file-system call of the
    rename (or of the upload's final rename), for every k: it is never replaced.
    Shown to fail without ``RENAME_NOREPLACE``: against the previous
    check-then-``os.rename`` code (files.py from commit 2d0f8c9), the rename
    replaced it."""
    planted = []

    def plant():
        if not os.path.lexists(root / "b"):
            (root / "b").write_bytes(b"planted")
            planted.append(True)

    def reset():
        for name in os.listdir(root):
            os.unlink(root / name)
        (root / "a").write_bytes(b"source")
        planted.clear()

    ops = [lambda c: c.request(1, {"op": "rename", "root": 0, "path": "a", "to": "b"}),
           lambda c: c.upload("b", b"uploaded")]
    for op in ops:
        reset()
        counter = Interleave(monkeypatch, [files, paths], plant)
        op(Client(root))
        total = counter.calls
        refused = 0
        for at in range(total + 1):
            reset()
            Interleave(monkeypatch, [files, paths], plant, at=at)
            got = op(Client(root))
            monkeypatch.undo()
            if planted:
                assert (root / "b").read_bytes() == b"planted", f"replaced when planted at call {at}"
                if got[-1].type == frames.ERR:
                    assert got[-1].body["code"] == "exists", got
                    refused += 1
            else:  # planted too late: the operation had already made "b"
                assert got[-1].type == frames.RES and (root / "b").read_bytes() in (b"source", b"uploaded")
        assert refused > 0


def test_recursive_delete_through_a_symlink_deletes_only_the_link(root, tmp_path):
    """Shown to fail without the fd walk's rules: with ``O_NOFOLLOW`` dropped
    from ``paths.DIR_READ`` and ``remove_tree``'s unlink-first order replaced by
    a ``stat`` that follows links, in a scratch copy, the delete went through
    ``tree/inner/out`` into ``outside`` (the test failed); against the previous
    code (``shutil.rmtree`` on a resolved path) it passes, as it should."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "keep").write_text("k")
    (outside / "deep" / "keep2").write_text("k2")
    (root / "link").symlink_to(outside)
    (root / "tree" / "inner").mkdir(parents=True)
    (root / "tree" / "inner" / "out").symlink_to(outside)
    (root / "tree" / "inner" / "file").symlink_to(outside / "keep")
    (root / "tree" / "real.txt").write_text("r")
    c = Client(root)
    assert c.request(1, {"op": "delete", "root": 0, "path": "link", "recursive": True})[0].type == frames.RES
    assert c.request(2, {"op": "delete", "root": 0, "path": "tree", "recursive": True})[0].type == frames.RES
    assert os.listdir(root) == []
    assert (outside / "keep").read_text() == "k" and (outside / "deep" / "keep2").read_text() == "k2"
