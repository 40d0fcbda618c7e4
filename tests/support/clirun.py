"""The ``homechannel`` command in a child process, for the tests of its messages:
``run(*args, stdin=None)`` (its ``CompletedProcess``, text) and
``one_clear_line(result, *words)`` (status 1, no traceback, one line on stderr
holding every one of *words*)."""

import os
import subprocess
import sys

from helpers import REPO


def run(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "homechannel.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, input=stdin)


def one_clear_line(r, *words):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
