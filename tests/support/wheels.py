"""Wheels built offline from a copy of the checkout, for the packaging tests:
``copy_source`` (the files a build needs), ``build_wheel`` (``pip wheel`` with
``--no-build-isolation``, npm offline), ``shipped_static`` (what a wheel ships of the
browser client) and ``loaded_files`` (every file under static/ the client can load,
imports followed)."""

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO, in_ci, require_tool


def copy_source(dest):
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
    copy_source(src)
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


def shipped_static(wheel):
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
