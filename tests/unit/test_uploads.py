"""What uploads may take (``server/apps/uploads.py``): the free-space reserve and
the number in progress, checked before a byte is sent; the idle timeout; and the
sweep of partial files a crash left behind.  (Through a real twistd and a tmpfs of
known size: ``tests/e2e/test_uploads_limits.py``.)"""

import os

import pytest
from twisted.internet import task

from homechannel import errors
from homechannel.config import FilesApp
from homechannel.protocol import frames
from homechannel.server.apps import uploads
from homechannel.server.apps.uploads import Uploads, sweep_roots, temp_name

from filesclient import Client

GIB = 1024 ** 3


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_the_reserve_counts_what_uploads_in_progress_still_write():
    """How this was shown to fail: before ``Uploads.claim``, any size up to max_upload
    was accepted whatever the free space."""
    u = Uploads(FilesApp(min_free=GIB, max_uploads=8))
    u.claim("a", dev=1, size=2 * GIB, free=4 * GIB)             # leaves 2 GiB free
    with pytest.raises(errors.Unavailable) as e:
        u.claim("b", dev=1, size=GIB + 1, free=4 * GIB)          # 2 GiB promised to "a"
    assert e.value.code == "no-space"
    assert e.value.extra == {"free": 2 * GIB, "minFree": GIB}
    assert str(e.value) == ("not enough free space on the home server for 1.0 GiB: 4.0 GiB "
                            "free, 2.0 GiB of it promised to uploads in progress, and "
                            "uploads leave 1.0 GiB free (apps.files.min_free)")
    u.claim("c", dev=2, size=2 * GIB, free=3 * GIB)             # another file system
    u.wrote("a", GIB)                                           # 1 GiB of "a" on disk now
    u.claim("b", dev=1, size=GIB, free=3 * GIB)                 # 3 free - 1 promised - 1
    u.release("a")
    u.release("b")
    u.claim("d", dev=1, size=3 * GIB, free=4 * GIB)
    assert u.in_progress == 2


def test_uploads_in_progress_are_capped_on_the_whole_home_server(root):
    """Two files channels share the home server's ``Uploads``: the second upload is
    refused while the first runs, before any disk work, and goes through after it.
    How this was shown to fail: with ``check_count`` passing everything, the second
    upload got its go-ahead ACK."""
    shared = Uploads(FilesApp(roots=(str(root),), max_uploads=1))
    a, b = Client(root, uploads=shared), Client(root, uploads=shared)
    assert a.request(1, {"op": "upload", "root": 0, "path": "a", "size": 3})[-1].type \
        == frames.ACK
    refused = b.upload("b", b"bbb")
    assert refused[-1].type == frames.ERR and refused[-1].body["code"] == "too-many-uploads"
    assert refused[-1].body["maxUploads"] == 1
    assert sorted(os.listdir(root))[0].startswith(".hcupload-") and len(os.listdir(root)) == 1
    a.send(frames.DATA, 1, data=b"aaa")
    a.send(frames.END, 1, {})
    assert a.new_frames()[-1].type == frames.RES
    assert b.upload("b", b"bbb", rid=3)[-1].type == frames.RES
    assert sorted(os.listdir(root)) == ["a", "b"] and shared.in_progress == 0


def test_an_upload_the_disk_cannot_hold_is_refused_before_any_byte_is_sent(root):
    c = Client(root, min_free=2 ** 62)
    got = c.request(1, {"op": "upload", "root": 0, "path": "big", "size": 1})
    assert [f.type for f in got] == [frames.ERR]          # no ACK: the client sends nothing
    assert got[0].body["code"] == "no-space" and got[0].body["minFree"] == 2 ** 62
    assert "(apps.files.min_free)" in got[0].body["message"]
    assert os.listdir(root) == [] and c.session.uploads.in_progress == 0


def test_an_idle_upload_is_abandoned_and_its_partial_file_deleted(root):
    """How this was shown to fail: without the idle timer the upload waited forever,
    holding its partial file and two descriptors."""
    clock = task.Clock()
    c = Client(root, clock=clock, upload_idle_timeout=300)
    assert c.request(1, {"op": "upload", "root": 0, "path": "slow", "size": 10})[-1].type \
        == frames.ACK
    clock.advance(299)
    c.send(frames.DATA, 1, data=b"12345")                 # data resets the timer
    clock.advance(299)
    assert c.new_frames()[-1].type == frames.ACK
    assert len(os.listdir(root)) == 1
    clock.advance(2)
    err = c.new_frames()[-1]
    assert err.type == frames.ERR and err.body["code"] == "idle"
    assert "no upload data for 300 s" in err.body["message"]
    assert os.listdir(root) == [] and c.session.requests == {} and not clock.getDelayedCalls()


def test_a_finished_upload_leaves_no_timer(root):
    clock = task.Clock()
    c = Client(root, clock=clock)
    assert c.upload("done", b"abc")[-1].type == frames.RES
    assert not clock.getDelayedCalls()


def _old(path, age=1000):
    st = os.lstat(path)
    os.utime(path, (st.st_atime - age, st.st_mtime - age), follow_symlinks=False)


def test_the_sweep_deletes_only_stale_temporary_files_of_ours_and_follows_no_link(tmp_path):
    """How this was shown to fail: with no sweep, every stale partial file stayed; with
    a walk that follows links (``os.fwalk(follow_symlinks=True)``), the one outside the root
    was deleted."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    stale = [root / temp_name(), root / "a" / "b" / temp_name()]
    fresh, live = root / temp_name(), root / "a" / temp_name()
    foreign = [root / ".hcupload-notours.part", root / "a" / (temp_name() + ".bak"),
               outside / temp_name()]
    for p in stale + foreign + [fresh, live]:
        p.write_bytes(b"x")
    (root / "a" / temp_name()).mkdir()                     # a directory with our name
    link = root / temp_name()
    link.symlink_to(outside / "target")                     # a link with our name
    (outside / "target").write_bytes(b"keep")
    (root / "escape").symlink_to(outside)                   # a link to a directory outside
    for p in stale + foreign + [live, link, root / "a"]:
        _old(p)
    removed = sweep_roots([str(root)], frozenset({live.name}), 300.0, os.path.getmtime(fresh))
    assert removed == 2
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in foreign + [fresh, live, outside / "target"])
    assert os.path.lexists(link)


def test_the_sweep_runs_through_to_thread_counts_and_logs(root):
    from twisted.logger import globalLogPublisher

    stale = root / temp_name()
    stale.write_bytes(b"x")
    _old(stale)
    jobs = []

    def to_thread(f, *args):
        jobs.append(f)
        from twisted.internet import defer
        return defer.maybeDeferred(f, *args)

    u = Uploads(FilesApp(roots=(str(root),)), to_thread)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        assert u.sweep(os.path.getmtime(stale) + 1000).result == 1
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert jobs == [uploads.sweep_roots] and u.swept == 1 and not stale.exists()
    assert [e["n"] for e in seen if "stale upload" in e.get("log_format", "")] == [1]
