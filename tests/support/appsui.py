"""Helpers for the apps' views in Chromium, shared by the end-to-end tests: the
Files tab (``files_tab``, ``row``, ``NO_SAVE_PICKER``) and the terminal's screen
(``terminal_text``, ``wait_terminal``); ``poll`` waits for a JS expression."""

import time

# Headless Chromium has the save picker but aborts it at once (as a user closing it
# would): without it the files app streams downloads through its service worker.
NO_SAVE_PICKER = "delete window.showSaveFilePicker; delete Window.prototype.showSaveFilePicker;"


def files_tab(page):
    page.get_by_role("tab", name="Files").click()
    panel = page.locator(".app-files")
    panel.locator(".files-table").wait_for()
    return panel


def row(panel, name):
    return panel.locator(".files-table tbody tr").filter(has=panel.page.get_by_text(name, exact=True))


def terminal_text(page):
    return page.evaluate("""() => {
      const t = window.__hcTerminal;
      if (!t) return "";
      const b = t.buffer.active, lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
      return lines.join("\\n");
    }""")


def wait_terminal(page, needle, timeout=20):
    deadline = time.monotonic() + timeout
    while needle not in (text := terminal_text(page)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not on the terminal screen:\n{text}")
        time.sleep(0.1)
    return text


def poll(page, expression, timeout=15):
    """Wait until *expression* (JS) is truthy in the page.  (page.wait_for_function
    evaluates strings with eval, which the page's CSP refuses.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        time.sleep(0.1)
