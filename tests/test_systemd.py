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
from services import accounts_lock

UNITS = {
    "homechannel-coordinator.service": "homechannel-coordinator",
    "homechannel-server.service": "homechannel-server",
}
INSTALLED_TWISTD = "/opt/homechannel/bin/twistd"


def _unit(name):
    with open(os.path.join(REPO, "conf", "systemd", name)) as f:
        return f.read()


def _directives(text):
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _test_twistd():
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        pytest.fail(f"{twistd} missing: the test venv must have Twisted installed (make venv)")
    return twistd


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify(name, tmp_path):
    analyze = require_tool("systemd-analyze", "systemd")
    text = _unit(name)
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
    d = _directives(_unit(name))
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
        text = _unit(name)
        assert not re.search(r"password|--key\b", _directives(text)["ExecStart"][0], re.I)


TLS_DROPIN = os.path.join("homechannel-coordinator.service.d", "tls.conf")


@pytest.mark.parametrize("broken", [False, True])
def test_tls_dropin_verifies_with_the_unit(tmp_path, broken):
    """The certbot drop-in (LoadCredential= for the DynamicUser) is valid next to the
    unit, and systemd-analyze really reads it (a bogus key in it is reported)."""
    analyze = require_tool("systemd-analyze", "systemd")
    name = "homechannel-coordinator.service"
    (tmp_path / name).write_text(_unit(name).replace(INSTALLED_TWISTD, _test_twistd()))
    dropin = open(os.path.join(REPO, "conf", "systemd", TLS_DROPIN)).read()
    if broken:
        dropin += "LoadCredentialTypo=x\n"
    (tmp_path / TLS_DROPIN).parent.mkdir()
    (tmp_path / TLS_DROPIN).write_text(dropin)
    r = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if str(tmp_path) in line]
    assert bool(ours) == broken, r.stdout + r.stderr
    creds = dict(v.split(":", 1) for v in _directives(dropin)["LoadCredential"])
    assert set(creds) == {"tls-key", "tls-cert"}
    # The web.listen the drop-in documents names exactly those credentials.
    listen = re.search(r'listen = "(ssl:[^"]+)"', dropin).group(1)
    for cred in creds:
        assert f"/run/credentials/{name}/{cred}" in listen


def test_coordinator_unit_reloads_with_sighup():
    d = _directives(_unit("homechannel-coordinator.service"))
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


# -- the home server's install steps, run (review #16) --------------------------------------


def _install_steps(text):
    """The commands and the notes of the ``# Install:`` comment at the top of a unit."""
    commands, notes, in_note = [], [], False
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Install:"))
    for line in lines[start:]:
        if not line.startswith("#") or not line[1:].strip():
            break
        body = line[len("# Install:"):] if line.startswith("# Install:") else line[1:]
        body = body.strip()
        if in_note or body.startswith("("):
            notes.append(body)
            in_note = not body.endswith(")")
        else:
            commands.append(body)
    return commands, " ".join(notes)


def _as_user(user, argv):
    """``homechannel ARGV`` (cli.main, already imported) in a child process running
    as *user*, as ``sudo -u user`` would; returns (exit status, stderr)."""
    import pwd

    from homechannel import cli
    entry = pwd.getpwnam(user)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: no imports from here on (the venv's python is under /root)
        status = 99
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            sys.stderr = sys.stdout = os.fdopen(write, "w")
            status = cli.main(argv)
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.e2e   # adds a user with useradd: not in the fast lane
def test_home_server_install_steps_work_as_written(tmp_path, capsys):
    """The install comment of homechannel-server.service, run as written, with
    /var/lib/homechannel and /etc/homechannel moved into a scratch root and a
    throwaway user for "homechannel": the passwd step, as that user, stores its keys
    in the state directory the unit's StateDirectory= names, with the unit's mode; the
    link step prints the link.  (venv, cp and systemctl are not run.)  How this was
    shown to fail: with the old steps (useradd creates no directory) passwd, as the
    user, could not create /var/lib/homechannel/server: "Permission denied"."""
    import pwd
    import secrets
    import shlex
    import shutil
    import tempfile
    import tomllib

    from helpers import write_toml
    from homechannel import crypto, keyfiles
    from homechannel import cli

    if os.geteuid() != 0:
        pytest.fail("this test creates a user with useradd: run it as root in tests/netns-run")
    unit = _unit("homechannel-server.service")
    d = _directives(unit)
    commands, notes = _install_steps(unit)
    state_dir = re.search(r'state_dir = "([^"]+)"', notes).group(1)
    (service_user,) = d["User"]
    assert state_dir == "/var/lib/" + d["StateDirectory"][0]

    root = tempfile.mkdtemp(prefix="hc-install-", dir="/tmp")   # others may traverse it
    os.chmod(root, 0o755)
    for sub in ("var/lib", "etc"):
        os.makedirs(os.path.join(root, sub), mode=0o755)
    user = "hcsd" + secrets.token_hex(3)
    password = os.path.join(root, "password")
    with open(password, "w") as f:
        f.write("correct horse battery staple\n")
    os.chmod(password, 0o644)
    # Everything the child needs later is imported now (it cannot read /root).
    assert cli.main(["passwd", "--state-dir", str(tmp_path / "dry"),
                     "--password-file", password]) == 0

    def rebase(token):
        if token == service_user:
            return user
        for prefix in ("/var/lib/homechannel", "/etc/homechannel"):
            if token.startswith(prefix):
                return root + token
        return token

    ran, created_user = [], False
    try:
        for command in commands:
            argv = [rebase(t) for t in shlex.split(command)]
            if argv[0] in ("useradd", "install"):
                with accounts_lock():
                    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                                       timeout=30)
                assert r.returncode == 0, (command, r.stderr)
                created_user = created_user or argv[0] == "useradd"
            elif argv[:3] == ["sudo", "-u", user]:
                assert argv[3] == "/opt/homechannel/bin/homechannel", command
                config = argv[argv.index("--config") + 1]
                with open(config, "rb") as f:   # what the note says to set
                    doc = tomllib.load(f)
                doc["state_dir"] = root + state_dir
                doc["coordinator"]["public_key"] = crypto.IdentityKey.generate().text
                write_toml(config, doc)
                status, err = _as_user(user, argv[4:] + ["--password-file", password])
                assert status == 0, (command, err)
            elif argv[0] == "/opt/homechannel/bin/homechannel":
                capsys.readouterr()
                assert cli.main(argv[1:]) == 0, command
                out = capsys.readouterr().out
            else:
                assert argv[0] in ("python3", "cp", "systemctl"), command
                continue
            ran.append(argv[0])
        assert ran == ["useradd", "install", "install", "sudo",
                       "/opt/homechannel/bin/homechannel"]
        entry = pwd.getpwnam(user)
        state = root + state_dir
        st = os.stat(state)
        assert (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid)
        assert f"{st.st_mode & 0o7777:04o}" == d["StateDirectoryMode"][0]
        for name in ("server.key", "password.json"):
            st = os.stat(os.path.join(state, name))
            assert st.st_uid == entry.pw_uid and st.st_mode & 0o777 == 0o600, name
        key = keyfiles.load_identity_key(os.path.join(state, "server.key"))
        assert out.strip().endswith("#server=" + key.text)
    finally:
        if created_user:
            with accounts_lock():
                subprocess.run(["userdel", user], check=False, timeout=30)
        shutil.rmtree(root, ignore_errors=True)
