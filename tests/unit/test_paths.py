"""Root confinement (paths.py): escapes that must fail, names that must work,
symlinks inside the root, loops, a directory moved out during a walk, and the
fd-relative helpers (rename without replacing, delete a tree without
following links)."""

import errno
import os
import stat

import pytest

from homechannel import errors
from homechannel.server.apps import paths
from fsrace import Interleave, run_with_timeout


@pytest.fixture
def tree(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    base = tmp_path / "base"
    base.mkdir()
    root = base / "root"
    root.mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "f.txt").write_text("x")
    (root / "ünï cødé ✓.txt").write_text("u")
    (root / "inner-link").symlink_to("sub")
    (root / "inner-file-link").symlink_to("sub/f.txt")
    (root / "sub" / "back").symlink_to("../sub/f.txt")
    (root / "abs-inner").symlink_to(root / "sub")
    (root / "dotted-inner").symlink_to(f"/{root}/./sub/../sub")
    (root / "out-link").symlink_to(outside)
    (root / "out-file-link").symlink_to(outside / "secret")
    (root / "up").symlink_to("..")  # points at base, the root's parent
    (root / "up-and-back").symlink_to("../root/sub")  # leaves the root on the way
    sibling = base / "rootevil"  # shares the root's name as a prefix
    sibling.mkdir()
    (root / "prefix-link").symlink_to(sibling)
    (root / "abs-link").symlink_to("/etc")
    (root / "abs-dotdot").symlink_to(f"{root}/../rootevil")
    os.mkdir(os.fsencode(str(root)) + b"/bad-\xff-name")
    return root


BAD = [
    ("..", "bad-path"),
    ("sub/../..", "bad-path"),
    ("sub/..", "bad-path"),
    ("./sub", "bad-path"),
    ("/etc/passwd", "bad-path"),
    ("//etc", "bad-path"),
    ("sub//f.txt", "bad-path"),
    ("sub/f.txt\x00", "bad-path"),
    ("a" * 256, "bad-path"),
    ("/".join(["abc"] * 1100), "bad-path"),
    ("out-link", "outside-root"),
    ("out-link/secret", "outside-root"),
    ("out-file-link", "outside-root"),
    ("up", "outside-root"),
    ("up/root/../rootevil", "bad-path"),
    ("up/rootevil", "outside-root"),
    ("up/root/sub", "outside-root"),
    ("up-and-back", "outside-root"),
    ("prefix-link", "outside-root"),
    ("abs-link/passwd", "outside-root"),
    ("abs-dotdot", "outside-root"),
]


@pytest.mark.parametrize("rel,code", BAD)
def test_escapes_fail(tree, rel, code):
    roots = paths.Roots([str(tree)])
    with pytest.raises(errors.HomeChannelError) as info:
        roots.locate(0, rel)
    assert info.value.code == code


@pytest.mark.parametrize("rel,code", [("out-link/secret", "outside-root"), ("up/x", "outside-root"),
                                      ("", "is-root"), ("..", "bad-path")])
def test_entry_escapes_fail(tree, rel, code):
    roots = paths.Roots([str(tree)])
    with pytest.raises(errors.HomeChannelError) as info:
        roots.locate_entry(0, rel)
    assert info.value.code == code


@pytest.mark.parametrize("rel,where", [
    ("", ""), ("sub", "sub"), ("sub/f.txt", "sub/f.txt"), ("ünï cødé ✓.txt", "ünï cødé ✓.txt"),
    ("inner-link", "sub"), ("inner-link/f.txt", "sub/f.txt"), ("inner-file-link", "sub/f.txt"),
    ("sub/back", "sub/f.txt"), ("inner-link/back", "sub/f.txt"), ("abs-inner/f.txt", "sub/f.txt"),
    ("dotted-inner", "sub"), ("bad-\udcff-name", "bad-\udcff-name"),
    ("a" * 255, "a" * 255), ("name with spaces", "name with spaces"), (".hidden", ".hidden"),
    ("..dots", "..dots"), ("new-file", "new-file"),
])
def test_names_that_work(tree, rel, where):
    roots = paths.Roots([str(tree)])
    with roots.locate(0, rel) as loc:
        assert loc.relpath == where
        # the location holds the directory of the entry: the same object as by name
        target = tree / where
        if loc.st is None:
            assert not os.path.lexists(target)
        else:
            assert os.path.samestat(loc.st, os.lstat(target))
            assert not stat.S_ISLNK(loc.st.st_mode)


def test_locate_entry_does_not_follow_the_final_link(tree):
    roots = paths.Roots([str(tree)])
    with roots.locate_entry(0, "inner-link/back") as loc:  # the intermediate link is followed
        assert loc.relpath == "sub/back" and stat.S_ISLNK(loc.st.st_mode)
        assert os.readlink("back", dir_fd=loc.dir_fd) == "../sub/f.txt"
    with roots.locate_entry(0, "out-link") as loc:  # a link out of the root, as an entry, is fine
        assert stat.S_ISLNK(loc.st.st_mode)
    with roots.locate_entry(0, "sub/missing") as loc:
        assert loc.st is None and loc.name == "missing"


