"""The home server's UDP transport: a thin ``DatagramProtocol`` that drives
one :class:`Registrant` per coordinator (two while migrating), hands offers
to the answerer, and persists a completed move in
``failover-coordinator.json``."""

import json
import os
import socket

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from homechannel import crypto
from homechannel.crypto import b64u_encode
from homechannel.errors import ConfigError, ProtocolError
from homechannel.server.registrant import Registrant

log = Logger()

MIGRATION_TIMEOUT = 30.0


def load_failover(path):
    """``(host, port, public_raw)`` from failover-coordinator.json, or None."""
    try:
        with open(path) as f:
            doc = json.load(f)
        host, port = doc["host"], int(doc["port"])
        key = crypto.parse_server_id(doc["public_key"])
        return host, port, key
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ProtocolError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); remove it to use the configured "
                          "coordinator") from None


def save_failover(path, host, port, key):
    doc = {"host": host, "port": port, "public_key": b64u_encode(key)}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Link:
    """One registrant, its coordinator and its timer."""

    def __init__(self, host, port, key, registrant):
        self.host, self.port, self.key = host, port, key
        self.registrant = registrant
        self.addr = None          # resolved (ip, port)
        self.timer = None
        self.started_at = None

    @property
    def name(self):
        return f"{self.host}:{self.port}"


class ServerUDP(DatagramProtocol):
    def __init__(self, identity, challenges, keepalive, target, clock, answerer=None,
                 failover_path=None, resolve=None, random_bytes=os.urandom):
        self.identity = identity
        self.challenges = challenges
        self.keepalive = keepalive
        self.clock = clock
        self.answerer = answerer
        self.failover_path = failover_path
        self.random_bytes = random_bytes
        self._resolve = resolve or _resolve_blocking_free
        self.active = self._link(*target)
        self.moving = None
        self.registered = False

    def _link(self, host, port, key):
        return _Link(host, port, key, Registrant(self.identity, key, self.challenges,
                                                 self.keepalive, self.random_bytes))

    # -- lifecycle --

    def startProtocol(self):
        self._start(self.active)

    def stopProtocol(self):
        for link in (self.active, self.moving):
            if link is not None:
                self._stop(link)

    def _start(self, link):
        if link.started_at is None:   # a migration's deadline counts from the first try
            link.started_at = self.clock.seconds()
        d = defer.maybeDeferred(self._resolve, link.host)

        def resolved(ip):
            if link.registrant.state == "stopped":
                return
            link.addr = (ip, link.port)
            self._send(link, link.registrant.start(self.clock.seconds()))

        def failed(f):
            if link is self.moving and \
                    self.clock.seconds() - link.started_at >= MIGRATION_TIMEOUT:
                log.warn("could not resolve {name}: staying with {old}",
                         name=link.name, old=self.active.name)
                self._stop(link)
                self.moving = None
                return
            log.warn("cannot resolve coordinator {name}: {err}; retrying in 5 s",
                     name=link.name, err=f.getErrorMessage())
            if link.registrant.state != "stopped":
                link.timer = self.clock.callLater(5.0, self._start, link)

        d.addCallbacks(resolved, failed)

    def _stop(self, link):
        link.registrant.stop()
        if link.timer is not None and link.timer.active():
            link.timer.cancel()
        link.timer = None

    # -- I/O --

    def datagramReceived(self, data, addr):
        for link in (self.active, self.moving):
            if link is not None and link.addr is not None and addr == link.addr:
                try:
                    out = link.registrant.receive(data, self.clock.seconds())
                except Exception:
                    log.failure("bug handling a datagram from {addr}", addr=addr)
                    return
                self._send(link, out)
                return
        log.debug("dropped datagram from unexpected {addr}", addr=addr)

    def _send(self, link, out):
        if self.transport is not None and link.addr is not None:
            for data in out:
                try:
                    self.transport.write(data, link.addr)
                except OSError as e:
                    log.debug("send to {addr} failed: {err}", addr=link.addr, err=e)
        self._events(link)
        self._reschedule(link)

    def _reschedule(self, link):
        if link.timer is not None and link.timer.active():
            link.timer.cancel()
        link.timer = None
        when = link.registrant.next_deadline()
        if self.moving is link and link.started_at is not None:
            give_up = link.started_at + MIGRATION_TIMEOUT
            when = give_up if when is None else min(when, give_up)
        if when is not None:
            link.timer = self.clock.callLater(max(0.0, when - self.clock.seconds()),
                                              self._fire, link)

    def _fire(self, link):
        link.timer = None
        now = self.clock.seconds()
        if self.moving is link and now >= link.started_at + MIGRATION_TIMEOUT \
                and link.registrant.state != "up":
            log.warn("could not register with {name}: staying with {old}",
                     name=link.name, old=self.active.name)
            self._stop(link)
            self.moving = None
            return
        try:
            out = link.registrant.poll(now)
        except Exception:
            log.failure("bug in the registrant timer")
            out = []
        self._send(link, out)

    # -- events --

    def _events(self, link):
        for kind, value in link.registrant.pop_events():
            if kind == "registered":
                self._on_registered(link)
            elif kind == "lost":
                if link is self.active:
                    self.registered = False
                log.info("lost the coordinator {name} ({reason}); registering again",
                         name=link.name, reason=value)
            elif kind == "offer":
                self._on_offer(link, value)
            elif kind == "migrate":
                self._on_migrate(*value)
            elif kind == "notice":
                self._on_notice(link, value)

    def _on_registered(self, link):
        if link is self.moving:
            old = self.active
            self.active, self.moving = link, None
            self._stop(old)
            if self.failover_path:
                try:
                    save_failover(self.failover_path, link.host, link.port, link.key)
                except OSError as e:
                    log.error("could not save {path}: {err}", path=self.failover_path, err=e)
            log.info("moved from coordinator {old} to {new}", old=old.name, new=link.name)
        self.registered = True
        log.info("registered with coordinator {name}", name=link.name)

    def _on_offer(self, link, payload):
        if self.answerer is None:
            log.warn("offer received but no answerer is configured")
            return
        d = defer.maybeDeferred(self.answerer.handle_offer, payload)

        def answered(answer):
            if answer:
                self._send(link, link.registrant.send_answer(answer, self.clock.seconds()))

        d.addCallback(answered)
        d.addErrback(lambda f: log.failure("answering an offer failed", f))

    def _on_notice(self, link, body):
        try:
            doc = json.loads(body)
            source, reason = str(doc["source"]), str(doc["reason"])
        except (ValueError, KeyError, TypeError):
            log.debug("malformed notice from {name}", name=link.name)
            return
        if doc.get("event") == "login-failed":
            log.warn("login failed from {source}: {reason} (refused by the coordinator "
                     "{name})", source=source, reason=reason, name=link.name)

    def _on_migrate(self, host, port, key):
        if self.moving is not None:
            if (self.moving.host, self.moving.port, self.moving.key) == (host, port, key):
                return
            self._stop(self.moving)
        if (host, port, key) == (self.active.host, self.active.port, self.active.key):
            return
        log.info("coordinator asked us to move to {host}:{port}", host=host, port=port)
        self.moving = self._link(host, port, key)
        self._start(self.moving)

    @property
    def coordinator(self):
        return self.active.name


def _resolve_blocking_free(host):
    """Literal IPs resolve at once; names go through the reactor's resolver."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except OSError:
            pass
    from twisted.internet import reactor
    return reactor.resolve(host)



