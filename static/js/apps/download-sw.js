// The download service worker (scope /js/apps/download/): streams a file the page
// receives over the datachannel to the browser's download manager, so a download of
// any size goes to disk without being held in memory (static/js/apps/savefile.js
// is the page's side).  Classic script; registered only by savefile.js.
//
// The page posts {op: "download", id, name, size} with a MessagePort, waits for
// {op: "ready"}, then navigates a hidden frame to /js/apps/download/<id>/<name>.  Over
// the port: page -> worker {op: "data", chunk} | {op: "close"} | {op: "abort", reason};
// worker -> page {op: "credit", desired} (how many more bytes the stream wants) and
// {op: "cancelled"} when the user cancels the download in the browser.
"use strict";

const HIGH_WATER = 8 * 1024 * 1024;
const pending = new Map(); // id -> {port, name, size}, until the frame fetches it

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("message", (event) => {
  const m = event.data;
  if (!m || m.op !== "download" || !event.ports[0] || typeof m.id !== "string") return;
  pending.set(m.id, { port: event.ports[0], name: String(m.name || "download"), size: m.size });
  event.ports[0].postMessage({ op: "ready" });
  // forget a download whose frame never came
  setTimeout(() => pending.delete(m.id), 60000);
});

function disposition(name) {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, "_");
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

function stream(d) {
  const port = d.port;
  return new ReadableStream({
    start(controller) {
      port.onmessage = (event) => {
        const m = event.data || {};
        if (m.op === "data") {
          controller.enqueue(new Uint8Array(m.chunk));
          port.postMessage({ op: "credit", desired: controller.desiredSize });
        } else if (m.op === "close") {
          controller.close();
          port.close();
        } else if (m.op === "abort") {
          controller.error(new Error(m.reason || "aborted"));
          port.close();
        }
      };
    },
    pull(controller) {
      port.postMessage({ op: "credit", desired: controller.desiredSize });
    },
    cancel() {
      port.postMessage({ op: "cancelled" });
      port.close();
    },
  }, new ByteLengthQueuingStrategy({ highWaterMark: HIGH_WATER }));
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const m = /\/download\/([A-Za-z0-9_-]{8,64})\//.exec(url.pathname);
  if (url.origin !== self.location.origin || !m) return;
  const d = pending.get(m[1]);
  if (!d) {
    event.respondWith(new Response("This download is no longer available.",
      { status: 404, headers: { "Content-Type": "text/plain; charset=utf-8" } }));
    return;
  }
  pending.delete(m[1]);
  const headers = {
    "Content-Type": "application/octet-stream",
    "Content-Disposition": disposition(d.name),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
  };
  if (Number.isSafeInteger(d.size) && d.size >= 0) headers["Content-Length"] = String(d.size);
  event.respondWith(new Response(stream(d), { headers }));
});
