"""The coordinator's signed JSON API, as the native client calls it.

:class:`Coordinator` fetches with ``urllib.request`` in the default thread
executor (no dependency added; HTTPS uses the system's trust store), never
follows a redirect, and verifies the coordinator's signature over every response
(``X-HomeChannel-Signature``, docs/protocol.md section 2) before anything in it is
used.  A refusal with no signature at all comes from something in between (a
reverse proxy's 429 or 502) and is told as such (``unsigned-refusal``).
:func:`api_error` turns an error response into the matching
:class:`~homechannel.errors.HomeChannelError`, with its code.
"""

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request

from homechannel import crypto
from homechannel.errors import (
    AuthenticationError,
    Forbidden,
    ProtocolError,
    RequestTimeout,
    TooManyRequests,
    Unavailable,
)
from homechannel.protocol import connect as flow

MAX_RESPONSE = 256 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The coordinator never redirects: a redirect (to plain http, to another host)
    is refused, not followed, so the unsigned ``/config.js`` read on first use comes
    from the URL given and nowhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise Unavailable(f"{req.full_url} redirects ({code}) to {newurl}: refused (a "
                          "coordinator does not redirect; if it moved, use its new URL)",
                          "redirect")


_OPENER = urllib.request.build_opener(_NoRedirects)


class Coordinator:
    """The coordinator's JSON API; every response must carry its signature."""

    def __init__(self, url, key_raw, *, http_timeout=40.0):
        self.url = url.rstrip("/")
        self.key_raw = key_raw
        self.http_timeout = http_timeout
        self.verified = False       # a response verified with key_raw
        self._base_path = urllib.parse.urlsplit(self.url).path

    @staticmethod
    def _fetch(url, method="GET", body=None, timeout=40.0):
        """Blocking HTTP; returns (status, headers, body).  Run in a thread."""
        headers = {"Accept": "application/json", "User-Agent": "homechannel-client"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return response.status, response.headers, response.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers, e.read(MAX_RESPONSE + 1)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(f"cannot reach the coordinator at {url}: {reason}") from None

    async def fetch(self, path, method="GET", body=None, timeout=None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, self._fetch, self.url + path, method, body, timeout or self.http_timeout)

    async def call(self, path, doc=None, timeout=None):
        """GET (or POST *doc*) an API path; verify the signature; return (status, json)."""
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        status, headers, raw = await self.fetch(path, "GET" if doc is None else "POST", body,
                                                timeout)
        if len(raw) > MAX_RESPONSE:
            raise ProtocolError(f"the coordinator's response to {path} is too large")
        signature = headers.get(flow.SIGNATURE_HEADER)
        if signature is None and status >= 400:
            # A refusal with no signature comes from something in between (a reverse
            # proxy's 429 or 502, a load balancer's 503): nothing in it is used, but it
            # is told as what it is, not as an attack.
            raise api_error(status, {"error": UNSIGNED_REFUSAL_MESSAGE.format(status=status),
                                      "code": flow.UNSIGNED_REFUSAL}, path)
        try:
            if signature is None:
                raise AuthenticationError("no signature header")
            signed_path = self._base_path + urllib.parse.urlsplit(path).path
            crypto.verify(self.key_raw, crypto.b64u_decode(signature),
                          crypto.response_signature_message(signed_path, raw))
        except (AuthenticationError, ProtocolError):
            raise AuthenticationError(
                f"the coordinator's response to {path} is not signed by the coordinator key "
                f"{crypto.b64u_encode(self.key_raw)}: refusing it (wrong --coordinator-key, or "
                "someone between you and the coordinator changed the response)") from None
        self.verified = True
        try:
            result = json.loads(raw.decode("utf-8"))
            if not isinstance(result, dict):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(f"the coordinator's response to {path} is not a JSON object") \
                from None
        return status, result


UNSIGNED_REFUSAL_MESSAGE = (
    "HTTP {status} without the coordinator's signature: a reverse proxy or load balancer in "
    "front of the coordinator refused the request (try again later; if it persists, tell "
    "the coordinator's operator)")


def api_error(status, doc, context):
    """A coordinator error response as the matching HomeChannelError (with its code)."""
    message = doc.get("error") if isinstance(doc.get("error"), str) else f"HTTP {status}"
    code = doc.get("code") if isinstance(doc.get("code"), str) else None
    text = f"{context}: {message}" + (f" ({code})" if code else "")
    if status == 403:
        return Forbidden(text, code)
    if status == 408:
        return RequestTimeout(text, code)
    if status == 429:
        scope = doc.get("scope") if isinstance(doc.get("scope"), str) else None
        return TooManyRequests(text, code, retry_after=doc.get("retry_after"),
                               **({"scope": scope} if scope else {}))
    if status == 404 or status >= 500:
        return Unavailable(text, code)
    return ProtocolError(text, code)
