// The HomeChannel browser client: remembered servers, the connect flow
// (docs/protocol.md §2) and the control channel.  Apps UI: static/js/apps/index.js
// exports mountApps(container, {pc, control, apps, serverId}); see onConnected().

import { coordinatorKey, coordinatorUrl, iceServers } from "/config.js";
import { settings, formatDuration } from "./config.js";
import * as hc from "./crypto.js";
import { ApiError, Coordinator, SignatureError } from "./api.js";
import { CheckError, checkAnswer, checkRemoteCertificate, deviceChallenge,
  verifyDeviceToken } from "./connect.js";
import { deviceKey, enrolment, forgetDevice, getDeviceToken, setDeviceToken } from "./devices.js";
import * as servers from "./servers.js";
import { applyAnswer, createPeer, makeOffer, request, StepTimeout, waitOpen } from "./webrtc.js";
import { confirmAction } from "./apps/ui.js";

const $ = (id) => document.getElementById(id);

const STEPS = [
  ["lookup", "Looking up the server"],
  ["password", "Checking the password"],
  ["gather", "Gathering candidates"],
  ["wait", "Waiting for the home server"],
  ["open", "Opening the channel"],
];

/** A failure the user can act on; kind is a stable short name (tests, styling).
 * A refusal with a wait (retryAfter, seconds) also has its message in parts: the
 * reason, then "Try again in ..." (or a countdown), then a note. */
export class ConnectError extends Error {
  constructor(kind, message, { retryAfter = null, step = null, reason = null, note = "" } = {}) {
    super(message);
    this.kind = kind;
    this.retryAfter = retryAfter;
    this.step = step;
    this.reason = reason;
    this.note = note;
  }
}

/** A refusal that says to wait *seconds*: "<reason> Try again in <wait>.< note>". */
function waitError(kind, reason, seconds, note = "") {
  const wait = seconds ? formatDuration(seconds) : "a while";
  return new ConnectError(kind, `${reason} Try again in ${wait}.${note ? " " + note : ""}`,
    { retryAfter: seconds, reason, note });
}

// The coordinator's API: this origin, or (a copy of the client hosted elsewhere) the
// coordinatorUrl its own config.js names (docs/security.md, "Hosting the client yourself").
const api = new Coordinator(coordinatorKey, (coordinatorUrl || "").replace(/\/+$/, ""));

// The server the connect form is for, and the live connection (if any).
let current = null;      // {id, name, remembered}
let connection = null;   // {pc, control, serverId, passwordKey, closing, pingTimer}
let busy = false;
let pendingRetry = null; // the automatic retry being counted down: {timer, error, left}

// -- views ---------------------------------------------------------------------

function show(view) {
  if (view !== "connect") cancelRetry();
  for (const id of ["add-link", "servers", "connect", "session"]) $(id).hidden = id !== view;
  // the session view takes the whole window (apps.css)
  document.body.classList.toggle("in-session", view === "session");
}

function setSessionHeading(connected, name) {
  $("session-status").textContent = connected ? "Connected" : "Disconnected";
  $("session-status").classList.toggle("lost", !connected);
  $("session-prep").textContent = connected ? "to" : "from";
  $("session-name").textContent = name;
}

function renderServers() {
  const list = $("server-list");
  list.replaceChildren();
  const all = servers.listServers();
  $("no-servers").hidden = all.length > 0;
  $("add-manual").open = all.length === 0;
  for (const server of all) {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = server.name;
    const small = document.createElement("small");
    small.textContent = shortId(server.id);
    open.append(small);
    open.addEventListener("click", () => openConnect({ ...server, remembered: true }));
    const badge = document.createElement("span");
    badge.className = "badge";
    li.append(open, badge);
    showOnline(badge, server);
    const forget = document.createElement("button");
    forget.type = "button";
    forget.textContent = "Forget";
    forget.setAttribute("aria-label", `Forget ${server.name}`);
    forget.addEventListener("click", async () => {
      const ok = await confirmAction(`Forget ${server.name}?`, "This browser will no longer list " +
        "this server, and forgets its sign-in token and key for it. The home server itself is " +
        "not changed (remove the device there with 'homechannel devices revoke'); its connect " +
        "link adds it again.",
        "Forget");
      if (ok) {
        servers.forgetServer(server.id);
        await forgetDevice(server.id);     // its sign-in token and this browser's key
        renderServers();
      }
    });
    li.append(forget);
    list.append(li);
  }
  show("servers");
}

