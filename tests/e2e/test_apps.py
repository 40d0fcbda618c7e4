"""The apps end to end in Chromium, through real twistd daemons:
files (20 MB upload and download back, a resumed download, a refused
traversal), the terminal against a real sshd, the desktop against a real VNC
server.  Runs inside tests/netns-run."""

import hashlib
import os
import re
import struct
import time
import zlib

import pytest

import services
from appsui import NO_SAVE_PICKER, files_tab, row, wait_terminal
from browser import open_session, start_pair


# -- files ---------------------------------------------------------------------------


def test_upload_20mb_and_download_it_back(tmp_path, twistd, chromium_page):
    page = chromium_page
    page.add_init_script(NO_SAVE_PICKER)
    pair, coordinator, server = start_pair(twistd, tmp_path)
    open_session(page, pair)
    panel = files_tab(page)

    data = os.urandom(20 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    panel.locator("input[type=file]").set_input_files(str(src))
    panel.locator(".transfer progress").first.wait_for()  # the progress bar shows
    done = panel.locator(".transfer.done", has_text="Uploaded")
    done.wait_for(timeout=60_000)
    assert hashlib.sha256((tmp_path / "files" / "big.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    assert not [n for n in os.listdir(tmp_path / "files") if n.startswith(".hcupload")]

    entry = row(panel, "big.bin")
    entry.wait_for()
    with page.expect_download(timeout=60_000) as info:
        entry.get_by_role("button", name="Download").click()
    got = tmp_path / "got.bin"
    info.value.save_as(got)
    assert info.value.suggested_filename == "big.bin"
    assert got.read_bytes() == data
    assert "SHA-256 verified" in panel.locator(".transfer.done").last.inner_text()


def test_resumed_download(tmp_path, twistd, chromium_page):
    page = chromium_page
    page.add_init_script(NO_SAVE_PICKER)
    pair, coordinator, server = start_pair(twistd, tmp_path)
    data = os.urandom(24 * 1024 * 1024)
    (tmp_path / "files" / "resume.bin").write_bytes(data)
    open_session(page, pair)
    panel = files_tab(page)
    entry = row(panel, "resume.bin")
    # The browser's download starts at once (a stream), and completes after the resume.
    with page.expect_download(timeout=60_000) as info:
        entry.get_by_role("button", name="Download").click()
    # Cancel as soon as some bytes arrived (in the page, so nothing races).
    stopped_at = page.evaluate("""() => new Promise((resolve, reject) => {
      const bar = document.querySelector(".app-files .transfer progress");
      const t0 = performance.now();
      const tick = () => {
        if (bar.value > 0) {
          bar.closest(".transfer").querySelector("button").click();
          resolve(bar.value);
        } else if (performance.now() - t0 > 20000) reject(new Error("no progress"));
        else requestAnimationFrame(tick);
      };
      tick();
    })""")
    assert 0 < stopped_at < len(data)
    transfer = panel.locator(".transfer").first
    transfer.get_by_role("button", name=re.compile("^Resume")).wait_for(timeout=15_000)
    text = transfer.locator(".transfer-text").inner_text()
    assert text.startswith("Stopped at") and "cancel" in text.lower(), text
    transfer.get_by_role("button", name=re.compile("^Resume")).click()
    got = tmp_path / "got.bin"
    info.value.save_as(got)
    assert got.read_bytes() == data
    assert "SHA-256 verified" in transfer.inner_text()


def test_traversal_is_refused_with_an_error(tmp_path, twistd, chromium_page):
    page = chromium_page
    page.add_init_script(NO_SAVE_PICKER)
    pair, coordinator, server = start_pair(twistd, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = tmp_path / "files"
    # listed as a real folder and a real file...
    (root / "escape-dir").mkdir()
    (root / "escape-file").write_text("mine")
    (root / "inside").mkdir()
    open_session(page, pair)
    panel = files_tab(page)
    status = panel.locator(".files-status")
    row(panel, "📁 escape-dir").wait_for()
    # ...then swapped for links that leave the root, behind the listing's back.
    os.rmdir(root / "escape-dir")
    os.symlink(outside, root / "escape-dir")
    os.unlink(root / "escape-file")
    os.symlink(outside / "secret.txt", root / "escape-file")

    # Opening the folder is refused, the listing stays.
    row(panel, "📁 escape-dir").get_by_role("button").first.click()
    panel.locator(".files-status", has_text="Cannot open").wait_for()
    assert "outside" in status.inner_text().lower(), status.inner_text()
    assert "secret.txt" not in panel.locator(".files-table").inner_text()
    # The download is refused.
    row(panel, "escape-file").get_by_role("button", name="Download").click()
    failed = panel.locator(".transfer.failed")
    failed.wait_for(timeout=15_000)
    assert "outside" in failed.inner_text().lower(), failed.inner_text()
    # Listed again, links that leave the root are links that lead nowhere here
    # (type "broken", nothing about their targets): no folder, no download.
    panel.get_by_role("button", name="Refresh").click()
    panel.locator(".files-table button.entry.dir", has_text="escape-dir").wait_for(state="detached")
    row(panel, "escape-file").wait_for()
    assert row(panel, "escape-file").get_by_role("button", name="Download").count() == 0
    # A ".." typed as a rename target is refused too.
    row(panel, "📁 inside").get_by_role("button", name="Rename").click()
    dialog = page.get_by_role("dialog", name="Rename inside")
    dialog.get_by_label("New name or path").fill("../stolen")
    dialog.get_by_role("button", name="Rename").click()
    panel.locator(".files-status", has_text="Rename failed").wait_for()
    assert (root / "inside").is_dir() and not (tmp_path / "stolen").exists()


# -- terminal --------------------------------------------------------------------------


def test_terminal_sign_in_and_command(tmp_path, twistd, chromium_page, sshd):
    page = chromium_page
    pair, coordinator, server = start_pair(
        twistd, tmp_path, server_extra={"apps": {"terminal": {"port": sshd["port"]}}})
    open_session(page, pair)
    page.get_by_role("tab", name="Terminal").click()
    page.locator(".app-terminal .xterm").wait_for()
    wait_terminal(page, "login as:")
    page.keyboard.type(sshd["user"] + "\r")
    wait_terminal(page, "password:")
    page.keyboard.type(sshd["password"] + "\r")
    wait_terminal(page, "$ ")
    page.locator(".app-terminal [role=status]", has_text="Signed in as").wait_for()
    page.keyboard.type("echo HC-$((6*7))\r")
    text = wait_terminal(page, "HC-42")
    assert sshd["password"] not in text
    # also what is drawn (the DOM renderer's rows, updated on the next animation frame)
    rows = page.locator(".app-terminal .xterm-rows")
    page.locator(".app-terminal .xterm-rows", has_text="HC-42").wait_for(timeout=10_000)
    assert "HC-42" in rows.inner_text()
    # xterm's own styles apply despite the page's CSP (style-src 'self'): the rows
    # have the terminal's foreground colour, not the page's.
    assert rows.evaluate("(e) => getComputedStyle(e).color") == "rgb(255, 255, 255)"
    page.locator(".app-terminal .terminal-box").screenshot(path=str(tmp_path / "terminal.png"))


# -- desktop -----------------------------------------------------------------------------


@pytest.fixture
def red_desktop(tmp_path):
    """Xtigervnc (no VNC password) on a loopback port, its root window painted red."""
    with services.red_xtigervnc("800x600") as (port, _display):
        yield port


def png_pixels(png):
    """(width, height, rows of RGB(A) tuples) of an 8-bit RGB/RGBA PNG, no dependencies."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return width, height, rows


def test_desktop_shows_the_vnc_screen(tmp_path, twistd, chromium_page, red_desktop):
    page = chromium_page
    pair, coordinator, server = start_pair(
        twistd, tmp_path, server_extra={"apps": {"desktop": {"endpoint": f"127.0.0.1:{red_desktop}"}}})
    open_session(page, pair)
    page.get_by_role("tab", name="Desktop").click()
    page.locator(".app-desktop [role=status]", has_text="Connected.").wait_for(timeout=20_000)
    canvas = page.locator(".app-desktop canvas").first
    canvas.wait_for()
    deadline = time.monotonic() + 15
    while True:
        width, height, rows = png_pixels(canvas.screenshot())
        red = sum(1 for r in rows for (R, G, B) in r if R > 200 and G < 60 and B < 60)
        if red > 0.9 * width * height or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert width > 100 and height > 100
    assert red > 0.9 * width * height, f"{red} red pixels of {width}x{height}"
