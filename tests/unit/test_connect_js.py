"""static/js/connect.js is a faithful twin of homechannel/protocol/connect.py.

Runs connect.js (with crypto.js) in node against vectors made by the Python
module: every SDP shape case is accepted or refused alike (with the same
fingerprint), answers signed in Python pass or fail the browser's checks alike
(session, shape, signature, clock), device tokens issued in Python verify in
JS (and tampered, expired or foreign ones do not), the device challenge carries
the time Python reads back, and the certificate check reads getStats() as
Chromium reports it.
"""

import json
import os
import shutil
import subprocess

import pytest

from homechannel import crypto

from homechannel.protocol import connect
from homechannel.protocol.sdp import MAX_SDP
from homechannel.protocol.sdp import fingerprint as sdp_fingerprint
from homechannel.errors import HomeChannelError

from helpers import REPO

JS = os.path.join(REPO, "static", "js")
NOW = 1_700_000_000

FP = ":".join(f"{i:02X}" for i in range(32))
FP2 = ":".join(f"{255 - i:02X}" for i in range(32))
SESSION_TOP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
MEDIA = ("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
         "a=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n")
SECOND_MEDIA = ("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
                "a=mid:1\r\n")
TAIL = "a=setup:actpass\r\na=sctp-port:5000\r\n"


def fp_line(value=FP, algorithm="sha-256", attr="a=fingerprint:"):
    return f"{attr}{algorithm} {value}\r\n"


def good(extra=""):
    return SESSION_TOP + MEDIA + fp_line() + TAIL + extra


