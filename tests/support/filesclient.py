"""``Client``: the files app (``FilesSession``) on a ``FakeChannel``, its file work
run synchronously (``sync_thread``); requests are sent as frames and the frames
it answers are read back, for the files app's and the audit log's tests."""

from twisted.internet import defer

from homechannel.config import FilesApp
from homechannel.protocol import frames
from homechannel.server.apps import files
from homechannel.server.apps.channel import ChannelLink
from homechannel.testing.apps import FakeChannel


def sync_thread(f, *args):
    return defer.maybeDeferred(f, *args)


class Client:
    def __init__(self, root, high=1024 * 1024, low=256 * 1024, clock=None, uploads=None,
                 **config):
        """*clock* times idle uploads (none by default); *uploads* is shared with other
        clients (the home server's one ``Uploads``)."""
        self.channel = FakeChannel()
        self.link = ChannelLink(self.channel, high=high, low=low)
        self.session = files.FilesSession(FilesApp(roots=(str(root),), **config), self.link,
                                          reactor=None, defer_to_thread=sync_thread,
                                          uploads=uploads, clock=clock)
        self.channel.on("message", self.session.message_received)
        self.seen = 0

    def send(self, ftype, rid, body=None, data=b""):
        self.channel.receive(frames.encode(ftype, rid, body, data))

    def new_frames(self):
        out = self.channel.frames()[self.seen:]
        self.seen += len(out)
        return out

    def request(self, rid, body):
        self.send(frames.REQ, rid, body)
        return self.new_frames()

    def download(self, path, offset=0, limit=64 * 1024 * 1024):
        got = self.request(1, {"op": "download", "root": 0, "path": path, "offset": offset})
        while not got or got[-1].type not in (frames.END, frames.ERR):
            assert self.channel.sent_bytes < limit, f"the download of {path!r} does not end"
            self.channel.drain()
            got += self.new_frames()
        return got

    def upload(self, path, data, rid=2, chunk=frames.CHUNK, end=True, **extra):
        got = self.request(rid, {"op": "upload", "root": 0, "path": path, "size": len(data), **extra})
        if got[-1].type == frames.ERR:
            return got
        assert got[-1].type == frames.ACK and got[-1].body["window"] > 0
        for i in range(0, len(data), chunk):
            self.send(frames.DATA, rid, data=data[i:i + chunk])
        if end:
            self.send(frames.END, rid, {})
        return got + self.new_frames()
