// The files app's transfer logic, DOM-free (node tests it against the real
// FilesSession: tests/unit/test_apps_js.py).  docs/protocol.md section 3.4.
//
// Download: DATA frames are hashed as they arrive (SHA-256, incrementally) and written
// to a *sink* (a file on disk: see savefile.js), never gathered in memory.  The last
// bytes are held back until the END's SHA-256 matches, so a damaged file is never
// completed (the sink is aborted instead).  The request carries a window: the server
// sends at most `window` bytes beyond those the sink has taken (acknowledged with ACK
// `received` every ACK_EVERY bytes), so a disk slower than the network slows the
// sender.  A server without windows (an older one) is held back the old way: if more
// than `maxQueued` bytes wait, the request is cancelled and resumed from the bytes
// already received once the queue has drained.  Either way memory stays bounded
// whatever the disk does.  The user can stop (cancel) and resume.
//
// Upload: reads the file a slice ahead and sends DATA within the server's window
// (ACKs) and while the channel buffers at most HIGH.
import { sha256 } from "../../node_modules/@noble/hashes/sha2.js";
import { ACK, CANCEL, CHUNK, DATA, END, ERR, HIGH, RES } from "./channel.js";

export function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatTime(s) {
  if (!isFinite(s)) return "…";
  s = Math.round(s);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A sink in memory (tests; and the last resort of browsers without streaming). */
export class MemorySink {
  constructor() { this.parts = []; this.closed = false; this.aborted = null; this.size = 0; }
  async write(chunk) { this.parts.push(chunk.slice()); this.size += chunk.byteLength; }
  async close() { this.closed = true; }
  async abort(reason) { this.aborted = reason || "aborted"; this.parts = []; }
  bytes() {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const p of this.parts) { out.set(p, at); at += p.byteLength; }
    return out;
  }
}

export const MAX_QUEUED = 32 * 1024 * 1024;
export const RESUME_BELOW = 4 * 1024 * 1024;
// Download window: covers a 250 ms round trip (a 100 ms link with its bottleneck queue
// full) at 30 MB/s, the most a browser's datachannel carries (docs/performance.md,
// "Over a WAN link"), as the upload window does; it is also what a download may queue
// in memory here.
export const DOWNLOAD_WINDOW = 8 * 1024 * 1024;
export const ACK_EVERY = 1024 * 1024;

/** One download.  States: running, pausing/paused (sink behind), stopping/stopped
 *  (the user cancelled; resumable), failed (resumable if `resumable`), verified
 *  (hash checked, writing the rest), done, discarded. */
export class Download {
  constructor(fc, { root, path }, sink, { onProgress = () => {}, onState = () => {},
    maxQueued = MAX_QUEUED, resumeBelow = RESUME_BELOW, window = DOWNLOAD_WINDOW } = {}) {
    this.fc = fc;
    this.root = root;
    this.path = path;
    this.sink = sink;
    this.onProgress = onProgress;
    this.onState = onState;
    this.maxQueued = maxQueued;
    this.resumeBelow = resumeBelow;
    this.window = window;
    this.acked = 0;      // `written` as last acknowledged to the server
    this.hash = sha256.create();
    this.received = 0;   // bytes received and hashed
    this.written = 0;    // bytes the sink accepted
    this.size = null;    // from the RES
    this.queue = [];
    this.queued = 0;
    this.id = null;
    this.state = "new";
    this.message = "";
    this.resumable = false;
    this.pauses = 0;     // backpressure pauses (a figure for tests)
    this.maxQueuedSeen = 0;
    this._pumping = false;
    this.finished = new Promise((resolve) => { this._finish = resolve; });
  }

  _set(state, message = "", resumable = false) {
    this.state = state;
    this.message = message;
    this.resumable = resumable;
    this.onState(state, message);
    if (state === "done" || state === "discarded" || (state === "failed" && !resumable)) {
      this._finish({ ok: state === "done", state, message });
    }
  }

  start() {
    this._set("running");
    this.acked = this.received;
    this.id = this.fc.start({ op: "download", root: this.root, path: this.path, offset: this.received,
      window: this.window }, (f) => this._frame(f));
  }

  /** The user stops it (resumable). */
  cancel() {
    if (this.state === "running" || this.state === "pausing") {
      this._set("stopping");
      this.fc.send(CANCEL, this.id, {});
    } else if (this.state === "paused") {
      this._set("stopped", "cancelled", true);
    }
  }

  resume() {
    if ((this.state === "stopped" || this.state === "failed") && this.resumable) this.start();
  }

  /** Give up: the partial file is removed. */
  async discard(reason = "discarded") {
    if (this.id !== null) { this.fc.send(CANCEL, this.id, {}); this.fc.done(this.id); this.id = null; }
    this.queue = [];
    this.queued = 0;
    try { await this.sink.abort(reason); } catch (_) { /* already gone */ }
    this._set("discarded", reason);
  }

