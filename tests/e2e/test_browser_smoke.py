"""The browser client in Chromium against the demo coordinator of
``homechannel.testing.coordinator`` (a ``FakeRelay`` with one fake home server that
refuses every proof): add the server from its link, a wrong password, the right one
refused at home, and the server remembered on the next visit."""

import json
import os

import pytest


@pytest.fixture
def demo_coordinator(tmp_path):
    import subprocess
    import sys

    from helpers import REPO, free_tcp_port

    port = free_tcp_port()
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "homechannel.testing.coordinator", "--port", str(port),
         "--password", "correct horse", "--refuse", "bad-proof"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "demo.log", "wb"), env=env, cwd=REPO)
    try:
        info = json.loads(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", info
    finally:
        proc.terminate()
        proc.wait(10)


def test_browser_smoke(chromium_page, demo_coordinator, tmp_path):
    from playwright.sync_api import expect

    page = chromium_page
    base, info = demo_coordinator
    problems = []
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))

    page.goto(f"{base}/#server={info['server']}")
    expect(page.get_by_role("heading", name="Add this server?")).to_be_visible()
    name = page.locator("#add-link").get_by_label("Name")
    expect(name).to_have_value("Home server")
    name.fill("Test box")
    page.get_by_role("button", name="Add server").click()

    password = page.get_by_label("Password")
    expect(password).to_be_visible()
    expect(page.get_by_role("heading", name="Connect to Test box")).to_be_visible()
    assert problems == []
    page.screenshot(path=str(tmp_path / "connect.png"), full_page=True)

    password.fill("not the password")
    page.get_by_role("button", name="Connect").click()
    alert = page.locator("#connect-error")
    expect(alert).to_contain_text("Wrong password", timeout=20_000)
    expect(page.locator("#steps li[data-state=failed]")).to_have_text("Checking the password")
    page.screenshot(path=str(tmp_path / "wrong-password.png"), full_page=True)

    # The right password passes the coordinator; this fake home server refuses the proof.
    password.fill("correct horse")
    page.get_by_role("button", name="Connect").click()
    expect(alert).to_contain_text("refused the connection", timeout=20_000)
    expect(page.locator("#steps li[data-state=failed]")).to_have_text(
        "Waiting for the home server")

    stored = page.evaluate("JSON.stringify(localStorage)")
    assert "Test box" in stored and info["server"] in stored
    assert "correct horse" not in stored and "not the password" not in stored
    # Only the refused API calls may show up as failed resource loads.
    unexpected = [p for p in problems if "status of 403" not in p]
    assert unexpected == []

    # Remembered: a fresh visit lists the server.
    page.goto(base + "/")
    expect(page.get_by_role("button", name="Forget Test box")).to_be_visible()
    page.screenshot(path="/tmp/homechannel-smoke-list.png", full_page=True)
    import shutil
    shutil.copy(tmp_path / "wrong-password.png", "/tmp/homechannel-smoke-wrong.png")
    shutil.copy(tmp_path / "connect.png", "/tmp/homechannel-smoke-connect.png")


def test_the_pages_policy_refuses_a_base_plugins_and_form_submissions(chromium_page,
                                                                       demo_coordinator):
    """The page's Content-Security-Policy, as Chromium applies it: an injected
    ``<base>`` does not move the page's base URL (``base-uri 'none'``), an ``<object>``
    loads nothing (``object-src 'none'``), and a form submitted before (or without)
    the script's handler goes nowhere (``form-action 'none'``: the connect form's
    GET would put the password in the URL).  How this was shown to fail: with the
    policy before these directives, the object loaded /healthz without a violation,
    the base moved to elsewhere.example, and the form navigated to
    ``/healthz?password=hunter2`` (and with the base left in, to elsewhere.example:
    an injected ``<base>`` sends the password to another site)."""
    from browser import CAPTURE_CSP_VIOLATIONS, csp_violations

    page = chromium_page
    base, _ = demo_coordinator
    page.add_init_script(CAPTURE_CSP_VIOLATIONS)
    page.goto(base + "/")
    page.locator("#servers").wait_for()
    moved = page.evaluate("""async () => {
      const o = document.createElement("object");
      o.data = "/healthz";
      document.body.append(o);
      await new Promise((r) => setTimeout(r, 500));
      const b = document.createElement("base");
      b.href = "https://elsewhere.example/";
      document.head.prepend(b);
      return document.baseURI;
    }""")
    assert moved == base + "/"
    page.evaluate("""() => {
      const f = document.createElement("form");
      f.action = location.origin + "/healthz";
      const i = document.createElement("input");
      i.name = "password";
      i.value = "hunter2";
      f.append(i);
      document.body.append(f);
      f.submit();
    }""")
    page.wait_for_timeout(1000)
    assert page.url == base + "/"
    refused = {v.split(" ")[0] for v in csp_violations(page)}
    assert {"base-uri", "object-src", "form-action"} <= refused, refused
