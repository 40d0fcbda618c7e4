"""The one exception hierarchy and the one error vocabulary of HomeChannel.

Every error a user or a peer can cause is a :class:`HomeChannelError`.  Each
class has an HTTP ``status`` and a default ``code``: a short kebab-case name
that travels on every wire (the HTTPS API's ``{"error", "code"}``, the home
server's ANSWER payload ``{"error": code}``, and the datachannel apps' ERR
frames ``{"code", "message"}``).  A more specific code is given at the raise:

    raise Forbidden("wrong password", "wrong-password")
    raise TooManyRequests("slow down", "rate-limited", retry_after=30)
    raise PayloadTooLarge("upload too large", "too-large", maxUpload=limit)

Extra keyword arguments are fields that go with the error on the wire
(``retry_after`` is kept apart: the HTTP layer turns it into ``Retry-After``).
``docs/protocol.md`` ("Error codes") lists every code once.  The HTTP layer
maps these (and only these) to responses in one place
(``homechannel.coordinator.web``); anything else is a bug and becomes a 500
without a traceback on the wire.
"""


class HomeChannelError(Exception):
    """Base class.  ``str(e)`` is a message a person can act on."""

    status = 500
    code = "internal"

    def __init__(self, message="", code=None, *, retry_after=None, **extra):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.extra = extra

    def doc(self) -> dict:
        """``{"code", "message", **extra}``: the error as it travels in JSON."""
        body = {"code": self.code, "message": str(self) or self.code}
        body.update(self.extra)
        return body


class ConfigError(HomeChannelError):
    """The configuration is missing, unreadable or inconsistent."""

    code = "config"


class KeyFileError(ConfigError):
    """An identity or password key file is unreadable, malformed or mismatched."""

    code = "key-file"


class ProtocolError(HomeChannelError):
    """Bytes from the network do not parse.  Always a counted drop, never a crash."""

    status = 400
    code = "protocol"


class AuthenticationError(HomeChannelError):
    """A signature, MAC, proof or AEAD tag did not verify."""

    status = 403
    code = "unauthenticated"


class BadRequest(HomeChannelError):
    status = 400
    code = "bad-request"


class Forbidden(HomeChannelError):
    status = 403
    code = "forbidden"


class NotFound(HomeChannelError):
    status = 404
    code = "not-found"


class RequestTimeout(HomeChannelError):
    status = 408
    code = "timeout"


class PayloadTooLarge(HomeChannelError):
    status = 413
    code = "too-large"


class TooManyRequests(HomeChannelError):
    status = 429
    code = "rate-limited"


class Unavailable(HomeChannelError):
    status = 503
    code = "unavailable"


class CapacityError(Unavailable):
    """A capped table is full."""

    code = "busy"
