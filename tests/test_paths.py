"""Root confinement: a table of escapes that must fail and names that must work."""

import os

import pytest

from homechannel import errors
from homechannel.server.apps import paths


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
    (root / "inner-link").symlink_to(root / "sub")
    (root / "out-link").symlink_to(outside)
    (root / "out-file-link").symlink_to(outside / "secret")
    (root / "up").symlink_to("..")  # points at base, the root's parent
    sibling = base / "rootevil"  # shares the root's name as a prefix
    sibling.mkdir()
    (root / "prefix-link").symlink_to(sibling)
    (root / "abs-link").symlink_to("/etc")
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
    ("prefix-link", "outside-root"),
    ("abs-link/passwd", "outside-root"),
]


@pytest.mark.parametrize("rel,code", BAD)
def test_escapes_fail(tree, rel, code):
    roots = paths.Roots([str(tree)])
    with pytest.raises(errors.HomeChannelError) as info:
        roots.resolve(0, rel)
    assert info.value.code == code


@pytest.mark.parametrize("rel,code", [("out-link/secret", "outside-root"), ("up/x", "outside-root"),
                                      ("", "is-root"), ("..", "bad-path")])
def test_parent_escapes_fail(tree, rel, code):
    roots = paths.Roots([str(tree)])
    with pytest.raises(errors.HomeChannelError) as info:
        roots.resolve_parent(0, rel)
    assert info.value.code == code


@pytest.mark.parametrize("rel", ["", "sub", "sub/f.txt", "ünï cødé ✓.txt", "inner-link",
                                 "inner-link/f.txt", "up/root/sub", "a" * 255, "bad-\udcff-name",
                                 "name with spaces", ".hidden", "..dots", "new-file"])
def test_names_that_work(tree, rel):
    roots = paths.Roots([str(tree)])
    real = roots.resolve(0, rel)
    assert paths.inside(str(tree), real)


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
    assert roots.resolve(0, "") == str(real_parent / "root")
    assert not os.path.exists(roots.resolve(0, "planted"))


def test_open_nofollow_refuses_a_symlink(tree):
    with pytest.raises(OSError):
        paths.open_nofollow(str(tree / "out-file-link"), os.O_RDONLY)


def test_no_root_and_bad_types(tree):
    roots = paths.Roots([str(tree)])
    for bad in (1, -1, True, "0", None):
        with pytest.raises(errors.NotFound):
            roots.resolve(bad, "")
    with pytest.raises(errors.BadRequest):
        roots.resolve(0, 5)


def test_root_names_are_unique(tmp_path):
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data").mkdir(parents=True)
    roots = paths.Roots([str(tmp_path / "a" / "data"), str(tmp_path / "b" / "data")])
    assert [r["name"] for r in roots.describe()] == ["data", "data (2)"]
