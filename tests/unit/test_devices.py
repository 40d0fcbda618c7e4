"""The home server's enrolled devices (``server/devices.py``), the password epoch kept
with the password key (``keyfiles``), and ``homechannel devices list|revoke``:
revoking reaches the running server's checks and its coordinator within one poll."""

import os
import stat

import pytest
from twisted.internet import task

from devicekeys import Device

from homechannel import crypto, keyfiles
from homechannel.errors import AuthenticationError, ConfigError
from homechannel.protocol import connect
from homechannel.server import devices as store
from homechannel.server.devices import EnrolledDevices

NOW = 1_700_000_000


class Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """``homechannel ARGS`` in this process (its exit status and output)."""
    from homechannel import cli

    def call(*args):
        capsys.readouterr()
        status = cli.main(list(args))
        out = capsys.readouterr()
        return Ran(status, out.out, out.err)
    return call


def running(path, epoch=5, limit=connect.MAX_POLICY_DEVICES):
    clock = task.Clock()
    clock.advance(NOW)
    enrolled = EnrolledDevices(str(path), epoch, clock, limit=limit)
    enrolled.load()
    told = []
    enrolled.on_change = told.append
    return enrolled, told, clock


def test_enrolled_devices_are_kept_in_a_private_file_and_listed(tmp_path):
    path = tmp_path / "state" / store.FILE
    enrolled, told, _ = running(path)
    laptop, phone = Device(), Device()
    enrolled.enrol(laptop.key.public_raw, "Chromium on Linux", NOW)
    enrolled.enrol(phone.key.public_raw, "phone\x1b[2J\n", NOW + 5)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert told == [connect.DevicePolicy(5, frozenset({laptop.id})),
                    connect.DevicePolicy(5, frozenset({laptop.id, phone.id}))]
    again, _, _ = running(path)
    assert again.policy() == told[-1]
    lines = store.describe(store.read_file(str(path)))
    assert lines[0].startswith(phone.id) and "phone?[2J?" in lines[0]   # escaped
    assert "Chromium on Linux" in lines[1]


def test_the_server_checks_epoch_enrolment_key_and_signature(tmp_path):
    enrolled, _, _ = running(tmp_path / store.FILE)
    device, thief = Device(), Device()
    enrolled.enrol(device.key.public_raw, "laptop", NOW)
    home = crypto.IdentityKey.generate()
    token = connect.DeviceToken.verify(home.public_raw, device.token(home, 5, NOW), NOW)
    message = b"what the connect binds"
    assert enrolled.check(token, device.key.sign(message), message).id == device.id
    for t, signature, why in (
            (token, thief.key.sign(message), "signature"),
            (token, None, "not signed"),
            (connect.DeviceToken.verify(home.public_raw, device.token(home, 4, NOW), NOW),
             device.key.sign(message), "password was changed"),
            (connect.DeviceToken.verify(home.public_raw, thief.token(home, 5, NOW), NOW),
             thief.key.sign(message), "not enrolled")):
        with pytest.raises(AuthenticationError, match=why):
            enrolled.check(t, signature, message)


def test_revoking_reaches_the_running_server_within_one_poll(tmp_path, run):
    """17.4: ``homechannel devices revoke`` edits the file; the running server's poll
    (its status tick) reads it, stops accepting the device and tells the new policy
    (for its coordinator: DEVICES).  How this was shown to fail: without the poll the
    running server kept the device until it restarted."""
    state = tmp_path / "state"
    enrolled, told, _ = running(state / store.FILE)
    keep, lose = Device(), Device()
    enrolled.enrol(keep.key.public_raw, "keep", NOW)
    enrolled.enrol(lose.key.public_raw, "lose", NOW)
    listed = run("devices", "list", "--state-dir", str(state))
    assert listed.returncode == 0 and keep.id in listed.stdout and lose.id in listed.stdout
    r = run("devices", "revoke", lose.id[:6], "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert f"revoked {lose.id} (lose)" in r.stderr
    enrolled.poll()
    assert told[-1] == connect.DevicePolicy(5, frozenset({keep.id}))
    home = crypto.IdentityKey.generate()
    token = connect.DeviceToken.verify(home.public_raw, lose.token(home, 5, NOW), NOW)
    with pytest.raises(AuthenticationError, match="not enrolled"):
        enrolled.check(token, lose.key.sign(b"m"), b"m")
    n = len(told)
    enrolled.poll()                  # nothing changed: nothing told
    assert len(told) == n


def test_revoke_needs_one_matching_device(tmp_path, run):
    state = tmp_path / "state"
    enrolled, _, _ = running(state / store.FILE)
    a = Device()
    enrolled.enrol(a.key.public_raw, "a", NOW)
    r = run("devices", "revoke", "!!", "--state-dir", str(state))
    assert r.returncode == 1 and "no enrolled device has an id starting with '!!'" in r.stderr
    r = run("devices", "revoke", "--state-dir", str(state))
    assert r.returncode == 1 and "name the device to revoke" in r.stderr
    assert store.read_file(str(state / store.FILE)).keys() == {a.id}
    (state / store.FILE).write_text("{not json")
    r = run("devices", "list", "--state-dir", str(state))
    assert r.returncode == 1 and "unreadable" in r.stderr


def test_beyond_the_limit_the_device_seen_least_recently_goes(tmp_path):
    enrolled, _, clock = running(tmp_path / store.FILE, limit=2)
    old, used, new = Device(), Device(), Device()
    enrolled.enrol(old.key.public_raw, "old", NOW)
    enrolled.enrol(used.key.public_raw, "used", NOW + 1)
    enrolled.enrol(used.key.public_raw, "used", NOW + 100)      # signed in again
    enrolled.enrol(new.key.public_raw, "new", NOW + 200)
    assert enrolled.policy().devices == {used.id, new.id}
    assert store.read_file(str(tmp_path / store.FILE)).keys() == {used.id, new.id}


def test_the_password_epoch_moves_with_every_new_password(tmp_path, run):
    """17.4: ``homechannel passwd`` stores a new epoch with the password key: one more than
    before, and a random one the first time (a password file removed and made again
    never revives old tokens).  How this was shown to fail: before, the file had no
    epoch and a token outlived every password change."""
    path = str(tmp_path / "password.json")
    server = crypto.IdentityKey.generate()
    assert keyfiles.load_password_epoch(path) is None
    first = keyfiles.save_password_key(path, server.public_raw, b"k" * 32)
    assert keyfiles.load_password_epoch(path) == first
    assert keyfiles.save_password_key(path, server.public_raw, b"j" * 32) == first + 1
    os.unlink(path)
    others = {keyfiles.save_password_key(str(tmp_path / f"p{i}"), server.public_raw, b"k" * 32)
              for i in range(4)}
    assert len(others) == 4                 # random, not 0 or 1 every time
    state = tmp_path / "state"
    pw = tmp_path / "pw"
    pw.write_text("a good password\n")
    epochs = []
    for _ in range(2):
        r = run("passwd", "--state-dir", str(state), "--password-file", str(pw))
        assert r.returncode == 0, r.stderr
        epochs.append(keyfiles.load_password_epoch(str(state / "password.json")))
        assert f"password epoch {epochs[-1]}" in r.stderr
    assert epochs[1] == epochs[0] + 1


def test_a_damaged_file_is_a_clear_error(tmp_path):
    path = tmp_path / store.FILE
    path.write_text('{"version": 1, "devices": {"abc": {"key": "nope"}}}')
    with pytest.raises(ConfigError, match="damaged"):
        store.read_file(str(path))
