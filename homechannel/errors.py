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
``docs/protocol.md`` ("Error codes") lists every code once.

:func:`to_response` maps these (and only these) to an HTTP status and JSON body,
and :func:`from_response` maps an answer back to the error: the one place for
both directions (``coordinator.web`` answers with it; a cluster's sessions carry
their errors between nodes with it).  Anything else the API meets is a bug and
becomes a 500 without a traceback on the wire.
"""

import math


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


def whole_seconds(value) -> int:
    """A wait in seconds as people and ``Retry-After`` want it: a whole number, at least 1."""
    return max(1, int(math.ceil(value)))


# What each HTTP status stands for, for :func:`from_response`.
_BY_STATUS = {cls.status: cls for cls in (
    BadRequest, Forbidden, NotFound, RequestTimeout, PayloadTooLarge, TooManyRequests,
    Unavailable)}
_FIELDS = ("error", "code", "retry_after")


def to_response(error: HomeChannelError) -> tuple:
    """``(status, body)`` of the HTTP API's answer for *error*: ``{"error": message,
    "code": code, **extra}``, with ``retry_after`` in whole seconds when the error has
    one (the ``Retry-After`` header carries the same number)."""
    doc: dict[str, object] = {"error": str(error) or error.code, "code": error.code}
    doc.update(error.extra)
    if error.retry_after is not None:
        doc["retry_after"] = whole_seconds(error.retry_after)
    return error.status, doc


def from_response(status: int, doc: dict) -> HomeChannelError:
    """The error that the answer ``(status, body)`` of :func:`to_response` stands for:
    the class of that status (``Unavailable`` for any other), message, code, wait and
    extra fields."""
    cls = _BY_STATUS.get(status, Unavailable)
    extra = {k: v for k, v in doc.items() if k not in _FIELDS}
    return cls(doc.get("error", ""), doc.get("code"), retry_after=doc.get("retry_after"),
               **extra)
