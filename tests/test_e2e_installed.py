"""The installed package works: a wheel built from the tree, installed into a
fresh venv outside it, runs both daemons, and Chromium opens every app tab
(the Terminal against a real sshd, the Desktop against a real VNC server), so
noVNC and xterm.js come from the wheel's data files.

Offline: the wheel is installed with --no-deps, and the fresh venv finds the
dependencies through a .pth line naming the test venv's site-packages (a
plain path: the .pth files there, such as the editable install of this
checkout, are not processed).  The checkout itself is never on its path."""

import os
import site
import subprocess
import sys

import pytest

import services
from helpers import REPO, Twistd
from daemons import make_pair
from test_e2e_browser import check_node_modules, connect, open_link
from test_packaging import build_wheel
from test_terminal import sshd  # noqa: F401  (fixture: a real sshd and a test user)
from test_e2e_apps import wait_terminal


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    wheel = build_wheel(tmp_path_factory)
    env = dict(os.environ, PIP_NO_INDEX="1")
    root = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = str(root / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    with open(os.path.join(purelib, "zz_test_dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", "-q", wheel], check=True, env=env, timeout=300)
    return root


def run(venv, *args):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=120, env=env, cwd=str(venv))


def test_installed_package_finds_itself_and_its_client(venv):
    r = run(venv, "python", "-c",
            "import homechannel, os; d = homechannel.default_static_dir(); "
            "print(homechannel.__file__); print(d); "
            "print(os.path.isfile(os.path.join(d, 'node_modules/@xterm/xterm/lib/xterm.mjs')))")
    assert r.returncode == 0, r.stderr
    module, static, has_xterm = r.stdout.split()
    assert module.startswith(str(venv)) and not module.startswith(REPO)
    assert static == str(venv / "share" / "homechannel" / "static")
    assert has_xterm == "True"
    r = run(venv, "homechannel", "--version")
    assert r.returncode == 0 and r.stdout.startswith("homechannel 0."), r.stdout + r.stderr


def test_every_app_tab_from_the_installed_package(tmp_path, venv, chromium_page, sshd):  # noqa: F811
    page = chromium_page
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    with services.xtigervnc("640x480") as (vnc_port, _display):
        pair = make_pair(tmp_path, server_extra={"apps": {
            "terminal": {"port": sshd["port"]}, "desktop": {"port": vnc_port}}})
        python = str(venv / "bin" / "python")
        started = []
        try:
            for tap, marker in (("homechannel-coordinator", "coordinator: UDP"),
                                ("homechannel-server", "registered with coordinator")):
                t = Twistd(tap, getattr(pair, tap.split("-")[1] + "_config"), python=python,
                           cwd=str(venv)).start()
                started.append(t)
                t.wait_for_log(marker, timeout=30)
            assert f"twistd" in started[0].output and str(venv) in started[0].output
            check_node_modules(pair)   # served from the venv's share/homechannel/static
            open_link(page, pair)
            connect(page)
            tabs = page.get_by_role("tab")
            names = [tabs.nth(i).inner_text().strip() for i in range(tabs.count())]
            assert {"Files", "Terminal", "Desktop"} <= set(names), names
            page.get_by_role("tab", name="Files").click()
            page.locator(".app-files .files-table").wait_for()
            page.get_by_role("tab", name="Terminal").click()
            page.locator(".app-terminal .xterm").wait_for()
            wait_terminal(page, "login as:")
            page.get_by_role("tab", name="Desktop").click()
            page.locator(".app-desktop [role=status]", has_text="Connected.").wait_for(
                timeout=20_000)
            page.locator(".app-desktop canvas").first.wait_for()
            assert not errors, errors
        finally:
            for t in reversed(started):
                t.stop()
                print(f"--- {t.tapname} ---\n{t.output}")
