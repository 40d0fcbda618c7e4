"""The README's manual twistd commands work exactly as written: both at once,
from one directory (each would stop on the other's twistd.pid without
``--pidfile=``)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

from helpers import REPO
from daemons import make_pair


def readme_twistd_lines():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    twistd ")]


def test_readme_twistd_commands_run_side_by_side(tmp_path):
    lines = readme_twistd_lines()
    assert len(lines) == 2 and "homechannel-coordinator" in lines[0] \
        and "homechannel-server" in lines[1], lines
    pair = make_pair(tmp_path)      # writes coordinator.toml and server.toml in tmp_path
    assert os.path.basename(pair.coordinator_config) == "coordinator.toml"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               PYTHONUNBUFFERED="1", XDG_CONFIG_HOME=str(tmp_path / ".config"))
    procs, outputs = [], []
    try:
        for line in lines:
            out = []
            p = subprocess.Popen(["/bin/sh", "-c", "exec " + line], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            threading.Thread(target=lambda p=p, out=out: out.extend(
                iter(lambda: p.stdout.readline().decode("utf-8", "replace"), "")),
                daemon=True).start()
            procs.append(p)
            outputs.append(out)
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while not any("registered with coordinator" in line for line in outputs[1]):
            assert all(p.poll() is None for p in procs), "".join(outputs[0] + outputs[1])
            assert time.monotonic() < deadline, "".join(outputs[0] + outputs[1])
            time.sleep(0.2)
        assert not (tmp_path / "twistd.pid").exists()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(15)
    assert not any(re.search("Traceback", line) for out in outputs for line in out)
