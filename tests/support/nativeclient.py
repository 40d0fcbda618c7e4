"""``python_connect``: the native client (``homechannel.client.session.connect``) opens a
session to a running pair's home server with the pair's password, from a thread of
its own, and closes it; returns the server's hello and the connection's state."""

import asyncio
import concurrent.futures

from daemons import PASSWORD

from homechannel.client import session


def python_connect(pair, devices=None):
    async def main():
        pc, control, hello = await session.connect(
            pair.url, pair.server_key.text, PASSWORD, pair.coordinator_key.text,
            advertise_addresses=("127.0.0.1",), timeout=30, connect_timeout=15,
            devices=devices)
        try:
            return hello, pc.connectionState
        finally:
            await pc.close()

    # A thread of its own: while Playwright's sync API is active, this thread
    # counts as running an asyncio loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(main(), 90)).result()
