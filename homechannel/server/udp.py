"""The home server's UDP transport: a thin ``DatagramProtocol`` around the
sans-I/O :class:`~homechannel.server.links.Links` (the coordinator link, and a
second one while migrating or failing over to another node of a cluster).  It
moves datagrams, runs the one timer (``ops.deadline``) and the injected
resolver, and dispatches the links' events by class (``_HANDLERS``): offers to
the answerer, a completed move to the failover file (written off the reactor,
``server/statefiles.py``), and the rest to log lines (one per failed
registration attempt, with the reason) and audit lines (logins)."""

import json
import os
import socket
from collections import OrderedDict

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from homechannel.crypto import b64u_encode
from homechannel.ops.deadline import DeadlineTimer
from homechannel.ops.logsafe import Logger
from homechannel.protocol.hostport import format_host_port, ip_family
from homechannel.server import audit
from homechannel.server.events import (
    AttemptFailed, FailedOver, FailingOver, Left, Lost, MigrateRefused, MoveFailed, Moved,
    Moving, NoticeReceived, OfferReceived, Registered, Reregistering, ResolveFailed,
    ResolveNeeded,
)
from homechannel.server.links import Links
from homechannel.server.statefiles import FailoverFile, inline

log = Logger()

LEAVE_TIMEOUT = 2.0

# Events that do not change the link's state (no status update).
_QUIET = (OfferReceived, NoticeReceived, ResolveNeeded)


def load_failover(path):
    """``(host, port, public_raw)`` from failover-coordinator.json, or None."""
    return FailoverFile(path).load()


def start_target(saved, candidates, pinned, allow_migrate=()):
    """Where the home server registers at start: ``(target, candidates, why)``.

    *saved*: the failover file's ``(host, port, key)`` (a completed move), or None;
    *candidates*: the configured ``[(host, port)]``; *pinned*: the configured key.  The
    file is used when its key is *pinned* or in *allow_migrate*, and ignored otherwise:
    the list is the authority, so taking a key off it takes the server back to the
    configured coordinator.  *why*: None (the configured coordinator), ``"moved"``
    (the file, with the configured key), ``"overridden"`` (the file, with another
    key: the pin is overridden) or ``"not-allowed"`` (the file was ignored)."""
    if saved is not None and saved[2] not in (pinned, *allow_migrate):
        return (*candidates[0], pinned), candidates, "not-allowed"
    if saved is None:
        return (*candidates[0], pinned), candidates, None
    if saved[2] != pinned:
        return saved, [], "overridden"   # another coordinator's: none of ours to fail over to
    return saved, candidates, "moved"


