// The desktop app: noVNC's RFB over an `app:desktop:<n>` channel (a byte pipe to the
// home server's VNC server).  Scaling, clipboard, full screen, Ctrl-Alt-Del, VNC password.
import RFB from "../../node_modules/@novnc/novnc/core/rfb.js";
import { openChannel } from "./channel.js";

/** A WebSocket-like view of the channel that hides the server's text status messages.
 *  noVNC attaches its handlers a task after `new RFB(...)`; bytes that arrive before
 *  that (the VNC server speaks first) are kept and delivered when it does. */
class ChannelSocket {
  constructor(channel, onStatus) {
    this.channel = channel;
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.onopen = this.onclose = this.onerror = null;
    this._onmessage = null;
    this._early = [];
    channel.addEventListener("message", (e) => {
      if (typeof e.data === "string") { try { onStatus(JSON.parse(e.data)); } catch (_) { /* ignore */ } return; }
      if (this._onmessage && !this._early.length) this._onmessage({ data: e.data });
      else this._early.push(e.data);  // in order, until _flush delivers them
    });
    channel.addEventListener("close", () => this.onclose && this.onclose({ code: 1000, reason: "", wasClean: true }));
    channel.addEventListener("error", (e) => this.onerror && this.onerror(e));
  }
  get onmessage() { return this._onmessage; }
  set onmessage(handler) {
    this._onmessage = handler;
    // A task later, so that noVNC finishes attaching (and sees the socket open) first.
    if (handler && this._early.length) setTimeout(() => this._flush(), 0);
  }
  _flush() {
    const early = this._early;
    this._early = [];
    for (const data of early) if (this._onmessage) this._onmessage({ data });
  }
  get readyState() { return this.channel.readyState; }
  get bufferedAmount() { return this.channel.bufferedAmount; }
  send(data) { this.channel.send(data); }
  close() { this.channel.close(); }
}

function button(label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onclick);
  return b;
}

export async function mount(panel, { pc }) {
  const bar = document.createElement("div");
  bar.className = "desktop-bar";
  const status = document.createElement("span");
  status.setAttribute("role", "status");
  const screen = document.createElement("div");
  screen.className = "desktop-screen";
  const clip = document.createElement("textarea");
  clip.className = "desktop-clipboard";
  clip.setAttribute("aria-label", "Clipboard (remote)");
  clip.rows = 2;
  const form = document.createElement("form");
  form.className = "desktop-password";
  form.hidden = true;
  const pw = document.createElement("input");
  pw.type = "password";
  pw.setAttribute("aria-label", "VNC password");
  pw.autocomplete = "off";
  form.append(pw, button("Send password", () => form.requestSubmit()));
  panel.append(bar, form, screen, clip);

  status.textContent = "Connecting…";
  const channel = await openChannel(pc, "desktop");
  const socket = new ChannelSocket(channel, (m) => {
    if (m.op === "error") status.textContent = `Desktop error: ${m.message}`;
  });
  const rfb = new RFB(screen, socket, {});
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  window.__hcRfb = rfb;

  bar.append(status,
    button("Ctrl-Alt-Del", () => rfb.sendCtrlAltDel()),
    button("Full screen", () => (document.fullscreenElement ? document.exitFullscreen() : screen.requestFullscreen())),
    button("Send clipboard", () => rfb.clipboardPasteFrom(clip.value)));

  rfb.addEventListener("connect", () => { status.textContent = "Connected."; });
  rfb.addEventListener("disconnect", (e) => {
    status.textContent = e.detail.clean ? "Desktop disconnected." : "Desktop connection lost.";
  });
  rfb.addEventListener("securityfailure", (e) => { status.textContent = `VNC sign-in failed: ${e.detail.reason || e.detail.status}`; });
  rfb.addEventListener("credentialsrequired", () => {
    form.hidden = false;
    status.textContent = "The VNC server asks for a password.";
    pw.focus();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    rfb.sendCredentials({ password: pw.value });
    pw.value = "";
    form.hidden = true;
  });
  rfb.addEventListener("clipboard", (e) => { clip.value = e.detail.text; });
  return { shown() { rfb.focus(); } };
}
