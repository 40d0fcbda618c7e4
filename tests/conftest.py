"""Session hooks of HomeChannel's tests, and the fixtures every test gets.

The tree:

- ``tests/unit/``: the fast lane (``make test-fast``, ``pytest -m "not e2e"``): unit,
  protocol and web tests.  They start nothing the end-to-end lane starts (no twistd,
  Chromium, sshd, VNC, redis-server, coturn, nginx or haproxy, no test users, no
  wheels built, no network namespace but this loopback-only one); short-lived tools
  (node, openssl, mypy, the ``homechannel`` command) are fine.
- ``tests/e2e/``: the end-to-end lane, real processes.  Every test there, and only
  those, is marked ``e2e`` here.  Their fixtures (``twistd``, ``chromium``,
  ``chromium_page``, ``sshd``) are in ``tests/e2e/conftest.py``.
- ``tests/support/``: what tests share.  This file puts it first on ``sys.path``, so
  tests import its modules by name (``from helpers import ...``, ``import services``);
  no test module imports another.  A test module anywhere else fails, saying where
  to move it.

Every test (and every process it starts) keeps client state in a directory of its
own (``XDG_CONFIG_HOME``).  PBKDF2 password keys are derived once per (password,
server key) in each worker (``support/keymaterial.py``).  Every test run under ``make test`` is inside
``tests/netns-run`` (a network namespace with only ``lo``); in CI that is enforced at
session start.
"""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
UNIT, E2E = os.path.join(TESTS, "unit"), os.path.join(TESTS, "e2e")
sys.path.insert(0, os.path.join(TESTS, "support"))

import keymaterial  # noqa: E402
from helpers import in_ci, loopback_only  # noqa: E402

from homechannel import crypto  # noqa: E402

# Property tests check what is true, never how fast: Hypothesis's default deadline
# (200 ms an example) fails a healthy test on a loaded machine (test_udp_codec's
# registrant property did, in a full run beside other work).
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:                                   # pragma: no cover
    pass
else:
    _hypothesis_settings.register_profile("homechannel", deadline=None)
    _hypothesis_settings.load_profile("homechannel")


@pytest.fixture(scope="session", autouse=True)
def _pbkdf2_once_per_key():
    """PBKDF2 (a quarter of a second) once per (password, server key) in each worker:
    ``crypto.derive_password_key`` is ``keymaterial.password_key`` for the session,
    the same function behind a cache, for the tests and the code they run here."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(crypto, "derive_password_key", keymaterial.password_key)
        yield


@pytest.fixture(autouse=True)
def _private_state_dir(monkeypatch, tmp_path_factory):
    """Every test (and every process it starts) keeps client state (devices.json,
    coordinators.json) in a directory of its own, never in the user's
    ~/.config/homechannel."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def _under(path, directory):
    return os.path.commonpath([str(path), directory]) == directory


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _under(item.path, E2E):
            item.add_marker(pytest.mark.e2e)

    # The end-to-end tests first (the NAT tests, the longest, before the others), so
    # that parallel workers (make test) start the long ones early and end the run
    # together on short unit tests, never one worker alone on a long test.
    def order(item):
        if not _under(item.path, E2E):
            return 2
        return 0 if item.path.name.startswith("test_nat") else 1

    items.sort(key=order)


def pytest_runtest_setup(item):
    if not (_under(item.path, UNIT) or _under(item.path, E2E)):
        pytest.fail(f"{os.path.relpath(item.path, TESTS)} is outside tests/unit/ and "
                    "tests/e2e/: move it into tests/e2e/ if it starts real processes "
                    "(tests/conftest.py says which), into tests/unit/ otherwise",
                    pytrace=False)


def pytest_sessionstart(session):
    if loopback_only():
        return
    if in_ci():
        pytest.exit("CI is set but the tests are not in a loopback-only network "
                    "namespace: run them with 'make test' (tests/netns-run)", returncode=3)
    sys.stderr.write("\nwarning: not in a loopback-only network namespace; "
                     "'make test' runs the tests inside tests/netns-run\n")
