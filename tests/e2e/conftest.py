"""Fixtures of the end-to-end tests (the helpers they use are in
``tests/support/``).

- fixture ``twistd``: a factory ``twistd(tapname, config, **kw) -> Twistd``
  (started); every process it made is stopped at teardown.
- fixture ``chromium``: a Playwright ``Browser`` running Debian's
  chromium headless with the flags WebRTC needs in a loopback-only netns.
- fixture ``chromium_page``: a fresh context + page, closed at teardown.
- fixture ``sshd``: a real sshd (password sign-in) and a fresh test user.
- fixture ``topology_factory``: NAT topologies (tests/support/nat.py), torn down after.
- fixture ``nat_chromium``: ``launch(topology, url)``, a Chromium in a topology's
  client namespace (tests/support/natpeers.py reads its selected pair).
"""

import secrets

import pytest

import services
from helpers import CHROMIUM_ARGS, Twistd, in_ci, require_module, require_tool


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


# -- sshd --------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path):
    """A real sshd (password sign-in) and a fresh test user."""
    password = secrets.token_urlsafe(12)
    with services.local_user("hct", password) as user, services.sshd(tmp_path) as port:
        yield {"port": port, "user": user, "password": password,
               "key": tmp_path / "host_ed25519"}


# -- network topologies in the test's own namespaces --------------------------------------


@pytest.fixture
def topology_factory():
    """``make(home_nat=, client_nat=, udp_timeout=, wan=)`` -> a built
    :class:`nat.Topology` (``tests/support/nat.py``, ``wan.py``); every one is torn
    down at the end."""
    import nat

    why = nat.Topology.check_environment()
    if why:
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    made = []

    def make(**kw):
        topo = nat.Topology(**kw).up()
        made.append(topo)
        return topo

    yield make
    for topo in made:
        topo.down()


@pytest.fixture
def nat_chromium(tmp_path):
    """``launch(topology, url)`` -> a Playwright page in a Chromium that runs in the
    client namespace and treats the coordinator's http origin as secure."""
    import nat
    from natpeers import CAPTURE_PCS

    chromium = require_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browsers = []

        def launch(topology, url):
            wrapper = nat.chromium_wrapper(topology, "client", str(tmp_path), chromium)
            browser = p.chromium.launch(
                executable_path=wrapper, headless=True,
                args=CHROMIUM_ARGS + [f"--unsafely-treat-insecure-origin-as-secure={url}"])
            browsers.append(browser)
            page = browser.new_context().new_page()
            page.on("console", lambda msg: print(f"[browser {msg.type}] {msg.text}"))
            page.add_init_script(CAPTURE_PCS)
            return page

        try:
            yield launch
        finally:
            for b in browsers:
                b.close()
