"""The control channel (label ``control``): UTF-8 JSON text messages."""

import json

from homechannel.ops.logsafe import Logger

log = Logger()

MAX_CONTROL = 16384


class ControlSession:
    def __init__(self, host, link, context=None):
        self.host = host
        self.link = link
        self.context = context

    def reply(self, body):
        self.link.send(json.dumps(body, separators=(",", ":")))

    def message_received(self, message):
        if isinstance(message, bytes) or len(message) > MAX_CONTROL:
            self.reply({"op": "error", "code": "protocol", "message": "control messages are JSON text"})
            return
        try:
            body = json.loads(message)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            log.debug("bad control message on {label}", label=self.link.label)
            self.reply({"op": "error", "code": "protocol", "message": 'expected a JSON object with "op"'})
            return
        op = body["op"]
        if op == "hello":
            reply = {"op": "hello", "server": self.host.server_id, "apps": self.host.app_list()}
            if self.context is not None:
                reply.update(self.context.hello_fields(body))
            self.reply(reply)
        elif op == "ping":
            self.reply({"op": "pong", "id": body.get("id")})
        else:
            self.reply({"op": "error", "code": "unknown-op", "message": f"unknown control operation {op!r}"})
