"""The terminal app against a real sshd (loopback port, generated host key,
a test user with a password created for the test).  Needs root (useradd) and
runs inside tests/netns-run."""

import asyncio
import os
import subprocess

from homechannel.protocol import frames
from homechannel.server.apps.terminal import HostKeyStore

from terminalapp import run_terminal


def test_sign_in_run_command_resize_and_exit(tmp_path, sshd):
    async def body(t, host):
        await t.wait_for(b"login as: ")
        t.type(sshd["user"] + "\r")
        await t.wait_for(b"password: ")
        t.type("wrong-password\r")
        await t.wait_for(b"Permission denied")
        await t.wait_for(b"password: ")
        t.type(sshd["password"] + "\r")
        await t.wait_for(b"$ ")
        assert sshd["password"].encode() not in t.screen  # never echoed
        assert any(f.type == frames.RES and f.body.get("user") == sshd["user"] for f in t.frames)
        t.type("echo HC-MARK-$((40+2))\r")
        await t.wait_for(b"HC-MARK-42")
        t.ch.send_frame(frames.REQ, 9, {"op": "resize", "cols": 101, "rows": 31})
        t.type("stty size\r")
        await t.wait_for(b"31 101")
        t.type("exit\r")
        while True:
            f = await t.ch.recv_frame()
            if f.type == frames.END:
                break
        assert f.body == {"exitStatus": 0}
        await asyncio.wait_for(t.ch.closed, 10)
        assert os.path.exists(host.known_hosts)  # host key remembered on first use

    run_terminal(tmp_path, sshd["port"], body)


def test_changed_host_key_is_refused(tmp_path, sshd):
    from twisted.conch.ssh import keys

    # a different key remembered for sshd's host name and port: a changed host key
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    store = HostKeyStore(str(tmp_path / "state" / "known_hosts"))
    store.check("127.0.0.1", sshd["port"], keys.Key.fromString(open(str(wrong) + ".pub").read()).blob())
    assert store.check("127.0.0.1", sshd["port"], keys.Key.fromString(
        open(str(wrong) + ".pub").read()).blob()) == "known"

    async def body(t, host):
        await t.wait_for(b"login as: ")
        t.type(sshd["user"] + "\r")
        while True:
            f = await t.ch.recv_frame()
            if f.type == frames.DATA:
                t.screen += f.data
            if f.type == frames.ERR:
                break
        assert f.body["code"] == "host-key-changed"
        assert b"CHANGED" in t.screen and b"known_hosts" in t.screen
        await asyncio.wait_for(t.ch.closed, 10)

    run_terminal(tmp_path, sshd["port"], body)
