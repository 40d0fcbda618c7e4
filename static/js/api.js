// The coordinator's HTTPS API.  Every response is verified against the
// coordinator key from /config.js before it is believed (docs/protocol.md §2).

import { b64uDecode, responseSignatureMessage, verify, importPublicKey, parseServerId } from "./crypto.js";

export class ApiError extends Error {
  /** fields: the refusal's other fields (e.g. a 429's "scope"; docs/protocol.md). */
  constructor(status, code, message, retryAfter = null, fields = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.fields = fields;
  }
}

export class SignatureError extends Error {}

export class Coordinator {
  constructor(coordinatorKeyText, base = "") {
    this.base = base;
    this.keyPromise = importPublicKey(parseServerId(coordinatorKeyText));
  }

  /** fetch, verify the signature over (path, raw body), parse JSON. */
  async request(method, path, body, signal) {
    const init = { method, headers: {}, cache: "no-store", signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(this.base + path, init);
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "Cannot reach the coordinator. Check your internet connection.");
    }
    const raw = new Uint8Array(await response.arrayBuffer());
    const sigText = response.headers.get("X-HomeChannel-Signature");
    if (sigText === null && response.status >= 400) {
      // A refusal without the coordinator's signature comes from something in between
      // (a reverse proxy's 429 or 502): nothing in it is used, and it is not an attack alarm.
      throw new ApiError(response.status, "unsigned-refusal",
        `The coordinator's address answered HTTP ${response.status} without the coordinator's ` +
        "signature: a proxy in front of it refused the request. Try again in a minute; if it " +
        "persists, tell the coordinator's operator.");
    }
    const signedPath = new URL(response.url || this.base + path, location.href).pathname;
    let ok = false;
    try {
      ok = !!sigText && await verify(await this.keyPromise, b64uDecode(sigText),
        responseSignatureMessage(signedPath, raw));
    } catch (e) {
      ok = false;
    }
    if (!ok) {
      throw new SignatureError("The coordinator's response is not signed by its key. " +
        "Someone may be interfering with the connection; do not continue.");
    }
    let doc;
    try {
      doc = JSON.parse(new TextDecoder().decode(raw));
    } catch (e) {
      throw new ApiError(response.status, "bad-response", "The coordinator sent a malformed response.");
    }
    if (!response.ok) {
      const retry = doc.retry_after ?? Number(response.headers.get("Retry-After")) ?? null;
      throw new ApiError(response.status, doc.code || "error", doc.error || `HTTP ${response.status}`,
        Number.isFinite(retry) && retry > 0 ? retry : null,
        doc && typeof doc === "object" ? doc : {});
    }
    return { status: response.status, doc };
  }

  lookup(serverId, signal) {
    return this.request("GET", `/api/servers/${encodeURIComponent(serverId)}`, undefined, signal);
  }

  /** The first step of a connect when the coordinator has TURN (lookup's "turn"): the proof
   * without the offer; resolves to {session, ticket, ice_servers} (a TURN credential in them). */
  prove(body, signal) {
    return this.request("POST", "/api/prove", body, signal);
  }

  /** POST the connect request; with waitSeconds > 0 the coordinator holds the response until
   * the home server's answer arrives (200, status "answered") or the wait ends (202). */
  connect(body, waitSeconds = 0, signal) {
    const query = waitSeconds > 0 ? `?wait=${Math.round(waitSeconds)}` : "";
    return this.request("POST", `/api/connect${query}`, body, signal);
  }

  poll(sessionId, signal) {
    return this.request("GET", `/api/sessions/${encodeURIComponent(sessionId)}`, undefined, signal);
  }
}