// Online state of remembered servers: one signed lookup per server, remembered for
// a while (the coordinator rate-limits lookups per source; the list re-renders often).
const ONLINE_TTL_MS = 60000;
const onlineCache = new Map();  // id -> {at, promise}

function lookupOnline(id) {
  const cached = onlineCache.get(id);
  if (cached && Date.now() - cached.at < ONLINE_TTL_MS) return cached.promise;
  const promise = api.lookup(id).then(({ doc }) => (doc.online ? "online" : "offline"), () => "unknown");
  onlineCache.set(id, { at: Date.now(), promise });
  return promise;
}

const ONLINE_TEXT = { checking: "Checking…", online: "Online", offline: "Offline", unknown: "Status unknown" };

function showOnline(badge, server) {
  const set = (state) => {
    badge.dataset.state = state;
    badge.textContent = ONLINE_TEXT[state];
    badge.setAttribute("aria-label", `${server.name}: ${ONLINE_TEXT[state]}`);
  };
  set("checking");
  lookupOnline(server.id).then(set);
}

function shortId(id) {
  return id.length > 20 ? `${id.slice(0, 10)}…${id.slice(-8)}` : id;
}

function openConnect(server) {
  cancelRetry();
  current = server;
  $("connect-name").textContent = server.name;
  $("connect-id").textContent = server.id;
  $("username").value = server.id;  // lets password managers tell servers apart
  $("steps").hidden = true;
  hideError();
  setBusy(false);
  show("connect");
  $("password").focus();
}

function offerToAdd(id) {
  $("add-link-id").textContent = id;
  $("add-link-name").value = "Home server";
  show("add-link");
  $("add-link-name").focus();
  $("add-link-name").select();
}

function resetSteps() {
  const ol = $("steps");
  ol.replaceChildren();
  for (const [key, label] of STEPS) {
    const li = document.createElement("li");
    li.dataset.step = key;
    li.dataset.state = "pending";
    li.textContent = label;
    ol.append(li);
  }
  ol.hidden = false;
}

function setStep(key) {
  let reached = false;
  for (const li of $("steps").children) {
    if (li.dataset.step === key) {
      li.dataset.state = "active";
      li.setAttribute("aria-current", "step");
      reached = true;
    } else {
      li.removeAttribute("aria-current");
      li.dataset.state = reached ? "pending" : "done";
    }
  }
}

function failStep(kind) {
  // The coordinator checks the answer when the offer is posted; show it where it belongs.
  const blame = kind === "wrong-password" ? "password" : null;
  let reached = false;
  for (const li of $("steps").children) {
    if (blame ? li.dataset.step === blame : li.dataset.state === "active") {
      li.dataset.state = "failed";
      reached = true;
    } else if (reached) {
      li.dataset.state = "pending";
    }
    li.removeAttribute("aria-current");
  }
}

function showError(error) {
  const box = $("connect-error");
  box.replaceChildren();
  const p = document.createElement("p");
  p.textContent = error.message;
  box.append(p);
  if (error.deviceNote) {
    // The device path was refused first, and the password path was tried by itself.
    const why = document.createElement("p");
    why.className = "device-note";
    why.textContent = error.deviceNote.replace(/, so it signed in with the password( and was enrolled again| instead)?\./,
      "; the password was tried instead.");
    box.append(why);
  }
  box.dataset.kind = error.kind || "error";
  delete box.dataset.retrying;
  box.hidden = false;
}

