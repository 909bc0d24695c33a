"""A buffered byte stream over one asyncio transport, with a deadline on every wait.

What ``asyncio.StreamReader`` + ``StreamWriter`` give the gateway, in one protocol object and
without their layers (the proxy's hot path makes ~4 reads and 2 writes per request). The reads
keep StreamReader's semantics — ``readuntil`` raises ``LimitOverrunError`` past ``limit``,
``IncompleteReadError`` at EOF, the connection's error if it was lost with one — so the callers
did not change shape.

Two ways to consume it. A coroutine awaits ``readuntil``/``readexactly``/``read`` (the general
request pipeline, bodies of any size). Or, while no coroutine waits, the owner sets ``on_data``
and is called back from ``data_received``/``eof_received`` (the gateway's fast path: a whole
request and its response handled in protocol callbacks, with no task wake-up or future per
request); ``take_head`` then takes a complete head out of the buffer. ``on_deadline`` and
``on_lost`` complete the callback side.

Timeouts: every read takes an absolute deadline (``loop.time()`` seconds) instead of being
wrapped in ``asyncio.timeout()``, which costs a TimerHandle, a cancellation scope and, on Python
3.11, three ``getpid`` syscalls per use. Each stream has one timer that is re-armed only when it
fires before the current deadline (deadlines move forward on a busy keep-alive connection), so
a request costs a float store, not a timer; on expiry the pending read raises ``TimeoutError``,
or, with no read pending, ``on_deadline`` is called (``set_deadline`` arms it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..protocols.http1 import HttpError
from ..protocols.http1conn import head_end

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

    # no instance dict: one of these per idle client connection (bench/idle.py)
    __slots__ = (
        "loop",
        "limit",
        "transport",
        "_on_connect",
        "task",
        "on_data",
        "on_deadline",
        "on_lost",
        "_scan",
        "_over_ssl",
        "_buf",
        "_eof",
        "_exc",
        "_lost",
        "_waiter",
        "_reading_paused",
        "writing_paused",
        "_drain_waiter",
        "_deadline",
        "_timer",
        "_timer_at",
        "__weakref__",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        on_connect: Callable[[Stream], None] | None = None,
    ) -> None:
        self.loop = loop
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self._on_connect = on_connect
        # the coroutine that reads this stream now, if any (a strong reference: the loop only
        # keeps weak ones)
        self.task: asyncio.Task | None = None
        # callback mode: called after data or EOF arrived while no coroutine waits for it
        self.on_data: Callable[[], None] | None = None
        # called when the deadline set by set_deadline() passes while no coroutine waits
        self.on_deadline: Callable[[], None] | None = None
        # called once when the connection is lost, with its error (or None)
        self.on_lost: Callable[[BaseException | None], None] | None = None
        self._scan = 0  # take_head: where the separator search resumes (bytes already searched)
        self._over_ssl = False
        self._buf = bytearray()
        self._eof = False
        self._exc: BaseException | None = None
        self._lost = False
        self._waiter: asyncio.Future | None = None
        self._reading_paused = False
        # the transport's write buffer is over its high-water mark (the peer is not reading);
        # public, read-only for users (session.py reads it per request: no property call)
        self.writing_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._deadline = _NO_DEADLINE
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NO_DEADLINE

    # --- protocol callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        w = self._waiter
        if w is not None:
            if not w.done():
                w.set_result(None)
        elif self.on_data is not None:
            self.on_data()
        if not self._reading_paused and len(self._buf) > 2 * self.limit:
            try:
                self.transport.pause_reading()  # type: ignore[union-attr]
                self._reading_paused = True
            except NotImplementedError:
                pass

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._waiter is not None:
            self._wake()
        elif self.on_data is not None:
            self.on_data()
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
        on_lost, self.on_lost = self.on_lost, None
        self.on_data = self.on_deadline = None
        if on_lost is not None:
            on_lost(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
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
        if self._exc is None and not self._lost and not self.writing_paused:
            return _READY
        return self._drain()

    async def _drain(self) -> None:
        if self._exc is not None:
            raise self._exc
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self.writing_paused:
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

    @property
    def eof(self) -> bool:
        """The peer closed its side (or the connection is gone); data may still be buffered."""
        return self._eof

    def has_input(self) -> bool:
        """Something to act on without waiting: buffered data or the peer's EOF."""
        return bool(self._buf) or self._eof

    def listen(self, on_data: Callable[[], None], until: float) -> bool:
        """Call ``on_data`` when data or EOF arrives, with the deadline ``until``; True when
        there is something to act on already (``has_input``: the caller acts on it now). One
        call for what a keep-alive connection does between requests (gateway/session.py)."""
        self.on_data = on_data
        self.set_deadline(until)
        return bool(self._buf) or self._eof

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

    def take_head(self) -> bytes | None:
        """Callback mode's ``readuntil(b"\\r\\n\\r\\n")``: the head up to and including the empty
        line if it is buffered, else None, by ``http1conn.head_end`` (the connection object's rule:
        the search resumes where it stopped). Raises ``LimitOverrunError`` as readuntil, and
        ``HttpError(400, "bare-cr-or-lf")`` as soon as a CR or LF outside a CRLF is buffered:
        such a head can never end (a peer ending its lines with bare LF would otherwise be left
        waiting for the header or upstream read timeout)."""
        buf = self._buf
        i = buf.find(b"\r\n\r\n", self._scan)
        if 0 <= i <= self.limit:  # head_end's answer for a whole head, without its call (every request)
            return self._take(i + 4)
        try:
            end, self._scan = head_end(buf, self._scan, self.limit)
        except HttpError as e:
            if e.status != 431:
                raise
            raise asyncio.LimitOverrunError("the head is longer than the limit", self.limit) from None
        return None if end < 0 else self._take(end)

    def peek(self) -> bytes:
        """What is buffered, left in place (the PROXY header is parsed before it is taken)."""
        return bytes(self._buf)

    async def read_head(self, until: float = _NO_DEADLINE) -> bytes:
        """``readuntil(b"\\r\\n\\r\\n", until)`` with ``take_head``'s early refusal of a head
        with a bare CR or LF (``HttpError``)."""
        while True:
            if self._exc is not None:
                raise self._exc
            head = self.take_head()
            if head is not None:
                return head
            if self._eof:
                chunk = bytes(self._buf)
                self._buf.clear()
                self._scan = 0
                raise asyncio.IncompleteReadError(chunk, None)
            await self._wait(until)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back at the front of the buffer, to be read again first: the bytes a
        body copy read past the end of its body (the next pipelined message's, gateway/body.py)."""
        if data:
            self._buf[:0] = data
            self._scan = 0

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
        self._scan = 0
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
    def set_deadline(self, until: float) -> None:
        """Callback mode: call ``on_deadline`` once ``until`` (loop time) passes, unless a new
        deadline is set first (``float("inf")``: none). A float store when the armed timer
        fires no later than ``until`` (the usual case: deadlines move forward)."""
        self._deadline = until
        if until < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(until, self._on_timer)
            self._timer_at = until

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
        if w is None:
            if self.on_deadline is None or self._deadline == _NO_DEADLINE:
                return  # nobody waits now; the next wait or set_deadline arms the timer again
        elif w.done():
            return
        if self.loop.time() >= self._deadline:
            if w is not None:
                w.set_exception(TimeoutError())
            else:
                self._deadline = _NO_DEADLINE
                self.on_deadline()  # type: ignore[misc]
        elif self._deadline != _NO_DEADLINE:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
