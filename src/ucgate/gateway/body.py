"""Message bodies: the one place that reads a request body (``RequestBody``, the body source on
the pipeline's Exchange) and copies bodies with their framing (Content-Length or chunked).

A stage that needs the body before forwarding (the OAuth grant's form, the device facts of an
ActiveSync or UCWA request) reads it whole and bounded with ``RequestBody.read``; forwarding
then sends what was read, with a Content-Length. Otherwise the body is copied from the client
to the upstream as it comes (``copy_to``, re-chunked: our own framing), or read and dropped
when the request is refused (``discard``), so that the connection stays usable. Responses are
copied with the same functions (``copy_exact``, ``copy_chunked``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from ..errors import UcgateError
from ..protocols import http1
from ..protocols.http1 import HttpError, RequestHead

COPY_CHUNK = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientBodyError(UcgateError):
    """The client sent a bad or oversized body, or stalled while sending it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Source(Protocol):
    """What bodies are read from (gateway.stream.Stream)."""

    loop: asyncio.AbstractEventLoop

    async def read(self, n: int, until: float = ...) -> bytes: ...
    async def readuntil(self, sep: bytes, until: float = ...) -> bytes: ...
    async def readexactly(self, n: int, until: float = ...) -> bytes: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def drain(self) -> Awaitable[None]: ...


class Discard:
    """Where a refused request's body goes: read (to keep the connection usable), dropped."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


DISCARD = Discard()


class Buffer:
    """Where a body read before forwarding goes (bounded by the caller's limit)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass


class RequestBody:
    """The body of ``req`` on ``client`` (each read waits at most ``timeout``). ``data``: the
    body once a stage read it whole (or what goes upstream instead: ``replace``); None while
    it is still on the connection."""

    __slots__ = ("req", "client", "timeout", "data")

    def __init__(self, req: RequestHead, client: Source, timeout: float) -> None:
        self.req = req
        self.client = client
        self.timeout = timeout
        self.data: bytes | None = None

    @property
    def pending(self) -> bool:
        """Body bytes are still to be read from the connection."""
        return self.req.framing.kind != "none"

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (ClientBodyError 413 beyond; 400, 408 for a
        bad or stalled one). Answers ``Expect: 100-continue`` first. The body is then consumed:
        a refusal does not drain it again, and forwarding sends ``data``."""
        req = self.req
        sink = Buffer()
        if req.expect_continue:
            self.client.write(_CONTINUE)  # type: ignore[attr-defined]
        await self._copy(sink, limit, reencode=False)
        req.framing = http1.Framing("none")
        req.expect_continue = False
        self.data = bytes(sink.data)
        return self.data

    def replace(self, data: bytes) -> None:
        """Forward ``data`` as the body (the OAuth grant's form as the front end gets it)."""
        self.data = data

    async def copy_to(self, out: Sink, limit: int) -> None:
        """Copy the body to ``out`` as it comes, in our own framing (Content-Length as it was;
        chunked re-chunked, extensions and trailers dropped). Answers ``Expect: 100-continue``
        first, as :meth:`read` does."""
        if self.req.expect_continue:
            self.client.write(_CONTINUE)  # type: ignore[attr-defined]
        await self._copy(out, limit, reencode=True)

    async def discard(self, limit: int) -> bool:
        """Read and drop the body of a refused request; False when that cannot be done (too
        large, bad, stalled): the connection is then closed."""
        try:
            await self._copy(DISCARD, limit, reencode=False)
        except ClientBodyError:
            return False
        return True

    async def _copy(self, out: Sink, limit: int, *, reencode: bool) -> None:
        req, client, timeout = self.req, self.client, self.timeout
        try:
            if req.framing.kind == "length":
                if req.framing.length > limit:
                    raise ClientBodyError(413, "body-too-large")
                await copy_exact(client, out, req.framing.length, timeout)
            elif req.framing.kind == "chunked":
                await copy_chunked(client, out, limit, timeout, reencode=reencode)
        except asyncio.IncompleteReadError:
            raise ClientBodyError(400, "body-incomplete") from None
        except TimeoutError:
            raise ClientBodyError(408, "body-timeout") from None
        except HttpError as e:
            raise ClientBodyError(e.status, e.reason) from None


async def copy_exact(src: Source, out: Sink, n: int, timeout: float) -> None:
    """Copy ``n`` bytes; TimeoutError when one read waits longer than ``timeout``."""
    while n > 0:
        data = await src.read(min(n, COPY_CHUNK), src.loop.time() + timeout)
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        out.write(data)
        await out.drain()


async def copy_chunked(src: Source, out: Sink, limit: int, timeout: float, *, reencode: bool) -> None:
    """Decode a chunked body and write it on, re-chunked (our own framing: extensions and
    trailers are dropped) or raw. Each read may wait up to ``timeout``."""
    loop = src.loop
    total = 0
    while True:
        try:
            line = await src.readuntil(b"\r\n", loop.time() + timeout)
        except asyncio.LimitOverrunError:
            raise HttpError(400, "chunk-line-too-long") from None
        size = http1.parse_chunk_size_line(line)
        if size == 0:
            break
        total += size
        if total > limit:
            raise HttpError(413, "body-too-large")
        if reencode:
            out.write(b"%x\r\n" % size)
        while size > 0:
            data = await src.read(min(size, COPY_CHUNK), loop.time() + timeout)
            if not data:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(data)
            out.write(data)
            await out.drain()
        crlf = await src.readexactly(2, loop.time() + timeout)
        if crlf != b"\r\n":
            raise HttpError(400, "bad-chunk-terminator")
        if reencode:
            out.write(b"\r\n")
    trailer_bytes = 0
    while True:
        try:
            line = await src.readuntil(b"\r\n", loop.time() + timeout)
        except asyncio.LimitOverrunError:
            raise HttpError(400, "trailer-too-large") from None
        trailer_bytes += len(line)
        if trailer_bytes > http1.MAX_CHUNK_LINE_BYTES * 4:
            raise HttpError(400, "trailer-too-large")
        if http1.check_trailer_line(line):
            break
    if reencode:
        out.write(http1.LAST_CHUNK)
    await out.drain()
