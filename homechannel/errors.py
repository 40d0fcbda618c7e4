"""The one exception hierarchy of HomeChannel.

Every error a user or a peer can cause is a :class:`HomeChannelError`.  The
HTTP layer maps these (and only these) to status codes in one place
(``homechannel.coordinator.web``); anything else is a bug and becomes a 500
without a traceback on the wire.
"""


class HomeChannelError(Exception):
    """Base class.  ``str(e)`` is a message a person can act on."""

    status = 500


class ConfigError(HomeChannelError):
    """The configuration is missing, unreadable or inconsistent."""


class KeyFileError(ConfigError):
    """An identity or password key file is unreadable, malformed or mismatched."""


class ProtocolError(HomeChannelError):
    """Bytes from the network do not parse.  Always a counted drop, never a crash."""

    status = 400


class AuthenticationError(HomeChannelError):
    """A signature, MAC, proof or AEAD tag did not verify."""

    status = 403


class BadRequest(HomeChannelError):
    status = 400


class Forbidden(HomeChannelError):
    status = 403


class NotFound(HomeChannelError):
    status = 404


class RequestTimeout(HomeChannelError):
    status = 408


class PayloadTooLarge(HomeChannelError):
    status = 413


class TooManyRequests(HomeChannelError):
    status = 429

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(HomeChannelError):
    status = 503


class CapacityError(Unavailable):
    """A capped table is full."""
