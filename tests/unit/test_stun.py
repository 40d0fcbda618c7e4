"""The coordinator's STUN Binding responder (coordinator/stun.py), checked
against RFC 5769's test vectors and against an independent STUN
implementation (aioice's, the one aiortc uses), and through the rendezvous
dispatch on the registry port."""

import asyncio
import socket
import struct
from collections import Counter

import pytest
from aioice import stun as aioice_stun
from hypothesis import given, settings, strategies as st

from homechannel import crypto

from homechannel.protocol import udp
from homechannel.coordinator import stun
from homechannel.coordinator.rendezvous import Rendezvous
from homechannel.errors import ProtocolError

COORDINATOR = crypto.IdentityKey.generate()
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
# USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf")
# RFC 5769 2.2 and 2.3: the XOR-MAPPED-ADDRESS attributes of the sample responses.
RFC5769_XMA_V4 = bytes.fromhex("002000080001a147e112a643")            # 192.0.2.1:32853
RFC5769_XMA_V6 = bytes.fromhex("002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def aioice_request(fingerprint=True):
    msg = aioice_stun.Message(message_method=aioice_stun.Method.BINDING,
                              message_class=aioice_stun.Class.REQUEST)
    if fingerprint:
        msg.add_fingerprint()
    return msg


# -- the pure functions ------------------------------------------------------------


def test_rfc5769_request_parses_and_fingerprint_is_checked():
    req = stun.parse_request(RFC5769_REQUEST)
    assert req.transaction_id == TXID and req.fingerprint
    broken = bytearray(RFC5769_REQUEST)
    broken[-1] ^= 1
    with pytest.raises(ProtocolError, match="FINGERPRINT"):
        stun.parse_request(bytes(broken))


def test_rfc5769_xor_mapped_address_vectors():
    v4 = stun.binding_response(TXID, ("192.0.2.1", 32853), False)
    assert v4[20:] == RFC5769_XMA_V4
    v6 = stun.binding_response(TXID, ("2001:db8:1234:5678:11:2233:4455:6677", 32853), False)
    assert v6[20:] == RFC5769_XMA_V6
    # An IPv4-mapped source (a dual-stack socket) is answered as IPv4.
    assert stun.binding_response(TXID, ("::ffff:192.0.2.1", 32853), False)[20:] == RFC5769_XMA_V4


@pytest.mark.parametrize("addr", [("203.0.113.7", 40001), ("2001:db8::42", 1),
                                  ("198.51.100.1", 65535)])
@pytest.mark.parametrize("fingerprint", [True, False])
def test_aioice_reads_our_answer(addr, fingerprint):
    """An independent implementation (aioice) parses the response, checks the
    FINGERPRINT and finds the source address in XOR-MAPPED-ADDRESS."""
    request = aioice_request(fingerprint)
    raw = bytes(request)
    assert stun.looks_like_stun(raw)
    parsed = stun.parse_request(raw)
    assert parsed.transaction_id == request.transaction_id
    assert parsed.fingerprint is fingerprint
    reply = stun.binding_response(parsed.transaction_id, addr, parsed.fingerprint)
    assert len(reply) <= stun.MAX_RESPONSE
    msg = aioice_stun.parse_message(reply)
    assert msg.message_method == aioice_stun.Method.BINDING
    assert msg.message_class == aioice_stun.Class.RESPONSE
    assert msg.transaction_id == request.transaction_id
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert ("FINGERPRINT" in msg.attributes) is fingerprint
    if fingerprint:   # aioice does not verify it: do it here, independently
        import binascii
        assert msg.attributes["FINGERPRINT"] == \
            (binascii.crc32(stun_set_length(reply[:-8], len(reply) - 20)) ^ 0x5354554E)


def stun_set_length(data, length):
    return data[:2] + struct.pack(">H", length) + data[4:]


def test_homechannel_datagrams_are_never_stun():
    for kind in (udp.HELLO, udp.COOKIE, udp.INIT, udp.DATA, udp.UNKNOWN):
        datagram = udp.header(kind) + bytes(200)
        assert not stun.looks_like_stun(datagram)
    assert not stun.looks_like_stun(udp.hello(bytes(16)))


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d[:19], "wrong size"),
    (lambda d: b"\x40" + d[1:], "not STUN"),
    (lambda d: d[:4] + b"\x21\x12\xa4\x43" + d[8:], "not STUN"),
    (lambda d: d[:2] + b"\x00\x04" + d[4:], "bad length"),
    (lambda d: d + b"\x00\x00", "bad length"),
    (lambda d: b"\x01\x01" + d[2:], "not a Binding request"),   # a response
    (lambda d: b"\x00\x11" + d[2:], "not a Binding request"),   # an indication
    (lambda d: d[:2] + b"\x00\x04" + d[4:20] + b"\x00\x06\x00\x08", "truncated"),
    (lambda d: d[:2] + b"\x00\x10" + d[4:20] + b"\x80\x28\x00\x04\x00\x00\x00\x00"
     + b"\x00\x06\x00\x00" + b"\x00\x06\x00\x00", "FINGERPRINT"),
    (lambda d: d + bytes(1200), "wrong size"),
])
def test_malformed_requests_are_refused(mutate, reason):
    raw = bytes(aioice_request(False))
    with pytest.raises(ProtocolError, match=reason):
        stun.parse_request(mutate(raw))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_error(data):
    try:
        stun.parse_request(data)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6),
       st.integers(0, 40), st.integers(0, 255))
