"""A stand-in for a thread pool: the ``to_thread`` of ``server/statefiles.py``
(and anything else that takes ``to_thread(f, *args) -> Deferred``), whose jobs
run only when the test says so."""

from twisted.internet import defer


class ManualThreads:
    """``to_thread(f, *args)`` records the job and returns its Deferred; ``finish()``
    runs the oldest job (in the caller's thread) and fires its Deferred, so a test
    sees what is "running in a thread" meanwhile."""

    def __init__(self):
        self.jobs = []          # [(f, args, Deferred)], started and not finished

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def finish(self):
        f, args, d = self.jobs.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def finish_all(self):
        while self.jobs:
            self.finish()
