// Client-side settings of the browser client.  (The coordinator's key and ICE
// servers come from the generated /config.js at the site root, not from here.)

export const settings = Object.freeze({
  // How long to wait for all ICE candidates before sending what we have.
  iceGatheringTimeoutMs: 5000,
  // Overall limit for waiting on the home server's answer (long-polls included).
  answerTimeoutMs: 60000,
  // How long POST /api/connect may hold for the answer (the coordinator caps it).
  connectWaitSeconds: 25,
  // How long the control channel may take to open once the answer is applied.
  channelOpenTimeoutMs: 15000,
  // How long the home server may take to reply to our hello.
  helloTimeoutMs: 10000,
  // A refusal that says to wait at most this long (a 429 rate-limited or locked-out
  // with Retry-After) is counted down and tried again by itself, once.
  autoRetryMaxSeconds: 10,
  // Keepalive pings on the control channel.
  pingIntervalMs: 20000,
  // localStorage key of the remembered servers.
  storageKey: "homechannel.servers.v1",
});

/** Format seconds for people: "45 seconds", "3 minutes". */
export function formatDuration(seconds) {
  seconds = Math.max(1, Math.ceil(seconds));
  if (seconds < 90) return `${seconds} second${seconds === 1 ? "" : "s"}`;
  const minutes = Math.ceil(seconds / 60);
  return `${minutes} minutes`;
}
