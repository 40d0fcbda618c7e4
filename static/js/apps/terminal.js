// The terminal app: xterm.js + fit addon over an `app:terminal:<n>` channel.
// Sign-in prompts (user name, password) come from the home server inside the terminal.
import { DATA, END, ERR, RES, FramedChannel, HIGH, openChannel, writable } from "./channel.js";
import { Terminal } from "../../node_modules/@xterm/xterm/lib/xterm.mjs";
import { FitAddon } from "../../node_modules/@xterm/addon-fit/lib/addon-fit.mjs";

function addStylesheet(href) {
  if (document.querySelector(`link[href="${href}"]`)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  document.head.append(link);
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
  const box = document.createElement("div");
  box.className = "terminal-box";
  const bar = document.createElement("div");
  bar.className = "terminal-bar";
  const status = document.createElement("span");
  status.setAttribute("role", "status");
  const again = document.createElement("button");
  again.type = "button";
  again.textContent = "New session";
  again.hidden = true;
  bar.append(status, again);
  panel.append(bar, box);

  const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  mirrorInlineStyles(box);
  term.open(box);
  fit.fit();
  window.__hcTerminal = term; // for tests and debugging

  async function start() {
    again.hidden = true;
    status.textContent = "Connecting…";
    const channel = await openChannel(pc, "terminal");
    const fc = new FramedChannel(channel);
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
    const input = term.onData((text) => {
      const bytes = enc.encode(text);
      // keep the send buffer bounded (large pastes wait for the channel to drain)
      queue = queue.then(async () => {
        for (let i = 0; i < bytes.length; i += 16384) {
          if (channel.bufferedAmount > HIGH) await writable(channel);
          fc.send(DATA, id, null, bytes.subarray(i, i + 16384));
        }
      });
    });
    const resize = term.onResize(({ cols, rows }) => fc.request({ op: "resize", cols, rows }).catch(() => {}));
    fc.onclose = () => { input.dispose(); resize.dispose(); again.hidden = false; if (!status.textContent.startsWith("Session ended")) status.textContent = "Disconnected."; };
    term.focus();
  }
  again.addEventListener("click", () => { term.reset(); start().catch((e) => { status.textContent = e.message; again.hidden = false; }); });
  const observer = new ResizeObserver(() => { if (!panel.hidden) fit.fit(); });
  observer.observe(box);
  await start().catch((e) => { status.textContent = `Cannot open the terminal: ${e.message}`; again.hidden = false; });
  return { shown() { fit.fit(); term.focus(); } };
}
