"""A client device for tests: its key (what the browser keeps in IndexedDB and the
native client in a 0600 file), the tokens a home server issues to it, and the
signatures it makes over a connect (``crypto.device_offer_message`` and
``device_start_message``)."""

from homechannel import crypto
from homechannel.protocol import connect


class Device:
    def __init__(self, key=None):
        self.key = key or crypto.IdentityKey.generate()

    @property
    def id(self):
        return crypto.device_id(self.key.public_raw)

    def token(self, home, epoch=0, now=1_700_000_000, **kw):
        """A token *home* (an IdentityKey) issued to this device in *epoch*."""
        return connect.DeviceToken.issue(home, self.key.public_raw, epoch, now, **kw)

    def offer_signature(self, session, challenge, sdp):
        return self.key.sign(crypto.device_offer_message(session, challenge,
                                                         crypto.offer_hash(sdp)))

    def start_signature(self, session, challenge):
        return self.key.sign(crypto.device_start_message(session, challenge))

    def enrol(self, session, server_raw, name="test device"):
        """The ``device`` field of a hello that enrols this key."""
        return {"key": crypto.b64u_encode(self.key.public_raw), "name": name,
                "signature": crypto.b64u_encode(self.key.sign(
                    crypto.device_enrol_message(session, server_raw)))}


def policy(epoch, *devices):
    """The DevicePolicy a home server with these enrolled *devices* tells."""
    return connect.DevicePolicy(epoch, frozenset(d.id for d in devices))
