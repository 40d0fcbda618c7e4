"""The cluster key (``coordinator/cluster/clusterkey.py``, ``keyfiles`` and
``homechannel cluster-key``): what the nodes of a cluster hold and Redis never sees.
Sans I/O: the messages, records, pool entries and names are checked here with known
keys and times; the same code against a real Redis is ``tests/e2e/test_cluster_redis.py``."""

import os
import stat

import pytest
from hypothesis import given, strategies as st

from homechannel import crypto, keyfiles
from homechannel.cli import main as cli_main
from homechannel.coordinator.cluster.clusterkey import (
    DONE, NODE, WINDOW, ClusterKey, MessageRefused, MessageSeal)
from homechannel.errors import KeyFileError, ProtocolError

KEY = ClusterKey(bytes(range(32)))
OTHER = ClusterKey(bytes(32))
NOW = 1_800_000_000.0


def refused(seal, purpose, data, now=NOW):
    with pytest.raises(MessageRefused) as e:
        seal.open(purpose, data, now)
    return e.value.reason


def test_a_message_opens_once_for_its_purpose_with_its_key_near_its_time():
    """What a node acts on is what a node sealed, once: a flipped bit anywhere, another
    cluster key, the other channel's purpose, a second delivery (a replay) or a time more
    than WINDOW off is refused with its reason.  How this was shown to fail: without the
    salt check in ``MessageSeal.open`` the replay opened; without the time check the
    message WINDOW + 1 s old opened; with the purpose left out of the authenticated data
    (``header`` for ``purpose + header``) the node message opened as a completion."""
    sender, receiver = MessageSeal(KEY), MessageSeal(KEY)
    sealed = sender.seal(NODE, b"Fk" * 8, NOW)
    assert b"Fk" not in sealed                       # not readable in Redis
    assert receiver.open(NODE, sealed, NOW + 1) == b"Fk" * 8
    assert refused(receiver, NODE, sealed) == "replayed"
    for i in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 1
        assert refused(MessageSeal(KEY), NODE, bytes(flipped)) in ("bad-mac", "malformed")
    assert refused(MessageSeal(KEY), DONE, sealed) == "bad-mac"
    assert refused(MessageSeal(OTHER), NODE, sealed) == "bad-mac"
    assert refused(MessageSeal(KEY), NODE, sealed, NOW + WINDOW + 1) == "stale"
    assert refused(MessageSeal(KEY), NODE, sealed, NOW - WINDOW - 1) == "stale"
    assert MessageSeal(KEY).open(NODE, sealed, NOW + WINDOW) == b"Fk" * 8
    # Two seals of one message differ (a fresh salt each): both open, once each.
    again = sender.seal(NODE, b"Fk" * 8, NOW)
    assert again != sealed and receiver.open(NODE, again, NOW) == b"Fk" * 8
    assert refused(receiver, NODE, b"O" + bytes(40)) == "malformed"
    assert refused(receiver, NODE, b"") == "malformed"


def test_the_replay_table_forgets_only_what_its_window_refuses_and_is_bounded():
    """A salt is kept for 2 x WINDOW after it arrived (every message that could still
    open), then forgotten; a full table refuses new messages rather than forget a salt
    early (which would let a replay through).  How this was shown to fail: keeping each
    salt for WINDOW only (``now + self.window``), the replay of a message stamped
    WINDOW ahead of the receiver's clock opened a second time."""
    seal = MessageSeal(KEY, max_seen=3)
    ahead = seal.seal(NODE, b"x", NOW + WINDOW)      # a sender whose clock is ahead
    assert seal.open(NODE, ahead, NOW) == b"x"
    assert refused(seal, NODE, ahead, NOW + 1.5 * WINDOW) == "replayed"
    assert len(seal) == 1
    for i in range(2):
        seal.open(NODE, seal.seal(NODE, b"y", NOW), NOW)
    assert refused(seal, NODE, seal.seal(NODE, b"z", NOW), NOW) == "busy"
    late = NOW + 2 * WINDOW + 0.001
    fresh = seal.seal(NODE, b"z", late)
    assert seal.open(NODE, fresh, late) == b"z" and len(seal) == 1


