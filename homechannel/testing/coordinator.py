"""Public test doubles for the coordinator's seams.

:class:`LoopClock` is an ``IReactorTime`` on a plain asyncio loop, for tests
of the cluster's Redis modules without Twisted's asyncio reactor.

:func:`at_once` runs a coroutine of an in-memory seam (the seams are ``async
def``, ``coordinator/interfaces.py``), which finishes without waiting, and
gives its result or raises its error.

:class:`FakeRelay` implements :class:`~homechannel.coordinator.interfaces.IRelay`
in memory: tests (and the in-process demo below) put servers online with a
password, and it records every offer (with the Deferred its ``send_offer``
waits for: fired at once, or by the test when ``auto_ack`` is False).  A
hand-written recorder, not a mock.

:class:`AnswererRelay` is an ``IRelay`` without UDP: it hands each offer
straight to an in-process home server answerer (``server.peer.Answerer``)
and its answer back, with an optional hook that rewrites the answer on the
way (what a malicious coordinator would do).

``python -m homechannel.testing.coordinator --port 8080 --password pw``
serves the web API with a FakeRelay that has one server online (for browser
smoke tests).  The fake server never answers offers unless ``--refuse CODE``
is given, in which case it answers every offer with that error.
"""

import asyncio
import json
import os
import time

from twisted.internet import defer
from zope.interface import implementer

from homechannel import crypto
from homechannel.coordinator.interfaces import IRelay
from homechannel.errors import Unavailable


@implementer(IRelay)
class FakeRelay:
    def __init__(self, random_bytes=os.urandom, pool_size=3):
        self._random_bytes = random_bytes
        self._pool_size = pool_size
        # server key -> {"password_key": K, "pool": {challenge: expected}}
        self.servers = {}
        self.offers = []  # (server_key, payload, Deferred)
        self.failures = []  # (server_key, source, reason)
        self.policies = {}  # server key -> connect.DevicePolicy (set_device_policy)
        self.answer_handler = None
        # When False, send_offer returns a Deferred the test fires itself.
        self.auto_ack = True

    # -- test controls --

    def add_server(self, server_key, password_key=None):
        """Put a server online.  *password_key* K lets the relay mint
        challenges whose expected answers match that password."""
        self.servers[server_key] = {"password_key": password_key, "pool": {}}
        self._refill(server_key)

    def remove_server(self, server_key):
        self.servers.pop(server_key, None)

    def set_device_policy(self, server_key, policy):
        """What the server told of its devices (``connect.DevicePolicy``; None: nothing)."""
        self.policies[server_key] = policy

    def empty_pool(self, server_key):
        self.servers[server_key]["pool"].clear()

    def answer(self, server_key, payload):
        self.answer_handler(crypto.key_id(server_key), payload)

    def _refill(self, server_key):
        entry = self.servers[server_key]
        while len(entry["pool"]) < self._pool_size:
            challenge = self._random_bytes(crypto.CHALLENGE_SIZE)
            key = entry["password_key"] or b"\0" * 32
            entry["pool"][challenge] = crypto.expected_answer(
                crypto.challenge_answer(key, challenge))

    # -- IRelay --

    async def server_status(self, server_key):
        entry = self.servers.get(server_key)
        if entry is None:
            return False, None
        return True, next(iter(entry["pool"]), None)

    async def take_challenge(self, server_key, challenge):
        entry = self.servers.get(server_key)
        if entry is None:
            return None
        expected = entry["pool"].pop(challenge, None)
        if expected is not None:
            self._refill(server_key)
        return expected

    def answer_matches(self, server_key, challenge, answer, expected):
        return crypto.check_answer(answer, expected)

    async def notify(self, server_key, body):
        doc = json.loads(body)
        self.failures.append((server_key, doc["source"], doc["reason"]))

    async def device_policy(self, server_key):
        if server_key not in self.servers:
            return None
        return self.policies.get(server_key)

    async def send_offer(self, server_key, payload):
        if server_key not in self.servers:
            raise Unavailable("server offline")
        d = defer.succeed(None) if self.auto_ack else defer.Deferred()
        self.offers.append((server_key, payload, d))
        await d

    def set_answer_handler(self, handler):
        self.answer_handler = handler


