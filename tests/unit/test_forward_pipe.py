"""Flow control of the native client's ``ForwardPipe`` (``homechannel forward``)
against a fake datachannel: reading stops above the high mark of buffered bytes and
resumes when the buffer drains; the channel's bytes go to the local side, and its
close closes it.  (End to end, through real daemons: test_forward.py.)"""

import os

import pytest


class FakeChannel:
    """Just enough of aiortc's RTCDataChannel: bufferedAmount only drains when told."""

    def __init__(self, label):
        self.label = label
        self.readyState = "open"
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.handlers = {}
        self.sent = bytearray()
        self.text = []

    def on(self, event, callback):
        self.handlers.setdefault(event, []).append(callback)

    def remove_listener(self, event, callback):
        self.handlers.get(event, []).remove(callback)

    def emit(self, event, *args):
        for callback in list(self.handlers.get(event, [])):
            callback(*args)

    def send(self, data):
        import asyncio
        import json

        if isinstance(data, str):
            self.text.append(data)
            port = json.loads(data)["port"]
            asyncio.get_running_loop().call_soon(
                self.emit, "message", json.dumps({"op": "open", "port": port}))
            return
        self.bufferedAmount += len(data)
        self.sent += data

    def drain(self):
        self.bufferedAmount = 0
        self.emit("bufferedamountlow")

    def close(self):
        if self.readyState != "closed":
            self.readyState = "closed"
            self.emit("close")


class FakePC:
    def __init__(self):
        self.channels = []

    def createDataChannel(self, label):
        self.channels.append(FakeChannel(label))
        return self.channels[-1]


class FakeWriter:
    def __init__(self):
        self.data = bytearray()
        self.closed = False
        self.transport = None

    def write(self, data):
        self.data += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass


def test_pipe_stops_reading_above_1_mib_buffered_and_resumes_on_low():
    import asyncio

    from homechannel.client import forward

    total = 8 * 1024 * 1024
    payload = os.urandom(total)

    async def main():
        pc = FakePC()
        pipe = forward.ForwardPipe(pc, 7, 2222)
        channel = pc.channels[0]
        assert channel.label == "app:forward:7"
        assert channel.bufferedAmountLowThreshold == forward.FORWARD_LOW
        await pipe.open(5)
        assert channel.text == ['{"op": "open", "port": 2222}']
        reader = asyncio.StreamReader(limit=2 ** 30)
        reader.feed_data(payload)
        reader.feed_eof()
        writer = FakeWriter()
        run = asyncio.ensure_future(pipe.run(reader, writer))
        pauses = 0
        while not run.done():
            await asyncio.sleep(0.02)
            if run.done():
                break
            # Stalled: the buffer is over the high mark and nothing more was read.
            assert forward.FORWARD_HIGH < channel.bufferedAmount <= \
                forward.FORWARD_HIGH + forward.FORWARD_CHUNK
            stalled = len(channel.sent)
            await asyncio.sleep(0.05)
            assert len(channel.sent) == stalled
            pauses += 1
            channel.drain()
        await run
        assert bytes(channel.sent) == payload
        assert pauses >= total // (forward.FORWARD_HIGH + forward.FORWARD_CHUNK) - 1
        # EOF on the local side closed the channel; and the local writer.
        assert channel.readyState == "closed" and writer.closed

    asyncio.run(asyncio.wait_for(main(), 30))


def test_pipe_channel_bytes_go_to_the_local_side_and_close_closes_it():
    import asyncio

    from homechannel.client import forward

    async def main():
        pc = FakePC()
        pipe = forward.ForwardPipe(pc, 1, 22)
        channel = pc.channels[0]
        await pipe.open(5)
        channel.emit("message", b"early")   # before run(): kept, written first
        reader = asyncio.StreamReader()     # the local side sends nothing, never EOF
        writer = FakeWriter()
        run = asyncio.ensure_future(pipe.run(reader, writer))
        await asyncio.sleep(0.01)
        channel.emit("message", b" and later")
        assert bytes(writer.data) == b"early and later"
        channel.emit("message", '{"op":"error","code":"backlog","message":"not reading"}')
        channel.close()                     # the server closes after an error
        with pytest.raises(forward.ForwardRefused, match="not reading"):
            await run
        assert writer.closed

    asyncio.run(asyncio.wait_for(main(), 10))