def test_locations_close_their_fd(tree):
    (tree / "loop").symlink_to("loop")
    roots = paths.Roots([str(tree)])
    before = len(os.listdir("/proc/self/fd"))
    for rel in ["", "sub", "inner-link/back", "missing", "abs-inner/f.txt"]:
        with roots.locate(0, rel):
            pass
    for rel in ["out-link/x", "loop", "sub/f.txt/x"]:
        with pytest.raises((errors.HomeChannelError, OSError)):
            roots.locate(0, rel)
    assert len(os.listdir("/proc/self/fd")) == before


def test_symlink_loops_are_refused(tree):
    """Loops end with code ``symlink`` instead of spinning.  Shown to fail
    without the limit: with the ``links > MAX_LINKS`` check removed in a scratch
    copy, ``locate(0, "self")`` never returned and the test failed on its
    timeout."""
    (tree / "self").symlink_to("self")
    (tree / "ping").symlink_to("pong")
    (tree / "pong").symlink_to("ping")
    (tree / "deeper").symlink_to("deeper/x")
    (tree / "via-dir").symlink_to("sub/../via-dir")
    roots = paths.Roots([str(tree)])
    for rel in ["self", "ping", "pong/x", "deeper", "via-dir"]:
        with pytest.raises(errors.HomeChannelError) as info:
            run_with_timeout(lambda: roots.locate(0, rel))
        assert info.value.code == "symlink", rel
    assert roots.target_stat(0, ["ping"]) is None


def test_a_chain_of_links_up_to_the_limit_is_followed(tree):
    (tree / "l0").symlink_to("sub/f.txt")
    for i in range(1, paths.MAX_LINKS + 1):
        (tree / f"l{i}").symlink_to(f"l{i - 1}")
    roots = paths.Roots([str(tree)])
    with roots.locate(0, f"l{paths.MAX_LINKS - 1}") as loc:
        assert loc.relpath == "sub/f.txt"
    with pytest.raises(errors.HomeChannelError) as info:
        roots.locate(0, f"l{paths.MAX_LINKS}")
    assert info.value.code == "symlink"


def test_a_directory_moved_out_during_the_walk_does_not_lead_out(tree, monkeypatch):
    """A link ``sub2/a/b/hop -> ../../x`` walks down into ``a/b`` and back up by
    ``..``.  The attacker moves ``sub2/a`` out of the root (to ``outside``,
    where an ``x`` waits) at every point of the walk.  Each ``..`` is checked
    against the directory the walk came from, so the walk never reaches
    ``outside/x``.  Shown to fail without the check: with the
    ``cur_id != ids.pop()`` comparison disabled in a scratch copy, the
    walk returned ``outside/x`` (first at call 19)."""
    outside = tree.parent.parent / "outside"
    (outside / "x").write_text("outside x")
    sub2 = tree / "sub2"

    def reset():
        if (outside / "a").exists():
            os.rename(outside / "a", sub2 / "a")
        (sub2 / "a" / "b").mkdir(parents=True, exist_ok=True)
        (sub2 / "x").write_text("inside x")
        if not os.path.lexists(sub2 / "a" / "b" / "hop"):
            (sub2 / "a" / "b" / "hop").symlink_to("../../x")

    def attack():
        if (sub2 / "a").exists():
            os.rename(sub2 / "a", outside / "a")

    reset()
    roots = paths.Roots([str(tree)])
    counter = Interleave(monkeypatch, [paths], attack)
    with roots.locate(0, "sub2/a/b/hop") as loc:
        assert loc.relpath == "sub2/x"
    total = counter.calls
    outside_x = os.stat(outside / "x")
    refused = 0
    for at in range(total + 1):
        reset()
        Interleave(monkeypatch, [paths], attack, at=at)
        try:
            with roots.locate(0, "sub2/a/b/hop") as loc:
                assert not (loc.st and os.path.samestat(loc.st, outside_x)), f"escaped at call {at}"
                assert loc.relpath == "sub2/x"
        except (errors.HomeChannelError, OSError):
            refused += 1
    assert refused > 0  # the attack did land inside the walk


def test_root_reached_through_a_symlinked_parent_is_resolved_once(tmp_path):
    real_parent = tmp_path / "real"
    (real_parent / "root").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "root").mkdir()
    (tmp_path / "other" / "root" / "planted").write_text("p")
    link = tmp_path / "link"
    link.symlink_to(real_parent)
    roots = paths.Roots([str(link / "root")])
    # the parent symlink is swapped after start-up: the root stays where it was
    link.unlink()
    link.symlink_to(tmp_path / "other")
    assert roots.root(0) == str(real_parent / "root")
    with roots.locate(0, "planted") as loc:
        assert loc.st is None


