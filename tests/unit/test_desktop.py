"""The desktop app when no VNC server listens on its port: a clear error, then the
channel closes.  (Against a real VNC server: test_desktop_vnc.py.)"""

import asyncio

from helpers import free_tcp_port
from homechannel.config import DesktopApp, ServerApps
from homechannel.server.apps import AppHost
from homechannel.testing.apps import ClientChannel, connect_pair, private_reactor


def test_no_vnc_server_is_a_clear_error(tmp_path, monkeypatch):
    """Nothing listens on the desktop's port: a clear error, then the home server
    closes the channel (after a grace period, shortened here)."""
    from homechannel.server.apps import channel

    monkeypatch.setattr(channel, "CLOSE_GRACE", 0.3)
    apps = ServerApps(desktop=DesktopApp(endpoint=f"127.0.0.1:{free_tcp_port()}"))

    async def main():
        with private_reactor() as reactor:
            client, server, _ = await connect_pair(AppHost(apps, "S", str(tmp_path), reactor))
            try:
                ch = ClientChannel.open(client, "app:desktop:1")
                await ch.opened()
                err = await ch.recv_json()
                assert err["op"] == "error" and err["code"] == "connect-failed"
                assert "VNC server" in err["message"]
                await asyncio.wait_for(ch.closed, 10)
            finally:
                await client.close()
                await server.close()

    asyncio.run(asyncio.wait_for(main(), 60))
