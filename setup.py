"""Data files of the browser client, computed (everything else is in setup.cfg).

The client is ``static/`` without ``package.json``/``package-lock.json`` and
``node_modules``, plus, from ``static/node_modules``, every package the
lockfile installs for production (``npm ci``: the client's runtime
dependencies and theirs), whole, less what a browser never loads:
TypeScript sources and typings, source maps, docs and tests.  A wheel or sdist
built without those packages would ship a client whose Terminal and Desktop
tabs cannot load their modules, so building one (``pip install .``, ``pip
install git+URL``, ``python -m build``, ``make wheel``) first runs ``npm ci``
in ``static/`` by itself, from the committed ``package-lock.json`` (as ``make
npm`` does); without npm it stops with advice instead.  An sdist carries the
packages it was built with, so a wheel built from it needs no npm.
"""

import json
import os
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC = "static"
PREFIX = os.path.join("share", "homechannel")
SKIP_DIRS = {"node_modules", "vendor", "__pycache__"}
SKIP_FILES = {"package.json", "package-lock.json", ".stamp"}
# Inside a package: what a browser never loads.
PACKAGE_SKIP_DIRS = {"node_modules", "docs", "test", "tests", "typings", ".github"}
PACKAGE_SKIP_SUFFIXES = (".ts", ".tsx", ".map", ".md", "package.json")


def runtime_packages(static_dir):
    """Directories (relative to static/) of the packages ``npm ci`` installs for production."""
    try:
        with open(os.path.join(static_dir, "package-lock.json"), encoding="utf-8") as f:
            lock = json.load(f)
    except FileNotFoundError:
        return []
    return sorted(path for path, meta in lock.get("packages", {}).items()
                  if path.startswith("node_modules/") and not meta.get("dev")
                  and not meta.get("optional"))


def _walk(root, rel, skip_dirs, keep):
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, rel)):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        files = sorted(os.path.join(dirpath, f) for f in filenames if keep(f))
        if files:
            target = os.path.join(PREFIX, os.path.relpath(dirpath, os.path.dirname(root)))
            out.setdefault(target, []).extend(os.path.relpath(p, HERE) for p in files)
    return out


def missing_packages(static_dir):
    """The runtime packages (as in :func:`runtime_packages`) not in ``node_modules``."""
    return [pkg for pkg in runtime_packages(static_dir)
            if not os.path.isdir(os.path.join(static_dir, pkg))]


def npm_ci(static_dir, npm=None):
    """Run ``npm ci`` in *static_dir* when runtime packages are missing and npm is
    there (``npm ci`` installs exactly the committed lockfile, never rewrites it).
    Exits with advice when npm is needed and missing or fails."""
    missing = missing_packages(static_dir)
    if not missing:
        return
    npm = npm or shutil.which("npm")
    if npm is None:
        sys.exit("error: static/node_modules lacks " + ", ".join(missing) +
                 ": run 'make npm' (npm ci in static/) before building a wheel or sdist, "
                 "or install npm (Debian: apt-get install npm) and build again")
    print(f"static/node_modules lacks {', '.join(missing)}: running 'npm ci' in "
          f"{static_dir}", file=sys.stderr, flush=True)
    command = [npm, "ci", "--no-audit", "--no-fund"]
    result = subprocess.run(command, cwd=static_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(result.stdout)
    status = result.returncode
    if status != 0:
        sys.exit(f"error: 'npm ci --no-audit --no-fund' in {static_dir} failed (exit status "
                 f"{status}; its output is above): fix that (the npm registry must be "
                 "reachable, or npm's cache must hold the packages), or run 'make npm' "
                 "and build again")


def client_data_files(root=os.path.join(HERE, STATIC), require_modules=False):
    """``[(target dir, [files])]`` for ``data_files``."""
    files = _walk(root, "", SKIP_DIRS, lambda f: f not in SKIP_FILES)
    missing = missing_packages(root)
    for pkg in runtime_packages(root):
        if pkg in missing:
            continue
        # "src" and "vendor" may be what the browser loads (noVNC's core/ and
        # vendor/pako/); in a built package (one with lib/) src/ is not.
        skip = set(PACKAGE_SKIP_DIRS)
        if os.path.isdir(os.path.join(root, pkg, "lib")):
            skip.add("src")
        for target, paths in _walk(root, pkg, skip,
                                   lambda f: not f.endswith(PACKAGE_SKIP_SUFFIXES)).items():
            files.setdefault(target, []).extend(paths)
    if missing and require_modules:
        sys.exit("error: static/node_modules lacks " + ", ".join(missing) +
                 ": run 'make npm' (npm ci in static/) before building a wheel or sdist")
    return sorted(files.items())


# pip and python -m build run this file with the command in sys.argv (PEP 517's
# build_wheel and build_sdist hooks); metadata and editable installs need no client.
BUILDING = {"bdist_wheel", "sdist", "bdist"} & set(sys.argv[1:])
if BUILDING:
    npm_ci(os.path.join(HERE, STATIC))

setup(data_files=client_data_files(require_modules=bool(BUILDING)))
