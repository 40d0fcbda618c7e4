// The browser twin of homechannel/crypto.py (see docs/protocol.md, "Common formats").
// WebCrypto only; runs in browsers and in node >= 20 (globalThis.crypto.subtle).
// tests/unit/test_crypto_js.py checks it against vectors computed by the Python module.

const subtle = globalThis.crypto.subtle;
const utf8 = new TextEncoder();

export const PBKDF2_ITERATIONS = 600000;
export const CHALLENGE_SIZE = 16;
export const PUBLIC_KEY_SIZE = 65;
export const SIGNATURE_SIZE = 64;

export class CryptoFormatError extends Error {}

// -- encodings ---------------------------------------------------------------

export function b64uEncode(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let bin = "";
  for (let i = 0; i < data.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function b64uDecode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new CryptoFormatError("not base64url");
  }
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function utf8Encode(text) {
  return utf8.encode(text);
}

export function concatBytes(...parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

export function randomBytes(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

/** A new session id: 22 base64url characters of 16 random bytes. */
export function newSessionId() {
  return b64uEncode(randomBytes(16));
}

// -- keys and signatures -----------------------------------------------------

/** The raw 65-byte public key a server id (or the coordinator key) stands for. */
export function parseServerId(text) {
  const raw = b64uDecode(text);
  if (raw.length !== PUBLIC_KEY_SIZE || raw[0] !== 4) {
    throw new CryptoFormatError("a server id is the base64url of a 65-byte P-256 point");
  }
  return raw;
}

export async function importPublicKey(raw) {
  return subtle.importKey("raw", raw, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
}

/** Verify a raw r||s ECDSA-P256-SHA256 signature; resolves to true/false. */
export async function verify(publicKey, signature, data) {
  if (!(publicKey instanceof CryptoKey)) {
    try {
      publicKey = await importPublicKey(publicKey);
    } catch (e) {
      return false;
    }
  }
  if (signature.length !== SIGNATURE_SIZE) return false;
  return subtle.verify({ name: "ECDSA", hash: "SHA-256" }, publicKey, signature, data);
}

// -- password, challenge, proof ----------------------------------------------

/** K = PBKDF2-HMAC-SHA256(password UTF-8, salt = raw server public key, 600000, 32 bytes). */
export async function derivePasswordKey(password, serverPublicRaw, iterations = PBKDF2_ITERATIONS) {
  if (iterations < PBKDF2_ITERATIONS) throw new Error("PBKDF2 needs at least 600000 iterations");
  const base = await subtle.importKey("raw", utf8.encode(password), "PBKDF2", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: serverPublicRaw, iterations }, base, 256);
  return new Uint8Array(bits);
}

export async function hmacSha256(key, data) {
  const k = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, data));
}

export async function sha256(data) {
  return new Uint8Array(await subtle.digest("SHA-256", data));
}

/** answer = HMAC(K, challenge) */
export async function challengeAnswer(passwordKey, challenge) {
  return hmacSha256(passwordKey, challenge);
}

/** expectedAnswer = SHA-256(answer) (what the home server gives the coordinator). */
export async function expectedAnswer(answer) {
  return sha256(answer);
}

const FINGERPRINT = /^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}$/;

/** A sha-256 DTLS fingerprint ("AB:CD:..." 32 hex pairs) in upper case. */
export function normalizeFingerprint(fp) {
  if (typeof fp !== "string" || !FINGERPRINT.test(fp)) {
    throw new CryptoFormatError("DTLS fingerprint must be a sha-256 fingerprint (32 hex pairs)");
  }
  return fp.toUpperCase();
}

/** SHA-256 of the offer SDP as sent (its UTF-8 bytes): what the proof binds. */
export async function offerHash(sdp) {
  return sha256(utf8.encode(sdp));
}

const PROOF_LABEL = utf8.encode("homechannel-proof-v2");

