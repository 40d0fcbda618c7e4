"""The command line: one clear line and status 1 for every mistake, never a
traceback; every subcommand's help has a description and an example; the
version comes from the package metadata; join strings round-trip."""

import os

import pytest

from clirun import one_clear_line, run

from homechannel import crypto, keyfiles

from homechannel import cli

from homechannel.protocol import join
from homechannel.errors import ConfigError

KEY = crypto.IdentityKey.generate().text
SUBCOMMANDS = ["join", "join-string", "cluster-key", "status", "keygen", "pubkey", "link",
               "passwd", "migrate", "connect", "forward"]


def test_version_from_metadata():
    from importlib.metadata import version
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"homechannel {version('homechannel')}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_has_a_description_and_an_example(name):
    r = run(name, "--help")
    assert r.returncode == 0, r.stderr
    head, _, tail = r.stdout.partition("\n\n")
    assert "usage: homechannel " + name in head
    assert "example" in r.stdout.lower() and "homechannel " + name in r.stdout.split(
        "xample", 1)[1]
    # a description sentence between the usage and the options
    assert len(tail.split("options:")[0].strip()) > 30, r.stdout


@pytest.mark.parametrize("args,words", [
    (["connect", "--url", "notaurl", "--server", KEY], ["--url", "not a coordinator URL"]),
    (["connect", "--url", "http://127.0.0.1:99999", "--server", KEY], ["bad port"]),
    (["connect", "--server", "http://127.0.0.1:1/#server=" + KEY[:30]],
     ["not a server id or connect link"]),
    (["forward", "--server", "http://127.0.0.1:1/#server=x", "--port", "22", "--stdio"],
     ["not a server id"]),
    (["migrate", "--to", "nowhere", "--key", KEY], ["--to", "HOST:PORT"]),
    (["migrate", "--to", "host:0", "--key", KEY], ["--to"]),
    (["migrate", "--to", "h\u00e9:22", "--key", KEY], ["ASCII"]),
    (["migrate", "--to", "host:7777", "--key", "nope"], ["--key", "not a coordinator"]),
    (["migrate", "--to", "host:7777", "--key", KEY, "--admin", "/nonexistent/admin.sock"],
     ["nothing answers"]),
    (["migrate", "--to", "host:7777", "--key", KEY, "--admin", "ftp://x"], ["--admin"]),
    (["link", "--config", "/nonexistent.toml"], ["does not exist"]),
    (["join", "hcjoin:AAAA"], ["damaged"]),
    (["join", "https://example.org"], ["not a join string"]),
    (["status", "--state-dir", "/nonexistent-state"], ["no status"]),
    # each of these was once "unexpected error (ValueError: ...)", a confusing
    # "/dev/null: File exists", or (the port) only refused by the home server
    (["connect", "--server", "http://[::1:99/#server=" + KEY],
     ["--url", "not a coordinator URL", "Invalid IPv6 URL"]),
    (["keygen", "--key", "/dev/null/x"], ["/dev/null/x", "/dev/null is not a directory"]),
    (["keygen", "--key", "/dev/null/x/y/server.key"], ["/dev/null is not a directory"]),
    (["passwd", "--state-dir", "/dev/null/state"], ["/dev/null is not a directory"]),
    (["forward", "--server", "http://127.0.0.1:1/#server=" + KEY, "--port", "99999",
      "--stdio"], ["--port 99999", "1-65535"]),
    (["forward", "--server", "http://127.0.0.1:1/#server=" + KEY, "--port", "0",
      "--listen", "127.0.0.1:0"], ["--port 0", "1-65535"]),
    # plain http only to this machine
    (["connect", "--server", "http://203.0.113.5:8080/#server=" + KEY],
     ["'http://203.0.113.5:8080'", "plain http://", "use https://"]),
    (["forward", "--url", "http://hc.example.org", "--server", KEY, "--port", "22", "--stdio"],
     ["plain http://", "use https://"]),
])
def test_mistakes_are_one_clear_line(args, words):
    one_clear_line(run(*args), *words)


def test_key_path_that_is_a_directory(tmp_path):
    for command in ("keygen", "pubkey"):
        one_clear_line(run(command, "--key", str(tmp_path)), "is a directory")


def test_damaged_key_file(tmp_path):
    (tmp_path / "k").write_bytes(b"garbage")
    os.chmod(tmp_path / "k", 0o600)
    one_clear_line(run("pubkey", "--key", str(tmp_path / "k")), "not a PEM private key")


