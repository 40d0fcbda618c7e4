"""The home server's single-use challenges.

The home server makes every challenge itself (16 random bytes) and hands
the coordinator only ``(challenge, expectedAnswer)``.  It remembers the ones
it issued and not yet saw used, so that an offer is accepted at most once per
challenge, even if a coordinator replays it.
"""

import os
from collections import OrderedDict

from homechannel import crypto


class ChallengeSource:
    def __init__(self, password_key: bytes, random_bytes=os.urandom, remember=64):
        self._key = password_key
        self._random = random_bytes
        self._issued: OrderedDict[bytes, None] = OrderedDict()
        self._remember = remember

    def issue(self, count):
        """*count* fresh ``(challenge, expectedAnswer)`` pairs."""
        out = []
        for _ in range(count):
            c = self._random(crypto.CHALLENGE_SIZE)
            self._issued[c] = None
            out.append((c, crypto.expected_answer(crypto.challenge_answer(self._key, c))))
        while len(self._issued) > self._remember:
            self._issued.popitem(last=False)
        return out

    def consume(self, challenge: bytes) -> bool:
        """True exactly once for a challenge this server issued."""
        try:
            del self._issued[challenge]
        except (KeyError, TypeError):
            return False
        return True