@implementer(IRelay)
class AnswererRelay:
    """One home server (*server_key*, *answerer*, *challenges*) behind an IRelay.

    *challenges* is the home server's ``ChallengeSource``: the relay keeps a
    pool of two of its pairs, as the UDP registry does.  *tamper*, if given,
    is ``tamper(answer_payload_bytes) -> bytes``."""

    def __init__(self, server_key, answerer, challenges, tamper=None):
        self.server_key = server_key
        self.answerer = answerer
        self.challenges = challenges
        self.tamper = tamper or (lambda payload: payload)
        self.pool = {}
        self.notices = []
        self.answer_handler = None
        self._refill()

    def _refill(self):
        for challenge, expected in self.challenges.issue(2 - len(self.pool)):
            self.pool[challenge] = expected

    async def server_status(self, server_key):
        if server_key != self.server_key:
            return False, None
        return True, next(iter(self.pool), None)

    async def take_challenge(self, server_key, challenge):
        if server_key != self.server_key:
            return None
        expected = self.pool.pop(challenge, None)
        self._refill()
        return expected

    def answer_matches(self, server_key, challenge, answer, expected):
        return crypto.check_answer(answer, expected)

    async def notify(self, server_key, body):
        self.notices.append((server_key, body))

    async def device_policy(self, server_key):
        """What the home server would tell over UDP (``Answerer.device_policy``)."""
        if server_key != self.server_key:
            return None
        return self.answerer.device_policy()

    async def send_offer(self, server_key, payload):
        """Acknowledged at once; the answer comes when the answerer has made it."""
        if server_key != self.server_key:
            raise Unavailable("server offline")
        d = self.answerer.handle_offer(payload)
        d.addCallback(lambda answer: self.answer_handler(crypto.key_id(server_key),
                                                         self.tamper(answer)))

    def set_answer_handler(self, handler):
        self.answer_handler = handler


def at_once(coro):
    """The result of *coro*, a coroutine of an in-memory seam that finishes without
    waiting for anything; raises its error.  (A coroutine that waits is a test's
    mistake: AssertionError.)"""
    try:
        awaited = coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError(f"the coroutine waits for {awaited!r}: drive it with "
                         "Deferred.fromCoroutine")


class _LoopCall:
    def __init__(self, loop, when, f, args, kw):
        self._time = when
        self._done = False
        self._handle = loop.call_later(max(0.0, when - time.time()), self._run, f, args, kw)

    def _run(self, f, args, kw):
        self._done = True
        f(*args, **kw)

    def active(self):
        return not self._done

    def cancel(self):
        self._handle.cancel()
        self._done = True

    def getTime(self):
        return self._time


class LoopClock:
    """``IReactorTime`` on the running asyncio loop: lets tests drive the cluster's
    Redis modules (asyncio underneath) with ``asyncio.run`` instead of Twisted's
    asyncio reactor.  Wall-clock time, as the reactor's."""

    def seconds(self):
        return time.time()

    def callLater(self, delay, f, *args, **kw):
        return _LoopCall(asyncio.get_running_loop(), time.time() + delay, f, args, kw)

    def getDelayedCalls(self):
        return []


def main(argv=None):
    """A demo coordinator with one fake server online (browser smoke tests)."""
    import argparse
    import sys

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web import server

    from homechannel.config import CoordinatorWeb as WebConfig
    from homechannel.coordinator.web import CoordinatorWeb

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--password", default="correct horse")
    parser.add_argument("--refuse", default="")
    parser.add_argument("--static", default="")
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    coordinator = crypto.IdentityKey.generate()
    home = crypto.IdentityKey.generate()
    relay = FakeRelay()
    relay.add_server(home.public_raw, crypto.derive_password_key(args.password, home.public_raw))
    web = CoordinatorWeb(coordinator, relay, WebConfig(), reactor, static_dir=args.static or None)
    if args.refuse:
        original = relay.send_offer

        async def refuse(server_key, payload):
            await original(server_key, payload)
            sid = json.loads(payload)["session"]
            reactor.callLater(0.1, relay.answer, server_key, json.dumps(
                {"session": sid, "error": args.refuse, "message": "refused"}).encode())

        relay.send_offer = refuse
    reactor.listenTCP(args.port, server.Site(web.resource()), interface="127.0.0.1")
    # The logger captured sys.stdout; the parent reads this line from the real one.
    sys.__stdout__.write(json.dumps({"server": home.text, "coordinator": coordinator.text}) + "\n")
    sys.__stdout__.flush()
    reactor.run()


if __name__ == "__main__":
    main()
