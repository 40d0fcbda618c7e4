// The browser's side of the WebRTC connection: one peer connection, a
// "control" datachannel, all ICE candidates gathered before the offer is
// sent (the home server does not trickle either).

import { sdpFingerprint } from "./connect.js";
import { offerHash } from "./crypto.js";

export class StepTimeout extends Error {}

export function createPeer(iceServers) {
  const pc = new RTCPeerConnection({ iceServers: iceServers || [] });
  const control = pc.createDataChannel("control", { ordered: true });
  return { pc, control };
}

/** createOffer, setLocalDescription, wait for ICE gathering to complete
 * (or the timeout: then use what we have).  Returns {sdp, fingerprint, digest}: the SDP as
 * sent, its single sha-256 fingerprint and its SHA-256 (what the proof binds). */
export async function makeOffer(pc, timeoutMs) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    function onCandidate(event) {
      if (!event.candidate) done();
    }
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
  });
  const sdp = pc.localDescription.sdp;
  return { sdp, fingerprint: sdpFingerprint(sdp), digest: await offerHash(sdp) };
}

export async function applyAnswer(pc, sdp) {
  await pc.setRemoteDescription({ type: "answer", sdp });
}

/** Resolve when *channel* opens; reject on close/failure or after timeoutMs. */
export function waitOpen(pc, channel, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (channel.readyState === "open") return resolve();
    const timer = setTimeout(() => finish(new StepTimeout("The channel did not open in time.")), timeoutMs);
    function finish(error) {
      clearTimeout(timer);
      channel.removeEventListener("open", onOpen);
      channel.removeEventListener("close", onClose);
      pc.removeEventListener("connectionstatechange", onState);
      if (error) reject(error); else resolve();
    }
    function onOpen() { finish(null); }
    function onClose() { finish(new Error("The channel closed before it opened.")); }
    function onState() {
      if (pc.connectionState === "failed") {
        finish(new Error("No network path to the home server was found (ICE failed). If this " +
          "network or the home server's is behind a strict (symmetric) NAT or firewall, the " +
          "coordinator needs a TURN relay (README, \"Across the internet\")."));
      }
    }
    channel.addEventListener("open", onOpen);
    channel.addEventListener("close", onClose);
    pc.addEventListener("connectionstatechange", onState);
  });
}

/** Send a JSON message and wait for the first reply that satisfies *match*. */
export function request(channel, message, match, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      channel.removeEventListener("message", onMessage);
      reject(new StepTimeout("The home server did not reply in time."));
    }, timeoutMs);
    function onMessage(event) {
      if (typeof event.data !== "string") return;
      let doc;
      try { doc = JSON.parse(event.data); } catch (e) { return; }
      if (!match(doc)) return;
      clearTimeout(timer);
      channel.removeEventListener("message", onMessage);
      resolve(doc);
    }
    channel.addEventListener("message", onMessage);
    channel.send(JSON.stringify(message));
  });
}
