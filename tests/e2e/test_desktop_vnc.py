"""The desktop app against a real VNC server (Xtigervnc): the RFB banner
arrives through the datachannel byte pipe, and the pipe carries the client's
answer back.  Runs inside tests/netns-run."""

import asyncio

import pytest

import services
from homechannel.config import DesktopApp, ServerApps
from homechannel.server.apps import AppHost
from homechannel.testing.apps import ClientChannel, connect_pair, private_reactor


@pytest.fixture
def vnc():
    with services.xtigervnc() as (port, _display):
        yield port


def test_rfb_banner_through_the_pipe(tmp_path, vnc):
    apps = ServerApps(desktop=DesktopApp(endpoint=f"127.0.0.1:{vnc}"))

    async def main():
        with private_reactor() as reactor:
            host = AppHost(apps, "S", str(tmp_path), reactor)
            client, server, _ = await connect_pair(host)
            try:
                ch = ClientChannel.open(client, "app:desktop:1")
                await ch.opened()
                status = await ch.recv_json()
                assert status == {"op": "open", "port": vnc}
                banner = await ch.recv()
                assert banner.startswith(b"RFB 003.00"), banner
                ch.channel.send(banner)  # echo the version back, as a client does
                security = await ch.recv()
                assert security[0] >= 1 and 1 in security[1:]  # "None" offered
                ch.channel.close()
                await asyncio.wait_for(ch.closed, 10)
            finally:
                await client.close()
                await server.close()

    asyncio.run(asyncio.wait_for(main(), 60))
