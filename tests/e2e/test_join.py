"""A home server in one line: the coordinator prints a join string, ``homechannel
join`` on the home machine asks for the password twice through a real terminal
(never echoed, never stored), writes the keys and server.toml, prints the link
and a QR code; the home server started from that file registers, and the
printed link's server id is online."""

import json
import os
import pty
import re
import select
import sys
import time
import urllib.request

from helpers import REPO, free_tcp_port, free_udp_port, write_toml

from homechannel import crypto, keyfiles

PASSWORD = "a long home password"


def run_in_pty(argv, env, answers, timeout=60):
    """Run *argv* on a pseudo-terminal, answering each prompt in *answers*
    (a list of (prompt regex, reply)); return everything it printed."""
    pid, fd = pty.fork()
    if pid == 0:   # the child
        os.execvpe(argv[0], argv, env)
    out = b""
    deadline = time.monotonic() + timeout
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if pending and re.search(pending[0][0], out.decode("utf-8", "replace")
                                     .rsplit("\n", 1)[-1]):
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def test_join_from_the_coordinators_string(tmp_path, twistd):
    web, udp = free_tcp_port(), free_udp_port()
    ccfg = write_toml(tmp_path / "coordinator.toml", {
        "state_dir": str(tmp_path / "coordinator"),
        "udp": {"interface": "127.0.0.1", "port": udp},
        "web": {"listen": f"tcp:{web}:interface=127.0.0.1",
                "public_url": f"http://127.0.0.1:{web}"},
        "metrics": {"listen": ""},
    })
    coordinator = twistd("homechannel-coordinator", ccfg)
    logged = coordinator.wait_for_log(r"join string for home servers.*: (hcjoin:\S+)")
    env = dict(os.environ, PYTHONPATH=REPO, XDG_CONFIG_HOME=str(tmp_path / "home-config"))
    env.pop("STATE_DIRECTORY", None)
    import subprocess
    printed = subprocess.run([sys.executable, "-m", "homechannel.cli", "join-string",
                              "--config", str(ccfg)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    join_string = printed.stdout.strip()
    assert join_string == logged.group(1)

    # On the home machine: one command, the password typed twice on a terminal.
    code, out = run_in_pty(
        [sys.executable, "-m", "homechannel.cli", "join", join_string,
         "--files-root", str(tmp_path)], env,
        [("New password: ?$", PASSWORD), ("Repeat: ?$", PASSWORD)])
    assert code == 0, out
    assert PASSWORD not in out                     # never echoed
    link = re.search(r"(http://127\.0\.0\.1:\d+/#server=[A-Za-z0-9_-]+)", out).group(1)
    assert "\u2580" in out or "\u2588" in out or "\u2584" in out   # the QR code
    server_toml = tmp_path / "home-config" / "homechannel" / "server.toml"
    state = tmp_path / "home-config" / "homechannel"
    assert server_toml.exists()
    for path in state.rglob("*"):                 # never stored
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    server_id = link.split("#server=")[1]
    key = keyfiles.load_identity_key(str(state / "server.key"))
    assert key.text == server_id
    assert keyfiles.load_password_key(str(state / "password.json"), key.public_raw) == \
        crypto.derive_password_key(PASSWORD, key.public_raw)

    # A second join does not overwrite what the first one wrote.
    code, out = run_in_pty([sys.executable, "-m", "homechannel.cli", "join", join_string],
                           env, [])
    assert code == 1 and "exists already" in out

    # Two different passwords are refused.
    code, out = run_in_pty(
        [sys.executable, "-m", "homechannel.cli", "join", join_string, "--config",
         str(tmp_path / "other.toml"), "--state-dir", str(tmp_path / "other")], env,
        [("New password: ?$", PASSWORD), ("Repeat: ?$", PASSWORD + "x")])
    assert code == 1 and "do not match" in out and not (tmp_path / "other.toml").exists()

    # The home server from the written file registers, and the link's id is online.
    text = server_toml.read_text()
    server_toml.write_text(text + '\n[metrics]\nlisten = ""\n')
    server = twistd("homechannel-server", str(server_toml), env={
        "XDG_CONFIG_HOME": str(tmp_path / "home-config")})
    server.wait_for_log(f"registered with coordinator 127.0.0.1:{udp}", timeout=20)
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/servers/{server_id}",
                                timeout=10) as resp:
        assert json.loads(resp.read())["online"] is True
