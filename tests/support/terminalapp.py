"""The terminal app driven over an in-memory datachannel pair, for its tests:
``run_terminal(tmp_path, port, body)`` opens a terminal session to an SSH server on
127.0.0.1:*port* and runs ``await body(Term, AppHost)``; ``Term`` reads the screen
(``wait_for``) and types."""

import asyncio

from homechannel.config import ServerApps, TerminalApp
from homechannel.protocol import frames
from homechannel.server.apps import AppHost
from homechannel.testing.apps import ClientChannel, connect_pair, private_reactor


class Term:
    def __init__(self, ch):
        self.ch = ch
        self.screen = b""
        self.frames = []

    async def wait_for(self, needle, timeout=15):
        deadline = asyncio.get_running_loop().time() + timeout
        while needle not in self.screen:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; screen: {self.screen[-500:]!r}")
            f = await self.ch.recv_frame(left)
            self.frames.append(f)
            if f.type == frames.DATA:
                self.screen += f.data
            elif f.type in (frames.ERR, frames.END):
                raise AssertionError(f"terminal ended: {f}; screen: {self.screen[-500:]!r}")

    def type(self, text):
        self.ch.send_frame(frames.DATA, 1, data=text.encode())


def run_terminal(tmp_path, port, body):
    apps = ServerApps(terminal=TerminalApp(host="127.0.0.1", port=port))

    async def main():
        with private_reactor() as reactor:
            host = AppHost(apps, "S", str(tmp_path / "state"), reactor)
            client, server, _ = await connect_pair(host)
            try:
                ch = ClientChannel.open(client, "app:terminal:1")
                await ch.opened()
                ch.send_frame(frames.REQ, 1, {"op": "open", "cols": 80, "rows": 24})
                await asyncio.wait_for(body(Term(ch), host), 60)
            finally:
                await client.close()
                await server.close()

    asyncio.run(main())
