"""Secret files other than keys: coturn's shared secret (``turn.secret_file``),
Redis's password (``cluster.redis_password_file``) and the admin token are refused,
as identity keys are, when group or others may read them; the message says which
setting and what to run.  (Keys and the password key file: ``test_crypto.py``.)"""

import os

import pytest

from homechannel.coordinator import admin, turn
from homechannel.coordinator.cluster import node
from homechannel.errors import ConfigError

SECRET = "0123456789abcdef0123456789abcdef"

READERS = {
    "turn.secret_file": (turn.load_secret, SECRET.encode()),
    "cluster.redis_password_file": (node.read_password, SECRET),
    "admin token": (admin.read_token, SECRET),
}


@pytest.mark.parametrize("what", sorted(READERS))
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_secret_file_others_can_read_is_refused(tmp_path, what, mode):
    """How this was shown to fail: before they read through
    ``keyfiles.read_private_file``, the TURN secret and the Redis password were read
    whatever their mode (no error was raised)."""
    read, _ = READERS[what]
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=rf"^{what} {path} is readable by others "
                                          rf"\(mode {mode:04o}\): run 'chmod 600 {path}'$"):
        read(str(path))


@pytest.mark.parametrize("what", sorted(READERS))
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_secret_file_is_read(tmp_path, what, mode):
    read, expected = READERS[what]
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    os.chmod(path, mode)
    assert read(str(path)) == expected


@pytest.mark.parametrize("what", sorted(READERS))
def test_a_missing_secret_file_says_which_setting(tmp_path, what):
    read, _ = READERS[what]
    with pytest.raises(ConfigError, match=rf"^{what} {tmp_path}/missing does not exist"):
        read(str(tmp_path / "missing"))
