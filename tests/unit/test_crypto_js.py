"""static/js/crypto.js is a faithful twin of homechannel/crypto.py.

Runs crypto.js in node (WebCrypto is globalThis.crypto.subtle) against vectors
computed by the Python module: PBKDF2, answer, expectedAnswer, proof and the
signature messages must be byte-equal, and a signature made in Python must
verify in JS (and a tampered one must not).  (The connect flow's rules, SDP
shape included, are static/js/connect.js: tests/unit/test_connect_js.py.)
"""

import json
import os
import shutil
import subprocess

import pytest

from homechannel import crypto

from helpers import REPO

CRYPTO_JS = os.path.join(REPO, "static", "js", "crypto.js")

FP_CLIENT = ":".join(f"{i:02x}" for i in range(32))
FP_SERVER = ":".join(f"{255 - i:02X}" for i in range(32))

RUNNER = r"""
import * as c from "./crypto.mjs";
import { readFileSync } from "node:fs";
const v = JSON.parse(readFileSync(0, "utf8"));
const hex = (b) => Buffer.from(b).toString("hex");
const d = (s) => c.b64uDecode(s);
const out = {};
const server = c.parseServerId(v.server_id);
const K = await c.derivePasswordKey(v.password, server);
out.K = hex(K);
const answer = await c.challengeAnswer(K, d(v.challenge));
out.answer = hex(answer);
out.expected = hex(await c.expectedAnswer(answer));
out.offer_hash = hex(await c.offerHash(v.sdp));
const digest = await c.offerHash(v.sdp);
out.proof = hex(await c.clientProof(K, v.session, d(v.challenge), digest));
out.proof_message = hex(c.proofMessage(v.session, d(v.challenge), digest));
out.answer_message = hex(c.answerSignatureMessage(v.session, d(v.challenge), digest, v.fp_client,
  v.fp_server, v.time, v.sdp));
out.device_message = hex(c.deviceTokenMessage(Buffer.from(v.body, "hex")));
out.response_message = hex(c.responseSignatureMessage(v.path, Buffer.from(v.body, "hex")));
out.device_offer = hex(c.deviceOfferMessage(v.session, d(v.challenge), digest));
out.device_start = hex(c.deviceStartMessage(v.session, d(v.challenge)));
out.device_enrol = hex(c.deviceEnrolMessage(v.session, server));
out.device_id = await c.deviceId(server);
// A key made the browser's way signs what Python verifies (test below).
const pair = await c.generateDeviceKey();
out.device_key = c.b64uEncode(await c.publicKeyRaw(pair));
out.device_signature = c.b64uEncode(await c.sign(pair.privateKey,
  c.deviceOfferMessage(v.session, d(v.challenge), digest)));
out.device_key_extractable = pair.privateKey.extractable;
const sig = d(v.signature);
const msg = Buffer.from(v.signed, "hex");
out.verify_good = await c.verify(server, sig, msg);
const bad = sig.slice(); bad[5] ^= 1;
out.verify_bad_sig = await c.verify(server, bad, msg);
const badMsg = Uint8Array.from(msg); badMsg[0] ^= 1;
out.verify_bad_msg = await c.verify(server, sig, badMsg);
out.verify_other_key = await c.verify(c.parseServerId(v.other_id), sig, msg);
out.b64u = v.b64u_inputs.map((h) => c.b64uEncode(Buffer.from(h, "hex")));
out.b64u_back = v.b64u_inputs.map((h) => hex(c.b64uDecode(c.b64uEncode(Buffer.from(h, "hex")))));
const rejects = [];
for (const s of v.b64u_bad) { try { c.b64uDecode(s); rejects.push(false); } catch (e) { rejects.push(true); } }
out.b64u_rejects = rejects;
out.session_id_ok = /^[A-Za-z0-9_-]{22}$/.test(c.newSessionId());
console.log(JSON.stringify(out));
"""


def test_crypto_js_matches_python(tmp_path):
    node = shutil.which("node")
    assert node, "node (v20) is needed to test static/js/crypto.js"
    shutil.copy(CRYPTO_JS, tmp_path / "crypto.mjs")
    (tmp_path / "run.mjs").write_text(RUNNER)

    home = crypto.IdentityKey.generate()
    other = crypto.IdentityKey.generate()
    password = "correct horse ✓ battery"
    challenge = bytes(range(16))
    session = crypto.b64u_encode(bytes(range(100, 116)))
    sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=fingerprint:sha-256 " + FP_SERVER + "\r\n✓"
    digest = crypto.offer_hash(sdp)
    answer_msg = crypto.answer_signature_message(session, challenge, digest, FP_CLIENT,
                                                 FP_SERVER, 1_700_000_123, sdp)
    body = b'{"ok":true}'
    vectors = {
        "server_id": home.text, "other_id": other.text, "password": password,
        "challenge": crypto.b64u_encode(challenge), "session": session,
        "fp_client": FP_CLIENT, "fp_server": FP_SERVER, "time": 1_700_000_123, "sdp": sdp,
        "path": "/api/servers/x", "body": body.hex(),
        "signature": crypto.b64u_encode(home.sign(answer_msg)), "signed": answer_msg.hex(),
        "b64u_inputs": ["", "00", "ff", "fffe", "fbff", "000102", "fbefbe" * 20],
        "b64u_bad": ["a", "ab=", "ab+c", "ab/c", "a b"],
    }
    proc = subprocess.run([node, str(tmp_path / "run.mjs")], input=json.dumps(vectors),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    K = crypto.derive_password_key(password, home.public_raw)
    answer = crypto.challenge_answer(K, challenge)
    assert out["K"] == K.hex()
    assert out["answer"] == answer.hex()
    assert out["expected"] == crypto.expected_answer(answer).hex()
    assert out["offer_hash"] == digest.hex()
    assert out["proof"] == crypto.client_proof(K, session, challenge, digest).hex()
    assert out["proof_message"] == crypto.proof_message(session, challenge, digest).hex()
    assert out["answer_message"] == answer_msg.hex()
    assert out["device_message"] == crypto.device_token_message(body).hex()
    assert out["response_message"] == crypto.response_signature_message(
        "/api/servers/x", body).hex()
    assert out["device_offer"] == crypto.device_offer_message(session, challenge, digest).hex()
    assert out["device_start"] == crypto.device_start_message(session, challenge).hex()
    assert out["device_enrol"] == crypto.device_enrol_message(session, home.public_raw).hex()
    assert out["device_id"] == crypto.device_id(home.public_raw)
    crypto.verify(crypto.b64u_decode(out["device_key"]),
                  crypto.b64u_decode(out["device_signature"]),
                  crypto.device_offer_message(session, challenge, digest))
    assert out["device_key_extractable"] is False
    assert out["verify_good"] is True
    assert out["verify_bad_sig"] is False
    assert out["verify_bad_msg"] is False
    assert out["verify_other_key"] is False
    assert out["b64u"] == [crypto.b64u_encode(bytes.fromhex(h)) for h in vectors["b64u_inputs"]]
    assert out["b64u_back"] == vectors["b64u_inputs"]
    for bad in vectors["b64u_bad"]:
        with pytest.raises(crypto.ProtocolError):
            crypto.b64u_decode(bad)
    assert out["b64u_rejects"] == [True] * len(vectors["b64u_bad"])
    assert out["session_id_ok"] is True
