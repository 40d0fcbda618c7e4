// The files app: browse roots, sort, upload (picker and drag-and-drop), download
// (resumable, SHA-256 checked), mkdir/rename/delete, progress with speed and ETA.
import { ACK, CHUNK, DATA, END, ERR, FramedChannel, HIGH, RES, CANCEL, AppError, openChannel, writable } from "./channel.js";

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node) node[k] = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

export function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

const PROGRESS_MS = 250; // how often a transfer row is redrawn
const READ_SLICE = 1024 * 1024; // upload: bytes read from the file at a time

function formatTime(s) {
  if (!isFinite(s)) return "…";
  s = Math.round(s);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

async function sha256hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export async function mount(panel, { pc, app }) {
  const channel = await openChannel(pc, "files");
  const fc = new FramedChannel(channel);
  const info = await fc.request({ op: "roots" });
  const state = { root: 0, path: "", entries: [], sort: "name", asc: true };

  const status = el("p", { class: "files-status", role: "status" });
  const crumbs = el("nav", { class: "breadcrumbs", "aria-label": "Folder" });
  const rootSelect = el("select", { "aria-label": "Root", onchange: () => { state.root = +rootSelect.value; go(""); } },
    ...info.roots.map((r) => el("option", { value: String(r.index) }, r.name)));
  const picker = el("input", { type: "file", multiple: true, hidden: true, onchange: () => { uploadFiles([...picker.files]); picker.value = ""; } });
  const toolbar = el("div", { class: "files-toolbar" }, rootSelect, crumbs,
    el("button", { type: "button", onclick: () => go(state.path) }, "Refresh"));
  if (!info.readOnly) {
    toolbar.append(el("button", { type: "button", onclick: () => picker.click() }, "Upload"), picker,
      el("button", { type: "button", onclick: mkdir }, "New folder"));
  }
  const table = el("table", { class: "files-table" });
  const transfers = el("ul", { class: "transfers", "aria-label": "Transfers" });
  const drop = el("div", { class: "files-drop" }, table);
  panel.append(toolbar, status, drop, transfers);
  if (info.readOnly) status.textContent = "Read-only: this server does not accept changes.";

  if (!info.readOnly) {
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("dragging");
      uploadFiles([...e.dataTransfer.files]);
    });
  }
  fc.onerror = (e) => { status.textContent = `Error: ${e.message}`; };
  fc.onclose = () => { status.textContent = "The connection to the files app closed."; };

  const join = (a, b) => (a ? `${a}/${b}` : b);

  function renderCrumbs() {
    const parts = state.path ? state.path.split("/") : [];
    const rootName = info.roots[state.root] ? info.roots[state.root].name : "root";
    const items = [el("button", { type: "button", class: "crumb", onclick: () => go("") }, rootName)];
    parts.forEach((p, i) => {
      items.push(el("span", { class: "sep", "aria-hidden": "true" }, "/"),
        el("button", { type: "button", class: "crumb", onclick: () => go(parts.slice(0, i + 1).join("/")) }, p));
    });
    crumbs.replaceChildren(...items);
  }

  function sortBy(key) {
    state.asc = state.sort === key ? !state.asc : true;
    state.sort = key;
    render();
  }

  function render() {
    const key = state.sort;
    const dirFirst = (e) => (e.type === "dir" ? 0 : 1);
    const rows = [...state.entries].sort((a, b) => dirFirst(a) - dirFirst(b) ||
      (key === "name" ? a.name.localeCompare(b.name) : a[key] - b[key]) * (state.asc ? 1 : -1));
    const head = (label, k) => el("th", { scope: "col", "aria-sort": state.sort === k ? (state.asc ? "ascending" : "descending") : "none" },
      el("button", { type: "button", onclick: () => sortBy(k) }, label));
    table.replaceChildren(el("thead", {}, el("tr", {}, head("Name", "name"), head("Size", "size"), head("Modified", "modified"),
      el("th", { scope: "col" }, "Actions"))),
      el("tbody", {}, ...rows.map((e) => {
        const path = join(state.path, e.name);
        const name = e.type === "dir"
          ? el("button", { type: "button", class: "entry dir", onclick: () => go(path) }, `📁 ${e.name}`)
          : el("span", { class: "entry" }, e.name);
        if (e.undecodable) name.title = "This name is not valid UTF-8 on the server.";
        const actions = el("td", { class: "actions" });
        if (e.type === "file") actions.append(el("button", { type: "button", onclick: () => download(path, e) }, "Download"));
        if (!info.readOnly) {
          actions.append(el("button", { type: "button", onclick: () => rename(path, e) }, "Rename"),
            el("button", { type: "button", onclick: () => remove(path, e) }, "Delete"));
        }
        return el("tr", {}, el("td", {}, name), el("td", {}, e.type === "dir" ? "" : formatBytes(e.size)),
          el("td", {}, new Date(e.modified * 1000).toLocaleString()), actions);
      })));
  }

  async function go(path) {
    try {
      const res = await fc.request({ op: "list", root: state.root, path });
      state.path = res.path;
      state.entries = res.entries;
      renderCrumbs();
      render();
      if (!info.readOnly) status.textContent = res.truncated ? "Only the first entries are shown." : "";
    } catch (e) {
      status.textContent = `Cannot open ${path || "the root"}: ${e.message}`;
    }
  }

  async function act(body, what) {
    try { await fc.request(body); await go(state.path); } catch (e) { status.textContent = `${what} failed: ${e.message}`; }
  }
  function mkdir() {
    const name = prompt("New folder name");
    if (name) act({ op: "mkdir", root: state.root, path: join(state.path, name) }, "New folder");
  }
  function rename(path, e) {
    const to = prompt(`Rename or move ${e.name} to (path inside this root)`, path);
    if (to && to !== path) act({ op: "rename", root: state.root, path, to }, "Rename");
  }
  function remove(path, e) {
    const recursive = e.type === "dir";
    if (confirm(recursive ? `Delete the folder ${e.name} and everything in it?` : `Delete ${e.name}?`)) {
      act({ op: "delete", root: state.root, path, recursive }, "Delete");
    }
  }

  function transferRow(label, total) {
    const bar = el("progress", { max: total || 1, value: 0 });
    const text = el("span", { class: "transfer-text" }, "starting…");
    const cancel = el("button", { type: "button" }, "Cancel");
    const li = el("li", { class: "transfer" }, el("span", { class: "transfer-name" }, label), bar, text, cancel);
    transfers.append(li);
    const started = performance.now();
    let base = 0;
    let latest = null;
    let pending = false;
    let timer = null;
    let drawn = 0; // performance.now() of the last draw
    const draw = () => {
      if (!pending) return;
      pending = false;
      drawn = performance.now();
      const done = latest;
      bar.value = done;
      const secs = (performance.now() - started) / 1000;
      const speed = (done - base) / Math.max(secs, 0.001);
      text.textContent = `${formatBytes(done)} of ${formatBytes(total)} · ${formatBytes(speed)}/s · ${formatTime((total - done) / speed)} left`;
    };
    return {
      li, cancel,
      start(offset) { base = offset; },
      // called per frame; the DOM is updated at most every PROGRESS_MS (each update
      // costs the page a layout and paint, CPU the transfer itself needs), and on
      // the next animation frame once the last byte is in
      progress(done) {
        latest = done;
        if (done >= total && timer !== null) { clearTimeout(timer); timer = null; pending = false; }
        if (pending) return;
        pending = true;
        const wait = done >= total ? 0 : drawn + PROGRESS_MS - performance.now();
        if (wait <= 0) requestAnimationFrame(draw);
        else timer = setTimeout(() => { timer = null; requestAnimationFrame(draw); }, wait);
      },
      finish(message, ok) {
        if (timer !== null) { clearTimeout(timer); timer = null; }
        if (latest !== null) { pending = false; bar.value = latest; }
        text.textContent = message; li.classList.add(ok ? "done" : "failed"); cancel.remove();
      },
    };
  }

  function download(path, entry, resume) {
    const parts = resume ? resume.parts : [];
    let received = resume ? resume.received : 0;
    const row = resume ? resume.row : transferRow(`⬇ ${entry.name}`, entry.size);
    row.start(received);
    let id = null;
    row.cancel.onclick = () => { if (id !== null) fc.send(CANCEL, id, {}); };
    id = fc.start({ op: "download", root: state.root, path, offset: received }, async (f) => {
      if (f.type === RES) return;
      if (f.type === DATA) { parts.push(f.data); received += f.data.byteLength; row.progress(received); return; }
      fc.done(id);
      if (f.type === END) {
        const blob = new Blob(parts);
        const hash = await sha256hex(blob);
        if (hash !== f.body.sha256) { row.finish("Damaged in transit (SHA-256 mismatch); download again.", false); return; }
        row.finish(`Done, ${formatBytes(blob.size)}, SHA-256 verified.`, true);
        const a = el("a", { href: URL.createObjectURL(blob), download: entry.name });
        document.body.append(a); a.click(); a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 60000);
      } else {
        row.finish(`Stopped at ${formatBytes(received)}: ${f.body.message}`, false);
        const again = el("button", { type: "button", onclick: () => { again.remove(); row.li.classList.remove("failed"); row.li.append(row.cancel); download(path, entry, { parts, received, row }); } }, "Resume");
        row.li.append(again);
      }
    });
  }

  async function uploadFiles(list) {
    for (const file of list) await upload(file);
    go(state.path);
  }

  async function upload(file) {
    const row = transferRow(`⬆ ${file.name}`, file.size);
    if (file.size > info.maxUpload) { row.finish(`Too large: this server accepts up to ${formatBytes(info.maxUpload)}.`, false); return; }
    let cancelled = false;
    let window_ = 0;
    let acked = 0;
    let wake = null;
    const result = new Promise((resolve) => {
      const id = fc.start({ op: "upload", root: state.root, path: join(state.path, file.name), size: file.size }, (f) => {
        if (f.type === ACK) {
          if (f.body.window) { window_ = f.body.window; go_(id); }
          acked = f.body.received; row.progress(acked);
          if (wake) { wake(); wake = null; }
          return;
        }
        fc.done(id); cancelled = true;
        if (wake) { wake(); wake = null; }
        resolve(f);
      });
      row.cancel.onclick = () => { cancelled = true; fc.send(CANCEL, id, {}); };
    });
    async function go_(id) {
      // Read the file a slice ahead (one READ_SLICE in hand, the next being read)
      // so the channel never waits for the disk; send frame by frame within the
      // window and while the channel buffers at most HIGH.
      const read = (at) => (at < file.size
        ? file.slice(at, at + READ_SLICE).arrayBuffer().then((b) => new Uint8Array(b)) : null);
      let sent = 0;
      let next = read(0);
      while (sent < file.size && !cancelled) {
        const slice = await next;
        next = read(sent + slice.byteLength);
        for (let i = 0; i < slice.byteLength && !cancelled; i += CHUNK) {
          while ((sent - acked > window_ - CHUNK * 8 || channel.bufferedAmount > HIGH) && !cancelled) {
            if (channel.bufferedAmount > HIGH) await writable(channel);
            else await new Promise((r) => { wake = r; });
          }
          if (cancelled) break;
          const frame = slice.subarray(i, i + CHUNK);
          fc.send(DATA, id, null, frame);
          sent += frame.byteLength;
        }
      }
      if (next) next.catch(() => {});
      if (!cancelled) fc.send(END, id, {});
    }
    const f = await result;
    if (f.type === RES) row.finish(`Uploaded ${formatBytes(f.body.size)}.`, true);
    else row.finish(`Upload failed: ${f.body.message}`, false);
  }

  renderCrumbs();
  await go("");
  return { shown() {} };
}
