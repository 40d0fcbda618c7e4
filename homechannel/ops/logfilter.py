"""Loggers for libraries' protocol chatter.

Twisted Conch logs every SSH step (key exchange, services, channel requests)
at debug level through each protocol's ``_log``; twistd writes debug lines to
the normal log.  A class that sets ``_log = protocol_logger()`` keeps info and
above (connection lost, errors) and drops the debug lines."""

from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger, globalLogPublisher,
)


class _Global:
    """The global publisher, looked up at each event (tests may swap observers)."""

    def __call__(self, event):
        globalLogPublisher(event)


_QUIET = FilteringLogObserver(_Global(), [LogLevelFilterPredicate(LogLevel.info)])


def protocol_logger():
    return Logger(observer=_QUIET)
