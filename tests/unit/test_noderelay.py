"""The messages between cluster nodes and the table of relayed offers, sans I/O
(``coordinator/cluster/noderelay.py``), and the parsing of session completions: garbage
is a ProtocolError (a counted drop) or ignored, never a crash."""

import json

import pytest
from hypothesis import given, strategies as st
from twisted.internet import task

from homechannel.coordinator.cluster import noderelay
from homechannel.coordinator.cluster.clusterkey import ClusterKey
from homechannel.coordinator.cluster.redissessions import RedisSessionStore
from homechannel.coordinator.cluster.redisstore import RedisStore
from homechannel.errors import (CapacityError, ProtocolError, TooManyRequests, from_response,
                                to_response)

KID = b"k" * 16


def test_messages_round_trip():
    msg = noderelay.decode(noderelay.offer(7, "node-1", KID, b"{}"))
    assert (msg.kind, msg.id, msg.sender, msg.kid, msg.payload) == (
        noderelay.OFFER, 7, "node-1", KID, b"{}")
    msg = noderelay.decode(noderelay.result(2 ** 64 - 1, False, "no ack"))
    assert (msg.kind, msg.id, msg.ok, msg.payload) == (noderelay.RESULT, 2 ** 64 - 1, False,
                                                       b"no ack")
    assert noderelay.decode(noderelay.result(3, True)).ok
    msg = noderelay.decode(noderelay.notice(KID, b'{"event":"login-failed"}'))
    assert (msg.kind, msg.kid, msg.payload) == (noderelay.NOTICE, KID,
                                                b'{"event":"login-failed"}')
    assert noderelay.decode(noderelay.refill(KID)).kid == KID


@pytest.mark.parametrize("junk", [
    b"", b"O", b"O" + bytes(9), b"O" + bytes(8) + b"\x05ab", b"R" + bytes(8),
    b"R" + bytes(8) + b"\x07", b"N" + bytes(16), b"N" + bytes(16) + b"x" * 513,
    b"F" + bytes(3), b"Z" * 40, noderelay.offer(1, "n", KID, b"x")[:-1]])
def test_garbage_is_a_protocol_error(junk):
    with pytest.raises(ProtocolError):
        noderelay.decode(junk)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data):
    try:
        noderelay.decode(data)
    except ProtocolError:
        pass


def test_pending_offers_resolve_once_and_expire():
    pending = noderelay.PendingOffers(deadline=15.0, first_id=10)
    seen = []
    a = pending.add(lambda ok, m: seen.append(("a", ok, m)), now=100.0)
    b = pending.add(lambda ok, m: seen.append(("b", ok, m)), now=105.0)
    assert pending.next_deadline() == 115.0 and len(pending) == 2
    assert pending.resolve(a, True)
    assert not pending.resolve(a, False, "late")
    assert pending.expire(119.0) == 0 and pending.expire(120.0) == 1
    assert seen == [("a", True, ""), ("b", False, "the home server's coordinator node did "
                                                   "not answer")]
    assert pending.next_deadline() is None and not pending.resolve(b, True)


def test_completions_that_do_not_parse_are_ignored():
    """A message on the ``done`` channel that does not parse is dropped without a
    word to Redis (the store has no client to send one with)."""
    store = RedisSessionStore(RedisStore(None, ClusterKey(bytes(32))), task.Clock())
    for junk in (b"nospace", b"\xff\xfe a {}", b"", b"s" * 22 + b" a not-sealed"):
        store.completed(junk)


def test_errors_cross_nodes_with_their_status_code_and_fields():
    """A session's error goes between nodes as the API's answer for it (one mapping,
    ``errors.to_response``) and comes back as the same status, code, message and fields."""
    err = from_response(*json.loads(json.dumps(to_response(CapacityError("full", "busy")))))
    assert (err.status, err.code, str(err)) == (503, "busy", "full")
    err = from_response(*to_response(TooManyRequests("slow", "rate-limited", retry_after=7,
                                                     maxUpload=3)))
    assert (err.status, err.retry_after, err.extra) == (429, 7, {"maxUpload": 3})
    assert to_response(err) == (429, {"error": "slow", "code": "rate-limited",
                                      "retry_after": 7, "maxUpload": 3})
