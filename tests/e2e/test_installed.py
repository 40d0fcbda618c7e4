"""The installed package works: a wheel built from a copy of the tree without
static/node_modules (so the build itself runs 'npm ci'), installed into a
fresh venv outside it, runs both daemons, and Chromium opens every app tab
(the Terminal against a real sshd, the Desktop against a real VNC server), so
noVNC and xterm.js come from the wheel's data files.  ``python -m build`` does
the same through an sdist, from which a wheel builds without npm.

'npm ci' runs in the loopback-only namespace with npm_config_offline, from
npm's cache ('make npm' filled it).

Offline: the wheel is installed with --no-deps, and the fresh venv finds the
dependencies through a .pth line naming the test venv's site-packages (a
plain path: the .pth files there, such as the editable install of this
checkout, are not processed).  The checkout itself is never on its path."""

import glob
import os
import shutil
import site
import subprocess
import sys
import tarfile

import pytest

import services
from helpers import REPO, Twistd, require_module, require_tool
from daemons import make_pair
from browser import (CAPTURE_CSP_VIOLATIONS, check_node_modules, connect, csp_violations,
                     open_link)
from wheels import (build_wheel, copy_source, loaded_files, npm_offline_env,
                    require_npm_modules, shipped_static)
from appsui import wait_terminal


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """How this was shown to fail without setup.py's 'npm ci': the wheel build stops
    with "static/node_modules lacks ...: run 'make npm'" and every test here errors."""
    wheel = build_wheel(tmp_path_factory, node_modules=False)
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


def source_without_node_modules(tmp_path):
    require_npm_modules()       # and so npm's cache holds the packages
    require_tool("npm", "npm")
    src = tmp_path / "src"
    src.mkdir()
    copy_source(src)
    shutil.rmtree(src / "static" / "node_modules")
    return src


def test_python_m_build_runs_npm_ci_and_its_sdist_needs_no_npm(tmp_path):
    """``python -m build`` from a tree without static/node_modules: the sdist build
    runs 'npm ci' (the lockfile untouched) and the sdist carries the runtime packages,
    so the wheel built from it, and any wheel built from it again where npm is
    missing, ships every file the client loads.

    How this was shown to fail: without setup.py's 'npm ci' the build stops ("run
    'make npm'"); with package-lock.json left out of MANIFEST.in, the sdist lacks it
    (and a wheel built from such an sdist would have no runtime packages: setup.py
    finds them through the lockfile)."""
    require_module("build", "pip install build (in the test extra: make venv)")
    src = source_without_node_modules(tmp_path)
    with open(src / "static" / "package-lock.json", "rb") as f:
        lock = f.read()
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist),
                        str(src)], env=npm_offline_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running 'npm ci'" in r.stdout + r.stderr
    assert os.path.isdir(src / "static" / "node_modules" / "@novnc" / "novnc")
    with open(src / "static" / "package-lock.json", "rb") as f:
        assert f.read() == lock, "npm ci rewrote package-lock.json"

    (sdist,) = glob.glob(str(dist / "homechannel-*.tar.gz"))
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"static/package.json", "static/package-lock.json",
            "static/node_modules/@xterm/xterm/lib/xterm.mjs"} <= names

    loaded = loaded_files(os.path.join(REPO, "static"))
    assert "node_modules/@novnc/novnc/core/rfb.js" in loaded
    (wheel,) = glob.glob(str(dist / "homechannel-*.whl"))
    assert not sorted(loaded - shipped_static(wheel))

    # Again from the sdist, where there is no npm at all.
    again = tmp_path / "again"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(again), sdist],
                       env=dict(os.environ, PIP_NO_INDEX="1",
                                PATH=os.path.dirname(sys.executable)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (rebuilt,) = glob.glob(str(again / "homechannel-*.whl"))
    assert shipped_static(rebuilt) == shipped_static(wheel)


def test_a_failed_npm_ci_stops_the_build_with_advice(tmp_path):
    """npm is there but cannot get the packages (offline, with an empty cache): the build
    stops, names what failed and what to do, and makes no wheel (not one without the
    client's modules).  How this was shown to fail: with setup.py ignoring npm's exit
    status, the build stopped only later, with the generic "run 'make npm'" that does
    not say npm ci failed, and the assertion on the message failed."""
    src = source_without_node_modules(tmp_path)
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)],
        env=npm_offline_env(npm_config_cache=str(tmp_path / "empty-npm-cache")),
        capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "'npm ci --no-audit --no-fund' in" in out and "failed" in out, out
    assert "make npm" in out, out
    assert not glob.glob(str(wheels / "*.whl"))


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


def test_every_app_tab_from_the_installed_package(tmp_path, venv, chromium_page, sshd):
    """Every app tab works from the installed package, and the page's
    Content-Security-Policy refuses nothing the client does on the way (but xterm.js's
    <style> elements, by design).  How the policy check was shown to fail: with
    ``img-src`` left out of the policy (``default-src 'none'``), every tab still
    worked and the check failed on ``img-src data`` (the page's icon); with
    ``style-src`` also out, the desktop canvas never showed."""
    page = chromium_page
    page.add_init_script(CAPTURE_CSP_VIOLATIONS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    with services.xtigervnc("640x480") as (vnc_port, _display):
        pair = make_pair(tmp_path, server_extra={"apps": {
            "terminal": {"port": sshd["port"]}, "desktop": {"endpoint": f"127.0.0.1:{vnc_port}"}}})
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
            assert csp_violations(page) == []
        finally:
            for t in reversed(started):
                t.stop()
                print(f"--- {t.tapname} ---\n{t.output}")
