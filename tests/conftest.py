"""Fixtures and session hooks of HomeChannel's tests.

The helpers they use (``Twistd``, ``require_tool``, ports, TOML, certificates) are in
``tests/helpers.py``; tests import them from there.

- fixture ``twistd``: a factory ``twistd(tapname, config, **kw) -> Twistd``
  (started); every process it made is stopped at teardown.
- fixture ``chromium``: a Playwright ``Browser`` running Debian's
  chromium headless with the flags WebRTC needs in a loopback-only netns.
- fixture ``chromium_page``: a fresh context + page, closed at teardown.
- every test gets its own ``XDG_CONFIG_HOME`` (client state never in ~/.config).

Every test run under ``make test`` is inside ``tests/netns-run`` (a network
namespace with only ``lo``).  In CI that is enforced at session start.
"""

import os
import sys

import pytest

# Support modules (NAT and WAN topologies, ...) import as top-level modules.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from helpers import CHROMIUM_ARGS, Twistd, in_ci, loopback_only, require_module, require_tool


# Tests that start real processes (twistd, Chromium, sshd, Xtigervnc, ...) are
# the end-to-end lane: ``pytest -m "not e2e"`` is the fast lane (unit and
# protocol tests).  A test is e2e when its module is ``test_e2e_*`` or
# ``test_nat*``, when it carries ``@pytest.mark.e2e`` itself, or when it uses
# one of these fixtures (real daemons, browsers, sshd and test users, VNC
# servers, installed wheels).  The fast lane touches nothing outside the checkout.
E2E_FIXTURES = {"twistd", "chromium", "chromium_page", "sshd", "sshd_keyauth", "vnc",
                "installed", "desktop_1280"}


@pytest.fixture(autouse=True)
def _private_state_dir(monkeypatch, tmp_path_factory):
    """Every test (and every process it starts) keeps client state (devices.json,
    coordinators.json) in a directory of its own, never in the user's
    ~/.config/homechannel."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if (module.startswith(("test_e2e_", "test_nat"))
                or E2E_FIXTURES.intersection(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.e2e)
    # The end-to-end tests first (the NAT tests, the longest, before the others), so
    # that parallel workers (make test) start the long ones early and end the run
    # together on short unit tests, never one worker alone on a long test.
    def order(item):
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return 0 if module.startswith("test_nat") else 1 if item.get_closest_marker("e2e") else 2

    items.sort(key=order)


def pytest_sessionstart(session):
    if loopback_only():
        return
    if in_ci():
        pytest.exit("CI is set but the tests are not in a loopback-only network "
                    "namespace: run them with 'make test' (tests/netns-run)", returncode=3)
    sys.stderr.write("\nwarning: not in a loopback-only network namespace; "
                     "'make test' runs the tests inside tests/netns-run\n")


@pytest.fixture
def twistd():
    """Factory: ``twistd(tapname, config, asyncio=False, cwd=None, env=None, args=())``.

    Starts the process and returns a :class:`Twistd`; all of them are stopped
    at teardown and their output is printed (pytest shows it on failure).
    """
    started = []

    def start(tapname, config, **kw):
        t = Twistd(tapname, config, **kw).start()
        started.append(t)
        return t

    yield start
    for t in reversed(started):
        status = t.stop()
        print(f"--- {t.tapname} (exit status {status}) ---\n{t.output}")


# -- Chromium ----------------------------------------------------------------


@pytest.fixture
def chromium():
    """A headless Debian chromium driven by Playwright (never downloads a browser).

    Function-scoped on purpose: while Playwright's sync API is active, the
    thread counts as running an asyncio loop, so ``asyncio.run()`` in any
    later test would fail.
    """
    path = require_tool("chromium", "chromium")
    sync_playwright = require_module("playwright.sync_api", "run 'make venv'").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium_page(chromium):
    """A fresh browser context and page; browser console lines go to stdout."""
    context = chromium.new_context()
    page = context.new_page()
    page.on("console", lambda msg: print(f"[browser {msg.type}] {msg.text}"))
    page.on("pageerror", lambda err: print(f"[browser pageerror] {err}"))
    try:
        yield page
    finally:
        context.close()
