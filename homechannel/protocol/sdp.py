"""The SDP our clients produce, and nothing else: one WebRTC datachannel section and
exactly one sha-256 fingerprint (:func:`fingerprint`).  The home server checks every
offer with it before it proves or answers anything, and both clients check the
answer with it (``connect.check_answer``, ``static/js/connect.js``).  Pure.
"""

import re

from homechannel.errors import ProtocolError

MAX_SDP = 16 * 1024            # bytes of an offer or answer SDP (ASCII)

_SDP_TEXT = re.compile(r"\A[\x20-\x7e\r\n\t]*\Z")
# A CR not followed by LF: aiortc (str.splitlines) would end a line there and we would not.
_LONE_CR = re.compile(r"\r(?!\n)")
_MEDIA = re.compile(r"\Am=application [0-9]{1,5} (?:UDP|TCP)/DTLS/SCTP webrtc-datachannel\Z")
_ANY_FINGERPRINT = re.compile(r"\A\s*a\s*=\s*fingerprint\b", re.IGNORECASE)
_FINGERPRINT = re.compile(r"\Aa=fingerprint:(sha-256) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})\Z",
                          re.IGNORECASE)


def _lines_at(sdp: str, lower: str, needle: str, first: bool = False) -> list[str]:
    """The lines of *sdp* (without their LF or CRLF) in which *lower* (``sdp.lower()``)
    has *needle* (a leading LF: the line after it), each once; and the first line if
    *first*."""
    lines = []
    skip = 1 if needle.startswith("\n") else 0
    at = 0 if first else lower.find(needle)
    while at >= 0:
        begin = sdp.rfind("\n", 0, at + skip) + 1
        end = sdp.find("\n", begin)
        if end < 0:
            end = len(sdp)
        line = sdp[begin:end]
        lines.append(line[:-1] if line.endswith("\r") else line)
        at = lower.find(needle, end)
    return lines


def fingerprint(sdp: object, what: str = "offer") -> str:
    """Check that *sdp* has the only shape our clients produce; return its fingerprint.

    DTLS stacks (aiortc, browsers) check the peer's certificate against the
    fingerprints the SDP attaches to the media section they use, in any hash
    algorithm and any letter case.  So the shape is strict: ASCII text of at
    most MAX_SDP bytes, exactly one media section, a WebRTC datachannel
    (``m=application <port> UDP/DTLS/SCTP webrtc-datachannel``), and exactly
    one ``a=fingerprint`` attribute in the whole SDP (counted in any case and
    spacing, at session or media level), which must be
    ``a=fingerprint:sha-256 <32 hex pairs>``.  Returns that fingerprint in
    upper case; raises ProtocolError saying what is wrong.
    """
    if not isinstance(sdp, str) or not sdp:
        raise ProtocolError(f"the {what} SDP is missing")
    if len(sdp) > MAX_SDP:
        raise ProtocolError(f"the {what} SDP is larger than {MAX_SDP} bytes")
    if not _SDP_TEXT.match(sdp) or _LONE_CR.search(sdp):
        raise ProtocolError(f"the {what} SDP must be ASCII text with CRLF or LF line ends")
    # Only the lines that can matter are cut out (splitting an offer into all of its
    # lines cost more than the rest of these checks together).
    lower = sdp.lower()
    media = _lines_at(sdp, lower, "\nm=", lower.startswith("m="))
    if len(media) != 1:
        raise ProtocolError(f"the {what} SDP must have exactly one media section, "
                            f"not {len(media)}")
    if not _MEDIA.match(media[0]):
        raise ProtocolError(f"the {what} SDP's media section must be a WebRTC datachannel "
                            "(m=application ... UDP/DTLS/SCTP webrtc-datachannel)")
    found = [line for line in _lines_at(sdp, lower, "fingerprint")
             if _ANY_FINGERPRINT.match(line)]
    if len(found) != 1:
        raise ProtocolError(f"the {what} SDP must carry exactly one a=fingerprint "
                            f"attribute, not {len(found)}")
    m = _FINGERPRINT.match(found[0])
    if not m or not found[0].startswith("a=fingerprint:"):
        raise ProtocolError(f"the {what} SDP's fingerprint must be "
                            "'a=fingerprint:sha-256 <32 hex pairs>'")
    return m.group(2).upper()
