"""Request bodies read in one place (gateway/body.py), on an in-memory stream: the whole-body
read of a stage (100-continue, limits, consumed), the forwarded copy in our own framing, and
the drain of a refused request."""

from __future__ import annotations

import asyncio

import pytest

from ucgate.gateway.body import Buffer, ClientBodyError, RequestBody
from ucgate.gateway.stream import Stream
from ucgate.protocols import http1


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return default


def body_of(head: bytes, data: bytes, *, eof: bool = True) -> tuple[RequestBody, Transport]:
    loop = asyncio.get_running_loop()
    s = Stream(loop, 1 << 16)
    t = Transport()
    s.connection_made(t)
    s.data_received(data)
    if eof:
        s.eof_received()
    req = http1.parse_request_head(head + b"\r\n\r\n")
    return RequestBody(req, s, 1.0), t


def run(coro):
    return asyncio.run(coro)


def test_read_whole_with_continue_then_consumed():
    async def main():
        b, t = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue", b"hello")
        assert b.pending and b.data is None
        assert await b.read(10) == b"hello" and b.data == b"hello"
        assert bytes(t.out) == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert not b.pending and not b.req.expect_continue  # a refusal does not drain it again

    run(main())


def test_read_chunked_decodes():
    async def main():
        b, _ = body_of(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
        )
        assert await b.read(10) == b"abcde"

    run(main())


@pytest.mark.parametrize(
    "head,data,status,reason",
    [
        (b"Content-Length: 11", b"x" * 11, 413, "body-too-large"),
        (b"Transfer-Encoding: chunked", b"b\r\n" + b"x" * 11 + b"\r\n0\r\n\r\n", 413, "body-too-large"),
        (b"Content-Length: 5", b"abc", 400, "body-incomplete"),
        (b"Transfer-Encoding: chunked", b"3\r\nabcXY0\r\n\r\n", 400, "bad-chunk-terminator"),
    ],
)
def test_read_refusals(head, data, status, reason):
    async def main():
        b, _ = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\n" + head, data)
        with pytest.raises(ClientBodyError) as e:
            await b.read(10)
        assert (e.value.status, e.value.reason) == (status, reason)
        assert b.data is None and b.pending

    run(main())


def test_read_timeout_is_408():
    async def main():
        b, _ = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5", b"ab", eof=False)
        b.timeout = 0.01
        with pytest.raises(ClientBodyError) as e:
            await b.read(10)
        assert (e.value.status, e.value.reason) == (408, "body-timeout")

    run(main())


def test_copy_to_in_our_own_framing():
    async def main():
        b, _ = body_of(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n"
        )
        out = Buffer()
        await b.copy_to(out, 100)
        assert bytes(out.data) == b"3\r\nabc\r\n0\r\n\r\n"  # extensions and trailers dropped
        b, _ = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3", b"abc")
        out = Buffer()
        await b.copy_to(out, 100)
        assert bytes(out.data) == b"abc"

    run(main())


def test_discard():
    async def main():
        b, _ = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3", b"abc")
        assert await b.discard(10) is True
        b, _ = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 30", b"x" * 30)
        assert await b.discard(10) is False  # too large to drain: the connection closes

    run(main())


def test_replace_is_what_goes_upstream():
    async def main():
        b, _ = body_of(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3", b"abc")
        await b.read(10)
        b.replace(b"grant_type=password")
        assert b.data == b"grant_type=password"

    run(main())