  _frame(f) {
    if (f.type === RES) {
      if (f.body.offset !== this.received) return this._fatal("the server resumed at the wrong offset");
      this.size = f.body.size;
      return;
    }
    if (f.type === DATA) {
      if (this.state === "verified" || this.state === "failed") return;
      this.hash.update(f.data);
      this.received += f.data.byteLength;
      this.queue.push(f.data);
      this.queued += f.data.byteLength;
      if (this.queued > this.maxQueuedSeen) this.maxQueuedSeen = this.queued;
      this.onProgress(this.received, this.size);
      if (this.state === "running" && this.queued > this.maxQueued) {
        this.pauses++;
        this._set("pausing");
        this.fc.send(CANCEL, this.id, {});
      }
      this._pump();
      return;
    }
    this.fc.done(this.id);
    this.id = null;
    if (f.type === END) {
      const digest = hex(this.hash.digest());
      if (f.body.size !== this.received || digest !== f.body.sha256) {
        this.queue = [];
        this.queued = 0;
        this.sink.abort("hash mismatch").catch(() => {});
        this._set("failed", "Damaged in transit (SHA-256 mismatch); download again.", false);
        return;
      }
      this._set("verified");
      this._pump();
      return;
    }
    // ERR (from the server, or "closed" when the channel went away)
    const why = (f.body && (f.body.message || f.body.code)) || "failed";
    if (this.state === "pausing" && f.body && f.body.code === "cancelled") {
      this._set("paused");
      this._pump();
    } else if (this.state === "stopping") {
      this._set("stopped", why, true);
    } else if (this.size === null) {
      // refused before it started (not found, outside the roots...): nothing to resume
      this.sink.abort(why).catch(() => {});
      this._set("failed", why, false);
    } else {
      this._set("failed", why, !(f.body && f.body.code === "closed"));
    }
  }

  _fatal(message) {
    if (this.id !== null) { this.fc.send(CANCEL, this.id, {}); this.fc.done(this.id); this.id = null; }
    this.queue = [];
    this.queued = 0;
    this.sink.abort(message).catch(() => {});
    this._set("failed", message, false);
  }

  async _pump() {
    if (this._pumping) return;
    this._pumping = true;
    try {
      for (;;) {
        if (this.state === "paused" && this.queued <= this.resumeBelow) this.start();
        // hold the last bytes back until the hash is verified
        if (!this.queue.length || (this.queue.length === 1 && this.state !== "verified")) break;
        const chunk = this.queue.shift();
        await this.sink.write(chunk);
        this.queued -= chunk.byteLength;
        this.written += chunk.byteLength;
        if (this.state === "failed" || this.state === "discarded") return;
        // (at least four ACKs per window, so a small window never waits on a late ACK)
        if (this.window && this.written - this.acked >= Math.min(ACK_EVERY, this.window / 4) &&
            this.id !== null && this.state === "running") {
          this.acked = this.written;
          this.fc.send(ACK, this.id, { received: this.written });
        }
      }
      if (this.state === "verified" && !this.queue.length) {
        await this.sink.close();
        this._set("done", `Done, ${formatBytes(this.written)}, SHA-256 verified.`);
      }
    } catch (e) {
      // the sink failed: the user cancelled the save, the disk is full...
      if (this.state !== "failed" && this.state !== "discarded") this._fatal(`Saving failed: ${e.message || e}`);
    } finally {
      this._pumping = false;
    }
  }
}

export const READ_SLICE = 1024 * 1024; // upload: bytes read from the file at a time

/** Upload *file* (a Blob) to (root, path); resolves with {ok, message, size}. */
export function upload(fc, { root, path, file, maxUpload = Infinity }, { onProgress = () => {}, onStart = () => {} } = {}) {
  if (file.size > maxUpload) {
    return Promise.resolve({ ok: false, message: `Too large: this server accepts up to ${formatBytes(maxUpload)}.` });
  }
  let cancelled = false;
  let window_ = 0;
  let acked = 0;
  let wake = null;
  let id = null;
  const wakeUp = () => { if (wake) { const w = wake; wake = null; w(); } };
  let resolve;
  const result = new Promise((r) => {
    resolve = r;
    id = fc.start({ op: "upload", root, path, size: file.size }, (f) => {
      if (f.type === ACK) {
        if (f.body.window && !window_) {
          window_ = f.body.window;
          send().catch((e) => { cancelled = true; fc.send(CANCEL, id, {}); fc.done(id); resolve({ type: ERR, body: { message: `cannot read the file: ${e.message}` } }); });
        }
        acked = f.body.received;
        onProgress(acked, file.size);
        wakeUp();
        return;
      }
      fc.done(id);
      cancelled = true;
      wakeUp();
      resolve(f);
    });
  });
  onStart(() => { if (!cancelled) { cancelled = true; fc.send(CANCEL, id, {}); wakeUp(); } });

  async function send() {
    // Read the file a slice ahead (one READ_SLICE in hand, the next being read) so the
    // channel never waits for the disk; send frame by frame within the window and
    // while the channel buffers at most HIGH.
    const read = (at) => (at < file.size
      ? file.slice(at, at + READ_SLICE).arrayBuffer().then((b) => new Uint8Array(b)) : null);
    let sent = 0;
    let next = read(0);
    while (sent < file.size && !cancelled) {
      const slice = await next;
      next = read(sent + slice.byteLength);
      for (let i = 0; i < slice.byteLength && !cancelled; i += CHUNK) {
        while ((sent - acked > window_ - CHUNK * 8 || fc.bufferedAmount > HIGH) && !cancelled) {
          if (fc.bufferedAmount > HIGH) await fc.writable();
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

  return result.then((f) => (f.type === RES
    ? { ok: true, size: f.body.size, sha256: f.body.sha256, message: `Uploaded ${formatBytes(f.body.size)}.` }
    : { ok: false, message: `Upload failed: ${(f.body && f.body.message) || "error"}`, code: f.body && f.body.code }));
}
