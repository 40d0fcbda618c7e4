// Browser side of the app channels: the frame codec (mirrors
// homechannel/server/apps/frames.py) and flow control from bufferedAmount.
// See docs/protocol.md section 3.

export const REQ = 1, RES = 2, ERR = 3, DATA = 4, END = 5, CANCEL = 6, ACK = 7;
export const CHUNK = 32768;
// Stop sending while this much is queued (Chrome closes a channel at 16 MB).
export const HIGH = 1024 * 1024;
export const LOW = 256 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export function encode(type, id, body, data) {
  // DATA: a view of the caller's bytes (no copy: the one copy is into `out`)
  const payload = type !== DATA ? encoder.encode(JSON.stringify(body || {}))
    : data instanceof Uint8Array ? data : new Uint8Array(data);
  const out = new Uint8Array(5 + payload.byteLength);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, id >>> 0);
  out.set(payload, 5);
  return out;
}

export function decode(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < 5) throw new Error("bad frame");
  const view = new DataView(buffer);
  const type = view.getUint8(0);
  const id = view.getUint32(1);
  if (type < REQ || type > ACK) throw new Error("unknown frame type " + type);
  if (type === DATA) return { type, id, data: new Uint8Array(buffer, 5) };
  const body = JSON.parse(decoder.decode(new Uint8Array(buffer, 5)));
  return { type, id, body };
}

/** Resolves once the channel's buffer is at or below LOW. */
export function writable(channel) {
  if (channel.bufferedAmount <= LOW || channel.readyState !== "open") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { channel.removeEventListener("bufferedamountlow", done);
      channel.removeEventListener("close", done); resolve(); };
    channel.addEventListener("bufferedamountlow", done);
    channel.addEventListener("close", done);
  });
}

export class AppError extends Error {
  constructor(body) {
    super(body.message || body.code);
    this.code = body.code;
    this.body = body;
  }
}

/** Open `app:<name>:<n>`; resolves with the channel once open, or rejects with the
 *  server's {"op":"error"} text message. */
let instance = 0;
export function openChannel(pc, name) {
  const channel = pc.createDataChannel(`app:${name}:${++instance}`);
  channel.binaryType = "arraybuffer";
  channel.bufferedAmountLowThreshold = LOW;
  return new Promise((resolve, reject) => {
    channel.addEventListener("open", () => resolve(channel), { once: true });
    channel.addEventListener("error", () => reject(new Error("the channel failed")), { once: true });
    channel.addEventListener("message", (e) => {
      if (typeof e.data === "string") {
        try { const m = JSON.parse(e.data); if (m.op === "error") reject(new AppError(m)); } catch (_) { /* ignore */ }
      }
    });
  });
}

/** A framed channel: requests by id, each with its own handler. */
export class FramedChannel {
  constructor(channel) {
    this.channel = channel;
    this.nextId = 1;
    this.handlers = new Map();
    this.onerror = null; // channel-level errors
    this.onclose = null;
    channel.addEventListener("message", (e) => this._message(e.data));
    channel.addEventListener("close", () => {
      for (const h of this.handlers.values()) h({ type: ERR, body: { code: "closed", message: "the connection closed" } });
      this.handlers.clear();
      if (this.onclose) this.onclose();
    });
  }

  _message(data) {
    if (typeof data === "string") {
      let m = null;
      try { m = JSON.parse(data); } catch (_) { /* ignore */ }
      if (m && m.op === "error" && this.onerror) this.onerror(new AppError(m));
      return;
    }
    let frame;
    try { frame = decode(data); } catch (e) { console.warn("bad frame", e); return; }
    const h = this.handlers.get(frame.id);
    if (h) h(frame);
    else if (frame.type === ERR && this.onerror) this.onerror(new AppError(frame.body));
  }

  send(type, id, body, data) {
    if (this.channel.readyState === "open") this.channel.send(encode(type, id, body, data));
  }

  /** Start a request; `handler(frame)` gets every frame for it.  Returns the id. */
  start(body, handler) {
    const id = this.nextId++;
    this.handlers.set(id, handler);
    this.send(REQ, id, body);
    return id;
  }

  done(id) { this.handlers.delete(id); }

  /** A simple request: resolves with the RES body, rejects with AppError. */
  request(body) {
    return new Promise((resolve, reject) => {
      const id = this.start(body, (f) => {
        this.done(id);
        if (f.type === RES) resolve(f.body); else reject(new AppError(f.body || { code: "protocol" }));
      });
    });
  }
}
