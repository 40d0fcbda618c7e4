"""The control channel: waiting for a datachannel to open, requests and replies
on ``control`` (``hello``, ``ping``; docs/protocol.md section 3), and what to say
when no network path opens one.
"""

import asyncio
import json
import time

from homechannel.errors import ProtocolError, RequestTimeout, Unavailable
from homechannel.rtc import webrtc


async def wait_open(channel, timeout):
    if channel.readyState == "open":
        return
    loop = asyncio.get_running_loop()
    opened = loop.create_future()

    def on_open():
        if not opened.done():
            opened.set_result(None)

    def on_close():
        if not opened.done():
            opened.set_exception(Unavailable("the datachannel closed before it opened"))

    channel.on("open", on_open)
    channel.on("close", on_close)
    try:
        await asyncio.wait_for(opened, timeout)
    except asyncio.TimeoutError:
        raise Unavailable(no_path_advice(timeout)) from None
    finally:
        channel.remove_listener("open", on_open)
        channel.remove_listener("close", on_close)


def path_line(pc):
    """``path: <local>/<remote> over <family>``: candidate types of the pair in use
    (host, srflx, prflx: direct; relay: through TURN) and its IP family."""
    return "path: " + webrtc.describe_path(pc)


def no_path_advice(timeout):
    """What to do when ICE found no path (the datachannel did not open)."""
    return (f"no network path to the home server was found within {timeout:g} s: this "
            "network and the home network are probably behind NATs or firewalls that only "
            "a relay can cross. Ask the coordinator's operator to add a TURN relay (coturn "
            "with a shared secret, [turn] in the coordinator's config; coturn's UDP and TCP "
            "port 3478 and its relay ports must be open), or pass your own: --ice-server "
            "turn:HOST:3478?transport=udp --ice-username USER --ice-credential-file FILE")


async def control_request(channel, doc, reply_op, match=None, timeout=10.0):
    """Send *doc* on the control channel; return the first reply with op *reply_op*."""
    loop = asyncio.get_running_loop()
    reply = loop.create_future()

    def on_message(message):
        try:
            got = json.loads(message)
        except (TypeError, ValueError):
            return
        if not isinstance(got, dict) or reply.done():
            return
        if got.get("op") == reply_op and (match is None or match(got)):
            reply.set_result(got)
        elif got.get("op") == "error" and got.get("id", doc.get("id")) == doc.get("id"):
            reply.set_exception(ProtocolError(
                f"the home server refused {doc.get('op')!r}: {got.get('message', got)}"))

    channel.on("message", on_message)
    try:
        channel.send(json.dumps(doc))
        return await asyncio.wait_for(reply, timeout)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"no {reply_op!r} reply on the control channel "
                             f"within {timeout:g} s") from None
    finally:
        channel.remove_listener("message", on_message)


async def ping(channel, ident, timeout=10.0):
    """One control ping; returns the round-trip time in seconds."""
    start = time.monotonic()
    await control_request(channel, {"op": "ping", "id": ident}, "pong",
                          match=lambda d: d.get("id") == ident, timeout=timeout)
    return time.monotonic() - start
