// The desktop app: noVNC's RFB over an `app:desktop:<n>` channel (a byte pipe to the
// home server's VNC server).  Scaling modes (fit with zoom, actual size with scrolling,
// remote resize), panning, full screen, clipboard (async Clipboard API where allowed,
// a text box otherwise), Ctrl-Alt-Del, VNC password; a connect timeout with a retry.
import RFB from "../../node_modules/@novnc/novnc/core/rfb.js";
import { openChannel } from "./channel.js";
import { button, el } from "./ui.js";

export const CONNECT_TIMEOUT_MS = 20000;
const ZOOMS = [1, 1.5, 2, 3, 4];

/** The WebSocket-like object noVNC takes: the AppChannel (which has queued every byte
 *  since the channel was created) delivers to it once noVNC sets `onmessage`.  Text
 *  messages are the server's status ({"op":"open"|"error"}) and go to *onStatus*. */
class ChannelSocket {
  constructor(app, onStatus) {
    this.app = app;
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.onopen = this.onclose = this.onerror = null;
    this._onmessage = null;
    this._onStatus = onStatus;
    this.received = 0; // binary messages (RFB bytes) delivered
  }
  get onmessage() { return this._onmessage; }
  set onmessage(handler) {
    this._onmessage = handler;
    if (handler) {
      this.app.listen({
        message: (data) => { this.received++; if (this._onmessage) this._onmessage({ data }); },
        status: (s) => this._onStatus(s),
        close: () => this.onclose && this.onclose({ code: 1000, reason: "", wasClean: true }),
      });
    }
  }
  get readyState() { return this.app.readyState; }
  get bufferedAmount() { return this.app.bufferedAmount; }
  send(data) { this.app.send(data); }
  close() { this.app.close(); }
}