@given(st.binary(max_size=120))
def test_any_bytes_open_or_are_refused(data):
    try:
        MessageSeal(KEY).open(NODE, data, NOW)
    except MessageRefused as e:
        assert isinstance(e, ProtocolError) and e.reason in ("malformed", "bad-mac")


def test_a_pool_entry_checks_the_answer_only_with_the_key():
    """Redis holds HMAC(pools key, key id || challenge || expectedAnswer): the right
    answer matches, a wrong one does not, and the entry moved to another server or
    challenge matches nothing; the entry is not the expectedAnswer (which would check a
    password guess in one SHA-256).  How this was shown to fail: with ``pool_entry``
    returning *expected* itself, ``entry != expected`` failed; with the HMAC over
    *expected* alone, the entry matched for another server's key id."""
    password_key = bytes(range(100, 132))        # K, as PBKDF2 would derive it
    kid, challenge = b"k" * 16, b"c" * 16
    answer = crypto.challenge_answer(password_key, challenge)
    expected = crypto.expected_answer(answer)
    entry = KEY.pool_entry(kid, challenge, expected)
    assert len(entry) == 32 and entry != expected
    assert KEY.answer_matches(kid, challenge, answer, entry)
    assert not KEY.answer_matches(kid, challenge, bytes(32), entry)
    assert not KEY.answer_matches(b"K" * 16, challenge, answer, entry)
    assert not KEY.answer_matches(kid, b"C" * 16, answer, entry)
    assert not OTHER.answer_matches(kid, challenge, answer, entry)


def test_records_open_only_for_their_session_and_names_are_keyed_hashes():
    """A sealed record opens only for what it was sealed for (a session's info does not
    open as another session's); a name is a keyed hash, the same for str and bytes, and
    another key's differs.  How this was shown to fail: with the record's authenticated
    data ``b"record "`` alone (not bound to *aad*), the record opened for session s2."""
    blob = KEY.seal_record(b"info s1", b'["k","203.0.113.9","dev"]')
    assert b"203.0.113" not in blob
    assert KEY.open_record(b"info s1", blob) == b'["k","203.0.113.9","dev"]'
    for aad, data in ((b"info s2", blob), (b"info s1", blob[:-1]), (b"info s1", None)):
        with pytest.raises(MessageRefused) as e:
            KEY.open_record(aad, data)
        assert e.value.reason == "bad-record"
    name = KEY.pseudonym("203.0.113.9")
    assert name == KEY.pseudonym(b"203.0.113.9") and len(name) == 22
    assert name != OTHER.pseudonym("203.0.113.9") and b"203" not in name


def test_the_key_file_is_made_once_private_and_refused_when_others_may_read_it(tmp_path,
                                                                                capsys):
    """``homechannel cluster-key`` makes the file (0600) once and prints the fingerprint
    every node logs at start; a copy has the same fingerprint; the node refuses a file
    group or others may read, a missing one (naming the command) and a malformed one.
    How this was shown to fail: without ``check_private_mode`` in ``load_cluster_key``
    the 0644 file loaded."""
    path = tmp_path / "keys" / "cluster.key"
    assert cli_main(["cluster-key", "--key-file", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "created" in err and "copy this file to every node" in err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = keyfiles.load_cluster_key(path)
    assert out.strip() == f"fingerprint {ClusterKey(key).fingerprint}"
    assert cli_main(["cluster-key", "--key-file", str(path)]) == 0     # never replaced
    out2, err = capsys.readouterr()
    assert out2 == out and "exists" in err and keyfiles.load_cluster_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keyfiles.load_cluster_key(path)
    with pytest.raises(KeyFileError, match="homechannel cluster-key --key-file"):
        keyfiles.load_cluster_key(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a cluster key"):
        keyfiles.load_cluster_key(bad)


def test_the_redis_password_file_must_be_private(tmp_path):
    """How this was shown to fail: with ``read_secret_line`` in place of
    ``read_private_line`` (as before) the 0644 file was read."""
    path = tmp_path / "redis-password"
    path.write_text("s3cret\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keyfiles.read_private_line(path, "Redis password file")
    os.chmod(path, 0o600)
    assert keyfiles.read_private_line(path, "Redis password file") == "s3cret"
