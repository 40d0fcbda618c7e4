"""twistd plugins for HomeChannel.

Lazy: nothing is imported until a tap is actually used, so listing plugins
(``twistd --help``) never imports the reactor or the daemons' code.
"""

from twisted.application.service import ServiceMaker

coordinator = ServiceMaker(
    "HomeChannel coordinator",
    "homechannel.coordinator.tap",
    "Broker introductions between browsers and home servers (HTTPS + UDP).",
    "homechannel-coordinator",
)

server = ServiceMaker(
    "HomeChannel home server",
    "homechannel.server.tap",
    "Register with a coordinator and serve apps over WebRTC (needs --reactor=asyncio).",
    "homechannel-server",
)