def test_join_string_round_trip_and_damage():
    s = join.encode("https://hc.example.org", "hc.example.org", 7777, KEY)
    assert s.startswith("hcjoin:") and "\n" not in s and " " not in s
    assert join.decode("  " + s + "\n") == {"url": "https://hc.example.org",
                                             "host": "hc.example.org", "port": 7777,
                                             "key": KEY}
    for bad in (s[:-5], s.replace("hcjoin:", "hcjoin:x"), "hcjoin:", s.upper()):
        with pytest.raises(ConfigError):
            join.decode(bad)
    with pytest.raises(ConfigError):
        join.encode("ftp://x", "h", 1, KEY)
    with pytest.raises(ConfigError):
        join.encode("https://x", "h", 70000, KEY)


def test_join_string_from_the_coordinator_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path}"\n[web]\npublic_url = "https://hc.example.org"\n'
                   '[udp]\nport = 7000\n')
    assert run("keygen", "--config", str(cfg), "--role", "coordinator").returncode == 0
    r = run("join-string", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    doc = join.decode(r.stdout)
    assert doc["url"] == "https://hc.example.org" and doc["host"] == "hc.example.org"
    assert doc["port"] == 7000


def test_join_writes_the_desktop_endpoint_or_says_the_desktop_is_off(tmp_path):
    """``join --desktop ENDPOINT`` writes [apps.desktop] endpoint (checked as the home
    server checks it); without it, the written config has no endpoint and join says
    the desktop app is off and how to turn it on."""
    import tomllib

    pw = tmp_path / "pw"
    pw.write_text("a long enough password\n")
    string = join.encode("https://hc.example", "hc.example", 7777, KEY)
    common = ["--state-dir", str(tmp_path / "state"), "--no-qr", "--password-file", str(pw)]
    r = run("join", string, "--config", str(tmp_path / "a.toml"), "--desktop",
            "unix:/run/user/1000/homechannel-vnc.sock", *common)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "a.toml", "rb") as f:
        assert tomllib.load(f)["apps"]["desktop"] == {
            "endpoint": "unix:/run/user/1000/homechannel-vnc.sock"}
    assert "desktop app is off" not in r.stderr
    r = run("join", string, "--config", str(tmp_path / "b.toml"), *common)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "b.toml", "rb") as f:
        assert "desktop" not in tomllib.load(f)["apps"]
    assert "the desktop app is off until [apps.desktop] endpoint names your VNC server" \
        in r.stderr
    one_clear_line(run("join", string, "--config", str(tmp_path / "c.toml"), "--desktop",
                       "vnc.sock", *common), "apps.desktop.endpoint")
    assert not (tmp_path / "c.toml").exists()


def test_qr_code_encodes_the_link():
    text = cli.server.qr_text("http://127.0.0.1:8080/#server=" + KEY)
    lines = text.strip("\n").splitlines()
    assert len(lines) > 10 and any("\u2588" in line or "\u2580" in line for line in lines)


# -- password files: one reader for every command ------------------------------------


def test_password_file_is_read_the_same_by_passwd_and_connect(tmp_path):
    """``passwd`` and ``connect``/``forward`` take the first line of the file, CR/LF
    stripped, so a multi-line file sets the password the native client sends.  How
    this was shown to fail: the old ``passwd`` stored the whole file
    ("first-line pw\\r\\nsecond"), which ``connect`` could never send."""
    import argparse

    from homechannel.cli import client

    pw = tmp_path / "pw"
    pw.write_bytes(b"first-line pw\r\nsecond line\n")
    state = tmp_path / "state"
    r = run("passwd", "--state-dir", str(state), "--password-file", str(pw))
    assert r.returncode == 0, r.stderr
    key = keyfiles.load_identity_key(str(state / "server.key"))
    assert keyfiles.load_password_key(str(state / "password.json"), key.public_raw) == \
        crypto.derive_password_key("first-line pw", key.public_raw)
    assert client._read_password(argparse.Namespace(password_file=str(pw))) == "first-line pw"
    assert keyfiles.read_secret_line(str(pw)) == "first-line pw"


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\nsecond line\n"])
def test_empty_password_file_is_refused_by_every_command(tmp_path, content):
    """How this was shown to fail: the old ``passwd`` said "use a password of at least
    8 characters" for "\\r\\nsecond line" (and would have taken a long enough one)."""
    pw = tmp_path / "pw"
    pw.write_bytes(content)
    for args in (["passwd", "--state-dir", str(tmp_path / "state")],
                 ["join", join.encode("https://hc.example", "hc.example", 7777, KEY),
                  "--config", str(tmp_path / "server.toml"), "--state-dir",
                  str(tmp_path / "state"), "--no-qr"],
                 ["connect", "--server", "http://127.0.0.1:1/#server=" + KEY],
                 ["forward", "--server", "http://127.0.0.1:1/#server=" + KEY, "--port", "22",
                  "--stdio"]):
        one_clear_line(run(*args, "--password-file", str(pw)), "password file", str(pw),
                       "is empty")
    assert not (tmp_path / "server.toml").exists()


