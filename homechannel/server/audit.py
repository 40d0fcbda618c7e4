"""The home server's audit log: one line per login and per file operation.

Every line goes through the ``homechannel.audit`` logger namespace with named
fields, so an operator can filter it (``journalctl -u homechannel-server |
grep audit:``) or route it.  What the apps call is :func:`file_event`; the
UDP adapter calls :func:`login`.
"""

from twisted.logger import Logger

log = Logger(namespace="homechannel.audit")


def login(accepted, session, source, detail=""):
    """A login accepted by the home server, or refused by it or by the coordinator.

    *source* is the client address the coordinator saw (``"unknown"`` when the
    coordinator did not send it)."""
    if accepted:
        log.info("audit: login accepted, session {session}, source {source}",
                 session=session or "-", source=source or "unknown", audit="login",
                 result="accepted")
    else:
        log.warn("audit: login refused, session {session}, source {source}: {detail}",
                 session=session or "-", source=source or "unknown", detail=detail,
                 audit="login", result="refused")


def file_event(op, root, path, **fields):
    """A file operation that happened: upload, download, rename, delete (and mkdir)."""
    extra = "".join(f", {k} {{{k}}}" for k in sorted(fields))
    log.info("audit: file {op} {root}:{path}" + extra, op=op, root=root, path=path,
             audit="file", **fields)
