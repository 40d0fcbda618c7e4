// This browser's device for each home server (docs/security.md, "Device tokens"): a key
// pair made here whose private half cannot be exported (IndexedDB keeps the CryptoKey as it
// is), and the token the home server issued to that key after a sign-in (localStorage).
// Later connects present the token, signed by the key, so this browser keeps its own
// sign-in budget while strangers guess; a copied token is useless without the key.  Neither
// grants anything by itself: the password is still needed for every connection, and is
// never stored.

import * as hc from "./crypto.js";

const TOKENS = "homechannel.devices.v2";
const DB_NAME = "homechannel";
const KEYS = "device-keys";

// Tokens of the first version were bound to no key: useless now.
try { localStorage.removeItem("homechannel.devices.v1"); } catch (e) { /* storage off */ }

function load() {
  try {
    const doc = JSON.parse(localStorage.getItem(TOKENS) || "{}");
    return doc && typeof doc === "object" && !Array.isArray(doc) ? doc : {};
  } catch (e) {
    return {};
  }
}

export function getDeviceToken(serverId) {
  const token = load()[serverId];
  return typeof token === "string" ? token : null;
}

export function setDeviceToken(serverId, token) {
  const doc = load();
  if (token) doc[serverId] = token; else delete doc[serverId];
  try {
    localStorage.setItem(TOKENS, JSON.stringify(doc));
  } catch (e) {
    // Storage full or disabled: the next sign-in uses the password path; nothing breaks.
  }
}

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(KEYS);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function run(mode, work) {
  return openDb().then((db) => new Promise((resolve, reject) => {
    const tx = db.transaction(KEYS, mode);
    const request = work(tx.objectStore(KEYS));
    tx.oncomplete = () => { db.close(); resolve(request.result); };
    tx.onerror = tx.onabort = () => { db.close(); reject(tx.error); };
  }));
}

/** This browser's key for the home server *serverId*: {privateKey, publicKey, publicRaw},
 * made on first use.  Where IndexedDB is not available (some private windows) a key lives
 * for this page only, and every sign-in uses the password path. */
export async function deviceKey(serverId) {
  let pair = null;
  try {
    pair = await run("readonly", (store) => store.get(serverId));
  } catch (e) {
    pair = null;
  }
  if (!pair || !(pair.privateKey instanceof CryptoKey)) {
    pair = await hc.generateDeviceKey();
    try {
      await run("readwrite", (store) => store.put(pair, serverId));
    } catch (e) {
      console.warn("cannot keep this browser's device key:", e && e.message);
    }
  }
  return { privateKey: pair.privateKey, publicKey: pair.publicKey,
    publicRaw: await hc.publicKeyRaw(pair) };
}

/** Forget this browser's device for *serverId*: its token and its key. */
export async function forgetDevice(serverId) {
  setDeviceToken(serverId, null);
  try {
    await run("readwrite", (store) => store.delete(serverId));
  } catch (e) {
    console.warn("cannot delete this browser's device key:", e && e.message);
  }
}

/** A name for this browser in 'homechannel devices list' ("Chromium on Linux"). */
export function deviceName() {
  const data = navigator.userAgentData;
  const brand = data && data.brands && data.brands.map((b) => b.brand)
    .find((b) => !/not.?a.?brand/i.test(b) && b !== "Chromium") ||
    (data && data.brands && data.brands.length ? "Chromium" : null);
  const platform = (data && data.platform) || navigator.platform || "";
  const browser = brand || (/Firefox\//.test(navigator.userAgent) ? "Firefox"
    : /Safari\//.test(navigator.userAgent) ? "Safari" : "A browser");
  return `${browser}${platform ? " on " + platform : ""}`.slice(0, 64);
}

/** The `device` field of the hello that enrols *key* on this signed-in *session*. */
export async function enrolment(key, session, serverRaw) {
  const signature = await hc.sign(key.privateKey, hc.deviceEnrolMessage(session, serverRaw));
  return { key: hc.b64uEncode(key.publicRaw), signature: hc.b64uEncode(signature),
    name: deviceName() };
}
