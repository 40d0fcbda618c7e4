// The terminal app: xterm.js + fit addon over an `app:terminal:<n>` channel.
// Sign-in prompts (user name, password) come from the home server inside the terminal.
// The terminal fills its panel and refits (and tells the server) whenever the panel's
// size changes; a bar of extra keys (Esc, Tab, a sticky Ctrl, arrows) serves phones.
import { DATA, END, ERR, RES, FramedChannel, HIGH, openChannel } from "./channel.js";
import { Terminal } from "../../node_modules/@xterm/xterm/lib/xterm.mjs";
import { FitAddon } from "../../node_modules/@xterm/addon-fit/lib/addon-fit.mjs";
import { button, el } from "./ui.js";
import { keyBytes, withCtrl } from "./keys.js";

function addStylesheet(href) {
  if (document.querySelector(`link[href="${href}"]`)) return;
  document.head.append(el("link", { rel: "stylesheet", href }));
}

/** xterm.js styles its DOM renderer with <style> elements, which the page's
 *  Content-Security-Policy (style-src 'self') blocks.  Mirror their text into a
 *  constructed stylesheet (not subject to that rule) and keep it in sync. */
function mirrorInlineStyles(root) {
  if (!("adoptedStyleSheets" in document) || typeof CSSStyleSheet.prototype.replaceSync !== "function") return;
  const sheet = new CSSStyleSheet();
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  let last = null;
  const sync = () => {
    const text = [...root.querySelectorAll("style")].map((s) => s.textContent).join("\n");
    if (text !== last) { last = text; sheet.replaceSync(text); }
  };
  new MutationObserver(sync).observe(root, { subtree: true, childList: true, characterData: true });
  sync();
}

export async function mount(panel, { pc }) {
  addStylesheet("/node_modules/@xterm/xterm/css/xterm.css");
  const status = el("span", { role: "status" });
  const again = button("New session", null, { hidden: true });
  const full = button("Full screen", () => {
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else panel.requestFullscreen().catch(() => {});
  });
  const bar = el("div", { class: "app-bar terminal-bar" }, status, again, full);
  const box = el("div", { class: "terminal-box" });
  const ctrl = button("Ctrl", () => { setCtrl(ctrl.getAttribute("aria-pressed") !== "true"); term.focus(); },
    { "aria-pressed": "false" });
  const keys = el("div", { class: "terminal-keys", role: "toolbar", "aria-label": "Extra keys" },
    button("Esc", () => sendKey("Esc")), button("Tab", () => sendKey("Tab")), ctrl,
    button("←", () => sendKey("Left"), { "aria-label": "Left" }),
    button("↓", () => sendKey("Down"), { "aria-label": "Down" }),
    button("↑", () => sendKey("Up"), { "aria-label": "Up" }),
    button("→", () => sendKey("Right"), { "aria-label": "Right" }));
  // the keys do not take the focus from the terminal (a phone keeps its keyboard open)
  keys.addEventListener("mousedown", (e) => e.preventDefault());
  panel.append(bar, box, keys);

  const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  mirrorInlineStyles(box);
  term.open(box);
  fit.fit();
  window.__hcTerminal = term; // for tests and debugging

  let send = () => {};
  function setCtrl(on) { ctrl.setAttribute("aria-pressed", String(on)); }
  function sendKey(key) {
    send(keyBytes(key, term.modes.applicationCursorKeysMode));
    term.focus();
  }

  async function start() {
    again.hidden = true;
    status.textContent = "Connecting…";
    const fc = new FramedChannel(await openChannel(pc, "terminal"));
    let queue = Promise.resolve();
    const id = fc.start({ op: "open", cols: term.cols, rows: term.rows }, (f) => {
      if (f.type === DATA) term.write(f.data.slice());
      else if (f.type === RES) status.textContent = `Signed in as ${f.body.user}`;
      else if (f.type === END || f.type === ERR) {
        fc.done(id);
        status.textContent = f.type === END ? "Session ended." : `Session ended: ${f.body.message}`;
        again.hidden = false;
      }
    });
    const enc = new TextEncoder();
    send = (text) => {
      const bytes = enc.encode(text);
      // keep the send buffer bounded (large pastes wait for the channel to drain)
      queue = queue.then(async () => {
        for (let i = 0; i < bytes.length; i += 16384) {
          if (fc.bufferedAmount > HIGH) await fc.writable();
          fc.send(DATA, id, null, bytes.subarray(i, i + 16384));
        }
      });
    };
    const input = term.onData((text) => {
      if (ctrl.getAttribute("aria-pressed") === "true") { setCtrl(false); text = withCtrl(text); }
      send(text);
    });
    const resize = term.onResize(({ cols, rows }) => fc.request({ op: "resize", cols, rows }).catch(() => {}));
    fc.onclose = () => {
      input.dispose();
      resize.dispose();
      send = () => {};
      again.hidden = false;
      if (!status.textContent.startsWith("Session ended")) status.textContent = "Disconnected.";
    };
    term.focus();
  }
  again.addEventListener("click", () => { term.reset(); start().catch((e) => { status.textContent = e.message; again.hidden = false; }); });
  // Refit whenever the box changes size (window, phone rotation, full screen, the
  // keyboard); term.onResize then tells the server.
  const observer = new ResizeObserver(() => { if (!panel.hidden && box.clientWidth) fit.fit(); });
  observer.observe(box);
  await start().catch((e) => { status.textContent = `Cannot open the terminal: ${e.message}`; again.hidden = false; });
  return { shown() { fit.fit(); term.focus(); } };
}