function hideError() {
  $("connect-error").hidden = true;
  $("connect-error").replaceChildren();
}

function setBusy(value) {
  busy = value;
  $("connect-button").disabled = value;
  $("password").disabled = value;
  $("connect-button").textContent = value ? "Connecting…" : "Connect";
}

// -- errors ----------------------------------------------------------------------

/** "all N session slots are in use: connected 75 s; connecting 2 s" from a busy
 * refusal's fields {slots, sessions: [{state, age}]} (oldest first); null without them. */
function slotsInUse(fields) {
  const sessions = Array.isArray(fields.sessions) ? fields.sessions : null;
  if (!sessions || !Number.isInteger(fields.slots)) return null;
  const parts = sessions.slice(0, 3).map((s) =>
    `${s.state === "connected" ? "connected" : "connecting"} ` +
    `${Number.isInteger(s.age) ? s.age : 0} s`);
  const more = Math.max(fields.slots, sessions.length) - parts.length;
  if (more > 0 && parts.length) parts.push(`${more} more`);
  return `all ${fields.slots} session slots are in use` + (parts.length ? `: ${parts.join("; ")}` : "");
}

function explain(error) {
  if (error instanceof ConnectError) return error;
  if (error instanceof SignatureError) {
    return new ConnectError("coordinator-signature", "The coordinator's response is not signed " +
      "by the coordinator's key, so it cannot be trusted. Someone may be interfering with " +
      "your connection. Do not continue on this network.");
  }
  if (error instanceof CheckError) return new ConnectError(error.code, error.message);
  if (error instanceof ApiError) {
    switch (error.code) {
      case "wrong-password":
        return new ConnectError("wrong-password", "Wrong password. Check it and try again.");
      case "offline":
        return new ConnectError("offline", "The home server is offline. Make sure it is " +
          "running and connected to the internet, then try again.");
      case "locked-out":
        return waitError("locked-out", error.fields.scope === "device"
          ? "Too many wrong passwords from this browser." : "Too many wrong passwords from " +
          "your network.", error.retryAfter);
      case "rate-limited":
        // scope "server": the home server's own budget (strangers' guesses) is spent
        return waitError("rate-limited", "Too many attempts.", error.retryAfter,
          error.fields.scope === "server" ? "(Someone may be guessing this server's " +
            "password; browsers that signed in before are not affected.)" : "");
      case "bad-proof":
        return new ConnectError("bad-proof", "The home server refused the connection: it " +
          "could not confirm the password. If the password was changed on the home server, " +
          "use the new one.");
      case "unknown-challenge":
        return new ConnectError("refused", "The home server did not recognise this attempt. " +
          "Try again.");
      case "busy": {
        // the home server says what holds its session slots: fields "slots" and
        // "sessions" (docs/protocol.md, "Error codes"), never parsed out of the message
        const held = slotsInUse(error.fields);
        if (held) {
          return new ConnectError("busy", `The home server is busy: ${held}. Close a ` +
            "HomeChannel tab that is still open, or try again later.");
        }
        return new ConnectError("busy", "The home server (or the coordinator) is busy. " +
          "Try again in a minute.");
      }
      case "timeout":
        return new ConnectError("timeout", "The home server did not answer in time. Check " +
          "that it is running, then try again.");
      case "relay-failed":
        return new ConnectError("relay-failed", "The coordinator could not reach the home " +
          "server. Try again in a moment.");
      case "network":
      case "unsigned-refusal":
        return new ConnectError(error.code, error.message);
      default:
        return new ConnectError(error.code || "error", `The connection failed: ${error.message}`);
    }
  }
  if (error instanceof StepTimeout) return new ConnectError("timeout", error.message);
  console.warn("connect failed", error);
  return new ConnectError("error", `The connection failed: ${error.message || error}`);
}

