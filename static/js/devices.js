// Device tokens (localStorage): after a sign-in the home server gives this browser a signed
// token; later connects present it so that this browser keeps its own sign-in budget while
// strangers guess (docs/security.md).  It grants nothing by itself: the password is still
// needed for every connection.  The password is never stored.

const KEY = "homechannel.devices.v1";

function load() {
  try {
    const doc = JSON.parse(localStorage.getItem(KEY) || "{}");
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
    localStorage.setItem(KEY, JSON.stringify(doc));
  } catch (e) {
    // Storage full or disabled: the next sign-in uses the password path; nothing breaks.
  }
}
