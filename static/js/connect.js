// The connect flow's rules, the browser twin of homechannel/protocol/connect.py (docs/protocol.md §2):
// the strict SDP shape, the device-path challenge, device tokens (bound to a device key), the
// answer checks and the DTLS certificate check.  DOM-free: runs in browsers and in node >= 20;
// tests/unit/test_connect_js.py checks it against vectors made by the Python module.

import * as hc from "./crypto.js";

export const SESSION_ID = /^[A-Za-z0-9_-]{22}$/;
export const MAX_SDP = 16 * 1024;
export const MAX_CLOCK_SKEW = 300;
export const DEVICE_ID_SIZE = 16;
export const MAX_DEVICE_TOKEN = 1024;

/** A check failed; code is the stable short name (docs/protocol.md, "Error codes"). */
export class CheckError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const SDP_TEXT = /^[\x20-\x7e\r\n\t]*$/;
// A CR not followed by LF: aiortc (str.splitlines) would end a line there and we would not.
const LONE_CR = /\r(?!\n)/;
const MEDIA = /^m=application [0-9]{1,5} (?:UDP|TCP)\/DTLS\/SCTP webrtc-datachannel$/;
const ANY_FINGERPRINT = /^\s*a\s*=\s*fingerprint\b/i;
const FINGERPRINT = /^a=fingerprint:(sha-256) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})$/i;

/** Check that *sdp* has the only shape HomeChannel accepts; return its sha-256 fingerprint
 * (upper case).  Exactly one media section, a WebRTC datachannel, and exactly one
 * a=fingerprint attribute in the whole SDP (any case or spacing), which must be sha-256. */
export function sdpFingerprint(sdp, what = "offer") {
  const bad = (message) => new CheckError("bad-sdp", message);
  if (typeof sdp !== "string" || !sdp) throw bad(`the ${what} SDP is missing`);
  if (sdp.length > MAX_SDP) throw bad(`the ${what} SDP is larger than ${MAX_SDP} bytes`);
  if (!SDP_TEXT.test(sdp) || LONE_CR.test(sdp)) {
    throw bad(`the ${what} SDP must be ASCII text with CRLF or LF line ends`);
  }
  const lines = sdp.split("\n").map((line) => (line.endsWith("\r") ? line.slice(0, -1) : line));
  const media = lines.filter((line) => line.slice(0, 2).toLowerCase() === "m=");
  if (media.length !== 1) {
    throw bad(`the ${what} SDP must have exactly one media section, not ${media.length}`);
  }
  if (!MEDIA.test(media[0])) {
    throw bad(`the ${what} SDP's media section must be a WebRTC datachannel ` +
      "(m=application ... UDP/DTLS/SCTP webrtc-datachannel)");
  }
  const found = lines.filter((line) => ANY_FINGERPRINT.test(line));
  if (found.length !== 1) {
    throw bad(`the ${what} SDP must carry exactly one a=fingerprint attribute, not ${found.length}`);
  }
  const m = FINGERPRINT.exec(found[0]);
  if (!m || !found[0].startsWith("a=fingerprint:")) {
    throw bad(`the ${what} SDP's fingerprint must be 'a=fingerprint:sha-256 <32 hex pairs>'`);
  }
  return m[2].toUpperCase();
}

/** The challenge a device-token holder makes itself: time (8 bytes, big-endian seconds) ||
 * 8 random bytes. */
export function deviceChallenge(nowSeconds, random = hc.randomBytes) {
  const out = new Uint8Array(16);
  new DataView(out.buffer).setBigUint64(0, BigInt(Math.trunc(nowSeconds)));
  out.set(random(8), 8);
  return out;
}

/** Parse and verify a device token (hcdev2) for the server with raw key serverRaw.
 * Resolves to {server, device, key, epoch, issued, expires}; rejects with
 * CheckError("bad-device"). */