/** "homechannel-proof-v2" || session id (22) || challenge (16) || SHA-256(offer SDP) (32). */
export function proofMessage(sessionId, challenge, offerDigest) {
  if (typeof sessionId !== "string" || !/^[A-Za-z0-9_-]{22}$/.test(sessionId) ||
      challenge.length !== CHALLENGE_SIZE || offerDigest.length !== 32) {
    throw new CryptoFormatError("proof input: a 22-character session id, a 16-byte challenge " +
      "and a 32-byte offer hash");
  }
  return concatBytes(PROOF_LABEL, utf8.encode(sessionId), challenge, offerDigest);
}

/** proof = HMAC(K, proofMessage(...)): binds the password to this exact offer. */
export async function clientProof(passwordKey, sessionId, challenge, offerDigest) {
  return hmacSha256(passwordKey, proofMessage(sessionId, challenge, offerDigest));
}

/** What the home server signs over its answer (docs/protocol.md, "Common formats"). */
export function answerSignatureMessage(sessionId, challenge, offerDigest, clientFingerprint,
  serverFingerprint, timestamp, answerSdp) {
  return utf8.encode(["homechannel-answer-v2", sessionId, b64uEncode(challenge),
    b64uEncode(offerDigest), normalizeFingerprint(clientFingerprint),
    normalizeFingerprint(serverFingerprint), String(Math.trunc(timestamp)), answerSdp].join("\n"));
}

/** What a home server signs to issue a device token. */
export function deviceTokenMessage(payload) {
  return concatBytes(utf8.encode("homechannel-device-v2\n"), payload);
}

// -- the device key (docs/protocol.md, "Device keys") ------------------------------

/** A new device key: ECDSA P-256 whose private half cannot be exported (kept in IndexedDB,
 * where a CryptoKey survives as it is; script in the page can use it, never copy it). */
export async function generateDeviceKey() {
  return subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
}

/** The raw 65-byte public key of a key pair. */
export async function publicKeyRaw(keyPair) {
  return new Uint8Array(await subtle.exportKey("raw", keyPair.publicKey));
}

/** A device's id: base64url of the first 16 bytes of SHA-256 of its raw public key. */
export async function deviceId(publicRaw) {
  return b64uEncode((await sha256(publicRaw)).slice(0, 16));
}

/** ECDSA-P256-SHA256 with *privateKey*: raw r||s, 64 bytes. */
export async function sign(privateKey, data) {
  return new Uint8Array(await subtle.sign({ name: "ECDSA", hash: "SHA-256" }, privateKey, data));
}

function sessionBytes(sessionId) {
  if (typeof sessionId !== "string" || !/^[A-Za-z0-9_-]{22}$/.test(sessionId)) {
    throw new CryptoFormatError("a session id is 22 base64url characters");
  }
  return utf8.encode(sessionId);
}

function fixed(bytes, size, what) {
  if (!(bytes instanceof Uint8Array) || bytes.length !== size) {
    throw new CryptoFormatError(`${what} must be ${size} bytes`);
  }
  return bytes;
}

/** What the device key signs over a connect with an offer: label || session || challenge ||
 * SHA-256(offer). */
export function deviceOfferMessage(sessionId, challenge, offerDigest) {
  return concatBytes(utf8.encode("homechannel-device-offer-v1"), sessionBytes(sessionId),
    fixed(challenge, CHALLENGE_SIZE, "a challenge"), fixed(offerDigest, 32, "an offer hash"));
}

/** What the device key signs before the offer exists (the first step with TURN). */
export function deviceStartMessage(sessionId, challenge) {
  return concatBytes(utf8.encode("homechannel-device-start-v1"), sessionBytes(sessionId),
    fixed(challenge, CHALLENGE_SIZE, "a challenge"));
}

/** What the device key signs to enrol on a signed-in session: label || session || the home
 * server's raw public key. */
export function deviceEnrolMessage(sessionId, serverRaw) {
  return concatBytes(utf8.encode("homechannel-device-enrol-v1"), sessionBytes(sessionId),
    fixed(serverRaw, PUBLIC_KEY_SIZE, "a server key"));
}

/** What the coordinator signs over every HTTP response: path without query, raw body. */
export function responseSignatureMessage(path, body) {
  return concatBytes(utf8.encode("homechannel-response-v1\n" + path + "\n"),
    body instanceof Uint8Array ? body : new Uint8Array(body));
}
