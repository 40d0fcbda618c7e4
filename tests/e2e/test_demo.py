"""``make run`` (python -m homechannel.demo): the first lines it prints are the link
and the password (the daemons' logs go to files, or stream with --verbose), the
home server starts only once the coordinator answers (no "cannot register"
warning), its children die with it even when it is killed and stop on Ctrl-C,
a second one says so and exits, taken ports are named, a daemon that exits early
is shown with the end of its log, and apps whose local services do not listen
are off (and said to be)."""

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib

import pytest

from helpers import REPO, free_tcp_port, free_udp_port

BANNER_END = "Ctrl-C to stop."


def start_demo(run_dir, web, udp, metrics, *args, env=None):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
               HOMECHANNEL_RUN_DIR=str(run_dir), HOMECHANNEL_WEB_PORT=str(web),
               HOMECHANNEL_UDP_PORT=str(udp), HOMECHANNEL_METRICS_PORT=str(metrics),
               **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "homechannel.demo", *args], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def read_file(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_until(proc, needle, timeout=90):
    out = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while needle.encode() not in out:
        if time.monotonic() > deadline or (proc.poll() is not None and not out.endswith(b"")):
            raise AssertionError(f"{needle!r} not seen:\n{out.decode(errors='replace')}")
        chunk = proc.stdout.read()
        if chunk:
            out += chunk
        elif proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {needle!r}:\n"
                                 f"{out.decode(errors='replace')}")
        else:
            time.sleep(0.1)
    return out.decode(errors="replace")


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_lock_apps_and_children_that_die_with_it(tmp_path):
    """The first lines are the banner: link, password, the log files, Ctrl-C; the
    daemons' logs are in those files, not on the screen; the home server's log has no
    "cannot register" warning.  How this was shown to fail: with the demo before this
    banner, the link came after about 30 lines of daemon logs, and with the home server
    started right after the coordinator (no wait for it to answer), its log had
    "cannot register with coordinator 127.0.0.1:...: no answer from the coordinator"."""
    run_dir = tmp_path / "run"
    web, udp, metrics = free_tcp_port(), free_udp_port(), free_tcp_port()
    demo = start_demo(run_dir, web, udp, metrics)
    try:
        out = read_until(demo, BANNER_END)
        lines = out.splitlines()
        with open(run_dir / "password.txt") as f:
            password = f.read().strip()
        assert lines[0].startswith(f"HomeChannel demo is running: open "
                                   f"http://127.0.0.1:{web}/#server="), out
        assert lines[1] == f"Password: {password}", out
        logs = {name: run_dir / f"{name}.log" for name in ("coordinator", "server")}
        assert lines[2].startswith(f"Logs: {logs['coordinator']} and {logs['server']}"), out
        assert lines[3] == BANNER_END, out
        # The daemons' logs are in their files, not on the screen.
        assert "[homechannel" not in out and "twistd" not in out, out
        coordinator_log, server_log = (read_file(logs[n]) for n in ("coordinator", "server"))
        assert "coordinator: UDP 127.0.0.1:" in coordinator_log
        assert "registered with coordinator" in server_log
        assert "cannot register" not in server_log, server_log
        # Nothing listens on 127.0.0.1:22 or :5900 in this namespace.
        if "the desktop app is off" not in out:
            out += read_until(demo, "the desktop app is off")
        assert "the terminal app is off in this demo: no sshd listens on 127.0.0.1:22" in out
        assert "the desktop app is off in this demo: no VNC server" in out
        with open(run_dir / "server.toml", "rb") as f:
            apps = tomllib.load(f)["apps"]
        assert apps["terminal"]["enabled"] is False and apps["desktop"]["enabled"] is False
        twistds = children(demo.pid)
        assert len(twistds) == 2, twistds

        # A second demo from the same directory says so and exits.
        second = start_demo(run_dir, free_tcp_port(), free_udp_port(), free_tcp_port())
        assert second.wait(60) == 1
        text = second.stdout.read().decode()
        assert f"already running from {run_dir} (pid {demo.pid})" in text, text
        # One from another directory on the same ports names the taken port.
        third = start_demo(tmp_path / "other", web, free_udp_port(), free_tcp_port())
        assert third.wait(60) == 1
        assert f"web port {web} on 127.0.0.1 in use" in third.stdout.read().decode()

        # Killed outright (no chance to clean up): the daemons still stop.
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait(10)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in twistds):
            assert time.monotonic() < deadline, f"still running: {twistds}"
            time.sleep(0.1)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def process_states(pids):
    """State, kernel wait channel and stack of each process in *pids* (what a stop that
    hangs is waiting for)."""
    lines = []
    for pid in pids:
        parts = []
        for name in ("stat", "wchan", "stack"):
            try:
                with open(f"/proc/{pid}/{name}") as f:
                    parts.append(f"{name}: {f.read().strip()[:300]}")
            except OSError as e:
                parts.append(f"{name}: {e.strerror}")
        lines.append(f"pid {pid}: " + "; ".join(parts))
    return "\n".join(lines)


