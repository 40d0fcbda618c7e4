"""``ops/logsafe.py``: a field a peer chose can neither add a line to the log, nor
rewrite what a terminal shows, nor make the log lose the event; and every logger of
both daemons is the escaping one.  (End to end, through the files app, a NOTICE and
X-Forwarded-For: ``tests/e2e/test_logsafe_daemons.py``.)"""

import importlib
import pkgutil
import re

from hypothesis import given, strategies as st
from twisted.logger import LogPublisher, Logger as TwistedLogger, textFileLogObserver
from twisted.python.logfile import LogFile

import homechannel
from homechannel.ops import logsafe
from homechannel.ops.logsafe import Logger, escape

FORGED = "\n2024-01-01T00:00:00+0000 [homechannel.audit#info] audit: accepted login\r\x1b[2K"


def unescape(text):
    """The inverse of ``escape`` (here only, to show that it loses nothing)."""
    def one(m):
        s = m.group()
        return {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t"}.get(s) or chr(int(s[2:], 16))
    return re.sub(r"\\\\|\\[nrt]|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}", one, text)


def test_controls_separators_overrides_surrogates_and_backslash_are_escaped():
    assert escape("a\nb\rc\td\\e") == "a\\nb\\rc\\td\\\\e"
    assert escape("\x00\x1b[2K\x7f\x85\x9b") == "\\x00\\x1b[2K\\x7f\\x85\\x9b"
    assert escape("\u2028\u2029\u202e\u2066\ud800") == "\\u2028\\u2029\\u202e\\u2066\\ud800"
    assert escape("ordinary name.txt, é, 日本, 🙂") == "ordinary name.txt, é, 日本, 🙂"


@given(st.text())
def test_escaped_text_is_one_printable_line_that_maps_back(text):
    out = escape(text)
    assert unescape(out) == text
    assert len(out.splitlines()) <= 1
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]", out)
    out.encode("utf-8")


def _log_file(tmp_path):
    log_file = LogFile.fromFullPath(str(tmp_path / "daemon.log"))
    return log_file, LogPublisher(textFileLogObserver(log_file))


class Sneaky:
    name = FORGED

    def __str__(self):
        return FORGED


def test_the_log_file_has_one_line_per_event_whatever_the_fields(tmp_path):
    """Text, an exception, an object whose ``str`` is hostile, ``!r`` and attribute
    access in the format, and a lone surrogate: each event is one line of the file
    and the forged line never stands alone.  How this was shown to fail: with
    twisted.logger's Logger the forged line was its own line of the file (after a
    tab) and the event with the lone surrogate was missing from the file."""
    log_file, publisher = _log_file(tmp_path)
    log = Logger(namespace="homechannel.audit", observer=publisher)
    log.info("audit: file upload {root}:{path}", root=0, path="up" + FORGED)
    log.warn("refused: {error}", error=ValueError(FORGED))
    log.info("object {thing} {thing!r} {thing.name}", thing=Sneaky())
    log.info("surrogate {path}", path="a\ud800b")
    log.info("numbers {n} {x:g} {none} {data}", n=3, x=1.5, none=None, data=b"\n")
    log_file.close()
    lines = (tmp_path / "daemon.log").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 6, lines
    assert not any(line.startswith(("\t", "2024-01-01")) or "\x1b" in line or "\r" in line
                   for line in lines)
    assert lines[0].endswith("audit: file upload 0:up\\n2024-01-01T00:00:00+0000 "
                             "[homechannel.audit#info] audit: accepted login\\r\\x1b[2K")
    assert lines[3].endswith("surrogate a\\ud800b")
    assert lines[4].endswith("numbers 3 1.5 None b'\\n'")


def test_numbers_stay_numbers_and_text_is_escaped_for_every_observer():
    seen = []
    Logger(observer=seen.append).info("{n} {t}", n=7, t="a\nb")
    assert seen[0]["n"] == 7 and seen[0]["t"] == "a\\nb"


def test_every_logger_in_both_daemons_escapes():
    """Every ``twisted.logger.Logger`` that a homechannel module or class holds is
    ``ops.logsafe.Logger``, so a new module cannot bring raw fields back.  How this
    was shown to fail: with ``server/apps/files.py`` importing twisted.logger's
    Logger again, this named ``homechannel.server.apps.files.log``."""
    found, raw = 0, []
    for info in pkgutil.walk_packages(homechannel.__path__, "homechannel."):
        if info.name.endswith(".__main__"):
            continue                    # running a program, not defining one
        module = importlib.import_module(info.name)
        holders = [(info.name, module)] + [
            (f"{info.name}.{name}", cls) for name, cls in vars(module).items()
            if isinstance(cls, type) and cls.__module__ == info.name]
        for where, holder in holders:
            for name, value in list(vars(holder).items()):
                if isinstance(value, TwistedLogger):
                    found += 1
                    if not isinstance(value, logsafe.Logger):
                        raw.append(f"{where}.{name}")
    assert found > 20 and raw == []
