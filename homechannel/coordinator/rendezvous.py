"""The coordinator's side of the UDP protocol, sans I/O.

``Rendezvous.receive(data, addr, now)``, ``poll(now)`` and every request
(``send_offer``, ``notify``, ``migrate``, ...) return an
:class:`~homechannel.protocol.events.Output`: the datagrams to send as
``[(bytes, addr)]``, the events for the application
(:mod:`homechannel.coordinator.events`: a complete ANSWER, an offer
acknowledged or failed, a challenge pool set, a server forgotten) and the
next deadline, when the adapter (``coordinator/udp.py``) calls ``poll``
again.  Nothing here calls back into the application, and nothing raises on
hostile input: every drop is counted in ``self.stats`` under a reason.

Every table here has a global cap and, inside it, a share per source network
(``ratelimit.source_key``: IPv6 /64, IPv4 address): pending handshakes
(``max_handshakes_per_source``), registered servers (the registry's
``max_per_source``) and the bytes of incomplete ANSWER transfers
(``reassembly_bytes`` in all, ``reassembly_bytes_per_source``).  A flood from
one source, with any number of throwaway server keys, fills only its share.
"""

import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias


from homechannel import crypto

from homechannel.ops.logsafe import Logger
from homechannel.protocol import udp
from homechannel.protocol.connect import DevicePolicy
from homechannel.coordinator import stun as stun_
from homechannel.coordinator.events import (
    AnswerReceived, DevicesUpdated, OfferAcknowledged, OfferFailed, PoolUpdated,
    ServerForgotten,
)
from homechannel.coordinator.interfaces import IRegistry
from homechannel.coordinator.ratelimit import source_key
from homechannel.coordinator.registry import Registry, pack_addr
from homechannel.coordinator.shares import Shares
from homechannel.coordinator.udplimits import UdpLimit
from homechannel.errors import (
    AuthenticationError, CapacityError, ProtocolError, Unavailable,
)
from homechannel.protocol.events import Event, Output
from homechannel.protocol.retransmit import Outstanding
from homechannel.protocol.hostport import format_host_port
from homechannel.protocol.udp import Address, Datagrams

log = Logger()

RendezvousOutput: TypeAlias = Output[tuple[bytes, Address], Event]
_NO_EVENTS: tuple[Event, ...] = ()

_DATA_HEADER = udp.header(udp.DATA)
_RID = struct.Struct(">I")

COOKIE_EPOCH = 60.0          # seconds; a cookie is valid in its epoch and the next
HANDSHAKE_TTL = 30.0         # a pending handshake is kept this long
ANSWER_WINDOW = 60.0         # answers are accepted this long after an offer to that server
OFFER_DEADLINE = 10.0        # an offer not acknowledged by then fails
REFILL_DEADLINE = 30.0
MIGRATE_DEADLINE = 30.0
NOTICE_DEADLINE = 30.0
# Signed UNKNOWN replies to one source network: 5 a second, in bursts of 50 (a
# carrier-grade NAT's home servers all meet one after a coordinator restart).
UNKNOWN_PER_SOURCE_PER_SECOND = 5.0
UNKNOWN_PER_SOURCE_BURST = 50.0


@dataclass
class _Pending:
    addr: Address
    init: bytes
    created: float
    th: bytes
    server_key: bytes
    rx_key: bytes
    tx_key: bytes
    resp: bytes
    source: str
    done: bool = False