// -- the connect flow ------------------------------------------------------------------

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One attempt: returns {pc, control, hello} with the control channel open and checked.
 * With a device token the challenge is one this browser makes (no coordinator challenge) and
 * the device key signs the connect.  When the coordinator has TURN ("turn" in the lookup),
 * the proof comes first (POST /api/prove): the relay credential comes only then, before the
 * candidates are gathered.  The hello enrols this browser's device key. */
async function attempt(server, passwordKeyPromise, device, keyPromise) {
  const serverRaw = hc.parseServerId(server.id);
  setStep("lookup");
  let { doc } = await api.lookup(server.id);
  if (!doc.online) throw new ApiError(404, "offline", "offline");
  const lookupIce = Array.isArray(doc.ice_servers) ? doc.ice_servers : iceServers;
  // Without TURN the ICE servers are the lookup's: gathering starts now, in parallel with
  // the password derivation.
  let peer = doc.turn ? null : createPeer(lookupIce);
  let offerPromise = peer ? makeOffer(peer.pc, settings.iceGatheringTimeoutMs) : null;
  if (offerPromise) offerPromise.catch(() => {});
  try {
    const session = hc.newSessionId();
    let challenge;
    if (device) {
      challenge = deviceChallenge(Date.now() / 1000);
    } else {
      for (let i = 0; !doc.challenge && i < 3; i++) {
        await sleep(1000);  // the pool is being refilled
        ({ doc } = await api.lookup(server.id));
        if (!doc.online) throw new ApiError(404, "offline", "offline");
      }
      if (!doc.challenge) {
        throw new ConnectError("busy", "The home server has no fresh challenge right now. " +
          "Try again in a minute.");
      }
      challenge = hc.b64uDecode(doc.challenge);
    }
    const key = device ? await keyPromise : null;
    let ticket = null;
    if (!peer) {
      // The proof without the offer (answer, or the device key's signature): the signed
      // answer carries the ICE servers with a TURN credential minted for this connect.
      setStep("password");
      const body = { server: server.id, session, challenge: hc.b64uEncode(challenge) };
      if (device) {
        body.device = device;
        body.device_signature = hc.b64uEncode(await hc.sign(key.privateKey,
          hc.deviceStartMessage(session, challenge)));
      } else {
        body.answer = hc.b64uEncode(await hc.challengeAnswer(await passwordKeyPromise, challenge));
      }
      const { doc: proved } = await api.prove(body);
      ticket = proved.ticket;
      peer = createPeer(Array.isArray(proved.ice_servers) ? proved.ice_servers : lookupIce);
      offerPromise = makeOffer(peer.pc, settings.iceGatheringTimeoutMs);
    }
    const { pc, control } = peer;

    setStep("password");
    const passwordKey = await passwordKeyPromise;

    setStep("gather");
    const offer = await offerPromise;
    const proof = await hc.clientProof(passwordKey, session, challenge, offer.digest);
    const body = { server: server.id, session, challenge: hc.b64uEncode(challenge),
      proof: hc.b64uEncode(proof), offer: offer.sdp };
    if (ticket) body.ticket = ticket;
    if (device) {
      body.device = device;
      body.device_signature = hc.b64uEncode(await hc.sign(key.privateKey,
        hc.deviceOfferMessage(session, challenge, offer.digest)));
    } else if (!ticket) {
      body.answer = hc.b64uEncode(await hc.challengeAnswer(passwordKey, challenge));
    }

    setStep("wait");
    // The coordinator holds this request until the answer arrives (the usual case: one
    // request); a slow home server is waited for with long-polls.
    const deadline = Date.now() + settings.answerTimeoutMs;
    let { doc: result } = await api.connect(body, settings.connectWaitSeconds);
    while (result.status !== "answered") {
      if (Date.now() > deadline) {
        throw new ConnectError("timeout", "The home server did not answer in time. Check " +
          "that it is running, then try again.");
      }
      ({ doc: result } = await api.poll(session));
    }
    const serverFingerprint = await checkAnswer(result, { serverRaw, session, challenge,
      offerDigest: offer.digest, clientFingerprint: offer.fingerprint,
      nowSeconds: Date.now() / 1000 });

    setStep("open");
    await applyAnswer(pc, result.answer);
    await waitOpen(pc, control, settings.channelOpenTimeoutMs);
    // DTLS checked the certificate against the answer's fingerprint; check it ourselves too.
    await checkRemoteCertificate(pc, serverFingerprint);
    const hello = await request(control, {
      op: "hello", device: await enrolment(await keyPromise, session, serverRaw),
    }, (m) => m.op === "hello", settings.helloTimeoutMs);
    return { pc, control, hello };
  } catch (error) {
    if (peer) peer.pc.close();
    throw error;
  }
}

