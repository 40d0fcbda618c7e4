"""The one bridge between asyncio (aiortc) and Twisted.

The home server runs on Twisted's asyncio reactor, so both frameworks share one
event loop, but a coroutine of one cannot simply await an awaitable of the
other.  Everything that crosses goes through this module:

* :func:`as_deferred` runs an asyncio coroutine (or wraps a future) and gives a
  Deferred: ``Deferred.fromFuture(asyncio.ensure_future(coro))``.
* :func:`as_future` gives an asyncio future for a Deferred: ``d.asFuture(loop)``.
* :func:`install_asyncio_reactor` installs Twisted's asyncio reactor when none
  is installed yet (both taps: the home server always, the coordinator as a
  cluster node) and refuses any other, with a message that says how to fix it;
  :func:`require_asyncio_reactor` is that check alone.
"""

import asyncio
import inspect
import sys

from twisted.internet.defer import Deferred

from homechannel.errors import ConfigError

REACTOR_ADVICE = (
    "the home server needs Twisted's asyncio reactor (aiortc runs on asyncio): "
    "run twistd with --reactor=asyncio"
)


def _running_loop(what):
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        if inspect.iscoroutine(what):
            what.close()  # no "coroutine was never awaited" warning on top of the error
        raise ConfigError(f"no asyncio event loop is running: {REACTOR_ADVICE}") from None


def as_deferred(awaitable) -> Deferred:
    """Schedule an asyncio coroutine/future on the running loop; return a Deferred.

    Cancelling the Deferred cancels the asyncio task.  Must be called while the
    asyncio loop runs (always true under the asyncio reactor, and inside any
    coroutine); otherwise raises ConfigError with advice.
    """
    loop = _running_loop(awaitable)
    return Deferred.fromFuture(asyncio.ensure_future(awaitable, loop=loop))


def as_future(d: Deferred, loop=None) -> asyncio.Future:
    """An asyncio future that follows Deferred *d* (await it from a coroutine)."""
    if loop is None:
        loop = _running_loop(None)
    return d.asFuture(loop)


def require_asyncio_reactor(reactor, advice=REACTOR_ADVICE) -> None:
    """Raise ConfigError (with *advice*) unless *reactor* is Twisted's asyncio reactor."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        name = f"{type(reactor).__module__}.{type(reactor).__qualname__}"
        raise ConfigError(f"the running reactor is {name}; {advice}")


def install_asyncio_reactor(advice=REACTOR_ADVICE):
    """Twisted's asyncio reactor, installed if twistd (or anything) has not installed a
    reactor yet; ConfigError (with *advice*) if another one is installed.  For a
    composition root (a tap's ``makeService``), before anything imports the reactor."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor
        asyncioreactor.install()
    from twisted.internet import reactor

    require_asyncio_reactor(reactor, advice)
    return reactor
