"""``pip install .`` ships the twistd plugins, and the plugin module is lazy.

Offline: the wheel is built with ``--no-build-isolation`` (setuptools and
wheel come from the test venv) from a copy of the source, installed with
``--no-deps`` into a ``--target`` directory, and inspected from a subprocess
whose ``sys.path`` has that directory but not the checkout.
"""

import configparser
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO, in_ci, require_tool

TAPNAMES = ("homechannel-coordinator", "homechannel-server")
PLUGIN = "twisted/plugins/homechannel_plugins.py"


def _copy_source(dest):
    """The files a build needs (static/node_modules as 'make npm' left it), without
    .venv, build/ or .git."""
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE",
                 "MANIFEST.in"):
        if os.path.exists(os.path.join(REPO, name)):
            shutil.copy(os.path.join(REPO, name), dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(os.path.join(REPO, "homechannel"), os.path.join(dest, "homechannel"),
                    ignore=ignore)
    shutil.copytree(os.path.join(REPO, "twisted"), os.path.join(dest, "twisted"), ignore=ignore)
    shutil.copytree(os.path.join(REPO, "static"), os.path.join(dest, "static"), ignore=ignore)


def require_npm_modules():
    if not os.path.isdir(os.path.join(REPO, "static", "node_modules", "@xterm")):
        msg = "static/node_modules is missing: run 'make npm'"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


def npm_offline_env(**extra):
    """The environment for a build whose 'npm ci' may use only npm's cache (which
    'make npm' filled): the tests run where no registry is reachable."""
    return dict(os.environ, PIP_NO_INDEX="1", npm_config_offline="true",
                npm_config_update_notifier="false", **extra)


def build_wheel(tmp_path_factory, node_modules=True):
    """A wheel built offline from a copy of the source: with the npm modules 'make npm'
    left, or (*node_modules* false) without them, so that the build runs 'npm ci'."""
    require_npm_modules()
    src = tmp_path_factory.mktemp("src")
    _copy_source(src)
    if not node_modules:
        require_tool("npm", "npm")
        shutil.rmtree(src / "static" / "node_modules")
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels), str(src)],
        check=True, env=npm_offline_env(), timeout=300,
    )
    if not node_modules:    # 'npm ci' ran in the copy
        assert os.path.isdir(src / "static" / "node_modules" / "@xterm" / "xterm")
    (wheel,) = glob.glob(str(wheels / "homechannel-*.whl"))
    return wheel


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


def _shipped(wheel):
    shipped = set()
    for n in zipfile.ZipFile(wheel).namelist():
        head, sep, rel = n.partition(".data/data/share/homechannel/static/")
        if sep:
            shipped.add(rel)
    return shipped


# What a browser loads: ES module imports, dynamic imports, and the
# stylesheets the apps add (addStylesheet("/node_modules/...")).
_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|addStylesheet\(\s*)["']([^"']+)["']""")


def loaded_files(static):
    """Every file under static/ the client can load, following imports from static/js
    into node_modules (relative to static/)."""
    todo = [os.path.relpath(os.path.join(dirpath, f), static)
            for dirpath, _, files in os.walk(os.path.join(static, "js")) for f in files
            if f.endswith(".js")]
    seen = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        if not rel.endswith((".js", ".mjs")):
            continue
        with open(os.path.join(static, rel), encoding="utf-8") as f:
            text = f.read()
        for spec in _IMPORT.findall(text):
            if spec.startswith("/"):
                target = spec.lstrip("/")
            elif spec.startswith("."):
                target = os.path.normpath(os.path.join(os.path.dirname(rel), spec))
            else:
                continue   # a bare specifier (none today) or /config.js-like route
            if os.path.exists(os.path.join(static, target)):
                todo.append(target)
    return seen


def test_wheel_ships_every_module_the_client_loads(installed):
    """noVNC, xterm.js and the fit addon (and whatever they import) are in the wheel:
    without them an installed coordinator's Terminal and Desktop tabs do not load."""
    wheel, _ = installed
    shipped = _shipped(wheel)
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
    shipped = _shipped(wheel)
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


@pytest.mark.e2e   # runs pip wheel: not in the fast lane
def test_wheel_without_npm_modules_is_refused(tmp_path):
    """A wheel built before 'make npm' would ship a client whose Terminal and Desktop
    tabs cannot load: where npm is not installed either (not on PATH), the build stops
    and says what to run.  (With npm, setup.py runs 'npm ci' itself:
    test_e2e_installed.py.)"""
    src = tmp_path / "src"
    src.mkdir()
    _copy_source(src)
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