async function keepDeviceToken(server, hello, key) {
  if (typeof hello.device !== "string") return;
  try {
    const token = await verifyDeviceToken(hc.parseServerId(server.id), hello.device,
      Date.now() / 1000);
    if (hc.b64uEncode(token.key) !== hc.b64uEncode(key.publicRaw)) {
      throw new Error("the token is for another key");
    }
    setDeviceToken(server.id, hello.device);
  } catch (e) {
    console.warn("ignored a device token that does not verify:", e.message);
  }
}

/** Why this browser's device path was refused, for the note the session shows once the
 * password path got in (null: not a device-path refusal). */
function devicePathRefusal(error) {
  const code = error && error.code;
  const scope = error && error.fields && error.fields.scope;
  if (code === "bad-device") {
    return "This browser's sign-in token was not accepted (the password was changed, or " +
      "this browser was removed on the home server), so it signed in with the password and " +
      "was enrolled again.";
  }
  if ((code === "locked-out" || code === "rate-limited") &&
      (scope === "device" || scope === "devices")) {
    return (code === "locked-out" ? "This browser is locked out after wrong passwords"
      : "This browser's own sign-in budget is spent") + ", so it signed in with the password " +
      "instead.";
  }
  return null;
}

// -- a short wait, counted down and tried again once ----------------------------------

/** Count *error*'s wait down in the error box, then connect again with *passwordKey*
 * (no second key derivation), once: that attempt's refusal waits for a click.  Editing
 * the password, Cancel, Connect or leaving the form cancels it. */
function scheduleRetry(error, passwordKey) {
  cancelRetry();
  const box = $("connect-error");
  box.replaceChildren();
  const p = document.createElement("p");
  const count = document.createElement("span");
  count.setAttribute("aria-live", "off");   // the alert is read once, not every second
  p.append(`${error.reason} Trying again in `, count, " s…",
    error.note ? ` ${error.note}` : "");
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => cancelRetry({ focus: true }));
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(cancel);
  box.append(p, actions);
  box.dataset.kind = error.kind;
  box.dataset.retrying = "true";
  box.hidden = false;

  const retry = { timer: null, error, left: Math.ceil(error.retryAfter) };
  const tick = () => {
    if (retry.left <= 0) {
      pendingRetry = null;
      connect({ passwordKey, retryOnWait: false });
      return;
    }
    count.textContent = String(retry.left);
    retry.left -= 1;
    retry.timer = setTimeout(tick, 1000);
  };
  pendingRetry = retry;
  tick();
}

/** Stop a countdown; its refusal stays, with the wait that is left, for a click. */
function cancelRetry({ focus = false } = {}) {
  const retry = pendingRetry;
  if (!retry) return;
  pendingRetry = null;
  clearTimeout(retry.timer);
  const { kind, reason, note } = retry.error;
  showError(waitError(kind, reason, Math.max(1, retry.left + 1), note));
  if (focus) $("password").focus();
}

