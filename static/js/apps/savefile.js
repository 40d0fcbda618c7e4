// Where a download goes: straight to a file on disk, streamed, so a file of any size
// can be downloaded without being held in memory.  In order of preference:
//   1. the File System Access API's save picker (Chromium): the user picks the file;
//   2. a service worker stream (download-sw.js): the browser's own download manager
//      saves a stream the page feeds;
//   3. a Blob in memory (browsers with neither; fine for small files).
// Every sink has write(Uint8Array) -> Promise (waits while the disk is behind),
// close() and abort(reason) (the partial file is discarded).

const COALESCE = 1024 * 1024; // bytes handed to the disk side at a time

/** Gathers small chunks into COALESCE-sized buffers for `flush(buffer)`. */
class Coalescer {
  constructor(flush) {
    this.flush = flush;
    this.buf = null;
    this.len = 0;
  }

  async write(chunk) {
    let at = 0;
    while (at < chunk.byteLength) {
      if (!this.buf) { this.buf = new Uint8Array(COALESCE); this.len = 0; }
      const n = Math.min(chunk.byteLength - at, COALESCE - this.len);
      this.buf.set(chunk.subarray(at, at + n), this.len);
      this.len += n;
      at += n;
      if (this.len === COALESCE) await this.drain();
    }
  }

  async drain() {
    if (!this.buf || !this.len) return;
    const out = this.len === COALESCE ? this.buf : this.buf.slice(0, this.len);
    this.buf = null;
    this.len = 0;
    await this.flush(out);
  }
}

/** A file the user picked (File System Access API): written through a swap file that
 *  replaces the target only on close(); abort() leaves nothing behind. */
export class FileSink {
  constructor(writable, name) {
    this.kind = "picker";
    this.name = name;
    this.writable = writable;
    this.out = new Coalescer((b) => this.writable.write(b));
  }
  write(chunk) { return this.out.write(chunk); }
  async close() { await this.out.drain(); await this.writable.close(); }
  async abort(reason) { this.out.buf = null; try { await this.writable.abort(reason); } catch (_) { /* closed */ } }
}

let registration = null;

function activated(worker) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (worker.state === "activated") resolve(worker);
      else if (worker.state === "redundant") reject(new Error("the download service worker failed to install"));
      else return;
      worker.removeEventListener("statechange", check);
    };
    worker.addEventListener("statechange", check);
    check();
  });
}

async function downloadWorker() {
  if (!registration) {
    registration = navigator.serviceWorker.register("/js/apps/download-sw.js",
      { scope: "/js/apps/download/", updateViaCache: "none" });
    registration.catch(() => { registration = null; });
  }
  const reg = await registration;
  return reg.active || activated(reg.installing || reg.waiting);
}

function randomId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Streams in progress: when the page goes away they are aborted, so the browser marks
// those downloads failed at once instead of waiting forever for the rest.
const streaming = new Set();
globalThis.addEventListener?.("pagehide", () => {
  for (const sink of [...streaming]) sink.abort("the page was closed").catch(() => {});
});

/** A stream the download service worker serves to the browser's download manager. */
export class ServiceWorkerSink {
  /** The browser's download starts with the first byte (or close()), so a download
   *  the server refuses never shows up in the browser's list. */
  static async open(name, size) {
    return new ServiceWorkerSink(await downloadWorker(), name, size);
  }

  _started() {
    if (!this.starting) this.starting = this._start();
    return this.starting;
  }

  constructor(worker, name, size) {
    this.kind = "stream";
    this.worker = worker;
    this.name = name;
    this.size = size;
    this.id = randomId();
    this.channel = new MessageChannel();
    this.port = this.channel.port1;
    this.desired = 0;        // bytes the stream still wants (as last reported)
    this.waiting = null;     // {resolve, reject} while write() waits for credit
    this.failed = null;
    this.frame = null;
    this.out = new Coalescer((b) => this._post(b));
    this.port.onmessage = (event) => this._message(event.data || {});
  }

  _start() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the download service worker did not answer")), 10000);
      this._ready = () => { clearTimeout(timer); resolve(); };
      this.worker.postMessage({ op: "download", id: this.id, name: this.name, size: this.size }, [this.channel.port2]);
    }).then(() => {
      const frame = document.createElement("iframe");
      frame.hidden = true;
      frame.title = "download";
      frame.src = `/js/apps/download/${this.id}/${encodeURIComponent(this.name)}`;
      document.body.append(frame);
      this.frame = frame;
      streaming.add(this);
      // Messages keep the worker alive while a long download streams.
      this.keepalive = setInterval(() => this.worker.postMessage({ op: "keepalive" }), 10000);
    });
  }

  _message(m) {
    if (m.op === "ready" && this._ready) { this._ready(); this._ready = null; }
    else if (m.op === "credit") {
      this.desired = m.desired;
      if (this.desired > 0 && this.waiting) { const w = this.waiting; this.waiting = null; w.resolve(); }
    } else if (m.op === "cancelled") {
      this.failed = new Error("the download was cancelled in the browser");
      this._cleanup();
      if (this.waiting) { const w = this.waiting; this.waiting = null; w.reject(this.failed); }
    }
  }

  async _post(buffer) {
    await this._started();
    if (this.failed) throw this.failed;
    if (this.desired <= 0) {
      await new Promise((resolve, reject) => { this.waiting = { resolve, reject }; });
    }
    this.port.postMessage({ op: "data", chunk: buffer.buffer }, [buffer.buffer]);
    this.desired -= buffer.byteLength;
  }

  write(chunk) { return this.out.write(chunk); }

  async close() {
    await this.out.drain();
    await this._started();
    if (this.failed) throw this.failed;
    this.port.postMessage({ op: "close" });
    this._cleanup(60000);
  }

  async abort(reason) {
    this.out.buf = null;
    if (!this.starting) return;  // the browser never saw it
    await this.starting.catch(() => {});
    if (!this.failed) this.port.postMessage({ op: "abort", reason: String(reason || "aborted") });
    this._cleanup(60000);
  }

  _cleanup(delay = 0) {
    streaming.delete(this);
    clearInterval(this.keepalive);
    const frame = this.frame;
    this.frame = null;
    if (frame) setTimeout(() => frame.remove(), delay);
  }
}

/** Last resort: the whole file in memory, handed to the browser at the end. */
export class BlobSink {
  constructor(name) {
    this.kind = "memory";
    this.name = name;
    this.parts = [];
  }
  async write(chunk) { this.parts.push(chunk.slice()); }
  async close() {
    const blob = new Blob(this.parts);
    this.parts = [];
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = this.name;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  }
  async abort() { this.parts = []; }
}

/** A sink for *name* (*size* bytes); null if the user cancelled the save dialog.
 *  Call it first thing in the click handler: the save picker needs the click. */
export async function openSink(name, size) {
  if (typeof globalThis.showSaveFilePicker === "function") {
    try {
      const handle = await globalThis.showSaveFilePicker({ suggestedName: name });
      return new FileSink(await handle.createWritable(), handle.name || name);
    } catch (e) {
      if (e && e.name === "AbortError") return null;
      console.info("save picker unavailable, using a download stream:", e && e.message);
    }
  }
  if (globalThis.navigator && navigator.serviceWorker && globalThis.isSecureContext) {
    try {
      return await ServiceWorkerSink.open(name, size);
    } catch (e) {
      console.warn("download stream unavailable, keeping the file in memory:", e && e.message);
    }
  }
  return new BlobSink(name);
}
