"""The type check: mypy, with the zope plugin, on the pure modules.

``setup.cfg`` (section ``[mypy]``) lists the modules under ``files`` and
requires every function in them to be annotated (``disallow_untyped_defs``,
``disallow_incomplete_defs``); this test runs ``python -m mypy`` with that
configuration, so it fails on a type error or an unannotated function in any
of them.  It is part of the fast lane (a warm run takes about a second; the
first one, which fills ``.mypy_cache``, several).
"""

import configparser
import importlib.util
import os
import subprocess
import sys

import pytest

from helpers import REPO, in_ci

# The modules under the type check: the pure ones (no reactor, no sockets).  More
# may be added in setup.cfg; none of these may be dropped.
PURE_MODULES = {
    "homechannel/protocol/connect.py",
    "homechannel/crypto.py",
    "homechannel/protocol/retransmit.py",
    "homechannel/protocol/udp.py",
    "homechannel/coordinator/rendezvous.py",
    "homechannel/coordinator/shares.py",
    "homechannel/coordinator/slotindex.py",
    "homechannel/coordinator/stun.py",
    "homechannel/coordinator/turn.py",
    "homechannel/server/registrant.py",
    "homechannel/protocol/frames.py",
    "homechannel/server/apps/paths.py",
}


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    return cfg


def test_the_pure_modules_are_listed_strictly():
    """Every pure module is in setup.cfg's ``files``, every listed file exists,
    and the strict flags and the zope plugin are on, with no per-module
    section for our own modules (which could relax them): shrinking the list,
    turning a flag off or ignoring a module's errors to get a green type check
    fails here."""
    cfg = _setup_cfg()
    mypy = cfg["mypy"]
    files = {f.strip() for f in mypy["files"].replace("\n", ",").split(",") if f.strip()}
    assert PURE_MODULES <= files, f"missing from [mypy] files: {sorted(PURE_MODULES - files)}"
    for f in files:
        assert os.path.isfile(os.path.join(REPO, f)), f"[mypy] files lists {f}, which does not exist"
    for flag in ("disallow_untyped_defs", "disallow_incomplete_defs"):
        assert mypy.getboolean(flag), f"[mypy] {flag} must be True"
    assert "mypy_zope:plugin" in mypy["plugins"]
    own = [s for s in cfg.sections() if s.startswith("mypy-") and "homechannel" in s]
    assert not own, f"per-module sections for homechannel in setup.cfg: {own}"


def test_mypy_passes_on_the_pure_modules():
    """``python -m mypy`` with setup.cfg reports no error.

    Shown to fail (in a scratch copy of the tree): adding ``def helper(x):
    return x`` to ``homechannel/crypto.py`` made mypy report "Function is
    missing a type annotation [no-untyped-def]" and this test fail; so did
    ``return None`` in ``wire.header`` (declared ``-> bytes``: a
    [return-value] error)."""
    missing = [m for m in ("mypy", "mypy_zope") if importlib.util.find_spec(m) is None]
    if missing:
        msg = (f"{' and '.join(missing)} not installed: pip install -e '.[test]' "
               "(make venv does it)")
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "setup.cfg"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mypy failed:\n{proc.stdout}{proc.stderr}"
    assert "Success: no issues found" in proc.stdout
