"""The home server's install steps (the ``# Install:`` comment of
conf/systemd/homechannel-server.service) run as written, as root: a throwaway user
is added with useradd, so this runs inside tests/netns-run."""

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO
from services import accounts_lock
from systemdunits import directives, unit_text


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
    unit = unit_text("homechannel-server.service")
    d = directives(unit)
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
