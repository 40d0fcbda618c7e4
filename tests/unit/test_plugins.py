"""The twistd plugins from the checkout: twistd finds both taps, the plugin module
imports nothing heavy, and the browser client is found in the checkout.  (From a
built and installed wheel: test_packaging.py.)"""

import os
import subprocess
import sys

from helpers import REPO, TAPNAMES


def test_plugin_module_imports_nothing_heavy():
    r = subprocess.run(
        [sys.executable, "-c",
         "import sys\n"
         "import twisted.plugins.homechannel_plugins\n"
         "heavy = [m for m in ('twisted.internet.reactor', 'homechannel.coordinator.tap',\n"
         "                     'homechannel.server.tap', 'aiortc', 'klein', 'homechannel.crypto')\n"
         "         if m in sys.modules]\n"
         "print(heavy)\n"
         "sys.exit(1 if heavy else 0)\n"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_checkout_plugins_found_by_twistd():
    """The editable install (make venv) and the checkout: twistd finds both taps."""
    r = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.argv = ['twistd', '--help']\n"
         "from twisted.scripts.twistd import run; run()\n"],
        cwd="/", capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    for tap in TAPNAMES:
        assert tap in r.stdout, r.stdout


def test_default_static_dir_in_checkout():
    from homechannel import default_static_dir
    assert default_static_dir() == os.path.join(REPO, "static")