export async function mount(panel, { pc }) {
  const status = el("span", { class: "desktop-status", role: "status" });
  const retry = button("Retry", () => start(), { class: "primary", hidden: true });
  const mode = el("select", { "aria-label": "Scaling" },
    el("option", { value: "fit" }, "Fit to window"),
    el("option", { value: "actual" }, "Actual size"),
    el("option", { value: "remote" }, "Resize remote"));
  const zoomOut = button("−", () => zoomBy(-1), { "aria-label": "Zoom out", class: "icon" });
  const zoomIn = button("+", () => zoomBy(1), { "aria-label": "Zoom in", class: "icon" });
  const zoomText = el("span", { class: "zoom-level", "aria-live": "polite" }, "100%");
  const pan = button("Pan", () => setPan(pan.getAttribute("aria-pressed") !== "true"), { "aria-pressed": "false" });
  const full = button("Full screen", () => toggleFullscreen(panel));
  const cad = button("Ctrl-Alt-Del", () => rfb && rfb.sendCtrlAltDel());
  const clipToggle = button("Clipboard", () => showClipboard(clipToggle.getAttribute("aria-expanded") !== "true"),
    { "aria-expanded": "false", "aria-controls": "desktop-clipboard" });
  const bar = el("div", { class: "app-bar desktop-bar", role: "toolbar", "aria-label": "Desktop" },
    status, retry, mode, zoomOut, zoomText, zoomIn, pan, full, clipToggle, cad);

  const pw = el("input", { type: "password", autocomplete: "off", "aria-label": "VNC password" });
  const form = el("form", { class: "desktop-password", hidden: true }, pw, el("button", { type: "submit" }, "Send password"));
  const screen = el("div", { class: "desktop-screen" });
  const viewport = el("div", { class: "desktop-viewport" }, screen);
  const clip = el("textarea", { class: "desktop-clipboard", rows: 2, "aria-label": "Clipboard text (remote)" });
  const clipBox = el("div", { class: "desktop-clipboard-box", id: "desktop-clipboard", hidden: true }, clip,
    el("div", { class: "actions" },
      button("Send to remote", () => rfb && rfb.clipboardPasteFrom(clip.value)),
      button("Paste from this device", () => pasteFromDevice(true))));
  panel.append(bar, form, clipBox, viewport);

  function showClipboard(on) {
    clipToggle.setAttribute("aria-expanded", String(on));
    clipBox.hidden = !on;
    if (on) clip.focus();
  }

  let rfb = null;
  let app = null;
  let failed = null;   // the first, most specific error of this attempt
  let timer = null;
  let zoom = 0;
  let lastClip = null;

  function setStatus(text) { status.textContent = text; }

  /** Keep the first error: later ones (the socket closing after it) say less. */
  function fail(message) {
    if (failed) return;
    failed = message;
    clearTimeout(timer);
    setStatus(message);
    retry.hidden = false;
  }

  function applyMode() {
    const m = mode.value;
    zoomOut.disabled = zoomIn.disabled = m !== "fit";
    viewport.dataset.mode = m;
    const z = m === "fit" ? ZOOMS[zoom] : 1;
    screen.style.width = screen.style.height = `${z * 100}%`;
    zoomText.textContent = `${Math.round(z * 100)}%`;
    if (!rfb) return;
    rfb.scaleViewport = m === "fit";
    rfb.clipViewport = false;
    rfb.resizeSession = m === "remote";
  }
  mode.addEventListener("change", applyMode);

  function zoomBy(step) {
    zoom = Math.max(0, Math.min(ZOOMS.length - 1, zoom + step));
    applyMode();
  }

  function setPan(on) {
    pan.setAttribute("aria-pressed", String(on));
    viewport.classList.toggle("panning", on);
  }

  async function pasteFromDevice(explicit) {
    // The async Clipboard API where the browser allows it (a permission prompt, or
    // granted); otherwise the text box is the way.
    if (!rfb || !navigator.clipboard || !navigator.clipboard.readText) return;
    try {
      const text = await navigator.clipboard.readText();
      if (text && (explicit || text !== lastClip)) {
        lastClip = text;
        clip.value = text;
        rfb.clipboardPasteFrom(text);
      }
    } catch (e) {
      if (explicit) showClipboard(true);
    }
  }

  async function clipboardAllowed(name) {
    try {
      return (await navigator.permissions.query({ name })).state === "granted";
    } catch (e) {
      return false;
    }
  }

  // When the page gets the focus back, send what the user copied meanwhile (only if
  // reading the clipboard is already allowed: never a prompt out of the blue).
  const onFocus = async () => {
    if (!panel.isConnected) { window.removeEventListener("focus", onFocus); return; }  // session over
    if (await clipboardAllowed("clipboard-read")) pasteFromDevice(false);
  };
  window.addEventListener("focus", onFocus);

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (rfb) rfb.sendCredentials({ password: pw.value });
    pw.value = "";
    form.hidden = true;
  });

  function stop() {
    clearTimeout(timer);
    if (rfb) { try { rfb.disconnect(); } catch (_) { /* already gone */ } }
    if (app) app.close();
    rfb = null;
    app = null;
    screen.replaceChildren();
  }

  async function start() {
    stop();
    failed = null;
    retry.hidden = true;
    form.hidden = true;
    setStatus("Connecting…");
    const limit = globalThis.__hcDesktopTimeoutMs || CONNECT_TIMEOUT_MS; // tests shorten it
    timer = setTimeout(() => fail(`The desktop did not answer within ${Math.round(limit / 1000)} s. ` +
      "Check that the VNC server is running on the home server, then retry."), limit);
    let mine;
    try {
      mine = app = await openChannel(pc, "desktop");
    } catch (e) {
      fail(`Desktop error: ${e.message}`);
      return;
    }
    const socket = new ChannelSocket(app, (m) => {
      if (app === mine && m.op === "error") fail(`Desktop error: ${m.message}`);
    });
    const r = rfb = new RFB(screen, socket, {});
    r.focusOnClick = true;
    applyMode();
    window.__hcRfb = r; // for tests and debugging
    r.addEventListener("connect", () => {
      if (rfb !== r) return;
      clearTimeout(timer);
      setStatus("Connected.");
    });
    r.addEventListener("disconnect", (e) => {
      if (rfb !== r) return;
      if (app && app.error) fail(`Desktop error: ${app.error.message}`);
      if (!socket.received) {
        fail("The home server closed the desktop before the VNC server said anything: is the " +
          "VNC server running on the home server?");
      }
      fail(e.detail.clean ? "Desktop disconnected." : "Desktop connection lost.");
    });
    r.addEventListener("securityfailure", (e) => {
      if (rfb === r) fail(`VNC sign-in failed: ${e.detail.reason || e.detail.status}`);
    });
    r.addEventListener("credentialsrequired", () => {
      form.hidden = false;
      setStatus("The VNC server asks for a password.");
      pw.focus();
    });
    r.addEventListener("clipboard", async (e) => {
      clip.value = e.detail.text;
      lastClip = e.detail.text;
      if (await clipboardAllowed("clipboard-write") || document.hasFocus()) {
        navigator.clipboard && navigator.clipboard.writeText(e.detail.text).catch(() => {});
      }
    });
  }

  applyMode();
  await start();
  return {
    shown() { if (rfb) rfb.focus(); },
    retry: start,
  };
}

function toggleFullscreen(node) {
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else if (node.requestFullscreen) node.requestFullscreen().catch(() => {});
}
