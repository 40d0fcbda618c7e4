"""homechannel.aio: the one asyncio <-> Twisted bridge."""

import asyncio

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock

from homechannel import aio
from homechannel.errors import ConfigError


def test_coroutine_result_reaches_the_deferred():
    async def coro():
        await asyncio.sleep(0)
        return 42

    async def main():
        d = aio.as_deferred(coro())
        assert isinstance(d, Deferred)
        return await aio.as_future(d)

    assert asyncio.run(main()) == 42


def test_coroutine_exception_reaches_the_deferred():
    async def coro():
        raise ValueError("boom")

    async def main():
        d = aio.as_deferred(coro())
        failures = []
        d.addErrback(failures.append)
        await asyncio.sleep(0.01)
        return failures

    (failure,) = asyncio.run(main())
    assert failure.check(ValueError)


def test_cancelling_the_deferred_cancels_the_task():
    started = []

    async def forever():
        started.append(True)
        await asyncio.sleep(3600)

    async def main():
        d = aio.as_deferred(forever())
        await asyncio.sleep(0)
        d.cancel()
        with pytest.raises((CancelledError, asyncio.CancelledError)):
            await aio.as_future(d)
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
    assert started == [True]


def test_deferred_awaited_from_a_coroutine():
    async def main():
        d = Deferred()
        asyncio.get_running_loop().call_soon(d.callback, "fired")
        return await aio.as_future(d)

    assert asyncio.run(main()) == "fired"


def test_no_running_loop_says_how_to_fix_it():
    async def coro():
        return 1

    c = coro()
    with pytest.raises(ConfigError, match="--reactor=asyncio"):
        aio.as_deferred(c)
    assert c.cr_frame is None  # closed, so no "never awaited" warning
    with pytest.raises(ConfigError, match="--reactor=asyncio"):
        aio.as_future(Deferred())


def test_require_asyncio_reactor():
    with pytest.raises(ConfigError, match="run twistd with --reactor=asyncio"):
        aio.require_asyncio_reactor(MemoryReactorClock())

    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    loop = asyncio.new_event_loop()
    try:
        aio.require_asyncio_reactor(AsyncioSelectorReactor(loop))
    finally:
        loop.close()


@pytest.mark.parametrize("before,expected", [
    ("", "AsyncioSelectorReactor"),
    ("from twisted.internet import asyncioreactor; asyncioreactor.install()",
     "AsyncioSelectorReactor"),
    ("from twisted.internet import selectreactor; selectreactor.install()",
     "ConfigError: the running reactor is twisted.internet.selectreactor.SelectReactor; "
     "use the asyncio one"),
])
def test_install_asyncio_reactor_installs_it_or_refuses_another(before, expected):
    """What both taps call first: with no reactor yet it installs the asyncio one; with
    the asyncio one installed (twistd --reactor=asyncio) it keeps it; with any other it
    refuses with the advice it is given.  In a child process: a reactor is installed
    once per process."""
    import subprocess
    import sys

    from helpers import REPO

    code = ("import sys\n" + before + "\nfrom homechannel import aio\n"
            "try:\n"
            "    print(type(aio.install_asyncio_reactor('use the asyncio one')).__name__)\n"
            "except Exception as e:\n"
            "    print(f'{type(e).__name__}: {e}')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.stdout.strip() == expected, out.stderr
