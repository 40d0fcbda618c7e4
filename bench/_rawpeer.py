"""The raw datachannel reference of the file benchmarks: an aiortc peer and a bare
``RTCDataChannel`` in a Chromium page, with no app protocol on top.

The aiortc peer runs in a process of its own (``python -m bench._rawpeer``), so that
it can run in another network namespace than the benchmark (the home network of a
``tests/support/nat.py`` topology), and so that its CPU is not the benchmark's.  It
is set up as the home server sets up its peer connections
(``homechannel.rtc.webrtc``: the same factory, receive window and ICE fixes), and it
sends with the files app's flow control.  The benchmark talks to it with JSON lines
on its stdin and stdout::

    {"op": "answer", "offer": SDP, "ice": [URL...], "advertise": [IP...],
     "window": BYTES | null}                       -> {"answer": SDP}
    {"op": "down", "n": BYTES}                     -> {"sent": BYTES}  (all queued)
    {"op": "up", "n": BYTES}                       -> {"ready": true}, later {"received": BYTES}
    {"op": "sctp"}                                 -> aiortc's SCTP state (cwnd, srtt...)

:class:`RawChannel` is the benchmark's side (async Playwright).
"""

import asyncio
import json
import os
import sys
import time

MB = 1_000_000
CHUNK = 32768
HIGH = 1024 * 1024
LOW = 256 * 1024

# -- the page's side ----------------------------------------------------------------

RAW_PAGE = """
async (iceServers) => {
  const pc = new RTCPeerConnection({iceServers});
  const dc = pc.createDataChannel("raw");
  dc.binaryType = "arraybuffer";
  dc.bufferedAmountLowThreshold = %(low)d;
  window.__raw = {pc, dc, received: 0, waiters: []};
  dc.onmessage = (e) => {
    window.__raw.received += e.data.byteLength;
    for (const w of window.__raw.waiters) w();
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => {
    if (pc.iceGatheringState === "complete") r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
  });
  return pc.localDescription.sdp;
}""" % {"low": LOW}

RAW_OPEN = """(sdp) => window.__raw.pc.setRemoteDescription({type: 'answer', sdp}).then(() =>
  new Promise((resolve) => {
    const dc = window.__raw.dc;
    if (dc.readyState === "open") resolve(); else dc.addEventListener("open", resolve, {once: true});
  }))"""

RAW_RECEIVE = """(n) => new Promise((resolve) => {
  const r = window.__raw;
  const check = () => { if (r.received >= n) resolve(performance.now()); };
  r.waiters.push(check); check();
})"""

RAW_SEND = """async (n) => {
  const dc = window.__raw.dc, chunk = new Uint8Array(%(chunk)d);
  crypto.getRandomValues(chunk.subarray(0, 65536 > chunk.length ? chunk.length : 65536));
  for (let sent = 0; sent < n; sent += chunk.length) {
    if (dc.bufferedAmount > %(high)d)
      await new Promise((r) => dc.addEventListener("bufferedamountlow", r, {once: true}));
    dc.send(chunk);
  }
}""" % {"chunk": CHUNK, "high": HIGH}


class RawChannel:
    """A raw peer process (in the namespace *prefix* runs commands in) and a bare
    RTCDataChannel in a new page of *browser* (opened on *url*, same origin as the
    app).  *ice*: ICE server URLs for both; *advertise*: extra host addresses for the
    aiortc side; *window*: its SCTP receive window (None: the home server's)."""

    async def open(self, browser, url, prefix=(), ice=(), advertise=(), window=None):
        self.proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "bench._rawpeer",
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.page = page = await browser.new_page()
        await page.goto(url + "/healthz")
        offer = await page.evaluate(RAW_PAGE, [{"urls": u} for u in ice])
        answer = await self._ask({"op": "answer", "offer": offer, "ice": list(ice),
                                  "advertise": list(advertise), "window": window})
        await asyncio.wait_for(page.evaluate(RAW_OPEN, answer["answer"]), 30)
        self.page_target = 0
        return self

    async def _ask(self, request, timeout=60):
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read(timeout)

    async def _read(self, timeout=60):
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the raw peer exited")
        return json.loads(line)

    async def down(self, size):
        """aiortc -> Chromium, MB/s (the home server's flow control)."""
        self.page_target += size
        got = asyncio.ensure_future(self.page.evaluate(RAW_RECEIVE, self.page_target))
        t0 = time.perf_counter()
        # (the peer answers once all is queued: at 1 MB/s, 50 MB take longer than a minute)
        await self._ask({"op": "down", "n": size}, timeout=600)
        await asyncio.wait_for(got, 600)
        return size / (time.perf_counter() - t0) / MB

    async def up(self, size):
        """Chromium -> aiortc, MB/s."""
        await self._ask({"op": "up", "n": size})
        t0 = time.perf_counter()
        await self.page.evaluate(RAW_SEND, size)
        await self._read(600)
        return size / (time.perf_counter() - t0) / MB

    async def sctp(self):
        """The aiortc side's SCTP state (congestion window, RTT estimate...)."""
        return await self._ask({"op": "sctp"})

    async def close(self):
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
        await self.page.close()


# -- the aiortc peer (this module run as a program) -------------------------------------


async def peer():
    from aiortc import RTCSessionDescription

    from homechannel.rtc import icechecks, webrtc

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    pc = channel = None
    state = {"received": 0, "target": None}
    low = asyncio.Event()
    opened = loop.create_future()
    data = os.urandom(CHUNK)
    while line := await reader.readline():
        req = json.loads(line)
        if req["op"] == "answer":
            pc = webrtc.peer_connection(webrtc.ice_servers(req["ice"]))

            @pc.on("datachannel")
            def on_channel(ch):
                @ch.on("message")
                def on_message(m):
                    state["received"] += len(m)
                    if state["target"] is not None and state["received"] >= state["target"]:
                        state["target"] = None
                        reply({"received": state["received"]})

                ch.bufferedAmountLowThreshold = LOW
                ch.on("bufferedamountlow", low.set)
                if not opened.done():
                    opened.set_result(ch)

            await pc.setRemoteDescription(RTCSessionDescription(sdp=req["offer"], type="offer"))
            webrtc.prepare_gathering(pc, req["advertise"])
            icechecks.prompt_triggered_checks(pc)
            if req.get("window") is not None:
                webrtc.set_receive_window(pc, req["window"])
            else:
                webrtc.set_receive_window(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            reply({"answer": pc.localDescription.sdp})
        elif req["op"] == "down":
            channel = channel or await opened
            sent = 0
            while sent < req["n"]:
                if channel.bufferedAmount > HIGH:
                    low.clear()
                    await low.wait()
                channel.send(data)
                sent += CHUNK
            reply({"sent": sent})
        elif req["op"] == "up":
            state["target"] = state["received"] + req["n"]
            reply({"ready": True})
        elif req["op"] == "sctp":
            sctp = pc.sctp
            reply({k: getattr(sctp, k, None) for k in (
                "_cwnd", "_ssthresh", "_srtt", "_rttvar", "_rto", "_flight_size",
                "_advertised_rwnd", "_partial_bytes_acked")})
    if pc is not None:
        await pc.close()


if __name__ == "__main__":
    asyncio.run(peer())
