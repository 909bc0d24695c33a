"""Message bodies: the one place that reads a request body (``RequestBody``, the body source on
the pipeline's Exchange) and copies bodies with their framing (Content-Length or chunked).

A stage that needs the body before forwarding (the OAuth grant's form, the device facts of an
ActiveSync or UCWA request) reads it whole and bounded with ``RequestBody.read``; forwarding
then sends what was read, with a Content-Length. Otherwise the body is copied from the client
to the upstream as it comes (``copy_to``, re-chunked: our own framing), or read and dropped
when the request is refused (``discard``), so that the connection stays usable. Responses are
copied with the same functions (``copy_exact``, ``copy_chunked``, ``copy_until_close``).

The framing itself is ``protocols.http1conn.BodyReader``'s (the strict rules of issue 15 in one
place): the functions here only read, feed it and write what it gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from ..errors import UcgateError
from ..protocols.http1 import LAST_CHUNK, Framing, HttpError, RequestHead, encode_chunk
from ..protocols.http1conn import BodyReader

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
    def unread(self, data: bytes) -> None: ...


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
        req.framing = Framing("none")
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
        framing = self.req.framing
        kind = framing.kind
        try:
            reader = BodyReader(framing, limit=limit)  # 413 at once for a Content-Length over it
            left = framing.length if kind == "length" else None
            await _copy_body(self.client, out, reader, self.timeout, chunk=reencode and kind == "chunked", left=left)
        except asyncio.IncompleteReadError:
            raise ClientBodyError(400, "body-incomplete") from None
        except TimeoutError:
            raise ClientBodyError(408, "body-timeout") from None
        except HttpError as e:
            raise ClientBodyError(e.status, e.reason) from None


async def copy_exact(src: Source, out: Sink, n: int, timeout: float) -> None:
    """Copy ``n`` bytes; TimeoutError when one read waits longer than ``timeout``,
    IncompleteReadError when the stream ends first."""
    await _copy_body(src, out, BodyReader(Framing("length", n)), timeout, chunk=False, left=n)


async def copy_chunked(src: Source, out: Sink, limit: int, timeout: float, *, reencode: bool) -> None:
    """Decode a chunked body and write it on, re-chunked (our own framing: extensions and
    trailers are dropped) or de-chunked. Each read may wait up to ``timeout``. HttpError for
    a bad body (BodyReader's refusals), IncompleteReadError when the stream ends first."""
    await _copy_body(src, out, BodyReader(Framing("chunked"), limit=limit), timeout, chunk=reencode, left=None)


async def copy_until_close(src: Source, out: Sink, timeout: float, *, reencode: bool) -> None:
    """Copy a body that ends with the stream (a response without Content-Length or chunked),
    re-chunked (``reencode``: for an HTTP/1.1 client) or as it comes."""
    await _copy_body(src, out, BodyReader(Framing("close")), timeout, chunk=reencode, left=None)


async def _copy_body(
    src: Source, out: Sink, reader: BodyReader, timeout: float, *, chunk: bool, left: int | None
) -> None:
    """The one body copy: read what ``src`` has (at most COPY_CHUNK, and never more than the
    ``left`` bytes of a Content-Length body), ``reader.feed`` it and write the payload on —
    ``chunk``: one chunk per non-empty piece and the last chunk at the end — until the body
    ends. The bytes read past its end (the next pipelined message) go back to ``src``.

    Raises the reader's HttpError for a bad body, IncompleteReadError when the stream ends
    before the body does, TimeoutError when one read waits longer than ``timeout``.
    """
    loop = src.loop
    while not reader.done:
        data = await src.read(COPY_CHUNK if left is None else min(left, COPY_CHUNK), loop.time() + timeout)
        if data:
            piece, done = reader.feed(data)
            if left is not None:
                left -= len(data)
        else:
            try:
                done = reader.eof()  # the end of a read-until-close body; any other: too early
            except HttpError:
                raise asyncio.IncompleteReadError(b"", left) from None
            piece = b""
        if piece and chunk:
            piece = encode_chunk(piece)
        if done:
            if reader.unused:
                src.unread(reader.unused)
            if chunk:
                piece += LAST_CHUNK
        if piece:
            out.write(piece)
        await out.drain()
