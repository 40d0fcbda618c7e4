"""Log lines a peer cannot forge: every field is escaped before it is logged.

Peers choose much of what the daemons log: file names and paths in the files
app's audit lines, the client address a coordinator (or a reverse proxy's
``X-Forwarded-For``) reports as ``source``, a NOTICE's reason, session and
device ids, channel labels, refusal reasons, the text of a library's error.
A line feed in any of them would write a line of the attacker's choosing
("audit: accepted login ...") into the log, and an escape sequence would
rewrite what a terminal shows of it.

:class:`Logger` (every module of both daemons uses it, in place of
``twisted.logger.Logger``) escapes each field of each event as it is emitted,
before any observer sees it: text with :func:`escape`; numbers, booleans,
``None`` and bytes (whose ``str`` is their escaped ``repr``) as they are; any
other object as the escaped text of its ``str``, so Twisted's own formatting of
``{name}``, ``{name!r}`` or ``{name.attribute}`` only ever meets escaped text.
Twisted's keys (``log_*``) are left alone: the format is a constant of our
code, never built from a peer's text, and a bug's traceback
(``log_failure``) is printed by Twisted with every line after the first
indented by a tab, so no line of it can pass for an event.

The escaping (:func:`escape`) keeps a line one line and keeps it readable:
C0 controls, DEL and C1 controls become ``\\n``, ``\\r``, ``\\t`` or ``\\xHH``;
the Unicode line and paragraph separators, the bidirectional overrides (which
can make a line read backwards) and lone surrogates (which cannot be written as
UTF-8, so a log file would lose the whole event) become ``\\uHHHH``; a
backslash becomes ``\\\\``, so the escaped text maps back to exactly one
original.  ``docs/security.md`` ("Logs a peer cannot forge") says why this
and not JSON lines.
"""

import re

from twisted.logger import Logger as _TwistedLogger
from twisted.python.reflect import safe_str

# Twisted's own event keys: set by the logger or by ``Logger.failure``, never a peer's.
_TWISTED_KEYS = frozenset({"log_logger", "log_level", "log_namespace", "log_source",
                           "log_format", "log_time", "log_failure", "log_trace"})

_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match):
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """*text* with every control character, separator, bidirectional override,
    lone surrogate and backslash written as an escape sequence: one printable
    line that maps back to exactly one original."""
    return _UNSAFE.sub(_escaped, text)


def safe_value(value):
    """A field's value as it may reach a log: see the module's docstring."""
    if value is None or isinstance(value, (bool, int, float, bytes)):
        return value
    return escape(value if isinstance(value, str) else safe_str(value))


class Logger(_TwistedLogger):
    """``twisted.logger.Logger`` whose events carry only escaped fields."""

    def emit(self, level, format=None, **kwargs):
        for key, value in kwargs.items():
            if key not in _TWISTED_KEYS:
                kwargs[key] = safe_value(value)
        super().emit(level, format, **kwargs)
