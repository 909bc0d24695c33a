"""Request bodies read in one place (gateway/body.py), on an in-memory stream: the whole-body
read of a stage (100-continue, limits, consumed), the forwarded copy in our own framing, and
the drain of a refused request; the body copies on protocols/http1conn.BodyReader (every
refusal with its status and reason, bytes after a body given back to the stream), and what a
stage's ``replace`` sends upstream through a running gateway."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.gateway.body import (
    DISCARD,
    Buffer,
    ClientBodyError,
    RequestBody,
    copy_chunked,
    copy_exact,
    copy_until_close,
)
from ucgate.gateway.stream import Stream
from ucgate.protocols import http1
from ucgate.protocols.http1 import MAX_CHUNK_LINE_BYTES, HttpError, Limits
from ucgate.protocols.http1conn import NEED_DATA, SERVER, Connection

from ..support import AllowAs, start_gateway
from .test_smuggling import VECTORS

POST = b"POST /x HTTP/1.1\r\nHost: a\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


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


def stream_of(data: bytes, *, eof: bool = True, piece: int | None = None) -> tuple[Stream, Transport]:
    """A Stream that has ``data`` (then the end, with ``eof``): all of it buffered now, or, with
    ``piece``, given ``piece`` bytes at a time, one piece per loop iteration."""
    loop = asyncio.get_running_loop()
    s = Stream(loop, 1 << 16)
    t = Transport()
    s.connection_made(t)
    if piece is None:
        if data:
            s.data_received(data)
        if eof:
            s.eof_received()
    else:

        async def trickle() -> None:
            for i in range(0, len(data), piece):
                s.data_received(data[i : i + piece])
                await asyncio.sleep(0)
            if eof:
                s.eof_received()

        s.task = loop.create_task(trickle())  # a strong reference until it is done
    return s, t


def body_of(head: bytes, data: bytes, *, eof: bool = True, piece: int | None = None) -> tuple[RequestBody, Transport]:
    s, t = stream_of(data, eof=eof, piece=piece)
    req = http1.parse_request_head(head + b"\r\n\r\n")
    return RequestBody(req, s, 1.0), t


def run(coro):
    return asyncio.run(coro)


def dechunk(wire: bytes) -> bytes:
    """The payload of a whole chunked body with no trailers, by http1's line parser (not by
    BodyReader, the code under test); no empty chunk before the last one."""
    payload, pos = b"", 0
    while True:
        i = wire.index(b"\r\n", pos) + 2
        size = http1.parse_chunk_size_line(wire[pos:i])
        if size == 0:
            assert wire[i:] == b"\r\n"
            return payload
        assert wire[i + size : i + size + 2] == b"\r\n"
        payload += wire[i : i + size]
        pos = i + size + 2


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


# --- every refusal, through RequestBody and the copies, whole and in pieces ------------------

LONG_LINE = b"1;" + b"a" * MAX_CHUNK_LINE_BYTES + b"\r\nx\r\n0\r\n\r\n"  # one byte over the line limit
BIG_TRAILER = b"0\r\nX: " + b"a" * (4 * MAX_CHUNK_LINE_BYTES) + b"\r\n\r\n"
MANY_TRAILERS = b"0\r\n" + (b"X: " + b"a" * 1000 + b"\r\n") * 17 + b"\r\n"  # each line fits, not all 17

# (framing header, the bytes after the head, end of stream, status, reason)
REFUSALS = {
    "cl-incomplete": (b"Content-Length: 5", b"abc", True, 400, "body-incomplete"),
    "chunked-incomplete-in-data": (b"Transfer-Encoding: chunked", b"5\r\nab", True, 400, "body-incomplete"),
    "chunked-incomplete-in-line": (b"Transfer-Encoding: chunked", b"5\r", True, 400, "body-incomplete"),
    "chunked-incomplete-between": (b"Transfer-Encoding: chunked", b"1\r\na\r\n", True, 400, "body-incomplete"),
    "chunked-incomplete-trailers": (b"Transfer-Encoding: chunked", b"0\r\nX: 1\r\n", True, 400, "body-incomplete"),
    "cl-stalled": (b"Content-Length: 5", b"ab", False, 408, "body-timeout"),
    "chunked-stalled": (b"Transfer-Encoding: chunked", b"5\r\nab", False, 408, "body-timeout"),
    "chunked-stalled-in-trailers": (b"Transfer-Encoding: chunked", b"0\r\nX: 1", False, 408, "body-timeout"),
    "cl-too-large": (b"Content-Length: 11", b"x" * 11, True, 413, "body-too-large"),
    "chunked-too-large": (
        b"Transfer-Encoding: chunked",
        b"6\r\nxxxxxx\r\n5\r\nxxxxx\r\n0\r\n\r\n",
        True,
        413,
        "body-too-large",
    ),
    "chunk-line-too-long": (b"Transfer-Encoding: chunked", LONG_LINE, True, 400, "chunk-line-too-long"),
    "chunk-0x": (b"Transfer-Encoding: chunked", b"0x5\r\nhello\r\n0\r\n\r\n", True, 400, "bad-chunk-size"),
    "chunk-bare-lf": (b"Transfer-Encoding: chunked", b"5\nhello\r\n0\r\n\r\n", True, 400, "bad-chunk-size"),
    "chunk-negative": (b"Transfer-Encoding: chunked", b"-1\r\n\r\n0\r\n\r\n", True, 400, "bad-chunk-size"),
    "chunk-bad-ext": (b"Transfer-Encoding: chunked", b"1;=x\r\na\r\n0\r\n\r\n", True, 400, "bad-chunk-size"),
    "chunk-size-lies": (b"Transfer-Encoding: chunked", b"3\r\nhello\r\n0\r\n\r\n", True, 400, "bad-chunk-terminator"),
    "chunk-bare-lf-after-data": (
        b"Transfer-Encoding: chunked",
        b"1\r\na\n0\r\n\r\n",
        True,
        400,
        "bad-chunk-terminator",
    ),
    "trailer-too-large": (b"Transfer-Encoding: chunked", BIG_TRAILER, True, 400, "trailer-too-large"),
    "trailers-too-large": (b"Transfer-Encoding: chunked", MANY_TRAILERS, True, 400, "trailer-too-large"),
    "bad-trailer": (b"Transfer-Encoding: chunked", b"0\r\nX-Bad : y\r\n\r\n", True, 400, "bad-trailer"),
    "trailer-without-colon": (b"Transfer-Encoding: chunked", b"0\r\nX\r\n\r\n", True, 400, "bad-trailer"),
    "trailer-bare-cr": (b"Transfer-Encoding: chunked", b"0\r\nX: a\rb\r\n\r\n", True, 400, "bad-trailer"),
    "trailer-obs-fold": (b"Transfer-Encoding: chunked", b"0\r\nX: 1\r\n folded\r\n\r\n", True, 400, "obs-fold"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
@pytest.mark.parametrize("piece", [None, 1, 7])
@pytest.mark.parametrize("how", ["read", "copy_to", "discard"])
def test_every_refusal_through_request_body(name, piece, how):
    framing, data, eof, status, reason = REFUSALS[name]

    async def main():
        b, _ = body_of(POST + framing, data, eof=eof, piece=piece)
        b.timeout = 0.05
        if how == "discard":
            assert await b.discard(10) is False  # the connection is then closed
            return
        with pytest.raises(ClientBodyError) as e:
            if how == "read":
                await b.read(10)
            else:
                await b.copy_to(Buffer(), 10)
        assert (e.value.status, e.value.reason) == (status, reason)
        assert b.data is None and b.pending

    run(main())


@pytest.mark.parametrize("name", sorted(n for n, v in REFUSALS.items() if v[0] == b"Transfer-Encoding: chunked"))
@pytest.mark.parametrize("piece", [None, 1])
def test_every_chunked_refusal_through_copy_chunked(name, piece):
    """The response copy (forward.py) gets the exception types it tells apart: HttpError for a
    bad body (bad-upstream-chunk), IncompleteReadError at the end of the stream and TimeoutError
    for a stalled read (upstream-body-truncated)."""
    _, data, eof, status, reason = REFUSALS[name]

    async def main():
        s, _ = stream_of(data, eof=eof, piece=piece)
        want = {"body-incomplete": asyncio.IncompleteReadError, "body-timeout": TimeoutError}.get(reason, HttpError)
        with pytest.raises(want) as e:
            await copy_chunked(s, Buffer(), 10, 0.05, reencode=True)
        if want is HttpError:
            assert (e.value.status, e.value.reason) == (status, reason)

    run(main())


# --- where BodyReader refuses earlier than the copy it replaced ----------------------------
# The old copy read a chunk's terminator with readexactly(2), a chunk-size or trailer line with
# readuntil(CRLF) up to the stream's limit (64 KiB here): a bad byte or an overlong line was
# refused only once the rest came, so a client that then stalled got 408 (or 400
# body-incomplete at the end of the stream). BodyReader refuses on the byte that decides.

EARLY = {
    "bad-terminator-then-stall": (b"3\r\nabcX", False, "bad-chunk-terminator"),
    "bad-terminator-then-end": (b"3\r\nabcX", True, "bad-chunk-terminator"),
    "long-line-then-stall": (b"1;" + b"a" * MAX_CHUNK_LINE_BYTES, False, "chunk-line-too-long"),
    "long-line-then-end": (b"1;" + b"a" * MAX_CHUNK_LINE_BYTES, True, "chunk-line-too-long"),
    "long-trailer-then-stall": (b"0\r\nX: " + b"a" * (4 * MAX_CHUNK_LINE_BYTES), False, "trailer-too-large"),
}


@pytest.mark.parametrize("name", sorted(EARLY))
def test_refused_on_the_byte_that_decides(name):
    data, eof, reason = EARLY[name]

    async def main():
        b, _ = body_of(CHUNKED, data, eof=eof)
        b.timeout = 0.05
        with pytest.raises(ClientBodyError) as e:
            await b.read(1 << 20)
        assert (e.value.status, e.value.reason) == (400, reason)

    run(main())


# --- the bytes after a body are the next request's ------------------------------------------


@pytest.mark.parametrize("piece", [None, 1, 3, 64 * 1024])
@pytest.mark.parametrize("how", ["read", "copy_to", "discard"])
def test_pipelined_request_after_a_chunked_body(piece, how):
    wire = b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"

    async def main():
        b, _ = body_of(CHUNKED, wire + NEXT + b"tail", piece=piece)
        out = Buffer()
        if how == "read":
            assert await b.read(100) == b"abcde"
        elif how == "copy_to":
            await b.copy_to(out, 100)
            assert dechunk(bytes(out.data)) == b"abcde"
            if piece is None:
                assert bytes(out.data) == b"5\r\nabcde\r\n0\r\n\r\n"
        else:
            assert await b.discard(100) is True
        head = await b.client.read_head(b.client.loop.time() + 1)
        assert head == NEXT
        assert await b.client.readexactly(4, b.client.loop.time() + 1) == b"tail"
        assert await b.client.read(10, b.client.loop.time() + 1) == b""  # and nothing else

    run(main())


def test_pipelined_request_after_a_length_body_is_not_read():
    async def main():
        s, _ = stream_of(b"abc" + NEXT)
        out = Buffer()
        await copy_exact(s, out, 3, 1.0)
        assert bytes(out.data) == b"abc" and s.peek() == NEXT  # never read past the body

    run(main())


@pytest.mark.parametrize(
    "piece,want",
    [
        (None, b"5\r\nhello\r\n0\r\n\r\n"),
        # one chunk per piece that carries payload (chunk boundaries are not kept)
        (1, b"".join(b"1\r\n%c\r\n" % c for c in b"hello") + b"0\r\n\r\n"),
        (10, b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"),
    ],
)
def test_copy_to_rechunks_each_piece(piece, want):
    async def main():
        b, _ = body_of(CHUNKED, b"5;e=1\r\nhello\r\n0\r\nT: x\r\n\r\n", piece=piece)
        out = Buffer()
        await b.copy_to(out, 100)
        assert bytes(out.data) == want

    run(main())


def test_copy_chunked_two_chunks_in_one_read_are_one_chunk():
    async def main():
        s, _ = stream_of(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" + NEXT)
        out = Buffer()
        await copy_chunked(s, out, 100, 1.0, reencode=True)
        assert bytes(out.data) == b"5\r\nabcde\r\n0\r\n\r\n" and s.peek() == NEXT
        s, _ = stream_of(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        out = Buffer()
        await copy_chunked(s, out, 100, 1.0, reencode=False)  # de-chunked: an HTTP/1.0 client, a drain
        assert bytes(out.data) == b"abcde"

    run(main())


def test_copy_exact_large_body_in_bounded_reads():
    body = bytes(range(256)) * 1000  # 256,000 bytes: four reads of at most 64 KiB

    async def main():
        s, _ = stream_of(body + b"NEXT")
        out = Recording()
        await copy_exact(s, out, len(body), 1.0)
        assert b"".join(out.writes) == body and max(map(len, out.writes)) <= 64 * 1024
        assert s.peek() == b"NEXT"
        s, _ = stream_of(body[:1000])
        with pytest.raises(asyncio.IncompleteReadError):
            await copy_exact(s, DISCARD, len(body), 1.0)
        s, _ = stream_of(b"", eof=False)
        with pytest.raises(TimeoutError):
            await copy_exact(s, DISCARD, 1, 0.01)
        s, _ = stream_of(b"")
        await copy_exact(s, DISCARD, 0, 1.0)  # nothing to read: not even the end is waited for

    run(main())


class Recording(Buffer):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.drains = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        self.drains += 1


@pytest.mark.parametrize("reencode,want", [(True, b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), (False, b"hello!")])
def test_copy_until_close(reencode, want):
    async def main():
        loop = asyncio.get_running_loop()
        s, _ = stream_of(b"hello", eof=False)
        loop.call_later(0.01, s.data_received, b"!")
        loop.call_later(0.02, s.eof_received)
        out = Buffer()
        await copy_until_close(s, out, 1.0, reencode=reencode)
        assert bytes(out.data) == want
        s, _ = stream_of(b"ab", eof=False)
        with pytest.raises(TimeoutError):
            await copy_until_close(s, DISCARD, 0.01, reencode=reencode)

    run(main())


def test_copy_waits_for_the_sink():
    """Each piece is drained before the next read (a slow client slows the upstream read)."""

    async def main():
        s, _ = stream_of(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", piece=5)
        out = Recording()
        await copy_chunked(s, out, 100, 1.0, reencode=True)
        assert out.drains >= len(out.writes) >= 3

    run(main())


def test_unread_goes_first_and_the_head_scan_starts_again():
    async def main():
        s, _ = stream_of(b"Host: a\r\n", eof=False)
        assert s.take_head() is None  # searched up to its end
        s.unread(b"GET / HTTP/1.1\r\n\r\n")
        assert s.take_head() == b"GET / HTTP/1.1\r\n\r\n"
        assert s.peek() == b"Host: a\r\n"
        s.unread(b"")
        assert s.peek() == b"Host: a\r\n"

    run(main())


# --- what a stage's replace sends upstream ----------------------------------------------------


class Replacing:
    """The OAuth grant stage's part (gateway/oauth.py) that matters here: read the body whole,
    then replace it."""

    def __init__(self) -> None:
        self.read: list[bytes] = []

    def intercepts(self, service, req) -> bool:
        return self.applies(service) and req.method == b"POST"

    @staticmethod
    def applies(service) -> bool:
        return service.name == "oauth"

    async def handle(self, gw, ex):
        self.read.append(await ex.body.read(100))
        ex.body.replace(b"grant_type=password")
        return None  # go on: forwarded with the replacement


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_replace_is_what_goes_upstream(loop_thread, tls_files, upstream, framing):
    g = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=AllowAs("alice"))
    stage = g.gateway.oauth = Replacing()
    try:
        host = b"Host: lyncext.contoso.com\r\n"
        if framing == "length":
            first = b"POST /webticket/oauthtoken HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhello"
        else:
            first = (
                b"POST /webticket/oauthtoken HTTP/1.1\r\n"
                + host
                + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
        second = b"GET /ucwa/next HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n"
        before = len(upstream.received)
        resp = g.raw(first + second)
        assert resp.count(b"HTTP/1.1 200 ") == 2, resp[:300]
        assert stage.read == [b"hello"]
        replaced, nxt = upstream.received[before:]
        assert replaced.body_sha256 == hashlib.sha256(b"grant_type=password").hexdigest()
        assert replaced.header("Content-Length") == "19" and replaced.header("Transfer-Encoding") is None
        assert (nxt.method, nxt.target, nxt.body_len) == ("GET", "/ucwa/next", 0)
    finally:
        g.stop()


def _stream_first_head(data: bytes, cuts: list[int], limit: int) -> object:
    """The gateway's head search over ``data`` given in pieces: the first head's bytes, or
    ("error", status) — as session.py maps them (LimitOverrunError: 431)."""
    loop = asyncio.new_event_loop()
    try:
        return _take_first_head(Stream(loop, limit), data, cuts)
    finally:
        loop.close()


def _take_first_head(s: Stream, data: bytes, cuts: list[int]) -> object:
    s.connection_made(Transport())
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if data[prev:c]:
            s.data_received(data[prev:c])
        prev = c
        try:
            head = s.take_head()
        except asyncio.LimitOverrunError:
            return ("error", 431)
        except HttpError as e:
            return ("error", e.status)
        if head is not None:
            return head
    return None


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.sampled_from(sorted(VECTORS)).map(lambda n: VECTORS[n][0]),
        st.binary(max_size=300).map(lambda b: b"GET / HTTP/1.1\r\nHost: a\r\n" + b),
    ),
    st.lists(st.integers(0, 400), max_size=6),
    st.sampled_from([64, 256, 1 << 16]),
)
def test_the_stream_finds_the_head_the_connection_object_finds(raw, cuts, limit):
    """One rule for finding a head (``http1conn.head_end``): the gateway's Stream, fed in any
    pieces, then the parser, gives the first request the connection object gives, or the same
    refusal — a bare CR or LF (400) or a head over the limit (431) as soon as it is there."""
    cuts = [c % (len(raw) + 1) for c in cuts]
    limits = Limits(max_header_bytes=limit)
    got = _stream_first_head(raw, cuts, limit)
    if isinstance(got, bytes):
        try:
            got = http1.parse_request_head(got, limits)
        except HttpError as e:
            got = ("error", e.status)
    conn = Connection(SERVER, limits)
    prev, want = 0, None
    for c in sorted(set(cuts)) + [len(raw)]:
        if raw[prev:c]:
            conn.receive_data(raw[prev:c])
        prev = c
        try:
            e = conn.next_event()
        except HttpError as err:
            want = ("error", err.status)
            break
        if e is not NEED_DATA:
            want = e.head
            break
    assert got == want
