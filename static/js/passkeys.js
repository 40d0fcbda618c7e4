// Passkeys and invites in the browser (docs/security.md, "Passkeys and people").
//
// A passkey is this person's credential for one home server: the authenticator keeps the
// private key (and asks for a fingerprint, face or PIN: user verification); this browser
// keeps the token the home server issued for it and the credential's id (localStorage).
// A sign-in asks the authenticator to sign SHA-256("homechannel-passkey-v1" || session ||
// challenge || SHA-256(offer)): the coordinator checks the assertion with the public key
// in the token, the home server checks it again.  No password is involved.
//
// An invite link (#server=ID&invite=TOKEN&key=D) carries a one-time key: it signs one
// connect, on which this browser enrols a passkey with the rights the invite gives.

import * as hc from "./crypto.js";
import { loadStore, storeEntry } from "./devices.js";

const PASSKEYS = "homechannel.passkeys.v1";

/** This browser's passkey for *serverId*: {token, credential, origin, person} or null. */
export function getPasskey(serverId) {
  const entry = loadStore(PASSKEYS)[serverId];
  return entry && typeof entry.token === "string" && typeof entry.credential === "string"
    ? entry : null;
}

/** Keep (or with null, forget) *serverId*'s passkey entry.  Without storage the passkey
 * stays on the authenticator, unusable here: an invite enrols another. */
export function setPasskey(serverId, entry) {
  storeEntry(PASSKEYS, serverId, entry);
}

/** The origin a stored passkey was made for is not this page's (the coordinator moved to
 * another domain): the authenticator will not use it here. */
export function passkeyElsewhere(entry) {
  return entry && entry.origin && entry.origin !== location.origin ? entry.origin : null;
}

/** Ask the authenticator for an assertion over *challenge* (bytes) with *credential*
 * (base64url id): {credential, authenticator_data, client_data, signature} for the
 * connect request. */
export async function assertion(credential, challenge, timeoutMs = 60000) {
  const got = await navigator.credentials.get({ publicKey: {
    challenge, rpId: location.hostname, timeout: timeoutMs, userVerification: "required",
    allowCredentials: [{ type: "public-key", id: hc.b64uDecode(credential) }],
  } });
  const r = got.response;
  return { credential: hc.b64uEncode(new Uint8Array(got.rawId)),
    authenticator_data: hc.b64uEncode(new Uint8Array(r.authenticatorData)),
    client_data: hc.b64uEncode(new Uint8Array(r.clientDataJSON)),
    signature: hc.b64uEncode(new Uint8Array(r.signature)) };
}

/** Make a passkey with the home server's *options* (its passkey-options reply): the
 * registration to send back in passkey-register.  User verification required, ES256,
 * attestation "none". */
export async function register(options) {
  const made = await navigator.credentials.create({ publicKey: {
    challenge: hc.b64uDecode(options.challenge),
    rp: { id: options.rp.id, name: options.rp.name },
    user: { id: hc.b64uDecode(options.user.id), name: options.user.name,
      displayName: options.user.name },
    pubKeyCredParams: [{ type: "public-key", alg: -7 }],
    authenticatorSelection: { userVerification: "required", residentKey: "preferred" },
    attestation: "none", timeout: 120000,
  } });
  const id = hc.b64uEncode(new Uint8Array(made.rawId));
  return { id, rawId: id, type: "public-key", response: {
    clientDataJSON: hc.b64uEncode(new Uint8Array(made.response.clientDataJSON)),
    attestationObject: hc.b64uEncode(new Uint8Array(made.response.attestationObject)) } };
}

/** The invite in a link's fragment: {token, key} or null. */
export function inviteFromHash(hash) {
  const params = new URLSearchParams((hash || "").replace(/^#/, ""));
  const token = params.get("invite");
  const key = params.get("key");
  return token && key ? { token, key } : null;
}

/** The invite key as a CryptoKey (not extractable) from its private scalar and the
 * public key the invite token names. */
export async function inviteKey(publicRaw, privateScalar) {
  const jwk = { kty: "EC", crv: "P-256", ext: false, key_ops: ["sign"],
    d: privateScalar, x: hc.b64uEncode(publicRaw.slice(1, 33)),
    y: hc.b64uEncode(publicRaw.slice(33, 65)) };
  return crypto.subtle.importKey("jwk", jwk, { name: "ECDSA", namedCurve: "P-256" }, false,
    ["sign"]);
}
