"""``FakeAppHost``: a hand-written stand-in for the home server's ``AppHost`` that
speaks just enough of the control protocol (hello and ping) for the answerer's
tests and the native client's coordinator stand-in (``test_client.py serve``)."""

import json


class FakeAppHost:
    """Just enough of the control protocol: hello and ping."""

    def __init__(self, server_id="server-id", apps=("forward",)):
        self.server_id = server_id
        self.apps = list(apps)
        self.attached = []
        self.contexts = []
        self.refused = []
        self.fail = False
        self.gate = True

    def attach(self, pc, context=None):
        if self.fail:
            raise RuntimeError("app host broke")
        self.attached.append(pc)
        self.contexts.append(context)

        @pc.on("datachannel")
        def on_datachannel(channel):
            if self.gate and context is not None and not context.verify_peer():
                self.refused.append(channel.label)
                channel.close()
                return
            if channel.label != "control":
                return

            @channel.on("message")
            def on_message(message):
                doc = json.loads(message)
                if doc.get("op") == "hello":
                    reply = {"op": "hello", "server": self.server_id, "apps": self.apps}
                    if context is not None:
                        reply.update(context.hello_fields(doc))
                elif doc.get("op") == "ping":
                    reply = {"op": "pong", "id": doc.get("id")}
                else:
                    reply = {"op": "error", "message": "unknown op"}
                channel.send(json.dumps(reply))