export async function verifyDeviceToken(serverRaw, text, nowSeconds) {
  const bad = (message) => new CheckError("bad-device", message);
  if (typeof text !== "string" || text.length > MAX_DEVICE_TOKEN) throw bad("not a device token");
  const parts = text.split(".");
  if (parts.length !== 3 || parts[0] !== "hcdev2") throw bad("not a device token of this version");
  let payload;
  let signature;
  try {
    payload = hc.b64uDecode(parts[1]);
    signature = hc.b64uDecode(parts[2]);
  } catch (e) {
    throw bad("not a device token");
  }
  if (!await hc.verify(serverRaw, signature, hc.deviceTokenMessage(payload))) {
    throw bad("the device token is not signed by this home server");
  }
  let doc;
  let key;
  try {
    doc = JSON.parse(new TextDecoder().decode(payload));
    key = hc.b64uDecode(doc.key);
  } catch (e) {
    throw bad("malformed device token");
  }
  const ints = [doc.epoch, doc.iat, doc.exp].every((t) => Number.isInteger(t));
  if (doc.v !== 2 || typeof doc.server !== "string" || typeof doc.device !== "string" || !ints ||
      key.length !== hc.PUBLIC_KEY_SIZE || doc.device !== await hc.deviceId(key)) {
    throw bad("malformed device token");
  }
  if (doc.server !== hc.b64uEncode(serverRaw)) throw bad("the device token belongs to another server");
  if (!(doc.iat - MAX_CLOCK_SKEW <= nowSeconds && nowSeconds < doc.exp)) {
    throw bad("the device token has expired");
  }
  return { server: doc.server, device: doc.device, key, epoch: doc.epoch, issued: doc.iat,
    expires: doc.exp };
}

/** What the browser checks before it uses an answer (the long-poll result *doc*):
 * the echoed session, the answer's shape, the home server's signature over this session,
 * challenge, offer hash, both fingerprints, time and SDP, and the clock.  Resolves to the
 * answer's fingerprint; rejects with CheckError("server-signature" | "clock"). */
export async function checkAnswer(doc, { serverRaw, session, challenge, offerDigest, clientFingerprint,
  nowSeconds }) {
  const forged = (why) => new CheckError("server-signature", "The answer is not signed by the " +
    "home server you added, over this connection: it was altered on the way or someone is " +
    `impersonating the home server (${why}). Do not continue.`);
  if (!doc || doc.session !== session) throw forged("wrong session");
  if (!Number.isInteger(doc.time)) throw forged("no time");
  let serverFingerprint;
  let signature;
  try {
    serverFingerprint = sdpFingerprint(doc.answer, "answer");
    signature = hc.b64uDecode(doc.signature);
  } catch (e) {
    throw forged(e.message);
  }
  const message = hc.answerSignatureMessage(session, challenge, offerDigest, clientFingerprint,
    serverFingerprint, doc.time, doc.answer);
  if (!await hc.verify(serverRaw, signature, message)) throw forged("bad signature");
  if (!(Math.abs(doc.time - nowSeconds) < MAX_CLOCK_SKEW)) {
    throw new CheckError("clock", "The home server's answer is too old or its clock is wrong " +
      "(more than 5 minutes off). Check the clocks and try again.");
  }
  return serverFingerprint;
}

/** The sha-256 fingerprint of the DTLS certificate the peer presented, from
 * RTCPeerConnection.getStats(): the selected transport's remoteCertificateId.  null if the
 * stats do not say (yet). */
export function remoteFingerprintFromStats(stats) {
  const reports = [...stats.values()];
  const byId = new Map(reports.map((r) => [r.id, r]));
  const transport = reports.find((r) => r.type === "transport" && r.remoteCertificateId);
  const certificate = transport && byId.get(transport.remoteCertificateId);
  if (!certificate || String(certificate.fingerprintAlgorithm).toLowerCase() !== "sha-256") {
    return null;
  }
  return String(certificate.fingerprint).toUpperCase();
}

/** Resolve once the peer's certificate is the one the home server signed; reject with
 * CheckError("server-certificate") otherwise. */
export async function checkRemoteCertificate(pc, serverFingerprint) {
  let presented = null;
  for (let i = 0; i < 20 && presented === null; i++) {
    presented = remoteFingerprintFromStats(await pc.getStats());
    if (presented === null) await new Promise((r) => setTimeout(r, 50));
  }
  if (presented !== serverFingerprint) {
    throw new CheckError("server-certificate", "The home server presented a different " +
      "encryption certificate than the one it signed. Someone may be in the middle; the " +
      "connection was closed.");
  }
}
