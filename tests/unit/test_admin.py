"""The operator endpoint: loopback only, JSON only, inputs checked."""

import json

import pytest
from treq.testing import StubTreq
from twisted.internet import task

from homechannel import crypto
from homechannel.coordinator.admin import Admin, check_loopback
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.coordinator.udp import CoordinatorUDP
from homechannel.errors import ConfigError


@pytest.fixture
def admin():
    udp = CoordinatorUDP(Rendezvous(crypto.IdentityKey.generate()), task.Clock())
    return StubTreq(Admin(udp).resource())


def post(stub, body, host="127.0.0.1:7780", ctype="application/json"):
    headers = {"Host": [host]}
    if ctype:
        headers["Content-Type"] = [ctype]
    return stub.post("http://127.0.0.1:7780/migrate", data=json.dumps(body).encode(),
                     headers=headers)


def run(d):
    from twisted.trial.unittest import SynchronousTestCase
    return SynchronousTestCase().successResultOf(d)


TARGET = {"server": "*", "host": "127.0.0.1", "port": 7000,
          "public_key": crypto.IdentityKey.generate().text}


def test_migrate_all_with_json_from_loopback(admin):
    resp = run(post(admin, TARGET))
    assert resp.code == 200
    assert json.loads(run(resp.content())) == {"sent": 0}


@pytest.mark.parametrize("host", ["evil.example:7780", "10.0.0.1:7780"])
def test_foreign_host_header_is_refused(admin, host):
    """DNS rebinding: a page on another name that resolves to 127.0.0.1."""
    assert run(post(admin, TARGET, host=host)).code == 403


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_non_json_is_refused(admin, ctype):
    """A cross-site form or simple fetch cannot set application/json without CORS."""
    assert run(post(admin, TARGET, ctype=ctype)).code == 403


@pytest.mark.parametrize("change", [{"port": 70000}, {"port": 0}, {"host": "h\u00e9"},
                                    {"public_key": "nope"}, {"host": ""},
                                    {"host": "evil\nregistered"}, {"host": "a b"}])
def test_bad_input_is_400(admin, change):
    """(A host other than a name or an address, e.g. with a line feed, is refused here:
    home servers drop a MIGRATE with such a host as malformed.)"""
    assert run(post(admin, dict(TARGET, **change))).code == 400


def test_unknown_server_is_503(admin):
    body = dict(TARGET, server=crypto.IdentityKey.generate().text)
    resp = run(post(admin, body))
    assert resp.code == 503
    assert "not registered" in json.loads(run(resp.content()))["error"]


@pytest.mark.parametrize("endpoint", ["tcp:7780", "tcp:7780:interface=0.0.0.0",
                                      "tcp:7780:interface=10.0.0.1:backlog=interface=127.0.0.1"])
def test_admin_must_listen_on_loopback(endpoint):
    with pytest.raises(ConfigError):
        check_loopback(endpoint)


@pytest.mark.parametrize("endpoint", ["tcp:7780:interface=127.0.0.1", "unix:/run/hc.sock",
                                      "tcp:7780:interface=\\:\\:1"])
def test_loopback_endpoints_accepted(endpoint):
    check_loopback(endpoint)