def test_verbose_streams_the_logs_and_ctrl_c_stops_both(tmp_path):
    """--verbose (make run V=1) shows both daemons' logs, prefixed, as well as writing
    them to the files, and Ctrl-C (SIGINT to the demo's process group, as a terminal
    sends it; the daemons are in sessions of their own) stops both daemons.  How this
    was shown to fail: without --verbose handling (argparse refusing the option, or
    the logs only in the files), no "[server]" line came before the banner."""
    run_dir = tmp_path / "run"
    demo = start_demo(run_dir, free_tcp_port(), free_udp_port(), free_tcp_port(), "--verbose")
    try:
        out = read_until(demo, BANNER_END)
        assert "[coordinator] " in out and "coordinator: UDP 127.0.0.1:" in out, out
        assert any(line.startswith("[server] ") and "registered with coordinator" in line
                   for line in out.splitlines()), out
        assert "registered with coordinator" in read_file(run_dir / "server.log")
        twistds = children(demo.pid)
        assert len(twistds) == 2, twistds

        os.killpg(demo.pid, signal.SIGINT)
        # Read while it stops: the streamed logs must never fill the pipe and block it.
        try:
            rest = demo.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            states = process_states([demo.pid, *twistds])
            os.killpg(demo.pid, signal.SIGKILL)
            said = demo.communicate()[0].decode(errors="replace")
            pytest.fail(f"the demo did not stop within 60 s of Ctrl-C:\n{states}\n"
                        f"--- what it printed ---\n{said[-4000:]}")
        assert demo.returncode == 0
        assert "stopping..." in rest, rest
        assert not [p for p in twistds if alive(p)]
        # Both said goodbye on the way out (their logs, still streamed).
        assert "Server Shut Down." in read_file(run_dir / "server.log")
        assert "Server Shut Down." in read_file(run_dir / "coordinator.log")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def test_a_daemon_that_exits_early_is_shown_with_the_end_of_its_log(tmp_path):
    """The home server cannot start (its state directory is a file here): the demo says
    it exited and prints the end of its log, which says why, not just "see the log",
    and stops the coordinator.  How this was shown to fail: with the message that only
    named the log ("see its log above", the logs no longer on the screen), the
    assertion on the reason (from the log) failed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "server").write_text("not a directory\n")
    demo = start_demo(run_dir, free_tcp_port(), free_udp_port(), free_tcp_port())
    try:
        assert demo.wait(90) == 1
        out = demo.stdout.read().decode(errors="replace")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    log = run_dir / "server.log"
    assert (f"the server exited (status 1) before the home server registered; the end of "
            f"its log ({log}):") in out, out
    reason = "failover-coordinator.json is unreadable"
    assert reason in out and reason in read_file(log), out
    assert "Server Shut Down." in read_file(run_dir / "coordinator.log")    # stopped
    assert "HomeChannel demo is running" not in out


def test_the_desktop_tab_is_there_with_a_vnc_server_at_homechannel_vnc(tmp_path):
    """A VNC server where HOMECHANNEL_VNC says (here Xtigervnc on a UNIX socket): the
    demo writes it as [apps.desktop] endpoint, says nothing about the desktop being
    off, and the home server lists the desktop app and pipes to it.  How this was
    shown to fail: with the demo writing only "enabled" (no endpoint), the hello had
    no desktop app."""
    import asyncio

    from services import xtigervnc

    from homechannel import keyfiles
    from homechannel.client import session
    from homechannel.client.control import wait_open

    run_dir = tmp_path / "run"
    sock = tmp_path / "vnc.sock"
    web = free_tcp_port()
    with xtigervnc(unix_path=sock):
        demo = start_demo(run_dir, web, free_udp_port(), free_tcp_port(),
                          env={"HOMECHANNEL_VNC": f"unix:{sock}"})
        try:
            out = read_until(demo, BANNER_END)
            server_id = out.split("#server=", 1)[1].split()[0]
            with open(run_dir / "server.toml", "rb") as f:
                desktop = tomllib.load(f)["apps"]["desktop"]
            assert desktop == {"enabled": True, "endpoint": f"unix:{sock}"}

            async def main():
                pc, _, hello = await session.connect(
                    f"http://127.0.0.1:{web}", server_id,
                    (run_dir / "password.txt").read_text().strip(),
                    keyfiles.load_identity_key(run_dir / "coordinator.key").text,
                    advertise_addresses=("127.0.0.1",), timeout=30)
                try:
                    channel = pc.createDataChannel("app:desktop:1")
                    got = asyncio.Queue()
                    channel.on("message", got.put_nowait)
                    await wait_open(channel, 15)
                    return hello, [await asyncio.wait_for(got.get(), 15) for _ in range(2)]
                finally:
                    await pc.close()

            hello, (_, banner) = asyncio.run(asyncio.wait_for(main(), 60))
            assert "desktop" in [a["name"] for a in hello["apps"]]
            assert bytes(banner) == b"RFB 003.008\n"
            time.sleep(0.5)
            os.set_blocking(demo.stdout.fileno(), False)
            out += (demo.stdout.read() or b"").decode(errors="replace")
            assert "the desktop app is off" not in out, out
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGINT)
                demo.wait(60)