def literal_ip(host):
    """The resolver for addresses only: a literal IP, or a failure naming the problem."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except OSError:
            pass
    return defer.fail(OSError(f"{host} is not an IP address and no resolver was given"))


def reactor_resolver(reactor, ipv6=True):
    """Literal IPs at once; names through *reactor*'s resolver (never blocking), as
    every address the name has, IPv6 and IPv4 (a cluster's nodes may share one name;
    the links race the two families, ``server/eyeballs.py``).  With *ipv6* False (a
    host without IPv6: the UDP port is IPv4 only) only IPv4 addresses."""
    def resolve(host):
        result = literal_ip(host)
        if isinstance(result, str):
            if not ipv6 and ip_family(result) == "IPv6":
                return defer.fail(OSError(f"{host} is an IPv6 address, and this host has no "
                                          "IPv6: give coordinator.host as a name or an IPv4 "
                                          "address"))
            return result
        result.addErrback(lambda _: None)
        return _all_addresses(reactor, host, ipv6)
    return resolve


def _all_addresses(reactor, host, ipv6):
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.interfaces import IResolutionReceiver
    from zope.interface import implementer

    d = defer.Deferred()
    found = []
    kinds = [IPv4Address, IPv6Address] if ipv6 else [IPv4Address]

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution):
            pass

        def addressResolved(self, address):
            if isinstance(address, tuple(kinds)) and address.host not in found:
                found.append(address.host)

        def resolutionComplete(self):
            if found:
                d.callback(found)
            else:
                d.errback(OSError(f"{host} has no {'IPv6 or IPv4' if ipv6 else 'IPv4'} "
                                  "address"))

    reactor.nameResolver.resolveHostName(Receiver(), host, 0, kinds)
    return d


class ServerUDP(DatagramProtocol):
    def __init__(self, identity, challenges, keepalive, target, clock, answerer=None,
                 failover_path=None, resolve=None, random_bytes=os.urandom, candidates=(),
                 to_thread=inline, allow_migrate=(), pinned=None):
        """*candidates*: the ``(host, port)`` of every node of the target's cluster
        (``coordinator.addresses``), for failover; *resolve* returns (a Deferred of)
        an address or a list of addresses; *to_thread* runs the failover file's
        writes (``statefiles.reactor_threads(reactor)``; the default, ``inline``,
        only for tests under ``task.Clock``); *pinned* (the configured coordinator
        key, default the target's) and *allow_migrate* (raw keys,
        ``coordinator.allow_migrate``): where a MIGRATE may move the server."""
        self.clock = clock
        self.answerer = answerer
        self.links = Links(identity, challenges, keepalive, target, random_bytes,
                           candidates=candidates, allow_migrate=allow_migrate,
                           pinned=pinned)
        self.failover = FailoverFile(failover_path, to_thread) if failover_path else None
        self._resolve = resolve or literal_ip
        self._timer = DeadlineTimer(clock, self._fire)
        self._leaving = None
        self._audited = OrderedDict()     # session ids with an audit line (bounded)
        self.failed_logins = 0            # refused by the coordinator (NOTICE)
        self._told_devices = False        # a device policy was ever set (set_devices)
        self.on_change = lambda: None     # called when the link state changes

    # -- what others read --

    @property
    def active(self):
        return self.links.active

    @property
    def moving(self):
        return self.links.moving

    @property
    def registered(self):
        return self.links.active.registrant.state == "up"

    @property
    def coordinator(self):
        return self.links.active.name

    def status(self):
        return self.links.status()

    # -- lifecycle --

    def startProtocol(self):
        self._flush(self.links.start(self.clock.seconds()))

    def stopProtocol(self):
        self.links.stop()
        self._timer.cancel()

    def set_devices(self, policy):
        """Tell the coordinator(s) the device policy (``connect.DevicePolicy``: the
        password epoch and the enrolled devices) now, and after every registration.
        A server that has never had a device tells nothing (its coordinator keeps no
        entry for it, and accepts no device token for it)."""
        if not policy.devices and not self._told_devices:
            return
        self._told_devices = True
        self._flush(self.links.set_devices(policy.encode(), self.clock.seconds()))

    def leave(self, timeout=LEAVE_TIMEOUT):
        """Say goodbye to the coordinator (BYE); the Deferred fires when it is
        acknowledged or after *timeout* seconds, whichever is first."""
        if self._leaving is not None:
            return self._leaving
        d = self._leaving = defer.Deferred()
        self._flush(self.links.leave(self.clock.seconds()))
        if not d.called:
            guard = self.clock.callLater(timeout, self._left, False)
            d.addBoth(lambda r: guard.cancel() if guard.active() else None)
        return d

    def _left(self, acknowledged):
        if self._leaving is not None and not self._leaving.called:
            if not acknowledged:
                log.info("the coordinator did not acknowledge our goodbye in time")
            self._leaving.callback(acknowledged)

    # -- I/O --

    def datagramReceived(self, data, addr):
        try:
            out = self.links.receive(data, addr, self.clock.seconds())
        except Exception:
            log.failure("bug handling a datagram from {addr}", addr=addr)
            return
        if out is None:
            log.debug("dropped datagram from unexpected {addr}", addr=addr)
            return
        self._flush(out)

    def _flush(self, out):
        """One call's output: its datagrams sent, the timer set, then its events
        handled (a handler that calls the links again flushes and schedules itself)."""
        if self.transport is not None:
            for data, addr in out.datagrams:
                try:
                    self.transport.write(data, addr)
                except OSError as e:
                    log.debug("send to {addr} failed: {err}", addr=addr, err=e)
        self._timer.schedule(out.deadline)
        changed = False
        for link, event in out.events:
            changed = changed or not isinstance(event, _QUIET)
            handler = self._HANDLERS.get(type(event))
            if handler is None:
                continue
            try:
                handler(self, link, event)
            except Exception:
                log.failure("bug handling {event}", event=type(event).__name__)
        if changed:
            try:
                self.on_change()
            except Exception:
                log.failure("status update failed")

    def _fire(self):
        try:
            out = self.links.poll(self.clock.seconds())
        except Exception:
            log.failure("bug in the registrant timer")
            self._timer.schedule(self.links.next_deadline())
            return
        self._flush(out)

    # -- events --

    def _resolve_needed(self, link, _):
        d = defer.maybeDeferred(self._resolve, link.host)
        d.addCallbacks(
            lambda ip: self._flush(self.links.resolved(link, ip, self.clock.seconds())),
            lambda f: self._flush(self.links.resolve_failed(link, f.getErrorMessage(),
                                                            self.clock.seconds())))
        d.addErrback(lambda f: log.failure("bug after resolving {host}", f, host=link.host))

    def _registered(self, link, _):
        log.info("registered with coordinator {name} over {family} ({address})",
                 name=link.name, family=ip_family(link.addr[0]),
                 address=format_host_port(*link.addr))

    def _attempt_failed(self, link, event):
        delay = link.registrant.next_deadline()
        retry = "" if delay is None else \
            f"; trying again in {max(0.0, delay - self.clock.seconds()):.0f} s"
        log.warn("cannot register with coordinator {name}: {reason}{retry}",
                 name=link.name, reason=event.reason, retry=retry)

    def _lost(self, link, event):
        log.info("lost the coordinator {name} ({reason}); registering again",
                 name=link.name, reason=event.reason)

    def _reregistering(self, link, event):
        log.info("coordinator {name}: {reason}: registering again, keeping the current "
                 "session until then", name=link.name, reason=event.reason)

    def _resolve_failed(self, link, event):
        log.warn("cannot resolve coordinator {name}: {err}; retrying in 5 s",
                 name=link.name, err=event.reason)

    def _moving(self, link, _):
        log.info("coordinator asked us to move to {host}:{port}", host=link.host,
                 port=link.port)

    def _moved(self, link, event):
        log.info("moved from coordinator {old} to {new}", old=event.old.name, new=link.name)
        if link.key != self.links.pinned:
            log.warn("the key of coordinator {new} ({key}) now replaces the configured "
                     "coordinator.public_key (coordinator.allow_migrate allows it), also "
                     "after a restart: remove {path} to go back to the configured "
                     "coordinator", new=link.name, key=b64u_encode(link.key),
                     path=self.failover.path if self.failover else "the failover file")
        if self.failover is not None:
            self.failover.save(link.host, link.port, link.key).addErrback(
                self._save_failed, link)

    def _save_failed(self, f, link):
        if f.check(OSError):
            log.error("could not save the failover coordinator {name}: {err}",
                      name=link.name, err=f.value)
        else:
            log.failure("bug saving the failover coordinator {name}", f, name=link.name)

    def _failing_over(self, link, event):
        log.info("coordinator {old} stopped answering ({why}): registering with {name}",
                 old=self.links.active.name, why=event.reason, name=link.name)

    def _failed_over(self, link, event):
        # One name may be both (another address of it, e.g. the other IP family).
        log.info("failed over from coordinator {old} to {new}", old=_where(event.old),
                 new=_where(link))

    def _migrate_refused(self, link, event):
        log.warn("coordinator {name} asked this server to move to {host}:{port} with the "
                 "key {key}; refused: that key is not the configured coordinator.public_key "
                 "nor in coordinator.allow_migrate (add it there to allow the move)",
                 name=link.name, host=event.host, port=event.port,
                 key=b64u_encode(event.public_key))

    def _move_failed(self, link, event):
        log.warn("could not register with {name} ({reason}): staying with {old}",
                 name=link.name, reason=event.reason, old=self.links.active.name)

    def _left_coordinator(self, link, _):
        log.info("left coordinator {name}", name=link.name)
        self._left(True)

    def _offer_received(self, link, event):
        if self.answerer is None:
            log.warn("offer received but no answerer is configured")
            return
        payload = event.payload
        d = defer.maybeDeferred(self.answerer.handle_offer, payload)

        def answered(answer):
            self._audit_login(payload, answer)
            if answer:
                self._flush(self.links.send_answer(link, answer, self.clock.seconds()))

        d.addCallback(answered)
        d.addErrback(lambda f: log.failure("answering an offer failed", f))

    def _notice_received(self, link, event):
        try:
            doc = json.loads(event.body)
            source, reason = str(doc["source"]), str(doc["reason"])
        except (ValueError, KeyError, TypeError):
            log.debug("malformed notice from {name}", name=link.name)
            return
        if doc.get("event") == "login-failed":
            self.failed_logins += 1
            audit.login(False, None, source, f"{reason} (refused by the coordinator "
                                             f"{link.name})")

    # PingMissed needs no handler (the links fail over on it; the status is updated).
    _HANDLERS = {
        ResolveNeeded: _resolve_needed,
        Registered: _registered,
        AttemptFailed: _attempt_failed,
        Lost: _lost,
        Reregistering: _reregistering,
        ResolveFailed: _resolve_failed,
        Moving: _moving,
        Moved: _moved,
        MigrateRefused: _migrate_refused,
        FailingOver: _failing_over,
        FailedOver: _failed_over,
        MoveFailed: _move_failed,
        Left: _left_coordinator,
        OfferReceived: _offer_received,
        NoticeReceived: _notice_received,
    }

    def _audit_login(self, offer, answer):
        """One audit line per session: accepted or refused, with the client's
        address as the coordinator saw it (the offer's ``source``, when sent)."""
        offer_doc, answer_doc = _json(offer), _json(answer)
        session = answer_doc.get("session") or offer_doc.get("session")
        if not isinstance(session, str) or session in self._audited:
            return
        self._audited[session] = None
        while len(self._audited) > 256:
            self._audited.popitem(last=False)
        source = offer_doc.get("source")
        source = str(source)[:64] if source else None
        if "error" in answer_doc:
            audit.login(False, session, source, str(answer_doc.get("error"))[:64])
        else:
            audit.login(True, session, source)


def _where(link):
    """A link's name, with its address when that says more: ``hc.example:7777
    ([2001:db8::10]:7777)``."""
    address = format_host_port(*link.addr) if link.addr else link.name
    return link.name if address == link.name else f"{link.name} ({address})"


def _json(payload):
    try:
        doc = json.loads(bytes(payload).decode("utf-8"))
    except (TypeError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}
