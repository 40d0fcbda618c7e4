"""Libraries' log lines, in the daemons' log and no louder than useful.

Twisted Conch logs every SSH step (key exchange, services, channel requests)
at debug level through each protocol's ``_log``; twistd writes debug lines to
the normal log.  A class that sets ``_log = protocol_logger()`` keeps info and
above (connection lost, errors) and drops the debug lines.

aiortc, aioice and redis-py log through the standard library's ``logging``,
which twistd does not read: their warnings reached the log only as stray
``stderr`` lines, without a level.  :func:`capture_library_logging` (both
taps call it) sends them to ``twisted.logger`` instead, with their levels, in
the namespace of the library's logger, once each.  aioice logs every
candidate pair's state change at info level: it is kept out (warnings and
above only), as are every library's debug lines, unless asked for with the
environment variable ``HOMECHANNEL_DEBUG_LOGGERS`` (comma-separated logger
names, e.g. ``aioice`` or ``aiortc.rtcsctptransport``)."""

import logging
import os

from twisted.logger import (
    FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate, globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from homechannel.ops.logsafe import Logger

# The stdlib loggers captured, and the level each keeps unless debug is asked for.
LIBRARIES = {"aiortc": logging.INFO, "aioice": logging.WARNING, "redis": logging.INFO}
DEBUG_ENV = "HOMECHANNEL_DEBUG_LOGGERS"


@implementer(ILogObserver)
class _Global:
    """The global publisher, looked up at each event (tests may swap observers)."""

    def __call__(self, event):
        globalLogPublisher(event)


_QUIET = FilteringLogObserver(_Global(), [LogLevelFilterPredicate(LogLevel.info)])


def protocol_logger():
    return Logger(observer=_QUIET)


def twisted_level(levelno):
    """The ``twisted.logger`` level of a stdlib level number."""
    if levelno >= logging.CRITICAL:
        return LogLevel.critical
    if levelno >= logging.ERROR:
        return LogLevel.error
    if levelno >= logging.WARNING:
        return LogLevel.warn
    if levelno >= logging.INFO:
        return LogLevel.info
    return LogLevel.debug


class TwistedHandler(logging.Handler):
    """A stdlib ``logging`` handler that emits each record as a ``twisted.logger``
    event in the namespace of the record's logger: its text in the field ``line``
    (escaped, as every field: ``ops/logsafe.py``), and its exception, when there
    is one, as the event's failure, whose traceback Twisted prints below it."""

    def __init__(self, observer=None):
        super().__init__()
        self._observer = observer or _Global()

    def emit(self, record):
        try:
            fields = {"line": record.getMessage()}
            if record.exc_info and record.exc_info[1] is not None:
                _, value, tb = record.exc_info
                fields["log_failure"] = Failure(value, type(value), tb)
            Logger(namespace=record.name, observer=self._observer).emit(
                twisted_level(record.levelno), "{line}", **fields)
        except Exception:
            self.handleError(record)


def capture_library_logging(environ=os.environ, observer=None):
    """Send aiortc's, aioice's and redis-py's stdlib logging to ``twisted.logger``
    (*observer*, by default the global publisher), replacing what an earlier call
    installed.  The libraries' loggers stop propagating, so no line also goes to a
    handler of the root logger (or to stderr)."""
    debug = [name.strip() for name in environ.get(DEBUG_ENV, "").split(",") if name.strip()]
    while _DEBUGGED:
        logging.getLogger(_DEBUGGED.pop()).setLevel(logging.NOTSET)
    for name, level in LIBRARIES.items():
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, TwistedHandler)]:
            logger.removeHandler(handler)
        logger.addHandler(TwistedHandler(observer))
        logger.propagate = False
        logger.setLevel(level)
    for name in debug:
        if name.split(".")[0] in LIBRARIES:
            logging.getLogger(name).setLevel(logging.DEBUG)
            _DEBUGGED.add(name)


_DEBUGGED: set[str] = set()     # loggers an earlier call set to debug (reset by the next one)
