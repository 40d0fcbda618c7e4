"""A slowloris from one source address, and a prompt request from another, for the
tests of the shipped reverse-proxy configurations.

:class:`Slowloris` keeps *connections* connections open from *source*, each sending a
request head one byte at a time and never finishing it; a connection the server closes
or refuses is opened again (as an attacker's tool does), so the pressure stays on.  It
runs an asyncio loop in a thread of its own (Playwright's sync API may own the test
thread's loop) and records what happened: how many connections it holds now, the
longest any was held, and how many the server cut or refused.

:func:`timed_get` is the other client: one ``GET`` from another address, and when it
was answered; :func:`assert_served_during` checks it was answered before
:attr:`Slowloris.first_timeout_at`, so without waiting for the attack's connections to be
cut."""

import asyncio
import socket
import ssl as _ssl
import threading
import time

HEAD = b"GET / HTTP/1.1\r\nHost: coordinator.test\r\nUser-Agent: slowloris\r\n"


class Slowloris:
    def __init__(self, port, source, connections, *, host="127.0.0.1", tls=None,
                 server_hostname=None, interval=0.3):
        self.port = port
        self.source = source
        self.connections = connections
        self.host = host
        self.tls = tls              # an ssl.SSLContext for a TLS port
        self.server_hostname = server_hostname
        self.interval = interval
        self.holding = 0            # connections open now
        self.opened = 0             # connections ever opened
        self.refused = 0            # connects that failed (reset, refused, timed out)
        self.cut = 0                # connections the server closed or answered
        self.answers = []           # the first line of what the server sent, if anything
        self.longest_held = 0.0     # seconds, over the connections the server closed
        # When the server first cut a connection it had held a while (a second or
        # more: not a refusal at accept): from then on places come free.
        self.first_timeout_at = None
        self._open_since = {}       # task -> time its connection opened
        self._stop = None
        self._loop = None
        self._thread = None

    def start(self):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            ready.set()
            self._loop.run_until_complete(self._main())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="slowloris", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def wait_in_full_swing(self, timeout=15.0):
        """Wait until every connection has been tried once (opened, or refused), and a
        second more for the server to take in what it accepted."""
        deadline = time.monotonic() + timeout
        while self.opened + self.refused < self.connections:
            assert time.monotonic() < deadline, (self.opened, self.refused)
            time.sleep(0.1)
        time.sleep(1.0)

    def held_now(self):
        """The longest a connection open now has been held, in seconds."""
        now = time.monotonic()
        return max((now - t for t in list(self._open_since.values())), default=0.0)

    async def _main(self):
        tasks = [asyncio.ensure_future(self._one(i)) for i in range(self.connections)]
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, i):
        # Spread the first connects a little, as a tool ramping up does.
        await asyncio.sleep(0.002 * i)
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.host, self.port, local_addr=(self.source, 0), ssl=self.tls,
                    server_hostname=self.server_hostname if self.tls else None), 5)
            except (OSError, asyncio.TimeoutError, _ssl.SSLError):
                self.refused += 1
                await asyncio.sleep(0.5)
                continue
            self.opened += 1
            self.holding += 1
            me = asyncio.current_task()
            self._open_since[me] = start = time.monotonic()
            try:
                await self._trickle(reader, writer)
            finally:
                self.holding -= 1
                del self._open_since[me]
                now = time.monotonic()
                self.longest_held = max(self.longest_held, now - start)
                if now - start >= 1.0 and self.first_timeout_at is None \
                        and not self._stop.is_set():
                    self.first_timeout_at = now
                writer.transport.abort()

    async def _trickle(self, reader, writer):
        head = HEAD + b"X-Slow: " + b"a" * 100_000
        for n, byte in enumerate(head):
            try:
                writer.write(bytes([byte]))
                data = await asyncio.wait_for(reader.read(4096),
                                              self.interval if n else 0.01)
            except asyncio.TimeoutError:
                continue            # still open, nothing said: the next byte
            except (OSError, _ssl.SSLError):
                data = b""
            self.cut += 1
            if data:
                self.answers.append(data.split(b"\r\n", 1)[0])
            return


def timed_get(port, source, path="/healthz", *, host="127.0.0.1", tls=None,
              server_hostname=None, timeout=10.0):
    """``(status, time.monotonic() when answered)`` of one ``GET`` from *source*;
    ``(None, time.monotonic())`` if no answer came within *timeout*."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0))
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
        with sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_hostname or host}\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (OSError, _ssl.SSLError):
        return None, time.monotonic()
    if not data.startswith(b"HTTP/1.1 "):
        return None, time.monotonic()
    return int(data.split(b" ", 2)[1]), time.monotonic()


def assert_served_during(attack, port, source, **kw):
    """*source* gets ``200`` for a ``GET`` (:func:`timed_get` with *kw*) while *attack*
    goes on, without waiting for a place to come free: answered before the server cut
    any connection of the attack's that it had held."""
    status, answered = timed_get(port, source, **kw)
    assert status == 200, (status, attack.holding, attack.opened, attack.refused)
    assert attack.first_timeout_at is None or answered < attack.first_timeout_at, \
        (answered, attack.first_timeout_at)
