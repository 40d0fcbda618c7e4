// The files app: browse roots, sort, upload (picker and drag-and-drop), download
// (streamed to disk, resumable, SHA-256 checked), mkdir/rename/delete in in-page
// dialogs, progress with speed and ETA.  The transfer logic is in transfer.js.
import { FramedChannel, openChannel } from "./channel.js";
import { Download, formatBytes, formatTime, upload } from "./transfer.js";
import { openSink } from "./savefile.js";
import { askText, button, confirmAction, el } from "./ui.js";

const PROGRESS_MS = 250; // how often a transfer row is redrawn

export async function mount(panel, { pc }) {
  const fc = new FramedChannel(await openChannel(pc, "files"));
  const info = await fc.request({ op: "roots" });
  const state = { root: 0, path: "", entries: [], sort: "name", asc: true };

  const status = el("p", { class: "files-status", role: "status" });
  const crumbs = el("nav", { class: "breadcrumbs", "aria-label": "Folder" });
  const rootSelect = el("select", { "aria-label": "Root", onchange: () => { state.root = +rootSelect.value; go(""); } },
    ...info.roots.map((r) => el("option", { value: String(r.index) }, r.name)));
  const picker = el("input", { type: "file", multiple: true, hidden: true, "aria-label": "Files to upload",
    onchange: () => { uploadFiles([...picker.files]); picker.value = ""; } });
  const toolbar = el("div", { class: "files-toolbar" }, rootSelect, crumbs,
    button("Refresh", () => go(state.path)));
  if (!info.readOnly) {
    toolbar.append(button("Upload", () => picker.click()), picker, button("New folder", mkdir));
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
    const last = items[items.length - 1];
    last.setAttribute("aria-current", "location");
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
      el("button", { type: "button", class: "sort" }, label));
    const heads = [head("Name", "name"), head("Size", "size"), head("Modified", "modified")];
    heads.forEach((th, i) => th.firstChild.addEventListener("click", () => sortBy(["name", "size", "modified"][i])));
    table.replaceChildren(el("thead", {}, el("tr", {}, ...heads, el("th", { scope: "col" }, "Actions"))),
      el("tbody", {}, ...rows.map((e) => {
        const path = join(state.path, e.name);
        const name = e.type === "dir"
          ? el("button", { type: "button", class: "entry dir", onclick: () => go(path) }, `📁 ${e.name}`)
          : el("span", { class: "entry" }, e.name);
        if (e.undecodable) name.title = "This name is not valid UTF-8 on the server.";
        const actions = el("td", { class: "actions" });
        if (e.type === "file") actions.append(button("Download", () => download(path, e), { "aria-label": `Download ${e.name}` }));
        if (!info.readOnly) {
          actions.append(button("Rename", () => rename(path, e), { "aria-label": `Rename ${e.name}` }),
            button("Delete", () => remove(path, e), { "aria-label": `Delete ${e.name}` }));
        }
        return el("tr", {}, el("td", { class: "name", "data-label": "Name" }, name),
          el("td", { class: "size", "data-label": "Size" }, e.type === "dir" ? "" : formatBytes(e.size)),
          el("td", { class: "modified", "data-label": "Modified" }, new Date(e.modified * 1000).toLocaleString()), actions);
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
  async function mkdir() {
    const name = await askText("New folder", "Folder name", "", "Create");
    if (name) act({ op: "mkdir", root: state.root, path: join(state.path, name) }, "New folder");
  }
  async function rename(path, e) {
    const to = await askText(`Rename ${e.name}`, "New name or path (inside this root)", path, "Rename");
    if (to && to !== path) act({ op: "rename", root: state.root, path, to }, "Rename");
  }
  async function remove(path, e) {
    const recursive = e.type === "dir";
    const ok = await confirmAction(`Delete ${e.name}?`,
      recursive ? `The folder ${e.name} and everything in it will be deleted on the home server.`
        : `${e.name} will be deleted on the home server.`, "Delete");
    if (ok) act({ op: "delete", root: state.root, path, recursive }, "Delete");
  }

  let rows = 0;
  function transferRow(label, total) {
    const n = ++rows;
    const nameId = `transfer-${n}-name`;
    const bar = el("progress", { max: total || 1, value: 0, "aria-labelledby": nameId });
    const text = el("span", { class: "transfer-text" }, "starting…");
    const cancel = button("Cancel", null, { "aria-label": `Cancel ${label}` });
    const li = el("li", { class: "transfer" }, el("span", { class: "transfer-name", id: nameId }, label), bar, text, cancel);
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
      li, cancel, bar,
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
        text.textContent = message;
        li.classList.remove("done", "failed");
        if (ok !== null) li.classList.add(ok ? "done" : "failed");
        cancel.hidden = true;
      },
      running() { li.classList.remove("failed"); cancel.hidden = false; },
    };
  }

  async function download(path, entry) {
    // first thing after the click: the save picker needs the user's gesture
    const sink = await openSink(entry.name, entry.size);
    if (!sink) return; // the user closed the save dialog
    const row = transferRow(`⬇ ${entry.name}`, entry.size);
    row.li.dataset.sink = sink.kind;
    let resume = null;
    let discard = null;
    const job = new Download(fc, { root: state.root, path }, sink, {
      onProgress: (done) => row.progress(done),
      onState: (s, message) => {
        if (resume) { resume.remove(); resume = null; }
        if (discard) { discard.remove(); discard = null; }
        if (s === "running") { row.start(job.received); row.running(); }
        else if (s === "done") row.finish(message, true);
        else if (s === "discarded") row.finish("Discarded.", false);
        else if ((s === "stopped" || s === "failed") && job.resumable) {
          row.finish(`Stopped at ${formatBytes(job.received)}: ${message}`, false);
          resume = button("Resume", () => job.resume(), { "aria-label": `Resume ${entry.name}` });
          discard = button("Discard", () => job.discard(), { "aria-label": `Discard ${entry.name}` });
          row.li.append(resume, discard);
        } else if (s === "failed") row.finish(message, false);
      },
    });
    row.cancel.addEventListener("click", () => job.cancel());
    job.start();
  }

  async function uploadFiles(list) {
    for (const file of list) {
      const row = transferRow(`⬆ ${file.name}`, file.size);
      const result = await upload(fc, { root: state.root, path: join(state.path, file.name), file, maxUpload: info.maxUpload },
        { onProgress: (done) => row.progress(done), onStart: (cancel) => row.cancel.addEventListener("click", cancel) });
      row.finish(result.message, result.ok);
    }
    go(state.path);
  }

  renderCrumbs();
  await go("");
  return { shown() {} };
}
