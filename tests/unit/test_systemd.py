"""The systemd units in conf/systemd/ are valid and hardened.

``systemd-analyze verify`` checks every directive's name and value.  It also
requires ExecStart's binary to exist, and the units point at
``/opt/homechannel/bin/twistd`` (the documented install), so the check runs on
a copy whose ExecStart binary is this test venv's ``twistd``; nothing else is
changed.  Unknown keys and bad values are only warnings to systemd-analyze, so
any diagnostic naming our unit fails the test.
"""

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, require_tool
from systemdunits import directives, unit_text

UNITS = {
    "homechannel-coordinator.service": "homechannel-coordinator",
    "homechannel-server.service": "homechannel-server",
}
INSTALLED_TWISTD = "/opt/homechannel/bin/twistd"


def _test_twistd():
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        pytest.fail(f"{twistd} missing: the test venv must have Twisted installed (make venv)")
    return twistd


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify(name, tmp_path):
    analyze = require_tool("systemd-analyze", "systemd")
    text = unit_text(name)
    assert text.count(INSTALLED_TWISTD) == 1
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_TWISTD, _test_twistd()))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if name in line or str(tmp_path) in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_twistd_hardened(name):
    d = directives(unit_text(name))
    (execstart,) = d["ExecStart"]
    argv = execstart.split()
    assert argv[0] == INSTALLED_TWISTD
    assert "--nodaemon" in argv and "--pidfile=" in argv
    tap = UNITS[name]
    assert argv[argv.index(tap) + 1:] == ["--config", f"/etc/homechannel/{tap.split('-')[1]}.toml"]
    if tap == "homechannel-server":
        assert argv.index("--reactor=asyncio") < argv.index(tap)
    else:
        assert "--reactor=asyncio" not in argv
    assert d.get("DynamicUser") == ["yes"] or d.get("User") == ["homechannel"]
    assert d["StateDirectory"][0].startswith("homechannel")
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("Restart", "on-failure")]:
        assert d[key] == [value], key
    assert d["ProtectHome"] == ["read-only" if tap == "homechannel-server" else "yes"]
    (families,) = d["RestrictAddressFamilies"]
    assert set(families.split()) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert {"AF_INET", "AF_INET6"} <= set(families.split())


def test_units_have_no_secrets_on_the_command_line():
    for name in UNITS:
        text = unit_text(name)
        assert not re.search(r"password|--key\b", directives(text)["ExecStart"][0], re.I)


TLS_DROPIN = os.path.join("homechannel-coordinator.service.d", "tls.conf")


@pytest.mark.parametrize("broken", [False, True])
def test_tls_dropin_verifies_with_the_unit(tmp_path, broken):
    """The certbot drop-in (LoadCredential= for the DynamicUser) is valid next to the
    unit, and systemd-analyze really reads it (a bogus key in it is reported)."""
    analyze = require_tool("systemd-analyze", "systemd")
    name = "homechannel-coordinator.service"
    (tmp_path / name).write_text(unit_text(name).replace(INSTALLED_TWISTD, _test_twistd()))
    dropin = open(os.path.join(REPO, "conf", "systemd", TLS_DROPIN)).read()
    if broken:
        dropin += "LoadCredentialTypo=x\n"
    (tmp_path / TLS_DROPIN).parent.mkdir()
    (tmp_path / TLS_DROPIN).write_text(dropin)
    r = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if str(tmp_path) in line]
    assert bool(ours) == broken, r.stdout + r.stderr
    creds = dict(v.split(":", 1) for v in directives(dropin)["LoadCredential"])
    assert set(creds) == {"tls-key", "tls-cert"}
    # The web.listen the drop-in documents names exactly those credentials.
    listen = re.search(r'listen = "(ssl:[^"]+)"', dropin).group(1)
    for cred in creds:
        assert f"/run/credentials/{name}/{cred}" in listen


def test_coordinator_unit_reloads_with_sighup():
    d = directives(unit_text("homechannel-coordinator.service"))
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