/** *retryOnWait*: a refusal with a short wait is counted down and tried again. */
async function connect({ password = null, passwordKey = null, retryOnWait = true } = {}) {
  if (pendingRetry) {
    clearTimeout(pendingRetry.timer);
    pendingRetry = null;
  }
  if (busy || !current) return;
  const server = current;
  setBusy(true);
  hideError();
  resetSteps();
  const serverRaw = hc.parseServerId(server.id);
  // PBKDF2 starts at once, in parallel with the lookup.
  const keyPromise = passwordKey ? Promise.resolve(passwordKey)
    : hc.derivePasswordKey(password, serverRaw);
  keyPromise.catch(() => {});
  // This browser's device key for the server (IndexedDB), in parallel with the rest.
  const devicePromise = deviceKey(server.id);
  devicePromise.catch(() => {});
  let note = null;
  try {
    let device = getDeviceToken(server.id);
    let link = null;
    for (let tries = 0; !link; tries++) {
      try {
        link = await attempt(server, keyPromise, device, devicePromise);
      } catch (error) {
        const code = error.code;
        const refused = device ? devicePathRefusal(error) : null;
        if (refused) {
          // The device path is refused or held: the password path, once, by itself.  (The
          // token is kept until that sign-in replaces it: a coordinator that altered the
          // offer makes a good token look refused.)
          device = null;
          note = refused;
        } else if (tries === 0 && (code === "stale-challenge" || code === "unknown-challenge")) {
          // A challenge someone else used first: fetch a fresh one, once.
        } else {
          throw error;
        }
        resetSteps();
      }
    }
    await keepDeviceToken(server, link.hello, await devicePromise);
    $("password").value = "";
    startSession(server, link, await keyPromise,
      Array.isArray(link.hello.apps) ? link.hello.apps : [], note);
  } catch (error) {
    const explained = explain(error);
    if (note) explained.deviceNote = note;
    failStep(explained.kind);
    if (retryOnWait && explained.reason && explained.retryAfter &&
        explained.retryAfter <= settings.autoRetryMaxSeconds) {
      const key = await keyPromise.catch(() => null);
      if (key) {
        setBusy(false);
        scheduleRetry(explained, key);
        return;
      }
    }
    setBusy(false);
    showError(explained);
    if (explained.kind === "wrong-password" || explained.kind === "bad-proof") {
      $("password").select();
      $("password").focus();
    }
    return;
  }
  setBusy(false);
}

// -- the session -------------------------------------------------------------------------

function startSession(server, link, passwordKey, apps, note = null) {
  const { pc, control } = link;
  connection = { pc, control, serverId: server.id, passwordKey, closing: false, pingTimer: null };
  const conn = connection;
  setSessionHeading(true, server.name);
  $("session-note").textContent = note || "";
  $("session-note").hidden = !note;
  $("dropped").hidden = true;
  $("disconnect-button").hidden = false;
  show("session");

  let pingId = 0;
  conn.pingTimer = setInterval(() => {
    if (control.readyState === "open") control.send(JSON.stringify({ op: "ping", id: ++pingId }));
  }, settings.pingIntervalMs);

  const dropped = () => {
    if (conn.closing || connection !== conn) return;
    conn.closing = true;
    clearInterval(conn.pingTimer);
    try { pc.close(); } catch (e) { /* already closed */ }
    setSessionHeading(false, server.name);
    $("dropped-text").textContent = `The connection to ${server.name} was lost.`;
    $("dropped").hidden = false;
    $("disconnect-button").hidden = true;
    $("reconnect-button").focus();
  };
  control.addEventListener("close", dropped);
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") dropped();
  });

  onConnected({ pc, control, apps, serverId: server.id });
}

/** Close the live connection at once (the home server frees its session slot as
 *  soon as the DTLS close arrives, rather than after the ICE consent timeout). */