def test_unreadable_password_file_is_one_clear_line(tmp_path):
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xff\xfe not utf-8\n")
    for args in (["passwd", "--state-dir", str(tmp_path / "state")],
                 ["connect", "--server", "http://127.0.0.1:1/#server=" + KEY]):
        one_clear_line(run(*args, "--password-file", str(pw)), "cannot read the password file")
        one_clear_line(run(*args, "--password-file", str(tmp_path / "missing")),
                       "cannot read the password file", "No such file")


# -- the coordinator URL of the native client ------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080", "http://127.9.9.9", "http://[::1]:8080/", "http://localhost:1",
    "http://LOCALHOST:1", "https://hc.example.org", "https://203.0.113.5:8443/base/"])
def test_coordinator_urls_allowed(url):
    from homechannel.client import trust
    assert trust.coordinator_url(url) == url.rstrip("/").replace("LOCALHOST", "localhost")


@pytest.mark.parametrize("url", [
    "https://hc.example.org", "https://HC.Example.ORG", "HTTPS://hc.example.org/",
    "https://hc.example.org.", "https://hc.example.org:443", "https://hc.example.org.:443//"])
def test_every_spelling_of_a_coordinator_url_is_one_url(url):
    """One coordinator, one entry among the keys this client trusts (and one base for
    its requests): otherwise a link spelled otherwise would be a quiet first use
    instead of a changed key.  How this was shown to fail: each spelling was its own
    entry before (the URL as typed, less a trailing slash)."""
    from homechannel.client import trust
    assert trust.coordinator_url(url) == "https://hc.example.org"
    assert trust.coordinator_url(url.lower().replace("hc.example.org", "[2001:DB8::1]")) \
        == "https://[2001:db8::1]"
    assert trust.coordinator_url("http://127.0.0.1:80/base/") == "http://127.0.0.1/base"


@pytest.mark.parametrize("url", [
    "https://user@hc.example.org", "https://u:p@hc.example.org", "https://hc.example.org/?x=1",
    "https://hc.example.org?", "https://hc.example.org/#server=abc"])
def test_coordinator_url_with_a_user_query_or_fragment_is_refused(url):
    from homechannel.client import trust
    with pytest.raises(ConfigError, match="has no user name, query or fragment"):
        trust.coordinator_url(url)


@pytest.mark.parametrize("url", ["https://.", "https://..:443", "ftp://hc.example.org",
                                 "hc.example.org"])
def test_coordinator_url_without_a_host_or_scheme_is_refused(url):
    from homechannel.client import trust
    with pytest.raises(ConfigError, match="is not a coordinator URL"):
        trust.coordinator_url(url)



@pytest.mark.parametrize("url", [
    "http://hc.example.org", "http://203.0.113.5:8080", "http://[2001:db8::1]:80",
    "http://127.0.0.1.example.org", "http://0x7f000001", "http://[::ffff:10.0.0.1]",
    "http://localhost.example.org", "http://localhost.", "http://LOCALHOST.:1"])
def test_plain_http_to_another_machine_is_refused(url):
    """Over plain http anyone on the way plays the coordinator: it hands out its own
    key on first use and collects answers and proofs to guess the password offline.
    How this was shown to fail: the old ``_parse_target`` accepted every one of these
    ("localhost." is an absolute name glibc asks DNS for: accepted by the first fix too)."""
    from homechannel.client import trust
    with pytest.raises(ConfigError, match=r"plain http:// .* use https:// \(http:// only "
                                          r"for 127\.0\.0\.1, ::1 or localhost\)"):
        trust.coordinator_url(url)
    assert trust.coordinator_url(url, insecure_http=True)     # the tests' escape hatch
