"""``ops/logfilter.py``: aiortc's, aioice's and redis-py's stdlib logging goes to
``twisted.logger`` (both taps call ``capture_library_logging``), with its level,
once, and aioice's chatter stays out unless asked for."""

import logging

import pytest
from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText

from homechannel.ops import logfilter

NAMES = ("aiortc", "aioice", "redis", "aioice.ice", "aiortc.rtcsctptransport")


@pytest.fixture
def captured():
    """``capture(environ)`` installs the capture into a list of twisted events; the
    stdlib loggers are put back as they were afterwards."""
    loggers = [logging.getLogger(n) for n in NAMES]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    events = []

    def capture(environ=None):
        logfilter.capture_library_logging(environ or {}, observer=events.append)
        return events

    yield capture
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


class RootRecorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def root():
    recorder = RootRecorder()
    logging.getLogger().addHandler(recorder)
    yield recorder
    logging.getLogger().removeHandler(recorder)


def test_library_lines_become_twisted_events_with_their_level(captured, root):
    events = captured()
    logging.getLogger("aiortc.rtcdtlstransport").warning("RTCDtlsTransport(%s) %s", "client",
                                                         "x")
    logging.getLogger("redis.connection").error("lost")
    logging.getLogger("aiortc").critical("bad")
    logging.getLogger("aiortc").info("informative")
    assert [(e["log_namespace"], e["log_level"], formatEvent(e)) for e in events] == [
        ("aiortc.rtcdtlstransport", LogLevel.warn, "RTCDtlsTransport(client) x"),
        ("redis.connection", LogLevel.error, "lost"),
        ("aiortc", LogLevel.critical, "bad"),
        ("aiortc", LogLevel.info, "informative"),
    ]
    assert root.records == [], "not also through the root logger (a duplicate line)"


def test_called_twice_still_one_line_each(captured):
    captured()
    events = captured()
    logging.getLogger("aiortc").warning("once")
    assert [formatEvent(e) for e in events] == ["once"]


def test_chatter_stays_out_unless_asked(captured):
    events = captured()
    logging.getLogger("aioice.ice").info("Check CandidatePair(...) State.WAITING -> ...")
    logging.getLogger("aiortc.rtcsctptransport").debug("> DataChunk(...)")
    logging.getLogger("aioice.ice").warning("Consent to send expired")
    assert [formatEvent(e) for e in events] == ["Consent to send expired"]
    events.clear()
    captured({logfilter.DEBUG_ENV: "aioice, aiortc.rtcsctptransport"})
    logging.getLogger("aioice.ice").info("Check ...")
    logging.getLogger("aiortc.rtcsctptransport").debug("> DataChunk(...)")
    logging.getLogger("aiortc.rtcpeerconnection").debug("not asked for")
    assert [(formatEvent(e), e["log_level"]) for e in events] == [
        ("Check ...", LogLevel.info), ("> DataChunk(...)", LogLevel.debug)]
    events.clear()
    captured()                          # asked no more: back to quiet
    logging.getLogger("aioice.ice").info("Check ...")
    logging.getLogger("aiortc.rtcsctptransport").debug("> DataChunk(...)")
    assert events == []


def test_a_traceback_is_kept(captured):
    """The exception goes with the event as its failure: Twisted prints the traceback
    under the (escaped) line, each of its lines indented."""
    events = captured()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("redis").exception("command failed")
    (event,) = events
    assert formatEvent(event) == "command failed" and event["log_failure"].check(ValueError)
    text = formatEventAsClassicLogText(event)
    assert "command failed\n\tTraceback" in text and "ValueError: boom" in text


def test_a_library_line_cannot_forge_another(captured):
    """A library's message with a peer's text in it (an SDP line, a candidate, a
    Redis reply) stays one line.  How this was shown to fail: with the line
    emitted through twisted.logger's own Logger, the forged line stood alone."""
    events = captured()
    logging.getLogger("aiortc").warning("bad SDP %r%s", "x", "\nFORGED audit: accepted\x1b[2K")
    (event,) = events
    text = formatEventAsClassicLogText(event)
    assert text.count("\n") == 1 and "\\nFORGED audit: accepted\\x1b[2K" in text


@pytest.mark.parametrize("levelno, level", [
    (logging.DEBUG, LogLevel.debug), (logging.INFO, LogLevel.info),
    (logging.WARNING, LogLevel.warn), (logging.ERROR, LogLevel.error),
    (logging.CRITICAL, LogLevel.critical), (logging.INFO + 5, LogLevel.info),
    (logging.ERROR + 1, LogLevel.error), (1, LogLevel.debug),
])
def test_levels_map(levelno, level):
    assert logfilter.twisted_level(levelno) == level