function closeConnection() {
  const conn = connection;
  connection = null;
  if (conn) {
    conn.closing = true;
    clearInterval(conn.pingTimer);
    try { conn.control.close(); } catch (e) { /* ignore */ }
    try { conn.pc.close(); } catch (e) { /* ignore */ }
    conn.passwordKey = null;
  }
  return conn;
}

function disconnect() {
  closeConnection();
  $("apps").replaceChildren();
  $("session-tabs").replaceChildren();
  if (current) openConnect(current); else renderServers();
}

async function reconnect() {
  const conn = connection;
  connection = null;
  $("apps").replaceChildren();
  $("session-tabs").replaceChildren();
  openConnect(current);
  if (conn && conn.passwordKey) await connect({ passwordKey: conn.passwordKey });
}

/** Called once the control channel said hello.  Hands over to the apps UI. */
export async function onConnected({ pc, control, apps, serverId }) {
  const container = $("apps");
  container.replaceChildren();
  try {
    const module = await import("./apps/index.js");
    await module.mountApps(container, { pc, control, apps, serverId, tabsHost: $("session-tabs") });
  } catch (error) {
    // No apps UI installed (or it failed): at least say what the server offers.
    console.info("apps UI not available:", error && error.message);
    const p = document.createElement("p");
    p.textContent = apps.length ? "Apps on this server:" : "This server offers no apps.";
    const ul = document.createElement("ul");
    for (const app of apps) {
      const li = document.createElement("li");
      li.textContent = app.title || app.name;
      ul.append(li);
    }
    container.append(p, ul);
  }
}

// -- start ---------------------------------------------------------------------------------

function route() {
  const id = servers.serverIdFromHash(location.hash);
  if (id) {
    const known = servers.getServer(id);
    if (known) openConnect({ ...known, remembered: true });
    else offerToAdd(id);
  } else if (location.hash.includes("server=")) {
    renderServers();
    $("add-error").textContent = "The connect link is incomplete or damaged. Copy the whole " +
      "link the home server printed.";
    $("add-manual").open = true;
  } else {
    renderServers();
  }
}

function init() {
  if (typeof RTCPeerConnection === "undefined" || !globalThis.crypto || !globalThis.crypto.subtle) {
    $("unsupported").hidden = false;
    return;
  }

  $("add-link-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("add-link-id").textContent;
    const saved = servers.rememberServer(id, $("add-link-name").value);
    history.replaceState(null, "", location.pathname);
    openConnect({ ...saved, remembered: true });
  });
  $("add-link-skip").addEventListener("click", () => {
    openConnect({ id: $("add-link-id").textContent, name: "this server", remembered: false });
  });

  $("add-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("add-id").value.trim();
    const id = servers.serverIdFromHash(text.includes("#") ? text.slice(text.indexOf("#")) : "")
      || (servers.isValidServerId(text) ? text : null);
    if (!id) {
      $("add-error").textContent = "That is not a server id. Paste the connect link or the id " +
        "the home server printed.";
      return;
    }
    $("add-error").textContent = "";
    const saved = servers.rememberServer(id, $("add-name").value);
    $("add-id").value = "";
    openConnect({ ...saved, remembered: true });
  });

  $("connect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const password = $("password").value;
    if (password) connect({ password });
  });
  // A new password is not the one the countdown would try again with.
  $("password").addEventListener("input", () => cancelRetry());
  $("back-button").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname);
    renderServers();
  });
  $("disconnect-button").addEventListener("click", disconnect);
  $("reconnect-button").addEventListener("click", reconnect);
  $("home-link").addEventListener("click", (event) => {
    event.preventDefault();
    if (connection) return;
    history.replaceState(null, "", location.pathname);
    renderServers();
  });
  window.addEventListener("hashchange", () => { if (!connection && !busy) route(); });
  // A closed or reloaded tab frees its session on the home server at once.
  window.addEventListener("pagehide", () => { closeConnection(); });

  route();
}

init();
