"""This browser's device in Chromium (17.4, 17.5): the key it enrols (non-extractable,
in IndexedDB), the token bound to it, the device path it then takes, ``homechannel
devices revoke`` reaching the coordinator within seconds, the password path taken by
itself when the device path is refused or its budget spent (and the page saying so), a
token copied to another browser without its key, and "Forget" deleting both.  Real
twistd coordinator and home server in the loopback-only namespace."""

import re
import subprocess
import sys

from browser import connect, open_link, start_pair
from helpers import REPO

TOKENS = "homechannel.devices.v2"


def devices(pair, *args):
    return subprocess.run([sys.executable, "-m", "homechannel.cli", "devices", *args,
                           "--config", str(pair.server_config)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def stored_token(page, server_id):
    return page.evaluate(f"JSON.parse(localStorage.getItem({TOKENS!r}) || '{{}}')"
                         f"[{server_id!r}] || null")


def stored_key(page, server_id):
    """What IndexedDB holds for the server: {extractable, publicRaw} or null."""
    return page.evaluate("""(id) => new Promise((resolve) => {
      const open = indexedDB.open("homechannel", 1);
      open.onupgradeneeded = () => open.result.createObjectStore("device-keys");
      open.onsuccess = () => {
        const get = open.result.transaction("device-keys").objectStore("device-keys").get(id);
        get.onsuccess = async () => {
          const pair = get.result;
          if (!pair) return resolve(null);
          const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
          resolve({extractable: pair.privateKey.extractable,
                   publicRaw: btoa(String.fromCharCode(...raw))});
        };
      };
    })""", server_id)


def disconnect(page):
    page.get_by_role("button", name="Disconnect").click()
    page.get_by_role("button", name="Connect").wait_for()


def test_the_browser_enrols_a_key_signs_in_with_it_and_survives_a_revocation(
        tmp_path, twistd, chromium_page, chromium):
    """How this was shown to fail: before device keys the token carried no key (a copy
    worked anywhere) and was kept after a revocation; without the fallback the browser
    showed bad-device instead of signing in."""
    page = chromium_page
    pair, coordinator, server = start_pair(twistd, tmp_path,
                                           coordinator_web={"per_server_device_per_minute": 2})
    sid = pair.server_key.text
    open_link(page, pair)
    connect(page)                                   # the password path; then enrolled
    server.wait_for_log(r"device (\S+) \(.*\) enrolled", timeout=10)
    token = stored_token(page, sid)
    assert token and token.startswith("hcdev2.")
    key = stored_key(page, sid)
    assert key and key["extractable"] is False
    listed = devices(pair, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    device_id = line.split()[0]
    assert "Chrom" in line, line
    assert page.locator("#session-note").is_hidden()

    disconnect(page)
    mark = server.mark()
    connect(page)                                   # the device path, signed by the key
    server.wait_for_log(rf"login accepted: session \S+ from \S+ \(device {device_id[:8]}\)",
                        since=mark, timeout=10)

    # A copy of the token in another browser (its own key) cannot sign: it signs in with
    # the password by itself, and the owner's device is not locked out.
    other = chromium.new_context()
    try:
        thief = other.new_page()
        open_link(thief, pair)
        thief.evaluate(f"localStorage.setItem({TOKENS!r}, JSON.stringify({{{sid!r}: {token!r}}}))")
        mark = server.mark()
        connect(thief)
        note = thief.locator("#session-note")
        assert "was not accepted" in note.inner_text()
        server.wait_for_log(r"device (\S+) \(.*\) enrolled", since=mark, timeout=10)
        assert stored_token(thief, sid) != token
    finally:
        other.close()

    # Revoked on the home server: within seconds the coordinator refuses the token at the
    # door; the browser signs in with the password by itself and says so.
    disconnect(page)
    revoked = devices(pair, "revoke", device_id[:8])
    assert revoked.returncode == 0, revoked.stderr
    server.wait_for_log(rf"device {device_id[:8]} is no longer enrolled", timeout=10)
    mark = server.mark()
    connect(page)
    assert "was not accepted" in page.locator("#session-note").inner_text()
    assert not re.search(r"\(device ", server.output[mark:])
    server.wait_for_log(rf"device {device_id[:8]} \(.*\) enrolled", since=mark, timeout=10)

    # The devices' budget spent (2 a minute here): the password path, by itself.
    disconnect(page)
    connect(page)
    disconnect(page)
    connect(page)
    assert "budget is spent" in page.locator("#session-note").inner_text()

    # Forget deletes the token and this browser's key.
    disconnect(page)
    page.get_by_role("button", name="Back to servers").click()
    page.get_by_role("button", name="Forget Home").click()
    page.get_by_role("dialog").get_by_role("button", name="Forget").click()
    page.locator("#no-servers").wait_for()
    assert stored_token(page, sid) is None
    assert stored_key(page, sid) is None
