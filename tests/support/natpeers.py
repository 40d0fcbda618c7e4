"""The two ends of a connect across a NAT topology (tests/support/nat.py), as the
end-to-end tests drive and check them: Chromium's selected candidate pair
(``CAPTURE_PCS`` as an init script, ``SELECTED_PAIR`` to evaluate; the Chromium
itself is the ``nat_chromium`` fixture of tests/e2e/conftest.py), the native client
in the client namespace (:func:`native_connect`, :func:`native_offer`,
:func:`offer_gets_in`) and the path the home server
logged (:func:`path_of`, :func:`family_of`)."""

import os
import re
import subprocess
import sys

from daemons import PASSWORD

# Every RTCPeerConnection the page makes, for getStats().
CAPTURE_PCS = """
(() => {
  const Orig = window.RTCPeerConnection;
  window.__hcPcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Orig(...args);
    window.__hcPcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Orig.prototype;
})();
"""

# The candidate types of the pair the last peer connection uses.
SELECTED_PAIR = """async () => {
  const pc = window.__hcPcs[window.__hcPcs.length - 1];
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
  const pair = pairId ? stats.get(pairId) : null;
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return {local: local.candidateType, remote: remote.candidateType,
          localAddress: local.address, remoteAddress: remote.address,
          relayProtocol: local.relayProtocol || null};
}"""


def native_connect(topo, pair, tmp_path, *extra, timeout=90, url=None):
    """``homechannel connect`` in the client namespace (to *url*, by default the
    server link's coordinator); returns (exit status, stdout, the "path: local/remote"
    it logged or None, stderr)."""
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "client-config"))
    proc = topo.popen("client", [sys.executable, "-m", "homechannel.cli", "connect",
                                 "--server", pair.link, "--password-file", str(password),
                                 "--coordinator-key", pair.coordinator_key.text,
                                 "--no-device-token", "--insecure-http",
                                 *(["--url", url] if url else []), *extra],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=timeout)
    m = re.search(r"^path: (\w+)/(\w+)", err, re.M)
    return proc.returncode, out, (m.groups() if m else None), err


def native_offer(topo, pair, tmp_path):
    """Start ``homechannel connect`` in the client namespace (it need not connect:
    the test looks for the offer reaching the home server); returns the process."""
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    return topo.popen("client", [sys.executable, "-m", "homechannel.cli", "connect",
                                 "--server", pair.link, "--password-file", str(password),
                                 "--coordinator-key", pair.coordinator_key.text,
                                 "--insecure-http"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def offer_gets_in(topo, pair, tmp_path, server, timeout=30):
    """A native client's offer reaches the home server ("login accepted") within
    *timeout* seconds; the client is stopped after."""
    client = native_offer(topo, pair, tmp_path)
    try:
        server.wait_for_log(r"login accepted: session", timeout=timeout)
    finally:
        client.kill()
        client.wait()


def path_of(server):
    """``(local, remote)`` candidate types the home server logged for its last
    connected session ("session X connected (srflx/srflx)"), or None."""
    found = re.findall(r"session \S+ connected \((\w+)/(\w+)\)", server.output)
    return found[-1] if found else None


def family_of(server):
    """The IP family of the home server's last connected session ("... connected
    (host/host) over IPv6"), or None."""
    found = re.findall(r"session \S+ connected \(\w+/\w+\) over (IPv\d)", server.output)
    return found[-1] if found else None