class Rendezvous:
    """Registers home servers and relays offers and answers to them."""

    def __init__(self, identity: crypto.IdentityKey, registry: IRegistry | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 max_handshakes: int = 10_000, unknown_replies_per_second: float = 1000.0,
                 per_source_per_second: float = 20.0, max_transfers_per_server: int = 4,
                 max_in_flight: int = 50_000, hellos_per_second: float = 50_000.0,
                 max_handshakes_per_source: int = 100, reassembly_bytes: int = 32 * 1024 * 1024,
                 reassembly_bytes_per_source: int = 1024 * 1024,
                 stun: stun_.StunResponder | Literal[True] | None = True) -> None:
        self.identity = identity
        self.registry: IRegistry = registry if registry is not None else Registry()
        self.random_bytes = random_bytes
        self.max_handshakes = max_handshakes
        self._handshakes_by_source = Shares(max_handshakes_per_source)
        self.stats: Counter[str] = Counter()
        self.received = 0
        self._events: list[Event] = []     # of the call in progress (see _output)
        # STUN Binding requests on the same port (coordinator/stun.py); True
        # for the defaults, a StunResponder, or None to refuse them.
        if stun is True:
            stun = stun_.StunResponder(self.stats, random_bytes=random_bytes)
        self.stun = stun
        self._cookie_secrets: dict[int, bytes] = {}
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()      # nonce -> _Pending
        # Rate limits per source network (with the /56 and /48 tiers) in fixed memory
        # that no flood can reset (udplimits.py), the source's checked first:
        # HELLO is answered before the source proved its address, so one source may
        # take only its share of the budget in all; INIT, after the cookie, has a
        # limit per source; the signed UNKNOWN (a signature each) has both, so one
        # host cannot spend the budget in all and delay every other server's fast
        # re-registration.
        self._hello_limit = UdpLimit(max(1.0, per_source_per_second),
                                     2 * max(1.0, per_source_per_second),
                                     max(1.0, hellos_per_second), random_bytes=random_bytes)
        self._init_limit = UdpLimit(max(1.0, per_source_per_second),
                                    2 * max(1.0, per_source_per_second),
                                    random_bytes=random_bytes)
        self._unknown_limit = UdpLimit(UNKNOWN_PER_SOURCE_PER_SECOND, UNKNOWN_PER_SOURCE_BURST,
                                       max(1.0, unknown_replies_per_second),
                                       random_bytes=random_bytes)
        # kid -> (its reassembly, its source network)
        self._reassembly: dict[bytes, tuple[udp.Reassembly, str]] = {}
        self.reassembly_bytes = reassembly_bytes
        self._reassembled = 0              # bytes held by all of them
        self._reassembly_by_source = Shares(reassembly_bytes_per_source)
        self._awaiting: dict[bytes, float] = {}  # kid -> until when an ANSWER is accepted
        self._max_transfers = max_transfers_per_server
        self._out: Outstanding[tuple[bytes, int]] = Outstanding(
            rto=0.5, rto_max=2.0, limit=max_in_flight)
        # (kid, "offer", transfer id) -> (its fragments' rids not yet acknowledged, offer_id)
        self._offers: dict[tuple[bytes, str, int], tuple[set[int], int]] = {}
        self._refilling: set[bytes] = set()  # kids with a REFILL in flight
        self._next_id = int.from_bytes(random_bytes(4), "big") & 0x7FFFFFFF

    # -- helpers ------------------------------------------------------------

    def _output(self, datagrams: Datagrams) -> RendezvousOutput:
        """The datagrams of one call, with the events it raised and the next deadline."""
        events: list[Event] | tuple[Event, ...] = self._events
        if events:
            self._events = []
        else:
            events = _NO_EVENTS
        return Output(datagrams, events, self._out.next_deadline())

    def _drop(self, reason: str) -> Datagrams:
        self.stats["dropped"] += 1
        self.stats["dropped." + reason] += 1
        log.debug("dropped datagram: {reason}", reason=reason)
        return []

    def _rid(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def _cookie_secret(self, epoch: int) -> bytes:
        secret = self._cookie_secrets.get(epoch)
        if secret is None:
            secret = self.random_bytes(32)
            self._cookie_secrets = {e: s for e, s in self._cookie_secrets.items()
                                    if e >= epoch - 1}
            self._cookie_secrets[epoch] = secret
        return secret

    def _cookie(self, addr: Address, nonce: bytes, epoch: int) -> bytes:
        mac = crypto.hmac_sha256(self._cookie_secret(epoch),
                                 struct.pack(">I", epoch) + pack_addr(addr) + nonce)
        return struct.pack(">I", epoch) + mac[:16]

    def _cookie_ok(self, addr: Address, nonce: bytes, value: bytes, now: float) -> bool:
        epoch = struct.unpack(">I", value[:4])[0]
        current = int(now // COOKIE_EPOCH)
        if epoch not in (current, current - 1) or epoch not in self._cookie_secrets:
            return False
        return crypto.constant_time_equal(self._cookie(addr, nonce, epoch), value)

    # -- input --------------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> RendezvousOutput:
        """One datagram in; datagrams, events and the next deadline out.  Never
        raises on bad input."""
        return self._output(self._receive(data, addr, now))

    def _receive(self, data: bytes, addr: Address, now: float) -> Datagrams:
        self.received += 1
        try:
            if data[:4] == _DATA_HEADER and len(data) <= udp.MAX_DATAGRAM:
                return self._data(data, addr, now)   # the hot path: pings
            if self.stun is not None and stun_.looks_like_stun(data):
                return self.stun.receive(data, addr, now)
            kind = udp.datagram_type(data)
            if kind == udp.DATA:
                return self._data(data, addr, now)
            if kind == udp.HELLO:
                return self._hello(data, addr, now)
            if kind == udp.INIT:
                return self._init(data, addr, now)
            if kind == udp.FINISH:
                return self._finish(data, addr, now)
            return self._drop("unexpected-type")
        except ProtocolError:
            return self._drop("malformed")
        except AuthenticationError:
            return self._drop("unauthenticated")
        except (OSError, ValueError, OverflowError):
            return self._drop("bad-address")   # e.g. a scoped IPv6 source

    def _hello(self, data: bytes, addr: Address, now: float) -> Datagrams:
        nonce = udp.parse_hello(data)
        refused = self._hello_limit.admit(addr, now)
        if refused is not None:
            return self._drop("hello-" + refused)
        epoch = int(now // COOKIE_EPOCH)
        self.stats["cookies"] += 1
        return [(udp.cookie(nonce, self._cookie(addr, nonce, epoch)), addr)]

    def _init(self, data: bytes, addr: Address, now: float) -> Datagrams:
        msg = udp.parse_init(data)
        pending = self._pending.get(msg.nonce)
        if pending is not None:
            if pending.addr == addr and pending.init == data:
                self.stats["resp-resent"] += 1
                return [(pending.resp, addr)]
            return self._drop("nonce-reuse")
        if not self._cookie_ok(addr, msg.nonce, msg.cookie, now):
            return self._drop("bad-cookie")
        if self._init_limit.admit(addr, now) is not None:
            return self._drop("source-rate")
        self._expire_handshakes(now)
        if len(self._pending) >= self.max_handshakes:
            return self._drop("handshakes-full")
        source = source_key(addr[0])
        if not self._handshakes_by_source.room(source):
            return self._drop("handshakes-source-full")
        crypto.public_key_from_raw(msg.identity)
        eph = crypto.Ephemeral()
        shared = eph.shared_secret(msg.ephemeral)
        th = udp.transcript_hash(data, eph.public_raw)
        rx_key, tx_key = crypto.session_keys(shared, th)
        sig = self.identity.sign(udp.RESP_LABEL + th)
        resp = udp.resp(msg.nonce, eph.public_raw, sig)
        self._pending[msg.nonce] = _Pending(addr, data, now, th, msg.identity,
                                            rx_key, tx_key, resp, source)
        self._handshakes_by_source.take(source)
        return [(resp, addr)]

    def _finish(self, data: bytes, addr: Address, now: float) -> Datagrams:
        nonce, sig, counter, aad, ct = udp.parse_finish(data)
        pending = self._pending.get(nonce)
        if pending is None or pending.addr != addr:
            return self._drop("unknown-handshake")
        kid = crypto.key_id(pending.server_key)
        if pending.done:
            slot = self.registry.lookup_key(kid)
            if slot < 0 or self.registry.keys(slot) != (pending.rx_key, pending.tx_key):
                return self._drop("stale-handshake")
            plain = crypto.open_sealed(pending.rx_key, counter, ct, aad)
            _, rid, _ = udp.parse_inner(plain)
            self.stats["registered-resent"] += 1
            return [(self.registry.seal(slot, udp.inner(udp.REGISTERED, rid)), addr)]
        crypto.verify(pending.server_key, sig, udp.FINISH_LABEL + pending.th)
        plain = crypto.open_sealed(pending.rx_key, counter, ct, aad)
        kind, rid, body = udp.parse_inner(plain)
        if kind != udp.REGISTER:
            return self._drop("finish-not-register")
        pairs = udp.parse_pairs(body)
        try:
            slot = self.registry.register(kid, addr, pending.rx_key, pending.tx_key, now)
        except CapacityError as e:
            if e.extra.get("share") == "source":
                return self._drop("registry-source-full")   # hostile or misconfigured: debug
            log.warn("refused registration of {server} from {addr}: {reason}",
                     server=crypto.b64u_encode(pending.server_key)[:12], addr=addr, reason=str(e))
            self._drop("registry-full")
            return [(self._refusal(pending, rid, str(e) or e.code), addr)]
        self.registry.accept_counter(slot, counter)
        self.registry.set_pool(slot, pairs)
        self._events.append(PoolUpdated(kid, tuple(pairs), True))
        pending.done = True
        self.stats["registered"] += 1
        log.info("registered {server} from {addr}",
                 server=crypto.b64u_encode(pending.server_key)[:12],
                 addr=format_host_port(addr[0], addr[1]))
        return [(self.registry.seal(slot, udp.inner(udp.REGISTERED, rid)), addr)]

    def _refusal(self, pending: "_Pending", rid: int, reason: str) -> bytes:
        """REFUSED, sealed with the handshake's keys (the server proved its key,
        so it may learn why): see ``udp.REFUSAL_COUNTER_BIT``."""
        self.stats["refused"] += 1
        counter = udp.REFUSAL_COUNTER_BIT | (
            int.from_bytes(self.random_bytes(8), "big") >> 1)
        return udp.seal_data(pending.tx_key, counter,
                              udp.inner(udp.REFUSED, rid, udp.refusal(reason)))

    def _expire_handshakes(self, now: float) -> None:
        while self._pending:
            nonce, p = next(iter(self._pending.items()))
            if now - p.created < HANDSHAKE_TTL:
                break
            del self._pending[nonce]
            self._handshakes_by_source.give_back(p.source)

    def _data(self, data: bytes, addr: Address, now: float) -> Datagrams:
        slot = self.registry.lookup_addr(addr)
        if slot < 0:
            return self._unknown(data, addr, now)
        opened = self.registry.open(slot, data, now)
        if opened is None:
            return self._drop("replay")
        plain = opened[1]
        if plain[0] == udp.PING:
            rid = _RID.unpack_from(plain, 1)[0]
            self.stats["pings"] += 1
            return [(self.registry.seal(slot, udp.inner(udp.PONG, rid)), addr)]
        kind, rid, body = udp.parse_inner(plain)
        kid = self.registry.key_id(slot)
        if kind == udp.CHALLENGES:
            generation, pairs = udp.parse_generation_pairs(body)
            if self.registry.replace_pool(slot, generation, pairs):
                self.stats["challenge-refresh"] += 1
                self._events.append(PoolUpdated(kid, tuple(pairs), True))
            else:
                self.stats["challenge-refresh-stale"] += 1
            return [(self.registry.seal(slot, udp.inner(udp.CHALLENGES_ACK, rid)), addr)]
        if kind == udp.XFER:
            return self._fragment(slot, kid, rid, body, addr, now)
        if kind == udp.DEVICES:
            return self._devices(slot, kid, rid, body, addr)
        if kind == udp.BYE:
            return self._bye(slot, kid, rid, addr)
        if kind in udp.REPLIES:
            return self._reply(slot, kid, kind, rid, body)
        return self._drop("unexpected-message")

    def _bye(self, slot: int, kid: bytes, rid: int, addr: Address) -> Datagrams:
        """The server is stopping: acknowledge, then forget it at once (a lost
        BYE_ACK makes its resent BYE an UNKNOWN, which it also takes as done)."""
        ack = self.registry.seal(slot, udp.inner(udp.BYE_ACK, rid))
        self.registry.remove(slot)
        self._awaiting.pop(kid, None)
        self._forget_reassembly(kid)
        self._refilling.discard(kid)
        self._events.append(ServerForgotten(kid))
        self.stats["bye"] += 1
        log.info("server {kid} left", kid=kid.hex()[:12])
        return [(ack, addr)]

    def _devices(self, slot: int, kid: bytes, rid: int, body: bytes,
                 addr: Address) -> Datagrams:
        """DEVICES: the server's password epoch and enrolled devices, for the door
        check of device tokens (``broker``).  Acknowledged always (idempotent); the
        table keeps the newest generation of this registration (a tag of its keys)."""
        generation, encoded = udp.parse_devices(body)
        policy = DevicePolicy.decode(encoded)
        self.stats["devices"] += 1
        self._events.append(DevicesUpdated(kid, crypto.sha256(self.registry.keys(slot)[0])[:8],
                                           generation, policy))
        return [(self.registry.seal(slot, udp.inner(udp.DEVICES_ACK, rid)), addr)]

    def _unknown(self, data: bytes, addr: Address, now: float) -> Datagrams:
        # Authenticated "unknown, re-register": only for datagrams at least as
        # large as the reply, and globally rate-limited (each costs a signature).
        if len(data) < udp.UNKNOWN_SIZE:
            return self._drop("unknown-short")
        refused = self._unknown_limit.admit(addr, now)
        if refused is not None:
            return self._drop("unknown-" + refused)
        ref = udp.unknown_reference(data)
        self.stats["unknown-replies"] += 1
        return [(udp.unknown(ref, self.identity.sign(udp.UNKNOWN_LABEL + ref)), addr)]

    def _fragment(self, slot: int, kid: bytes, rid: int, body: bytes, addr: Address,
                  now: float) -> Datagrams:
        frag = udp.parse_fragment(body)
        if frag.kind != udp.KIND_ANSWER:
            return self._drop("unexpected-transfer")
        # Only servers we recently sent an offer to may send answers: reassembly
        # memory is bounded by offers in flight, not by what servers send.
        if self._awaiting.get(kid, 0.0) < now:
            return self._drop("unsolicited-answer")
        entry = self._reassembly.get(kid)
        if entry is None:
            entry = self._reassembly[kid] = (udp.Reassembly(self._max_transfers),
                                             source_key(addr[0]))
        reasm, source = entry
        cost = reasm.cost(frag)
        if cost:
            # Not acknowledged: the server sends it again, maybe into room.
            if self._reassembled + cost > self.reassembly_bytes:
                return self._drop("reassembly-full")
            if not self._reassembly_by_source.room(source, cost):
                return self._drop("reassembly-source-full")
        before = reasm.buffered
        try:
            payload = reasm.add(frag, now)
        finally:
            self._reassembly_moved(source, reasm.buffered - before)
        out = [(self.registry.seal(slot, udp.inner(
            udp.XFER_ACK, rid, udp.fragment_ack(frag.transfer, frag.index))), addr)]
        if payload is not None:
            self.stats["answers"] += 1
            self._events.append(AnswerReceived(kid, payload))
        return out

    def _reply(self, slot: int, kid: bytes, kind: int, rid: int, body: bytes) -> Datagrams:
        req = self._out.pop((kid, rid))
        if req is None:
            return self._drop("unexpected-reply")
        if kind == udp.XFER_ACK:
            tkey = req.context
            offer = self._offers.get(tkey)
            if offer is not None:
                offer[0].discard(rid)
                if not offer[0]:
                    del self._offers[tkey]
                    self._events.append(OfferAcknowledged(kid, offer[1]))
        elif kind == udp.REFILL_REPLY:
            self._refilling.discard(kid)
            pairs = udp.parse_pairs(body)
            self.registry.set_pool(slot, pairs, replace=False)
            self.stats["refilled"] += 1
            self._events.append(PoolUpdated(kid, tuple(pairs), False))
        elif kind == udp.NOTICE_ACK:
            pass
        elif kind == udp.MIGRATE_ACK:
            if body:      # refused: the reason (older servers send nothing and move)
                self.stats["migrate-refused"] += 1
                log.warn("server {kid} refused the move: {reason}", kid=kid.hex()[:12],
                         reason=udp.parse_refusal(body))
            else:
                self.stats["migrate-acked"] += 1
                log.info("server {kid} acknowledged the move", kid=kid.hex()[:12])
        return []

    # -- requests from the coordinator ----------------------------------------

    def _request(self, slot: int, kid: bytes, kind: int, body: bytes, now: float,
                 deadline: float, context: Any = None) -> tuple[int, tuple[bytes, Address]]:
        rid = self._rid()
        message = udp.inner(kind, rid, body)
        self._out.add((kid, rid), message, now, deadline=now + deadline, context=context)
        return rid, (self.registry.seal(slot, message), self.registry.addr(slot))

    def send_offer(self, kid: bytes, payload: bytes, now: float,
                   offer_id: int) -> RendezvousOutput:
        """Relay *payload* as an OFFER transfer.  ``OfferAcknowledged(kid, offer_id)``
        comes out once every fragment is acknowledged, ``OfferFailed(kid, offer_id,
        reason)`` if it cannot be (at once when the server is not registered here)."""
        return self._output(self._send_offer(kid, payload, now, offer_id))

    def _send_offer(self, kid: bytes, payload: bytes, now: float, offer_id: int) -> Datagrams:
        slot = self.registry.lookup_key(kid)
        if slot < 0:
            self._events.append(OfferFailed(kid, offer_id, "home server is offline"))
            return []
        tid = self._rid()
        tkey = (kid, "offer", tid)
        out, rids = [], set()
        try:
            for body in udp.split(tid, udp.KIND_OFFER, payload):
                rid, dgram = self._request(slot, kid, udp.XFER, body, now, OFFER_DEADLINE, tkey)
                rids.add(rid)
                out.append(dgram)
        except OverflowError:
            for rid in rids:
                self._out.pop((kid, rid))
            self._events.append(OfferFailed(kid, offer_id, "coordinator is busy, try again"))
            return []
        self._offers[tkey] = (rids, offer_id)
        self._awaiting[kid] = now + ANSWER_WINDOW
        self.stats["offers"] += 1
        return out

    def request_refill(self, kid: bytes, now: float, count: int = 2) -> RendezvousOutput:
        """Ask the server for *count* fresh challenges (one REFILL in flight)."""
        return self._output(self._request_refill(kid, now, count))

    def _request_refill(self, kid: bytes, now: float, count: int = 2) -> Datagrams:
        slot = self.registry.lookup_key(kid)
        if slot < 0:
            return []
        if kid in self._refilling:
            return []  # one in flight is enough
        try:
            _, dgram = self._request(slot, kid, udp.REFILL, bytes([count]), now,
                                     REFILL_DEADLINE, ("refill", kid))
        except OverflowError:
            return self._drop("in-flight-full")
        self._refilling.add(kid)
        return [dgram]

    def notify(self, kid: bytes, body: bytes, now: float) -> RendezvousOutput:
        """A NOTICE (UTF-8 JSON, at most 512 bytes) to the server; best effort."""
        return self._output(self._notify(kid, body, now))

    def _notify(self, kid: bytes, body: bytes, now: float) -> Datagrams:
        slot = self.registry.lookup_key(kid)
        if slot < 0 or len(body) > udp.MAX_NOTICE:
            return []
        if len(self._out) * 2 > self._out.limit:
            return self._drop("notice-busy")   # offers come first
        try:
            _, dgram = self._request(slot, kid, udp.NOTICE, body, now, NOTICE_DEADLINE)
        except OverflowError:
            return self._drop("in-flight-full")
        self.stats["notices"] += 1
        return [dgram]

    def migrate(self, kid: bytes, host: str, port: int, public_raw: bytes,
                now: float) -> RendezvousOutput:
        """Tell the server to move to another coordinator; raises ``Unavailable``
        when it is not registered here or too many requests are in flight."""
        slot = self.registry.lookup_key(kid)
        if slot < 0:
            raise Unavailable("that home server is not registered here")
        try:
            _, dgram = self._request(slot, kid, udp.MIGRATE,
                                     udp.migrate(host, port, public_raw), now, MIGRATE_DEADLINE)
        except OverflowError:
            raise Unavailable("too many requests in flight: try again shortly") from None
        self.stats["migrate-sent"] += 1
        return self._output([dgram])

    # -- the relay's view of the pool -------------------------------------------

    def server_status(self, kid: bytes) -> tuple[bool, bytes | None]:
        slot = self.registry.lookup_key(kid)
        if slot < 0:
            return False, None
        return True, self.registry.peek_challenge(slot)

    def take_challenge(self, kid: bytes, challenge: bytes,
                       now: float) -> tuple[bytes | None, RendezvousOutput]:
        """Consume *challenge*; returns ``(expectedAnswer or None, output)`` (a
        REFILL when the pool runs short)."""
        slot = self.registry.lookup_key(kid)
        if slot < 0:
            return None, self._output([])
        expected = self.registry.take_challenge(slot, challenge)
        out: Datagrams = []
        if expected is not None and len(self.registry.pool(slot)) < 2:
            out = self._request_refill(kid, now)
        return expected, self._output(out)

    # -- time -------------------------------------------------------------------

    def poll(self, now: float) -> RendezvousOutput:
        """Retransmissions due by *now*, and the offers that failed by then."""
        resend, expired = self._out.due(now)
        out = []
        for req in resend:
            kid = req.key[0]
            slot = self.registry.lookup_key(kid)
            if slot < 0:
                self._out.pop(req.key)
                expired.append(req)
                continue
            out.append((self.registry.seal(slot, req.message), self.registry.addr(slot)))
            self.stats["retransmits"] += 1
        for req in expired:
            tkey = req.context
            if isinstance(tkey, tuple) and tkey[0] == "refill":
                self._refilling.discard(tkey[1])
                continue
            offer = self._offers.pop(tkey, None) if tkey is not None else None
            if offer is not None:
                for rid in offer[0]:
                    self._out.pop((tkey[0], rid))
                self._events.append(OfferFailed(tkey[0], offer[1],
                                                "the home server did not acknowledge the offer"))
        return self._output(out)

    def next_deadline(self) -> float | None:
        """When to call ``poll`` (also in every :class:`Output`)."""
        return self._out.next_deadline()

    def expire(self, now: float, max_age: float, budget: int = 20_000) -> RendezvousOutput:
        """Forget servers silent for more than *max_age* seconds (scanning at most
        *budget* registry slots), handshakes and incomplete answers past their time:
        a ``ServerForgotten`` event for each server."""
        removed = self.registry.expire(
            now, max_age, budget, lambda kid: self._events.append(ServerForgotten(kid)))
        if removed:
            self.stats["expired"] += removed
        self._expire_handshakes(now)
        for kid in [k for k, until in self._awaiting.items() if until < now]:
            del self._awaiting[kid]
            self._forget_reassembly(kid)
        for reasm, source in self._reassembly.values():
            before = reasm.buffered
            reasm.expire(now)
            self._reassembly_moved(source, reasm.buffered - before)
        return self._output([])

    def _forget_reassembly(self, kid: bytes) -> None:
        """Drop the server's incomplete answers and give their bytes back to the budgets."""
        entry = self._reassembly.pop(kid, None)
        if entry is not None:
            self._reassembly_moved(entry[1], -entry[0].buffered)

    def _reassembly_moved(self, source: str, delta: int) -> None:
        """Reassembly buffers of *source* grew (or shrank) by *delta* bytes."""
        self._reassembled += delta
        if delta > 0:
            self._reassembly_by_source.take(source, delta)
        else:
            self._reassembly_by_source.give_back(source, -delta)

    @property
    def reassembled(self) -> int:
        """Bytes held in incomplete ANSWER transfers."""
        return self._reassembled
