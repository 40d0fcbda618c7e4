"""``pip install .`` ships the twistd plugins, the console script and the browser
client.  (The plugins from the checkout: test_plugins.py.)

Offline: the wheel is built with ``--no-build-isolation`` (setuptools and
wheel come from the test venv) from a copy of the source, installed with
``--no-deps`` into a ``--target`` directory, and inspected from a subprocess
whose ``sys.path`` has that directory but not the checkout.
"""

import configparser
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO, TAPNAMES
from wheels import build_wheel, copy_source, loaded_files, shipped_static

PLUGIN = "twisted/plugins/homechannel_plugins.py"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel path, target dir)`` of a wheel built from a copy of the source."""
    wheel = build_wheel(tmp_path_factory)
    env = dict(os.environ, PIP_NO_INDEX="1")
    target = tmp_path_factory.mktemp("target")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), wheel],
        check=True, env=env, timeout=300,
    )
    return wheel, target


def _run_isolated(target, code):
    """Run *code* with *target* first on sys.path and the checkout removed from it."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    prelude = (
        "import sys, os\n"
        f"repo = {REPO!r}\n"
        "sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != repo]\n"
        f"sys.path.insert(0, {str(target)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=str(target), env=env,
        capture_output=True, text=True, timeout=120,
    )


def test_wheel_contains_plugin_without_twisted_init(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert PLUGIN in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "homechannel/__init__.py" in names
    assert "homechannel/crypto.py" in names
    assert not [n for n in names if "__pycache__" in n]


def test_wheel_ships_every_module_the_client_loads(installed):
    """noVNC, xterm.js and the fit addon (and whatever they import) are in the wheel:
    without them an installed coordinator's Terminal and Desktop tabs do not load."""
    wheel, _ = installed
    shipped = shipped_static(wheel)
    loaded = loaded_files(os.path.join(REPO, "static"))
    from_npm = {p for p in loaded if p.startswith("node_modules/")}
    assert "node_modules/@novnc/novnc/core/rfb.js" in from_npm
    assert "node_modules/@xterm/xterm/lib/xterm.mjs" in from_npm
    assert "node_modules/@xterm/xterm/css/xterm.css" in from_npm
    assert len(from_npm) > 20, sorted(from_npm)     # noVNC's core imports followed
    missing = sorted(loaded - shipped)
    assert not missing, f"the wheel lacks files the client loads: {missing}"
    assert not [p for p in shipped if p.endswith((".ts", ".map"))]


def test_wheel_ships_static_client_as_data_files(installed):
    """Every file of the browser client (not node_modules) is in the wheel, in place."""
    wheel, _ = installed
    shipped = shipped_static(wheel)
    static = os.path.join(REPO, "static")
    expected = set()
    for dirpath, dirnames, filenames in os.walk(static):
        dirnames[:] = [d for d in dirnames if d not in ("node_modules", "vendor")]
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), static)
            if rel not in ("package.json", "package-lock.json"):
                expected.add(rel)
    assert "index.html" in expected
    missing = sorted(expected - shipped)
    assert not missing, f"add these to [options.data_files] in setup.cfg: {missing}"


def test_console_script_declared(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        (ep,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        cp = configparser.ConfigParser()
        cp.read_string(z.read(ep).decode())
    assert cp["console_scripts"]["homechannel"].strip() == "homechannel.cli:main"


def test_installed_plugins_found_by_getPlugins(installed):
    _, target = installed
    r = _run_isolated(target, (
        "import homechannel, twisted.plugins.homechannel_plugins as m\n"
        "print('FROM', os.path.dirname(m.__file__))\n"
        "print('PKG', os.path.dirname(homechannel.__file__))\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "for p in getPlugins(IServiceMaker):\n"
        "    print('TAP', p.tapname, p.module)\n"
    ))
    assert r.returncode == 0, r.stderr
    assert f"FROM {target}/twisted/plugins" in r.stdout
    assert f"PKG {target}/homechannel" in r.stdout
    assert "TAP homechannel-coordinator homechannel.coordinator.tap" in r.stdout
    assert "TAP homechannel-server homechannel.server.tap" in r.stdout


def test_installed_twistd_help_lists_both(installed):
    _, target = installed
    r = _run_isolated(target, (
        "sys.argv = ['twistd', '--help']\n"
        "from twisted.scripts.twistd import run\n"
        "run()\n"
    ))
    assert r.returncode == 0, r.stderr
    for tap in TAPNAMES:
        assert tap in r.stdout, r.stdout


def test_wheel_without_npm_modules_is_refused(tmp_path):
    """A wheel built before 'make npm' would ship a client whose Terminal and Desktop
    tabs cannot load: where npm is not installed either (not on PATH), the build stops
    and says what to run.  (With npm, setup.py runs 'npm ci' itself:
    test_installed.py.)"""
    src = tmp_path / "src"
    src.mkdir()
    copy_source(src)
    shutil.rmtree(src / "static" / "node_modules", ignore_errors=True)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "wheels"), str(src)],
        env=dict(os.environ, PIP_NO_INDEX="1", PATH=os.path.dirname(sys.executable)),
        capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "make npm" in r.stdout + r.stderr
    assert "install npm" in r.stdout + r.stderr
    assert not glob.glob(str(tmp_path / "wheels" / "*.whl"))
