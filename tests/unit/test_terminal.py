"""The terminal app without an SSH server (a clear error), and the home server's own
SSH key: created private with its public half, refused when others can read it,
never written through a link.  (Against a real sshd: test_terminal_sshd.py.)"""

import errno
import os
import stat

import pytest

from helpers import free_tcp_port
from homechannel.errors import Unavailable
from homechannel.protocol import frames
from homechannel.server.apps.terminal import load_identity

from terminalapp import run_terminal


def test_no_sshd_is_a_clear_error(tmp_path):
    async def body(t, host):
        await t.wait_for(b"login as: ")
        t.type("someone\r")
        while True:
            f = await t.ch.recv_frame()
            if f.type == frames.ERR:
                break
        assert f.body["code"] == "connect-failed" and "sshd" in f.body["message"]

    run_terminal(tmp_path, free_tcp_port(), body)



# -- the home server's own SSH key (apps.terminal.identity_key) -----------------------


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def test_ssh_key_is_created_private_with_a_public_half(tmp_path, umask_002):
    """Created on first use through ``crypto.write_secret_file`` (0600), with the
    ``.pub`` at an explicit 0644 whatever the umask; loaded again unchanged.  How
    this was shown to fail: the old code wrote the ``.pub`` with the umask's mode
    (0664 here)."""
    path = str(tmp_path / "state" / "terminal_key")
    key = load_identity(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path + ".pub").st_mode) == 0o644
    pub = open(path + ".pub", "rb").read()
    assert pub == key.public().toString("openssh", comment=b"homechannel-terminal") + b"\n"
    assert load_identity(path) == key
    assert sorted(os.listdir(tmp_path / "state")) == ["terminal_key", "terminal_key.pub"]


def test_a_missing_public_half_is_written_again_and_no_temporary_file_stays(tmp_path,
                                                                           monkeypatch):
    """When the ``.pub`` could not be written (a full disk, a link where its temporary
    file goes), nothing is left behind, the key still works, and the next load writes
    the ``.pub``, so the operator always has it to authorise.  How this was shown to
    fail: the old code left the key without a ``.pub`` for good (and the temporary
    file behind)."""
    path = str(tmp_path / "terminal_key")
    key = load_identity(path)
    os.unlink(path + ".pub")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", full)
        assert load_identity(path) == key
    assert sorted(os.listdir(tmp_path)) == ["terminal_key"]
    assert load_identity(path) == key
    pub = open(path + ".pub", "rb").read()
    assert pub == key.public().toString("openssh", comment=b"homechannel-terminal") + b"\n"
    assert stat.S_IMODE(os.stat(path + ".pub").st_mode) == 0o644


def test_ssh_key_readable_by_others_is_refused(tmp_path):
    """As ``IdentityKey.load`` (and ssh itself) does.  How this was shown to fail:
    the old loader used a 0644 key as it was."""
    path = str(tmp_path / "terminal_key")
    load_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(Unavailable, match=r"readable by others \(mode 0644\): run "
                                          r"'chmod 600 .*terminal_key'") as e:
        load_identity(path)
    assert e.value.code == "bad-key"


def test_ssh_key_is_never_written_through_a_link(tmp_path):
    """A dangling symlink where the key should be: a clear refusal, nothing created
    at the link's target.  How this was shown to fail: the old code (``exists()``,
    then ``O_EXCL``) raised a bare FileExistsError, which is not a HomeChannelError,
    out of the session."""
    path = tmp_path / "terminal_key"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Unavailable) as e:
        load_identity(str(path))
    assert e.value.code == "bad-key" and "terminal's SSH key" in str(e.value)
    assert not (tmp_path / "elsewhere").exists()
