"""Uploads against a real disk, end to end: a real twistd home server whose files root
is a tmpfs of known size, the native client.  A partial file a crash left behind is
deleted at start; an upload the reserve cannot hold is refused before a byte is sent,
with the numbers; one that fits still goes through.  (The accounting, the idle
timeout and the sweep's rules: ``tests/unit/test_uploads.py``.)"""

import asyncio
import os
import subprocess

import pytest

from daemons import make_pair
from nativeclient import NativeFiles

from homechannel.server.apps.uploads import temp_name

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (private to this test's mount namespace: tests/netns-run)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root in tests/netns-run")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_the_reserve_refuses_up_front_and_a_stale_partial_file_is_swept(tmp_path, twistd,
                                                                         small_disk):
    """How this was shown to fail: with ``Uploads.claim`` accepting any size, the second
    upload got its go-ahead and then failed half-way with ENOSPC, the tmpfs full; with
    no sweep at start, the stale partial file stayed."""
    stale, fresh = small_disk / temp_name(), small_disk / temp_name()
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"another home server's upload, still going")
    os.utime(stale, (0, os.path.getmtime(stale) - 3600))
    pair = make_pair(tmp_path, server_extra={"apps": {"files": {
        "roots": [str(small_disk)], "min_free": MIB}}})
    coordinator = twistd("homechannel-coordinator", pair.coordinator_config)
    coordinator.wait_for_log("coordinator: UDP")
    server = twistd("homechannel-server", pair.server_config)
    server.wait_for_log("registered with coordinator", timeout=20)
    server.wait_for_log(r"deleted 1 stale upload file\(s\) older than 300 s")
    assert not stale.exists() and fresh.exists()

    async def uploads():
        async with NativeFiles(pair) as files:
            return [await files.upload(1, "first.bin", os.urandom(2 * MIB)),
                    await files.upload(2, "second.bin", os.urandom(2 * MIB)),
                    await files.upload(3, "third.bin", os.urandom(MIB // 2))]

    first, second, third = asyncio.run(asyncio.wait_for(uploads(), 90))
    assert first[0] == "RES" and third[0] == "RES", (first, third)
    kind, body = second
    assert kind == "ERR" and body["code"] == "no-space", second
    assert body["minFree"] == MIB and MIB < body["free"] < 2 * MIB
    assert body["message"].startswith("not enough free space on the home server for 2.0 MiB:")
    assert body["message"].endswith("and uploads leave 1.0 MiB free (apps.files.min_free)")
    assert sorted(os.listdir(small_disk)) == sorted(["first.bin", "third.bin", fresh.name])
