// Browser side of the app channels (docs/protocol.md section 3), DOM-free so that
// node can test it (tests/unit/test_apps_js.py, against homechannel/protocol/frames.py):
//
// - the frame codec, a twin of frames.py (same bytes for the same frame);
// - AppChannel: an RTCDataChannel whose messages are captured from the moment the
//   channel is created and queued until a consumer listens, so nothing the server
//   sends first (a VNC server speaks first) can be lost, however late the consumer
//   (noVNC, a FramedChannel) attaches;
// - openChannel: open `app:<name>:<n>` with a timeout;
// - FramedChannel: requests by id over an AppChannel, with flow control.

export const REQ = 1, RES = 2, ERR = 3, DATA = 4, END = 5, CANCEL = 6, ACK = 7;
export const TYPES = { [REQ]: "REQ", [RES]: "RES", [ERR]: "ERR", [DATA]: "DATA", [END]: "END", [CANCEL]: "CANCEL", [ACK]: "ACK" };
export const CHUNK = 32768;      // payload of one DATA frame
export const MAX_FRAME = 65536;  // largest frame either side sends
export const MAX_JSON = 16384;   // largest JSON payload accepted
export const MAX_ID = 0xffffffff;
// Stop sending while this much is queued (Chrome closes a channel at 16 MB).
export const HIGH = 1024 * 1024;
export const LOW = 256 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A frame that does not parse (frames.py raises ProtocolError for the same bytes). */
export class ProtocolError extends Error {}

