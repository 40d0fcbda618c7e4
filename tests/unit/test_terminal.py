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
    """Created on first use through ``keyfiles.write_secret_file`` (0600), with the
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
    """As ``keyfiles.load_identity_key`` (and ssh itself) does.  How this was shown to fail:
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


class PoolRecorder:
    """A reactor's thread pool that records each job; the test runs it (the "thread")
    and hands the result back as ``callFromThread`` would."""

    def __init__(self):
        self.jobs = []

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args))

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def run(self):
        on_result, f, args = self.jobs.pop(0)
        try:
            on_result(True, f(*args))
        except Exception:
            from twisted.python.failure import Failure
            on_result(False, Failure())


def test_ssh_key_is_loaded_once_in_a_thread_for_every_session(tmp_path):
    """Sessions share one load, handed to the reactor's thread pool (never run on the
    reactor: nothing is loaded before the pool runs it), and later sessions get the
    key at once.  How this was shown to fail: the old code called ``load_identity``
    on the reactor in every session's ``connect``."""
    from homechannel.server.apps.terminal import SshKey

    path = str(tmp_path / "terminal_key")
    pool = PoolRecorder()
    ssh_key = SshKey(path, pool)
    first, second = [], []
    ssh_key.get().addCallback(first.append)
    ssh_key.get().addCallback(second.append)
    assert len(pool.jobs) == 1 and pool.jobs[0][1:] == (load_identity, (path,))
    assert not os.path.exists(path) and first == []
    pool.run()
    assert first == second and len(first) == 1 and os.path.exists(path)
    third = []
    ssh_key.get().addCallback(third.append)
    assert third == first and pool.jobs == [] and ssh_key.loads == 1


def test_a_key_that_failed_to_load_is_tried_again(tmp_path):
    """A bad key file is an ``Unavailable`` for that session; once fixed, the next
    session loads it (no restart needed)."""
    from homechannel.server.apps.terminal import SshKey

    path = str(tmp_path / "terminal_key")
    load_identity(path)
    os.chmod(path, 0o644)
    pool = PoolRecorder()
    ssh_key = SshKey(path, pool)
    failed = []
    ssh_key.get().addErrback(failed.append)
    pool.run()
    assert len(failed) == 1 and failed[0].check(Unavailable)
    assert failed[0].value.code == "bad-key"
    os.chmod(path, 0o600)
    got = []
    ssh_key.get().addCallback(got.append)
    pool.run()
    assert len(got) == 1 and ssh_key.loads == 2
