"""The home server's audit log: one line per login and per file operation.

Every line goes through the ``homechannel.audit`` logger namespace with named
fields, so an operator can filter it (``journalctl -u homechannel-server |
grep audit:``) or route it.  The files app passes each request's outcome
through :func:`file_request`; the UDP adapter calls :func:`login`.
"""

from twisted.python.failure import Failure

from homechannel.ops.logsafe import Logger

log = Logger(namespace="homechannel.audit")


def login(accepted, session, source, detail=""):
    """A login accepted by the home server, or refused by it or by the coordinator.

    *source* is the client address the coordinator saw (``"unknown"`` when the
    coordinator did not send it)."""
    if accepted:
        log.info("audit: accepted login, session {session}, source {source}",
                 session=session or "-", source=source or "unknown", audit="login",
                 result="accepted")
    else:
        log.warn("audit: refused login, session {session}, source {source}: {detail}",
                 session=session or "-", source=source or "unknown", detail=detail,
                 audit="login", result="refused")


AUDITED_FILE_OPS = {"upload", "download", "rename", "delete", "mkdir"}


def file_request(result, op, body):
    """A files request finished (``addBoth``): one line for the audited operations,
    done or refused; *result* is passed through unchanged."""
    if op in AUDITED_FILE_OPS and isinstance(body, dict):
        fields = {"root": body.get("root"), "path": str(body.get("path"))[:512]}
        detail = ""
        if op == "rename":
            detail = ", to {to_root}:{to}"
            fields.update(to_root=body.get("toRoot", body.get("root")),
                          to=str(body.get("to"))[:512])
        elif op == "upload":
            detail = ", {size} bytes"
            fields["size"] = body.get("size")
        elif op == "download" and body.get("offset"):
            detail = ", from byte {offset}"
            fields["offset"] = body.get("offset")
        if isinstance(result, Failure):
            code = getattr(result.value, "code", None) or type(result.value).__name__
            log.warn("audit: file {op} refused: {root}:{path}" + detail + " ({code})",
                     op=op, code=code, audit="file", result="refused", **fields)
        else:
            log.info("audit: file {op} {root}:{path}" + detail, op=op, audit="file",
                     result="done", **fields)
    return result