def test_mutated_requests_raise_only_protocol_error(attrs, position, value):
    body = b"".join(struct.pack(">HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)
    raw = bytearray(struct.pack(">HHI12s", 1, len(body), stun.MAGIC_COOKIE, TXID) + body)
    if position < len(raw):
        raw[position] = value
    try:
        req = stun.parse_request(bytes(raw))
    except ProtocolError:
        return
    assert len(stun.binding_response(req.transaction_id, ("2001:db8::1", 9), True)) \
        <= stun.MAX_RESPONSE


# -- the responder: rate limits and counters -----------------------------------------


def test_responder_limits_per_source_prefix_and_counts():
    stats = Counter()
    r = stun.StunResponder(stats, per_source_per_second=5.0, per_second=1000.0)
    raw = bytes(aioice_request())
    answered = sum(len(r.receive(raw, (f"2001:db8:0:1::{i:x}", 5000), 100.0))
                   for i in range(30))
    # One /64 is one source: a burst of 2 s worth (10), then nothing.
    assert answered == 10
    assert stats["stun-answers"] == 10
    assert stats["dropped.stun-source-rate"] == 20
    # Another /64 has its own budget, and it refills with time.
    assert r.receive(raw, ("2001:db8:0:2::1", 5000), 100.0)
    assert r.receive(raw, ("2001:db8:0:1::1", 5000), 101.0)
    assert r.receive(b"\x00\x01\x00\x00" + bytes(16), ("192.0.2.9", 1), 101.0) == []
    assert stats["dropped.stun-malformed"] == 1


def test_responder_global_budget_and_bounded_state():
    stats = Counter()
    r = stun.StunResponder(stats, per_source_per_second=1000.0, per_second=50.0)
    memory = r.limit.nbytes
    raw = bytes(aioice_request())
    answered = sum(len(r.receive(raw, (f"10.0.{i // 256}.{i % 256}", 1), 7.0))
                   for i in range(1000))
    assert answered == 50
    assert stats["dropped.stun-rate"] == 950
    for i in range(1000):
        r.receive(raw, (f"10.1.{i // 256}.{i % 256}", 1), 8.0 + i)
    assert r.limit.nbytes == memory


# -- through the rendezvous on the registry port ---------------------------------------


def test_rendezvous_answers_stun_and_still_speaks_homechannel():
    rv = Rendezvous(COORDINATOR)
    raw = bytes(aioice_request())
    [(reply, to)] = rv.receive(raw, ("198.51.100.20", 61000), 1.0).datagrams
    assert to == ("198.51.100.20", 61000)
    assert aioice_stun.parse_message(reply).attributes["XOR-MAPPED-ADDRESS"] == to
    assert rv.stats["stun-answers"] == 1
    [(cookie, _)] = rv.receive(udp.hello(bytes(16)), ("198.51.100.20", 61000), 1.0).datagrams
    assert udp.datagram_type(cookie) == udp.COOKIE
    rv.receive(raw[:-1], ("198.51.100.20", 61000), 1.0)
    assert rv.stats["dropped.stun-malformed"] == 1


def test_rendezvous_without_stun_drops_it():
    rv = Rendezvous(COORDINATOR, stun=None)
    assert rv.receive(bytes(aioice_request()), ("198.51.100.20", 61000), 1.0).datagrams == []
    assert rv.stats["stun-answers"] == 0 and rv.stats["dropped"] == 1


# -- over a real socket, with aioice's client -----------------------------------------


def test_aioice_client_gets_its_address_over_udp():
    """aioice's own STUN transaction (retransmissions, parsing) against the
    responder behind a real loopback socket."""
    from aioice.ice import StunProtocol

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    rv = Rendezvous(COORDINATOR)

    async def main():
        loop = asyncio.get_running_loop()

        def serve():
            data, addr = server.recvfrom(2048)
            for reply, to in rv.receive(data, addr, loop.time()).datagrams:
                server.sendto(reply, to)

        loop.add_reader(server.fileno(), serve)
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(None), local_addr=("127.0.0.1", 0))
            try:
                request = aioice_request(False)
                response, _ = await asyncio.wait_for(
                    protocol.request(request, server.getsockname()), 5)
                return response.attributes["XOR-MAPPED-ADDRESS"], transport.get_extra_info(
                    "sockname")
            finally:
                transport.close()
        finally:
            loop.remove_reader(server.fileno())

    try:
        mapped, local = asyncio.run(main())
    finally:
        server.close()
    assert mapped == local[:2]


def test_one_flooding_source_does_not_spend_the_global_budget():
    """The per-source budget is checked before the global one: a refused request spends
    nothing global, so a browser asking in the same second still gets its answer (with
    the order reversed this fails)."""
    import os
    import struct
    from collections import Counter

    responder = stun.StunResponder(Counter(), per_source_per_second=20, per_second=1000)

    def request():
        return struct.pack(">HHI12s", 1, 0, stun.MAGIC_COOKIE, os.urandom(12))

    for _ in range(5000):
        responder.receive(request(), ("203.0.113.66", 1234), 100.0)
    assert responder.receive(request(), ("198.51.100.7", 5555), 100.0)