# name -> SDP; the Python module is the reference for accepted/refused.
SDP_CASES = {
    "good": good(),
    "session-level fingerprint": SESSION_TOP + fp_line() + MEDIA + TAIL,
    "algorithm in upper case": SESSION_TOP + MEDIA + fp_line(algorithm="SHA-256") + TAIL,
    "lower-case hex": SESSION_TOP + MEDIA + fp_line(FP.lower()) + TAIL,
    "LF line ends": good().replace("\r\n", "\n"),
    "second media section after": good(SECOND_MEDIA + fp_line(FP2)),
    "second media section before, same mid": SESSION_TOP + MEDIA.replace("a=mid:0", "a=mid:0")
    + fp_line(FP2) + MEDIA + fp_line() + TAIL,
    "second media section, no fingerprint": good(SECOND_MEDIA),
    "audio media section": good().replace("m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                                          "m=audio 9 UDP/TLS/RTP/SAVPF 111"),
    "old sctpmap format": good().replace("UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP 5000"),
    "extra sha-1": good(fp_line("AB:CD", "sha-1")),
    "extra sha-384": good(fp_line(":".join(["AB"] * 48), "sha-384")),
    "extra sha-512": good(fp_line(":".join(["AB"] * 64), "sha-512")),
    "extra upper-case attribute": good(fp_line(FP2, attr="A=FINGERPRINT:")),
    "extra mixed-case attribute": good(fp_line(FP2, attr="a=FingerPrint:")),
    "only an upper-case attribute": SESSION_TOP + MEDIA + fp_line(attr="A=FINGERPRINT:") + TAIL,
    "spaced attribute": SESSION_TOP + MEDIA + fp_line(attr="a=fingerprint: ") + TAIL,
    "extra session-level fingerprint": SESSION_TOP + fp_line(FP2) + MEDIA + fp_line() + TAIL,
    "same fingerprint twice": good(fp_line()),
    "only sha-384": SESSION_TOP + MEDIA + fp_line(":".join(["AB"] * 48), "sha-384") + TAIL,
    "no fingerprint": SESSION_TOP + MEDIA + TAIL,
    "no media section": SESSION_TOP + fp_line() + TAIL,
    "short fingerprint": SESSION_TOP + MEDIA + fp_line("AB:CD") + TAIL,
    "not ASCII": good("a=x:\u00e9\r\n"),
    "control character": good("a=x:\x00\r\n"),
    "lone CR hiding a second fingerprint": good().replace(
        "a=setup:actpass\r\n", f"a=setup:actpass\ra=fingerprint:sha-256 {FP2}\r\n"),
    "too large": good("a=x:" + "y" * MAX_SDP + "\r\n"),
    "empty": "",
}

RUNNER = r"""
import * as c from "./connect.js";
import * as hc from "./crypto.js";
import { readFileSync } from "node:fs";
const v = JSON.parse(readFileSync(0, "utf8"));
const out = { sdp: {}, answers: {}, tokens: {} };
for (const [name, sdp] of Object.entries(v.sdp)) {
  try { out.sdp[name] = c.sdpFingerprint(sdp); } catch (e) { out.sdp[name] = "refused:" + e.code; }
}
const serverRaw = hc.parseServerId(v.server_id);
for (const [name, a] of Object.entries(v.answers)) {
  try {
    out.answers[name] = await c.checkAnswer(a.doc, { serverRaw, session: a.session,
      challenge: hc.b64uDecode(a.challenge), offerDigest: hc.b64uDecode(a.digest),
      clientFingerprint: a.client_fp, nowSeconds: v.now });
  } catch (e) { out.answers[name] = "refused:" + e.code; }
}
for (const [name, t] of Object.entries(v.tokens)) {
  try {
    const token = await c.verifyDeviceToken(hc.parseServerId(t.server), t.token, v.now);
    out.tokens[name] = token.device;
  } catch (e) { out.tokens[name] = "refused:" + e.code; }
}
out.device_challenge = hc.b64uEncode(c.deviceChallenge(v.now + 0.9, (n) => new Uint8Array(n).fill(7)));
const stats = new Map(v.stats.map((r) => [r.id, r]));
out.stats_fp = c.remoteFingerprintFromStats(stats);
out.stats_none = c.remoteFingerprintFromStats(new Map([["t", { id: "t", type: "transport" }]]));
console.log(JSON.stringify(out));
"""


def answer_case(server, session, challenge, digest, client_fp, sdp, when, *, sign_sdp=None,
                doc_session=None, flip=False):
    sig = server.sign(crypto.answer_signature_message(
        session, challenge, digest, client_fp, sdp_fingerprint(sign_sdp or sdp, "answer")
        if (sign_sdp or sdp).count("fingerprint") == 1 else FP2, when, sign_sdp or sdp))
    if flip:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    return {"session": session, "challenge": crypto.b64u_encode(challenge),
            "digest": crypto.b64u_encode(digest), "client_fp": client_fp,
            "doc": {"session": doc_session or session, "status": "answered", "answer": sdp,
                    "time": when, "signature": crypto.b64u_encode(sig)}}


def python_check(case, server_raw):
    try:
        return connect.check_answer(
            case["doc"], server_raw=server_raw, session=case["session"],
            challenge=crypto.b64u_decode(case["challenge"]),
            offer_digest=crypto.b64u_decode(case["digest"]), client_fp=case["client_fp"],
            now=NOW)
    except HomeChannelError as e:
        return "refused:" + e.code


def test_connect_js_matches_python(tmp_path):
    node = shutil.which("node")
    assert node, "node (v20) is needed to test static/js/connect.js"
    for name in ("connect.js", "crypto.js"):
        shutil.copy(os.path.join(JS, name), tmp_path / name)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "run.mjs").write_text(RUNNER)

    server, other = crypto.IdentityKey.generate(), crypto.IdentityKey.generate()
    session = crypto.b64u_encode(bytes(range(16)))
    challenge = bytes(range(100, 116))
    offer = good()
    digest = crypto.offer_hash(offer)
    answer_sdp = good().replace(FP, FP2)
    args = (server, session, challenge, digest, FP)
    answers = {
        "good": answer_case(*args, answer_sdp, NOW + 3),
        "wrong session echoed": answer_case(*args, answer_sdp, NOW,
                                            doc_session=crypto.b64u_encode(bytes(16))),
        "sdp changed after signing": answer_case(
            *args, answer_sdp.replace("a=setup:actpass", "a=setup:passive"), NOW,
            sign_sdp=answer_sdp),
        "signature flipped": answer_case(*args, answer_sdp, NOW, flip=True),
        "other offer hash": answer_case(server, session, challenge, crypto.sha256(b"x"), FP,
                                        answer_sdp, NOW),
        "clock off": answer_case(*args, answer_sdp, NOW - 400),
        "two fingerprints, signed": answer_case(*args, answer_sdp + fp_line(FP), NOW),
    }
    answers["other offer hash"]["digest"] = crypto.b64u_encode(digest)
    device = crypto.IdentityKey.generate().public_raw
    tokens = {
        "good": {"server": server.text,
                 "token": connect.DeviceToken.issue(server, device, 3, NOW)},
        "expired": {"server": server.text, "token": connect.DeviceToken.issue(
            server, device, 3, NOW - 100, lifetime=50)},
        "another server's": {"server": other.text, "token": connect.DeviceToken.issue(
            server, device, 3, NOW)},
        "garbage": {"server": server.text, "token": "hcdev2.abc.def"},
        "version 1": {"server": server.text, "token": "hcdev1.abc.def"},
    }
    good_token = tokens["good"]["token"]
    head, payload, sig = good_token.split(".")
    tokens["signature flipped"] = {"server": server.text, "token": ".".join(
        [head, payload, crypto.b64u_encode(bytes([crypto.b64u_decode(sig)[0] ^ 1])
                                           + crypto.b64u_decode(sig)[1:])])}
    stats = [{"id": "T", "type": "transport", "remoteCertificateId": "RC",
              "localCertificateId": "LC"},
             {"id": "LC", "type": "certificate", "fingerprint": FP,
              "fingerprintAlgorithm": "sha-256"},
             {"id": "RC", "type": "certificate", "fingerprint": FP2.lower(),
              "fingerprintAlgorithm": "sha-256"}]
    vectors = {"sdp": SDP_CASES, "server_id": server.text, "answers": answers,
               "tokens": tokens, "now": NOW, "stats": stats}
    proc = subprocess.run([node, str(tmp_path / "run.mjs")], input=json.dumps(vectors),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    expected_sdp = {}
    for name, sdp in SDP_CASES.items():
        try:
            expected_sdp[name] = sdp_fingerprint(sdp)
        except HomeChannelError:
            expected_sdp[name] = "refused:bad-sdp"
    assert out["sdp"] == expected_sdp
    accepted = {name for name, fp in expected_sdp.items() if not fp.startswith("refused")}
    assert accepted == {"good", "session-level fingerprint", "algorithm in upper case",
                        "lower-case hex", "LF line ends"}

    expected_answers = {name: python_check(case, server.public_raw)
                        for name, case in answers.items()}
    assert out["answers"] == expected_answers
    assert expected_answers["good"] == FP2
    assert expected_answers["clock off"] == "refused:clock"
    assert all(v == "refused:server-signature" for k, v in expected_answers.items()
               if k not in ("good", "clock off"))

    for name, t in tokens.items():
        try:
            expected = connect.DeviceToken.verify(crypto.parse_server_id(t["server"]),
                                                  t["token"], NOW).device
        except HomeChannelError:
            expected = "refused:bad-device"
        assert out["tokens"][name] == expected, name
    assert out["tokens"]["good"] == crypto.device_id(device)

    made = crypto.b64u_decode(out["device_challenge"])
    assert connect.device_challenge_time(made) == NOW and made[8:] == b"\x07" * 8
    assert out["stats_fp"] == FP2 and out["stats_none"] is None


@pytest.mark.parametrize("name", sorted(SDP_CASES))
def test_python_sdp_shape(name):
    """The Python side of the matrix alone (runs without node)."""
    sdp = SDP_CASES[name]
    ok = name in {"good", "session-level fingerprint", "algorithm in upper case",
                  "lower-case hex", "LF line ends"}
    if ok:
        assert sdp_fingerprint(sdp) == FP
    else:
        with pytest.raises(HomeChannelError):
            sdp_fingerprint(sdp)
