"""``make run`` (python -m homechannel.demo): its children die with it even when it
is killed, a second one says so and exits, taken ports are named, and apps whose
local services do not listen are off (and said to be)."""

import os
import signal
import subprocess
import sys
import time
import tomllib

from helpers import REPO, free_tcp_port, free_udp_port


def start_demo(run_dir, web, udp, metrics):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
               HOMECHANNEL_RUN_DIR=str(run_dir), HOMECHANNEL_WEB_PORT=str(web),
               HOMECHANNEL_UDP_PORT=str(udp), HOMECHANNEL_METRICS_PORT=str(metrics))
    return subprocess.Popen([sys.executable, "-m", "homechannel.demo"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


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
    run_dir = tmp_path / "run"
    web, udp, metrics = free_tcp_port(), free_udp_port(), free_tcp_port()
    demo = start_demo(run_dir, web, udp, metrics)
    try:
        out = read_until(demo, "HomeChannel demo is running")
        # Nothing listens on 127.0.0.1:22 or :5900 in this namespace.
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
