"""A buffered byte stream over one asyncio transport, with a deadline on every wait.

What ``asyncio.StreamReader`` + ``StreamWriter`` give the gateway, in one protocol object and
without their layers (the proxy's hot path makes ~4 reads and 2 writes per request). The reads
keep StreamReader's semantics — ``readuntil`` raises ``LimitOverrunError`` past ``limit``,
``IncompleteReadError`` at EOF, the connection's error if it was lost with one — so the callers
did not change shape.

Timeouts: every read takes an absolute deadline (``loop.time()`` seconds) instead of being
wrapped in ``asyncio.timeout()``, which costs a TimerHandle, a cancellation scope and, on Python
3.11, three ``getpid`` syscalls per use. Each stream has one timer that is re-armed only when it
fires before the current deadline (deadlines move forward on a busy keep-alive connection), so
a request costs a float store, not a timer; on expiry the pending read raises ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

_NO_DEADLINE = float("inf")


class _Ready:
    """An awaitable that is done at once (``await _READY`` is None)."""

    __slots__ = ()

    def __await__(self):
        return iter(())


_READY = _Ready()


class Stream(asyncio.Protocol):
    """One connection's read buffer and write side.

    Args:
        loop: the running loop.
        limit: ``readuntil`` refuses a line longer than this; reading pauses while more than
            twice this much is buffered (StreamReader's backpressure).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        on_connect: Callable[[Stream], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.loop = loop
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self._on_connect = on_connect
        self.task: asyncio.Task | None = None  # serves this stream; started by on_connect
        self._over_ssl = False
        self._buf = bytearray()
        self._eof = False
        self._exc: BaseException | None = None
        self._lost = False
        self._waiter: asyncio.Future | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._deadline = _NO_DEADLINE
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NO_DEADLINE

    # --- protocol callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        if self._on_connect is not None:
            # the transport holds this protocol, which holds the task: it is not collected
            self.task = self.loop.create_task(self._on_connect(self))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if not self._reading_paused and len(self._buf) > 2 * self.limit:
            try:
                self.transport.pause_reading()  # type: ignore[union-attr]
                self._reading_paused = True
            except NotImplementedError:
                pass

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        # As StreamReaderProtocol: plain TCP stays half-open so a client that shut down its
        # sending side still gets its answer; TLS has no half-close.
        return not self._over_ssl

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        if exc is not None:
            self._exc = exc
        self._wake()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionResetError("Connection lost") if exc is None else exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- writing ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def drain(self) -> Awaitable[None]:
        """Wait while the transport's write buffer is over its high-water mark (raises if the
        connection was lost). Nearly always there is nothing to wait for: then it returns a
        ready awaitable instead of creating a coroutine, once per request on the hot path."""
        if self._exc is None and not self._lost and not self._writing_paused:
            return _READY
        return self._drain()

    async def _drain(self) -> None:
        if self._exc is not None:
            raise self._exc
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        self._drain_waiter = self.loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def get_extra_info(self, name: str, default=None):
        return self.transport.get_extra_info(name, default)  # type: ignore[union-attr]

    # --- reading ----------------------------------------------------------------------
    def at_eof(self) -> bool:
        return self._eof and not self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def exception(self) -> BaseException | None:
        return self._exc

    async def readuntil(self, sep: bytes, until: float = _NO_DEADLINE) -> bytes:
        """Bytes up to and including ``sep`` (asyncio.StreamReader.readuntil's rules), waiting
        at most until ``until``."""
        seplen = len(sep)
        offset = 0
        while True:
            if self._exc is not None:
                raise self._exc
            buflen = len(self._buf)
            if buflen - offset >= seplen:
                isep = self._buf.find(sep, offset)
                if isep != -1:
                    break
                offset = buflen + 1 - seplen
                if offset > self.limit:
                    raise asyncio.LimitOverrunError("Separator is not found, and chunk exceed the limit", offset)
            if self._eof:
                chunk = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(chunk, None)
            await self._wait(until)
        if isep > self.limit:
            raise asyncio.LimitOverrunError("Separator is found, but chunk is longer than limit", isep)
        return self._take(isep + seplen)

    async def readexactly(self, n: int, until: float = _NO_DEADLINE) -> bytes:
        while len(self._buf) < n:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                incomplete = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(incomplete, n)
            await self._wait(until)
        return self._take(n)

    def take_buffered(self, n: int) -> bytes | None:
        """``readexactly(n)`` when ``n`` bytes are buffered already (no coroutine), else None."""
        return self._take(n) if len(self._buf) >= n else None

    async def read(self, n: int, until: float = _NO_DEADLINE) -> bytes:
        """Up to ``n`` (> 0) bytes; b"" at EOF."""
        if self._exc is not None:
            raise self._exc
        if not self._buf and not self._eof:
            await self._wait(until)
            if self._exc is not None:
                raise self._exc
        return self._take(min(n, len(self._buf)))

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n == len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if self._reading_paused and len(buf) <= self.limit:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    # --- waiting with a deadline --------------------------------------------------------
    async def _wait(self, until: float) -> None:
        """Wait for data, EOF or the connection's loss; TimeoutError once ``until`` passes."""
        if self._waiter is not None:
            raise RuntimeError("Stream: two coroutines are reading at once")
        self._deadline = until
        if until < self._timer_at:  # the armed timer would fire too late: arm it earlier
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(until, self._on_timer)
            self._timer_at = until
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._deadline = _NO_DEADLINE

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = _NO_DEADLINE
        w = self._waiter
        if w is None or w.done():
            return  # nobody waits now; the next wait arms the timer again
        if self.loop.time() >= self._deadline:
            w.set_exception(TimeoutError())
        elif self._deadline != _NO_DEADLINE:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