def test_a_root_whose_parent_becomes_a_symlink_is_refused(tmp_path):
    """The root is opened from ``/`` without following links.  Shown to fail
    without it: opening the root by its path (``os.open(real, O_PATH)``) in a
    scratch copy found ``planted`` in the other directory instead of refusing."""
    (tmp_path / "a" / "root").mkdir(parents=True)
    (tmp_path / "evil" / "root").mkdir(parents=True)
    (tmp_path / "evil" / "root" / "planted").write_text("p")
    roots = paths.Roots([str(tmp_path / "a" / "root")])
    os.rename(tmp_path / "a", tmp_path / "a.old")
    (tmp_path / "a").symlink_to(tmp_path / "evil")
    with pytest.raises(errors.HomeChannelError) as info:
        roots.locate(0, "planted")
    assert info.value.code == "no-root"


def test_no_root_and_bad_types(tree):
    roots = paths.Roots([str(tree)])
    for bad in (1, -1, True, "0", None):
        with pytest.raises(errors.NotFound):
            roots.locate(bad, "")
    with pytest.raises(errors.BadRequest):
        roots.locate(0, 5)


def test_root_names_are_unique(tmp_path):
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data").mkdir(parents=True)
    roots = paths.Roots([str(tmp_path / "a" / "data"), str(tmp_path / "b" / "data")])
    assert [r["name"] for r in roots.describe()] == ["data", "data (2)"]


# -- fd-relative helpers -----------------------------------------------------------

@pytest.fixture(params=["renameat2", "fallback"])
def rename_impl(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(paths, "_renameat2", None)
    elif paths._renameat2 is None:
        pytest.skip("the C library has no renameat2 (the fallback case still runs)")
    return request.param


@pytest.mark.parametrize("source", ["file", "dir", "link"])
def test_rename_noreplace_never_replaces(tmp_path, rename_impl, source):
    """Shown to fail without it: with ``os.rename`` in place of
    ``rename_noreplace`` in a scratch copy, ``existing`` was replaced."""
    src = tmp_path / "src"
    {"file": lambda: src.write_text("new"), "dir": src.mkdir, "link": lambda: src.symlink_to("nowhere")}[source]()
    (tmp_path / "existing").write_text("keep me")
    (tmp_path / "emptydir").mkdir()
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for target in ["existing", "emptydir"]:
            with pytest.raises(FileExistsError):
                paths.rename_noreplace(fd, "src", fd, target)
        assert (tmp_path / "existing").read_text() == "keep me"
        assert (tmp_path / "emptydir").is_dir() and not any((tmp_path / "emptydir").iterdir())
        assert os.path.lexists(src)
        paths.rename_noreplace(fd, "src", fd, "fresh")
        assert not os.path.lexists(src) and os.path.lexists(tmp_path / "fresh")
        assert stat.S_IFMT(os.lstat(tmp_path / "fresh").st_mode) == \
            {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK}[source]
        # a directory into itself: EINVAL, and nothing left behind by the fallback
        (tmp_path / "d").mkdir()
        inner = os.open(tmp_path / "d", os.O_PATH)
        try:
            with pytest.raises(OSError) as info:
                paths.rename_noreplace(fd, "d", inner, "inside")
        finally:
            os.close(inner)
        assert info.value.errno == errno.EINVAL
        assert os.listdir(tmp_path / "d") == []
    finally:
        os.close(fd)


def test_remove_tree_deletes_links_not_their_targets(tmp_path):
    """Shown to fail without the fd walk's rules: with ``O_NOFOLLOW`` dropped
    from ``paths.DIR_READ`` and the unlink-first order replaced by a ``stat``
    that follows links, in a scratch copy, the walk went into ``keep`` through
    ``a/to-keep`` and deleted ``precious`` (the test failed)."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("p")
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("f")
    (top / "a" / "to-keep").symlink_to(keep)
    (top / "to-keep-too").symlink_to(keep / "precious")
    (top / "dangling").symlink_to("nowhere")
    os.mkfifo(top / "fifo")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        paths.remove_tree(fd, "top")
    finally:
        os.close(fd)
    assert not top.exists()
    assert (keep / "precious").read_text() == "p"


def test_remove_tree_of_a_symlink_refuses(tmp_path):
    """Shown to fail without ``O_NOFOLLOW``: with it dropped from
    ``paths.DIR_READ`` in a scratch copy, the call emptied ``keep``."""
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "x").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "keep")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            paths.remove_tree(fd, "link")
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    finally:
        os.close(fd)
    assert (tmp_path / "keep" / "x").exists()


def test_deep_trees_do_not_hit_the_recursion_limit(tmp_path):
    d = tmp_path / "deep"
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    cur = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    for _ in range(300):  # every level holds an fd while it is emptied
        os.mkdir("d", dir_fd=cur)
        nxt = os.open("d", os.O_PATH | os.O_DIRECTORY, dir_fd=cur)
        os.close(cur)
        cur = nxt
    os.close(cur)
    os.rename(tmp_path / "d", d)
    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100)
    try:
        paths.remove_tree(fd, "deep")
    finally:
        sys.setrecursionlimit(limit)
        os.close(fd)
    assert not d.exists()