/** JSON as frames.py writes it: compact, and every non-ASCII character escaped. */
export function jsonText(body) {
  return JSON.stringify(body).replace(/[\u007f-\uffff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

export function encode(type, id, body, data) {
  if (!TYPES[type]) throw new RangeError(`unknown frame type ${type}`);
  if (!Number.isInteger(id) || id < 0 || id > MAX_ID) throw new RangeError(`request id ${id} out of range`);
  // DATA: a view of the caller's bytes (no copy: the one copy is into `out`)
  const payload = type !== DATA ? encoder.encode(jsonText(body || {}))
    : data instanceof Uint8Array ? data : new Uint8Array(data || 0);
  if (5 + payload.byteLength > MAX_FRAME) throw new RangeError(`frame of ${5 + payload.byteLength} bytes exceeds ${MAX_FRAME}`);
  const out = new Uint8Array(5 + payload.byteLength);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, id);
  out.set(payload, 5);
  return out;
}

/** One datachannel message (ArrayBuffer or a Uint8Array view) to {type, id, body|data}. */
export function decode(message) {
  let bytes;
  if (message instanceof ArrayBuffer) bytes = new Uint8Array(message);
  else if (message instanceof Uint8Array) bytes = message;
  else throw new ProtocolError("app channels carry binary frames, not text");
  if (bytes.byteLength < 5) throw new ProtocolError(`frame of ${bytes.byteLength} bytes is shorter than its header`);
  if (bytes.byteLength > MAX_FRAME) throw new ProtocolError(`frame of ${bytes.byteLength} bytes exceeds ${MAX_FRAME}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = view.getUint8(0);
  const id = view.getUint32(1);
  if (!TYPES[type]) throw new ProtocolError(`unknown frame type ${type}`);
  const payload = bytes.subarray(5);
  if (type === DATA) return { type, id, data: payload };
  if (payload.byteLength > MAX_JSON) throw new ProtocolError(`${TYPES[type]} payload of ${payload.byteLength} bytes is too large`);
  let body;
  try {
    body = JSON.parse(decoder.decode(payload));
  } catch (e) {
    throw new ProtocolError(`${TYPES[type]} payload is not UTF-8 JSON`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ProtocolError(`${TYPES[type]} payload is not a JSON object`);
  }
  return { type, id, body };
}

export class AppError extends Error {
  constructor(body) {
    super((body && (body.message || body.code)) || "error");
    this.code = body && body.code;
    this.body = body || {};
  }
}

/** The channel did not open in time. */
export class ChannelTimeout extends Error {}

/** An RTCDataChannel whose events are captured from creation and queued (in order,
 *  close last) until a consumer listens.  Text messages are the server's channel-level
 *  status ({"op":"open"|"error",...}); the first {"op":"error"} is kept in `.error`. */
export class AppChannel {
  constructor(channel) {
    this.channel = channel;
    this.error = null;       // the server's first {"op":"error"} (an AppError)
    this.statuses = [];      // every status object, in order
    this._queue = [];        // {data} | {close: true}, not yet delivered
    this._consumer = null;   // {message(data), status(obj), close()}
    this._scheduled = false;
    this.closed = false;
    channel.binaryType = "arraybuffer";
    channel.bufferedAmountLowThreshold = LOW;
    channel.addEventListener("message", (e) => this._push({ data: e.data }));
    channel.addEventListener("close", () => { this.closed = true; this._push({ close: true }); });
  }

  get label() { return this.channel.label; }
  get readyState() { return this.channel.readyState; }
  get bufferedAmount() { return this.channel.bufferedAmount; }

  _push(item) {
    if (typeof item.data === "string") {
      let status = null;
      try { status = JSON.parse(item.data); } catch (_) { /* not a status */ }
      if (status && typeof status === "object") {
        this.statuses.push(status);
        if (status.op === "error" && !this.error) this.error = new AppError(status);
        item = { status };
      } else {
        return;
      }
    }
    if (this._consumer && !this._queue.length && !this._scheduled) this._deliver(item);
    else this._queue.push(item);
  }

  _deliver(item) {
    const c = this._consumer;
    try {
      if (item.close) { if (c.close) c.close(); } else if (item.status) { if (c.status) c.status(item.status); } else if (c.message) c.message(item.data);
    } catch (e) {
      console.error("app channel consumer failed", e);
    }
  }

  /** Start delivering to *consumer*: what was queued arrives first, a task later
   *  (so the consumer can finish attaching), then everything as it comes. */
  listen(consumer) {
    this._consumer = consumer;
    if (this._queue.length && !this._scheduled) {
      this._scheduled = true;
      setTimeout(() => this._flush(), 0);
    }
  }

  _flush() {
    this._scheduled = false;
    while (this._consumer && this._queue.length) this._deliver(this._queue.shift());
  }

  send(data) {
    if (this.channel.readyState === "open") this.channel.send(data);
  }

  close() {
    if (this.channel.readyState === "open" || this.channel.readyState === "connecting") this.channel.close();
  }

  /** Resolves once the send buffer is at or below LOW (or the channel closed). */
  writable() {
    const ch = this.channel;
    if (ch.bufferedAmount <= LOW || ch.readyState !== "open") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        ch.removeEventListener("bufferedamountlow", done);
        ch.removeEventListener("close", done);
        resolve();
      };
      ch.addEventListener("bufferedamountlow", done);
      ch.addEventListener("close", done);
    });
  }
}

/** Open `app:<name>:<n>` on *pc*; resolves with an AppChannel once open.  Rejects with
 *  the server's error (AppError), or ChannelTimeout after *timeoutMs* (the channel is
 *  then closed). */
let instance = 0;
export function openChannel(pc, name, { timeoutMs = 15000 } = {}) {
  const app = new AppChannel(pc.createDataChannel(`app:${name}:${++instance}`));
  const ch = app.channel;
  return new Promise((resolve, reject) => {
    const finish = (error) => {
      clearTimeout(timer);
      ch.removeEventListener("open", onOpen);
      ch.removeEventListener("close", onClose);
      ch.removeEventListener("message", onMessage);
      if (error) { app.close(); reject(error); } else resolve(app);
    };
    const onOpen = () => finish(null);
    const onClose = () => finish(app.error || new Error(`the ${name} channel closed before it opened`));
    const onMessage = () => { if (app.error) finish(app.error); };
    const timer = setTimeout(() => finish(new ChannelTimeout(
      `the home server did not open the ${name} channel within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
    if (ch.readyState === "open") return finish(null);
    ch.addEventListener("open", onOpen);
    ch.addEventListener("close", onClose);
    ch.addEventListener("message", onMessage);
  });
}

/** Requests by id over an AppChannel, each with its own handler. */
export class FramedChannel {
  constructor(app) {
    this.app = app;
    this.nextId = 1;
    this.handlers = new Map();
    this.onerror = null; // channel-level errors (ERR id 0, {"op":"error"})
    this.onclose = null;
    app.listen({
      message: (data) => this._message(data),
      status: (s) => { if (s.op === "error" && this.onerror) this.onerror(new AppError(s)); },
      close: () => {
        for (const h of [...this.handlers.values()]) h({ type: ERR, id: 0, body: { code: "closed", message: "the connection closed" } });
        this.handlers.clear();
        if (this.onclose) this.onclose();
      },
    });
  }

  get bufferedAmount() { return this.app.bufferedAmount; }
  writable() { return this.app.writable(); }

  _message(data) {
    let frame;
    try { frame = decode(data); } catch (e) { console.warn("bad frame", e.message); return; }
    const h = this.handlers.get(frame.id);
    if (h) h(frame);
    else if (frame.type === ERR && this.onerror) this.onerror(new AppError(frame.body));
  }

  send(type, id, body, data) {
    this.app.send(encode(type, id, body, data));
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
