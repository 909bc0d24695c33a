"""protocols/http1conn.py: the sans-I/O connection (server and client side) and BodyReader.

The smuggling vectors of tests/gateway/test_smuggling.py go through the connection object with
the same refusals; generated messages split at random points give the events of a reference
reading written here on the one-shot functions of protocols/http1.py (``parse_request_head``,
``parse_chunk_size_line``, ``check_trailer_line``), not on the connection or BodyReader."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols import http1
from ucgate.protocols.http1 import (
    MAX_CHUNK_LINE_BYTES,
    Framing,
    HttpError,
    Limits,
    check_trailer_line,
    encode_chunk,
    parse_chunk_size_line,
    parse_request_head,
    parse_response_head,
    request_special_re,
)
from ucgate.protocols.http1conn import (
    CLIENT,
    MAX_TRAILER_BYTES,
    NEED_DATA,
    PAUSED,
    SERVER,
    BodyReader,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    Response,
    head_end,
)
from ucgate.protocols.sfb import split_target

from ..gateway.test_smuggling import VECTORS

FUZZ = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300"))
H = b"Host: gw\r\n"


def events(conn: Connection, data: bytes = b"", eof: bool = False) -> list:
    """Every event ``data`` (then the end of the stream) gives, Data merged, NEED_DATA left out;
    a refusal ends the list as ("error", status, reason)."""
    out: list = []
    pieces = [data, b""] if eof else [data]
    for piece in pieces:
        if piece or eof:
            conn.receive_data(piece)
        while True:
            try:
                e = conn.next_event()
            except HttpError as err:
                out.append(("error", err.status, err.reason))
                return out
            if e is NEED_DATA:
                break
            if isinstance(e, Data) and out and isinstance(out[-1], Data):
                out[-1] = Data(out[-1].data + e.data)
            else:
                out.append(e)
            if e is PAUSED or isinstance(e, ConnectionClosed):
                return out
    return out


def split_events(conn: Connection, data: bytes, cuts: list[int], eof: bool = True) -> list:
    """``events`` with ``data`` given in pieces cut at ``cuts``."""
    out: list = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        got = events(conn, data[prev:c])
        prev = c
        for e in got:
            if isinstance(e, Data) and out and isinstance(out[-1], Data):
                out[-1] = Data(out[-1].data + e.data)
            else:
                out.append(e)
        if out and (isinstance(out[-1], tuple) or out[-1] is PAUSED or isinstance(out[-1], ConnectionClosed)):
            return out
    if eof:
        for e in events(conn, b"", eof=True):
            if isinstance(e, Data) and out and isinstance(out[-1], Data):
                out[-1] = Data(out[-1].data + e.data)
            else:
                out.append(e)
    return out


# --- the smuggling vectors -----------------------------------------------------------------

# refused by the gateway's target check (protocols/sfb.split_target), not by HTTP/1 framing
PATH_VECTORS = {
    "absolute-form",
    "dot-segments",
    "encoded-dots",
    "encoded-slash",
    "backslash",
    "double-encoding",
    "empty-segment",
    "bad-escape",
    "encoded-crlf-in-path",
}


def _refusal(raw: bytes, byte_by_byte: bool) -> tuple[int, str] | None:
    conn = Connection(SERVER)
    got = split_events(conn, raw, list(range(len(raw))) if byte_by_byte else [])
    for e in got:
        if isinstance(e, tuple):
            return e[1], e[2]
        if isinstance(e, Request):
            try:
                split_target(e.head.target.decode("ascii"))
            except HttpError as err:
                return err.status, err.reason
    return None


# --- the reference: the one-shot functions of http1.py, a whole stream at once -----------------


def _reference_body(
    framing: Framing, wire: bytes, got: list[bytes] | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(payload, trailers, the bytes after the body) of a body whose stream ends after ``wire``,
    read line by line with ``http1.parse_chunk_size_line`` / ``check_trailer_line`` (the copy the
    gateway had before BodyReader), or the HttpError of the first thing refused (``got`` then
    holds the payload read before it). Refused as soon as it is seen: a chunk terminator byte
    that is not its CRLF's, a line that can no longer end within its limit; anything else cut
    short is 400 body-incomplete."""
    incomplete = HttpError(400, "body-incomplete")
    got = [] if got is None else got
    if framing.kind == "none":
        return b"", [], wire
    if framing.kind == "length":
        got.append(wire[: framing.length])
        if len(wire) < framing.length:
            raise incomplete
        return wire[: framing.length], [], wire[framing.length :]
    assert framing.kind == "chunked"
    payload, pos = b"", 0
    while True:
        i = wire.find(b"\r\n", pos)
        if i < 0:
            partial = wire[pos:]
            if len(partial) + (1 if partial.endswith(b"\r") else 2) > MAX_CHUNK_LINE_BYTES:
                raise HttpError(400, "chunk-line-too-long")
            raise incomplete
        size = parse_chunk_size_line(wire[pos : i + 2])
        pos = i + 2
        if size == 0:
            break
        data = wire[pos : pos + size]
        payload += data
        got.append(data)
        pos += size
        if len(data) < size:
            raise incomplete
        terminator = wire[pos : pos + 2]
        if terminator != b"\r\n"[: len(terminator)]:
            raise HttpError(400, "bad-chunk-terminator")
        if len(terminator) < 2:
            raise incomplete
        pos += 2
    trailers, total = [], 0
    while True:
        i = wire.find(b"\r\n", pos)
        if i < 0:
            partial = wire[pos:]
            if total + len(partial) + (1 if partial.endswith(b"\r") else 2) > MAX_TRAILER_BYTES:
                raise HttpError(400, "trailer-too-large")
            raise incomplete
        line = wire[pos : i + 2]
        pos = i + 2
        total += len(line)
        if total > MAX_TRAILER_BYTES:
            raise HttpError(400, "trailer-too-large")
        if check_trailer_line(line):
            return payload, trailers, wire[pos:]
        name, _, value = line[:-2].partition(b":")
        trailers.append((name, value.strip(b" \t")))


def _bare_cr_or_lf(buf: bytes) -> bool:
    """A CR or LF outside a CRLF (a CR at the very end may still become one)."""
    rest = buf[:-1] if buf.endswith(b"\r") else buf
    rest = rest.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest


def _reference_events(data: bytes) -> list:
    """The server side's events for ``data`` then the end of the stream, as ``events`` gives
    them (Data merged; a refusal as ("error", status, reason)), by the reference reading."""
    out: list = []
    try:
        while True:
            if not data:
                out.append(ConnectionClosed())
                return out
            i = data.find(b"\r\n\r\n")
            if i < 0:
                if _bare_cr_or_lf(data):
                    raise HttpError(400, "bare-cr-or-lf")
                raise HttpError(400, "incomplete-head")
            req = parse_request_head(data[: i + 4])
            out.append(Request(req))
            given: list[bytes] = []
            try:
                payload, trailers, data = _reference_body(req.framing, data[i + 4 :], given)
            except HttpError:
                if b"".join(given):  # read before the refusal (the connection: a prefix of it)
                    out.append(Data(b"".join(given)))
                raise
            if payload:
                out.append(Data(payload))
            out.append(EndOfMessage(trailers))
            if not req.keep_alive:
                out.append(PAUSED)
                return out
    except HttpError as e:
        out.append(("error", e.status, e.reason))
        return out


def _one_shot_refusal(raw: bytes) -> tuple[int, str] | None:
    """The same vector through the one-shot functions (and the gateway's target check)."""
    for e in _reference_events(raw):
        if isinstance(e, tuple):
            return e[1], e[2]
        if isinstance(e, Request):
            try:
                split_target(e.head.target.decode("ascii"))
            except HttpError as err:
                return err.status, err.reason
    return None


def test_reference_reading():
    """The reference's own rules, on fixed bytes (so that it is not only checked against the
    code it is the oracle of)."""
    chunked = Framing("chunked")
    assert _reference_body(chunked, b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\nU:2 \r\n\r\nrest") == (
        b"abcde",
        [(b"T", b"1"), (b"U", b"2")],
        b"rest",
    )
    assert _reference_body(Framing("length", 2), b"abc") == (b"ab", [], b"c")
    for wire, reason in (
        (b"3\r\nab", "body-incomplete"),
        (b"3\r\nabc\r", "body-incomplete"),
        (b"3\r\nabcX", "bad-chunk-terminator"),
        (b"3\r\nabc\rX", "bad-chunk-terminator"),
        (b"3\r\nabcdef\r\n", "bad-chunk-terminator"),
        (b"3x\r\n", "bad-chunk-size"),
        (b"1;" + b"a" * MAX_CHUNK_LINE_BYTES, "chunk-line-too-long"),
        (b"1;" + b"a" * (MAX_CHUNK_LINE_BYTES - 4), "body-incomplete"),
        (b"0\r\nX: " + b"a" * MAX_TRAILER_BYTES, "trailer-too-large"),
        (b"0\r\nX : 1\r\n\r\n", "bad-trailer"),
        (b"0\r\n f\r\n\r\n", "obs-fold"),
    ):
        with pytest.raises(HttpError) as e:
            _reference_body(chunked, wire)
        assert e.value.reason == reason, wire
    assert _bare_cr_or_lf(b"a\nb") and _bare_cr_or_lf(b"a\rb") and _bare_cr_or_lf(b"\r\r\n")
    assert not _bare_cr_or_lf(b"a\r\nb\r")
    post = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\n"
    req = parse_request_head(post)
    assert _reference_events(post + b"abcGET / HTTP/1.1\r\n") == [
        Request(req),
        Data(b"abc"),
        EndOfMessage([]),
        ("error", 400, "incomplete-head"),
    ]
    assert _reference_events(post + b"ab") == [Request(req), Data(b"ab"), ("error", 400, "body-incomplete")]
    te = b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _reference_events(te + b"2\r\nab\r\n3\r\ncdeX")[1:] == [
        Data(b"abcde"),
        ("error", 400, "bad-chunk-terminator"),
    ]


def test_every_vector_is_here():
    assert len(VECTORS) >= 52  # tests/gateway/test_smuggling.py, imported


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_smuggling_vector_refused_by_the_connection(name, byte_by_byte):
    raw, status = VECTORS[name]
    got = _refusal(raw, byte_by_byte)
    assert got is not None and got[0] == status
    assert got == _one_shot_refusal(raw)
    if name not in PATH_VECTORS:  # the connection itself refuses it, before any path check
        conn = Connection(SERVER)
        assert isinstance(split_events(conn, raw, [])[-1], tuple)


def test_smuggling_vector_reasons():
    reasons = {name: _refusal(raw, False)[1] for name, (raw, _) in VECTORS.items()}
    assert reasons["cl-te"] == reasons["te-cl"] == "content-length-and-transfer-encoding"
    assert reasons["chunk-size-lies"] == reasons["chunk-missing-crlf"] == "bad-chunk-terminator"
    assert reasons["chunk-bad-trailer"] == "bad-trailer"
    assert reasons["chunk-bare-lf"] == reasons["chunk-0x"] == reasons["chunk-overflow"] == "bad-chunk-size"
    assert reasons["te-bare-lf"] == reasons["lf-in-value"] == reasons["bare-cr-in-value"] == "bare-cr-or-lf"
    assert reasons["expect-other"] == "unsupported-expectation"
    assert reasons["http2-version"] == "http-version-not-supported"


def test_a_refused_connection_stays_refused():
    conn = Connection(SERVER)
    conn.receive_data(VECTORS["cl-te"][0])
    with pytest.raises(HttpError) as first:
        conn.next_event()
    with pytest.raises(HttpError) as again:
        conn.next_event()
    assert again.value is first.value


# --- generated messages: any split gives the one-shot result -------------------------------

_field_lines = st.lists(
    st.sampled_from([b"Accept: */*", b"X-A: 1", b"Cookie: a=b", b"User-Agent: UCCAPI/16"]), max_size=3
)
_payload = st.binary(max_size=40)


@st.composite
def _request(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
    fields = draw(_field_lines)
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(_payload) if kind != "none" else b""
    wire = b""
    if kind == "length":
        fields = fields + [b"Content-Length: %d" % len(body)]
        wire = body
    elif kind == "chunked":
        fields = fields + [b"Transfer-Encoding: chunked"]
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        prev = 0
        for c in cuts + [len(body)]:
            if c > prev:
                ext = draw(st.sampled_from([b"", b";a=b", b' ; q="x\\"y"']))
                wire += b"%x%b\r\n%b\r\n" % (c - prev, ext, body[prev:c])
            prev = c
        wire += b"0\r\n" + b"".join(draw(st.lists(st.sampled_from([b"X-T: 1\r\n", b"Y:2\r\n"]), max_size=2))) + b"\r\n"
    if draw(st.booleans()):
        fields = fields + [draw(st.sampled_from([b"Connection: keep-alive", b"Connection: close"]))]
    head = b"%b /ucwa/x HTTP/1.1\r\n" % method + H + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    return head, body, wire


def _expected(messages) -> list:
    """The events of ``messages`` by the one-shot head parser and the reference body reading."""
    out: list = []
    for head, body, wire in messages:
        req = parse_request_head(head)
        out.append(Request(req))
        if body:
            out.append(Data(body))
        payload, trailers, rest = _reference_body(req.framing, wire)
        assert (payload, rest) == (body, b"")
        out.append(EndOfMessage(trailers))
        if not req.keep_alive:
            out.append(PAUSED)
            return out
    out.append(ConnectionClosed())
    return out


def _same(got: list, want: list) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, Request):
            assert isinstance(g, Request)
            assert g.head == w.head or _heads_agree(g.head, w.head)
        else:
            assert g == w


def _heads_agree(a: http1.RequestHead, b: http1.RequestHead) -> bool:
    keys = (
        "method",
        "target",
        "version",
        "headers",
        "framing",
        "host",
        "keep_alive",
        "expect_continue",
        "connection_tokens",
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(st.lists(_request(), min_size=1, max_size=3), st.lists(st.integers(0, 2000), max_size=8), st.booleans())
def test_split_messages_give_the_one_shot_events(messages, cuts, common):
    data = b"".join(head + wire for head, _, wire in messages)
    special = request_special_re(frozenset()) if common else None
    want = _expected(messages)
    _same(split_events(Connection(SERVER, special=special), data, [c % (len(data) + 1) for c in cuts]), want)
    _same(events(Connection(SERVER, special=special), data, eof=True), want)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(st.sampled_from(sorted(VECTORS)), st.lists(st.integers(0, 400), max_size=6))
def test_split_vectors_give_the_one_shot_refusal(name, cuts):
    raw, _ = VECTORS[name]
    want = _reference_events(raw)
    _same_refusal(split_events(Connection(SERVER), raw, [c % (len(raw) + 1) for c in cuts]), want)
    _same_refusal(split_events(Connection(SERVER), raw, []), want)


def _same_refusal(got: list, want: list) -> None:
    """The same events but Data, and the same payload; before a refusal, a prefix of the payload
    the reference read up to it: a body refused part way has given what earlier pieces
    completed (the gateway re-frames them and drops the upstream connection,
    tests/gateway/test_smuggling.py), not what came in the piece refused."""

    def data(es):
        return b"".join(e.data for e in es if isinstance(e, Data))

    assert [e for e in got if not isinstance(e, Data)] == [e for e in want if not isinstance(e, Data)]
    if isinstance(want[-1], tuple):
        assert data(want).startswith(data(got))
    else:
        assert data(got) == data(want)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(st.binary(max_size=60), st.lists(st.integers(0, 80), max_size=6))
def test_split_garbage_bodies_give_the_one_shot_result(body, cuts):
    head = b"POST /x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    data = head + b"5\r\nhello\r\n" + body
    want = _reference_events(data)
    _same_refusal(split_events(Connection(SERVER), data, [c % (len(data) + 1) for c in cuts]), want)
    _same_refusal(events(Connection(SERVER), data, eof=True), want)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(_payload, st.lists(st.integers(0, 80), max_size=6), st.booleans())
def test_body_reader_split_equals_one_shot(body, cuts, raw):
    wire = (
        encode_chunk(body[:7]) + encode_chunk(body[7:]) + b"0\r\nX: 1\r\n\r\nrest"
        if body[7:]
        else (b"%x;e=1\r\n%b\r\n0\r\n\r\nrest" % (len(body), body) if body else b"0\r\n\r\nrest")
    )
    one = BodyReader(Framing("chunked"), raw=raw)
    out, done = one.feed(wire)
    assert done and one.unused == b"rest"
    assert out == (wire[:-4] if raw else body)
    r = BodyReader(Framing("chunked"), raw=raw)
    got, prev = b"", 0
    for c in sorted({c % (len(wire) + 1) for c in cuts}) + [len(wire)]:
        if c == prev:
            continue  # feed(b"") is the end of the stream
        piece, d = r.feed(wire[prev:c])
        got += piece
        prev = c
    assert (got, d, r.unused, r.trailers) == (out, True, b"rest", [(b"X", b"1")] if body[7:] else [])
    assert one.trailers == r.trailers


# --- server side ---------------------------------------------------------------------------


def test_server_pipelined_requests_and_bodies():
    conn = Connection(SERVER)
    data = (
        b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"
        b"POST /b HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\nT: v \r\n\r\n"
        b"GET /c HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\nGET /d HTTP/1.1\r\n\r\n"
    )
    got = events(conn, data)
    assert [type(e).__name__ for e in got] == [
        "Request",
        "Data",
        "EndOfMessage",
        "Request",
        "Data",
        "EndOfMessage",
        "Request",
        "EndOfMessage",
        "_Sentinel",
    ]
    assert got[0].head.target == b"/a" and got[1] == Data(b"abc") and got[2] == EndOfMessage([])
    assert got[4] == Data(b"hi") and got[5] == EndOfMessage([(b"T", b"v")])
    assert got[6].head.keep_alive is False and got[8] is PAUSED
    assert conn.next_event() is PAUSED
    assert conn.trailing_data == (b"GET /d HTTP/1.1\r\n\r\n", False)


def test_server_common_route_through_the_connection():
    special = request_special_re(frozenset())
    conn = Connection(SERVER, special=special)
    got = events(conn, b"GET /a HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
    assert got[0].head.prefix == b"GET /a HTTP/1.1\r\nHost: gw\r\n" and got[1] == EndOfMessage([])
    conn = Connection(SERVER)
    got = events(conn, b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert got[0].head.prefix is None


def test_server_need_data_and_eof():
    conn = Connection(SERVER)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: gw\r\n\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert isinstance(conn.next_event(), Request)
    assert conn.next_event() == EndOfMessage([])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    conn.receive_data(b"")  # a second end is nothing new
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert isinstance(conn.next_event(), ConnectionClosed)
    with pytest.raises(RuntimeError):
        conn.receive_data(b"x")


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"GET / HTTP/1.1\r\nHost: gw\r\n", "incomplete-head"),
        (b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nabc", "body-incomplete"),
        (b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n", "body-incomplete"),
        (b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "body-incomplete"),
    ],
)
def test_server_end_of_stream_inside_a_message(data, reason):
    assert events(Connection(SERVER), data, eof=True)[-1] == ("error", 400, reason)


def test_server_bare_cr_or_lf_refused_before_the_head_ends():
    conn = Connection(SERVER)
    conn.receive_data(b"GET / HTTP/1.1\nHost: gw\n")
    with pytest.raises(HttpError) as e:
        conn.next_event()
    assert (e.value.status, e.value.reason, e.value.detail) == (
        400,
        "bare-cr-or-lf",
        "bare CR or LF in the header section",
    )
    conn = Connection(SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r")  # a CR that may still become CRLF
    assert conn.next_event() is NEED_DATA


def test_server_head_search_resumes_where_it_stopped():
    """The end of the head and a bare CR are found across pieces however the head is cut (the
    search resumes 3 bytes before the end of what was searched), and a head that comes byte by
    byte costs linear time: 32 KiB took 29 s when every piece searched the whole buffer."""
    for pieces in ([b"\r", b"X"], [b"GET / HTTP/1.1\r", b"Host: gw\r\n\r\n"], [b"GET / HTTP/1.1\r\nX: a\r", b"\r\n"]):
        conn = Connection(SERVER)
        got = [e for p in pieces for e in events(conn, p)]
        assert got == [("error", 400, "bare-cr-or-lf")], pieces
    head = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"
    for cut in range(1, len(head)):
        for cut2 in range(cut, len(head)):
            conn = Connection(SERVER)
            got = events(conn, head[:cut]) + events(conn, head[cut:cut2]) + events(conn, head[cut2:])
            assert got == [Request(parse_request_head(head)), EndOfMessage([])], (cut, cut2)
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX: " + b"a" * 32 * 1024 + b"\r\n\r\n"
    conn = Connection(SERVER, Limits(max_header_bytes=len(head)))
    started = time.monotonic()
    for i in range(len(head) - 1):
        conn.receive_data(head[i : i + 1])
        assert conn.next_event() is NEED_DATA
        assert i % 1024 or time.monotonic() - started < 5, i  # (a quadratic search stops early)
    conn.receive_data(head[-1:])
    assert isinstance(conn.next_event(), Request)
    assert time.monotonic() - started < 5


def test_server_next_head_searched_from_its_first_byte():
    """After a message, the search starts again at the next head's first byte."""
    first = b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n"
    for after in (b"\nGET", b"\rX"):
        conn = Connection(SERVER)
        req = parse_request_head(first)
        assert events(conn, first + after) == [Request(req), EndOfMessage([]), ("error", 400, "bare-cr-or-lf")]
    conn = Connection(SERVER)
    got = events(conn, first + b"\r\n\r\n")  # an empty head at once, not the first's search state
    assert got[-1] == ("error", 400, "bad-line-ending")


def test_server_head_size_limit():
    limits = Limits(max_header_bytes=40)
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX: " + b"a" * 7 + b"\r\n\r\n"
    assert len(head) == 40
    assert isinstance(events(Connection(SERVER, limits), head)[0], Request)
    assert events(Connection(SERVER, limits), head[:-4] + b"a" + head[-4:])[-1] == ("error", 431, "header-too-large")
    # without the end: refused once more than the limit is buffered (the stream's readuntil)
    assert events(Connection(SERVER, limits), b"G" * 43) == []
    assert events(Connection(SERVER, limits), b"G" * 44) == [("error", 431, "header-too-large")]


def test_server_max_body():
    post = b"POST / HTTP/1.1\r\nHost: gw\r\n"
    assert events(Connection(SERVER, max_body=3), post + b"Content-Length: 3\r\n\r\nabc")[1] == Data(b"abc")
    assert events(Connection(SERVER, max_body=3), post + b"Content-Length: 4\r\n\r\nabcd")[-1] == (
        "error",
        413,
        "body-too-large",
    )
    chunked = post + b"Transfer-Encoding: chunked\r\n\r\n"
    assert events(Connection(SERVER, max_body=3), chunked + b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")[-1] == EndOfMessage([])
    assert events(Connection(SERVER, max_body=3), chunked + b"2\r\nab\r\n2\r\ncd\r\n")[-1] == (
        "error",
        413,
        "body-too-large",
    )


def test_connection_role_checks():
    with pytest.raises(ValueError):
        Connection("proxy")
    with pytest.raises(RuntimeError):
        Connection(SERVER).send_request(b"GET")
    c = Connection(CLIENT, Limits(max_header_count=5), max_body=9)
    assert (c.role, c.limits, c.max_body, c.special) == (CLIENT, Limits(max_header_count=5), 9, None)


# --- client side ---------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_client_responses_in_request_order():
    conn = Connection(CLIENT)
    assert conn.next_event() is NEED_DATA
    conn.send_request(b"GET")
    conn.send_request(b"HEAD")
    conn.send_request(b"POST")
    got = events(
        conn,
        OK
        + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    )
    kinds = [type(e).__name__ for e in got]
    assert kinds == ["Response", "Data", "EndOfMessage", "Response", "EndOfMessage", "Response", "Data", "EndOfMessage"]
    assert got[0].head.prefix == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" and got[0].head.length == 2
    assert got[3].head.framing == Framing("none") and got[6] == Data(b"x")
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("status", [204, 304])
def test_client_bodiless_statuses(status):
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    got = events(conn, b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status + OK)
    assert got[0].head.framing == Framing("none") and got[1:] == [
        EndOfMessage([]),
        ("error", 502, "unsolicited-response"),
    ]
    assert conn.trailing_data == (OK, False)  # the response nobody asked for is not used


def test_client_interim_and_switching():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    got = events(conn, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n" + OK)
    assert [e.head.status for e in got if isinstance(e, Response)] == [100, 103, 200]
    assert got[-2:] == [Data(b"ok"), EndOfMessage([])]
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    conn.send_request(b"GET")
    got = events(conn, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw bytes")
    assert got[0].head.status == 101 and got[1] is PAUSED
    assert conn.trailing_data == (b"raw bytes", False)
    conn.send_request(b"GET")
    assert conn.next_event() is PAUSED


def test_client_read_until_close():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    got = events(conn, b"HTTP/1.1 200 OK\r\n\r\nsome ", eof=False)
    assert got[0].head.framing == Framing("close") and got[1] == Data(b"some ")
    got = events(conn, b"body", eof=True)
    assert got == [Data(b"body"), EndOfMessage([]), PAUSED]


def test_client_keep_alive_then_closed():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    assert events(conn, OK, eof=True)[-1] == ConnectionClosed()
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    assert events(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[-1] is PAUSED


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "bad-upstream-content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "bad-upstream-framing"),
        (b"HTTP/1.1 200 OK\nX: 1\n", "bad-upstream-response"),
        (b"HTTP/2 200 OK\r\n\r\n", "bad-upstream-response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad-chunk-size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "body-incomplete"),
        (b"HTTP/1.1 200 OK\r\n", "upstream-incomplete-head"),
    ],
)
def test_client_refusals_are_502(data, reason):
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    assert events(conn, data, eof=True)[-1] == ("error", 502, reason)


def test_client_bare_lf_detail_and_head_limit():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    conn.receive_data(b"HTTP/1.1 200 OK\n")
    with pytest.raises(HttpError) as e:
        conn.next_event()
    assert (e.value.status, e.value.reason, e.value.detail) == (502, "bad-upstream-response", "bare-cr-or-lf")
    limits = Limits(max_header_bytes=20)
    conn = Connection(CLIENT, limits)
    conn.send_request(b"GET")
    assert events(conn, b"H" * 23) == []
    assert events(conn, b"H") == [("error", 502, "upstream-header-too-large")]
    conn = Connection(CLIENT, limits)
    conn.send_request(b"GET")
    assert events(conn, b"HTTP/1.1 200 OK\r\nX: 12\r\n\r\n") == [("error", 502, "upstream-header-too-large")]


def test_client_closed_before_any_response():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    assert events(conn, b"", eof=True) == [ConnectionClosed()]
    conn = Connection(CLIENT)
    assert events(conn, b"", eof=True) == [ConnectionClosed()]
    conn = Connection(CLIENT)
    assert events(conn, OK) == [("error", 502, "unsolicited-response")]


# --- BodyReader ----------------------------------------------------------------------------


def test_body_reader_length():
    r = BodyReader(Framing("length", 5))
    assert (r.done, r.feed(b"ab")) == (False, (b"ab", False))
    assert r.feed(b"cdeNEXT") == (b"cde", True) and r.unused == b"NEXT" and r.done
    assert r.feed(b"!") == (b"", True) and r.unused == b"NEXT!"
    assert BodyReader(Framing("length", 5)).feed(b"abcde") == (b"abcde", True)
    assert BodyReader(Framing("length", 3), limit=3).feed(b"abc") == (b"abc", True)
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("length", 4), limit=3)
    assert (e.value.status, e.value.reason) == (413, "body-too-large")
    r = BodyReader(Framing("length", 2))
    r.feed(b"a")
    with pytest.raises(HttpError) as e:
        r.eof()
    assert (e.value.status, e.value.reason) == (400, "body-incomplete")


def test_body_reader_none_and_close():
    r = BodyReader(Framing("none"))
    assert r.done and r.feed(b"x") == (b"", True) and r.unused == b"x"
    r = BodyReader(Framing("length", 0))
    assert r.done and r.eof()
    r = BodyReader(Framing("close"), limit=4)
    assert r.feed(b"ab") == (b"ab", False) and r.feed(b"cd") == (b"cd", False)
    assert r.eof() and r.done
    r = BodyReader(Framing("close"), limit=4)
    r.feed(b"abcd")
    with pytest.raises(HttpError) as e:
        r.feed(b"e")
    assert (e.value.status, e.value.reason) == (413, "body-too-large")
    with pytest.raises(ValueError):
        BodyReader(Framing("gzip"))


def test_body_reader_chunked_limit_boundary():
    assert BodyReader(Framing("chunked"), limit=4).feed(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n") == (b"abcd", True)
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked"), limit=4).feed(b"2\r\nab\r\n3\r\n")
    assert (e.value.status, e.value.reason) == (413, "body-too-large")


def test_body_reader_chunk_terminator():
    for wire in (b"1\r\naX\r\n", b"1\r\na\rX", b"1\r\na\n\r"):
        with pytest.raises(HttpError) as e:
            BodyReader(Framing("chunked")).feed(wire)
        assert e.value.reason == "bad-chunk-terminator", wire
    r = BodyReader(Framing("chunked"))
    assert r.feed(b"1\r\na\r") == (b"a", False)
    assert r.feed(b"\n0\r\n\r\n") == (b"", True)
    r = BodyReader(Framing("chunked"))
    assert r.feed(b"1\r\na") == (b"a", False)
    with pytest.raises(HttpError) as e:
        r.feed(b"X")
    assert e.value.reason == "bad-chunk-terminator"


def test_body_reader_chunk_line_limit():
    ext = b";" + b"a" * (MAX_CHUNK_LINE_BYTES - 4)
    line = b"1" + ext + b"\r\n"
    assert len(line) == MAX_CHUNK_LINE_BYTES
    assert BodyReader(Framing("chunked")).feed(line + b"x\r\n0\r\n\r\n") == (b"x", True)
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(b"1" + ext + b"a\r\n")
    assert e.value.reason == "chunk-line-too-long"
    # in pieces: refused as soon as the line cannot end within the limit
    r = BodyReader(Framing("chunked"))
    assert r.feed(line[:-2]) == (b"", False)
    assert r.feed(b"\r") == (b"", False)
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(line[:-2] + b"a")
    assert e.value.reason == "chunk-line-too-long"
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(line[:-2] + b"a\r")
    assert e.value.reason == "chunk-line-too-long"
    r = BodyReader(Framing("chunked"))
    r.feed(line[:-3] + b"\r")  # MAX-1 bytes ending in CR: the line may end at MAX
    with pytest.raises(HttpError) as e:
        r.feed(b"a")
    assert e.value.reason == "chunk-line-too-long"


def test_body_reader_trailer_limit():
    def trailer(n: int) -> bytes:  # one trailer line of n bytes with its CRLF
        return b"X: " + b"a" * (n - 5) + b"\r\n"

    fits = trailer(MAX_TRAILER_BYTES - 2) + b"\r\n"
    assert len(fits) == MAX_TRAILER_BYTES
    r = BodyReader(Framing("chunked"))
    assert r.feed(b"0\r\n" + fits) == (b"", True) and r.trailers == [(b"X", b"a" * (MAX_TRAILER_BYTES - 7))]
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(b"0\r\n" + trailer(MAX_TRAILER_BYTES - 1) + b"\r\n")
    assert (e.value.status, e.value.reason) == (400, "trailer-too-large")
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(b"0\r\n" + trailer(MAX_TRAILER_BYTES + 1))
    assert e.value.reason == "trailer-too-large"
    # in pieces
    r = BodyReader(Framing("chunked"))
    assert r.feed(b"0\r\n" + trailer(MAX_TRAILER_BYTES - 2)[:-2]) == (b"", False)
    assert r.feed(b"\r\n\r") == (b"", False)
    assert r.feed(b"\n") == (b"", True)
    r = BodyReader(Framing("chunked"))
    r.feed(b"0\r\n" + trailer(MAX_TRAILER_BYTES - 2))
    with pytest.raises(HttpError) as e:
        r.feed(b"Y")
    assert e.value.reason == "trailer-too-large"
    r = BodyReader(Framing("chunked"))
    r.feed(b"0\r\n" + trailer(MAX_TRAILER_BYTES - 3))
    assert r.feed(b"\r") == (b"", False)


@pytest.mark.parametrize(
    "trailer,reason",
    [
        (b"X-Bad : y\r\n", "bad-trailer"),
        (b" folded\r\n", "obs-fold"),
        (b"X: a\x00\r\n", "bad-trailer"),
    ],
)
def test_body_reader_trailer_refusals(trailer, reason):
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(b"0\r\n" + trailer + b"\r\n")
    assert (e.value.status, e.value.reason) == (400, reason)


def test_body_reader_raw_and_trailers():
    wire = b"3;x=1\r\nabc\r\n0\r\nA: 1\r\nB:  2 \r\n\r\n"
    r = BodyReader(Framing("chunked"), raw=True)
    assert r.feed(wire + b"tail") == (wire, True)
    assert r.trailers == [(b"A", b"1"), (b"B", b"2")] and r.unused == b"tail"
    r = BodyReader(Framing("chunked"))
    assert r.feed(wire) == (b"abc", True)
    r = BodyReader(Framing("length", 2), raw=True)
    assert r.feed(b"abc") == (b"ab", True)


def test_body_reader_incomplete_chunked():
    for wire in (b"", b"3\r", b"3\r\nab", b"3\r\nabc\r\n", b"0\r\n", b"0\r\nX: 1\r\n"):
        r = BodyReader(Framing("chunked"))
        if wire:
            assert r.feed(wire)[1] is False
        with pytest.raises(HttpError) as e:
            r.eof()
        assert (e.value.status, e.value.reason) == (400, "body-incomplete"), wire


def test_event_reprs():
    assert repr(NEED_DATA) == "NEED_DATA" and repr(PAUSED) == "PAUSED"
    assert EndOfMessage() == EndOfMessage([])


def test_response_common_route_through_the_client():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    head = events(conn, OK)[0].head
    assert head == parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"GET")
    assert head.prefix is not None


# --- boundaries and contracts the mutation run asked for -----------------------------------


def test_close_body_ends_with_the_stream():
    r = BodyReader(Framing("close"))
    assert r.feed(b"") == (b"", True) and r.done


def test_trailer_values_kept_as_sent_but_ows():
    r = BodyReader(Framing("chunked"))
    assert r.feed(b"0\r\nT: Xa:bX\r\nU:\t y \r\n\r\n") == (b"", True)
    assert r.trailers == [(b"T", b"Xa:bX"), (b"U", b"y")]


def test_partial_line_refusals_are_400():
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(b"1" * (MAX_CHUNK_LINE_BYTES - 1))
    assert (e.value.status, e.value.reason, e.value.detail) == (400, "chunk-line-too-long", "")
    with pytest.raises(HttpError) as e:
        BodyReader(Framing("chunked")).feed(b"0\r\nX: " + b"a" * MAX_TRAILER_BYTES)
    assert (e.value.status, e.value.reason, e.value.detail) == (400, "trailer-too-large", "")


def test_server_empty_lines_only():
    assert events(Connection(SERVER), b"\r\n\r\n") == [("error", 400, "bad-line-ending")]


def test_client_head_limit_boundary_as_the_stream_has_it():
    limits = Limits(max_header_bytes=20)
    for head, reason, detail in (
        (b"HTTP/1.1 200 OK\r\nX:1\r\n\r\n", "bad-upstream-response", "upstream-header-too-large"),
        (b"HTTP/1.1 200 OK\r\nX:12\r\n\r\n", "upstream-header-too-large", ""),
    ):
        conn = Connection(CLIENT, limits)
        conn.send_request(b"GET")
        conn.receive_data(head)
        with pytest.raises(HttpError) as e:
            conn.next_event()
        assert (e.value.status, e.value.reason, e.value.detail) == (502, reason, detail)


def test_client_uses_its_limits_for_the_head():
    conn = Connection(CLIENT, Limits(max_header_count=1))
    conn.send_request(b"GET")
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: 1\r\n\r\n")
    with pytest.raises(HttpError) as e:
        conn.next_event()
    assert (e.value.status, e.value.reason, e.value.detail) == (502, "bad-upstream-response", "too-many-headers")


def test_client_body_refusal_has_the_reason_only():
    conn = Connection(CLIENT)
    conn.send_request(b"GET")
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab")
    assert isinstance(conn.next_event(), Response)
    with pytest.raises(HttpError) as e:
        while True:
            conn.next_event()
    assert (e.value.status, e.value.reason, e.value.detail) == (502, "bad-chunk-terminator", "")


def test_misuse_messages():
    conn = Connection(SERVER)
    with pytest.raises(RuntimeError, match="^send_request is for the client side$"):
        conn.send_request(b"GET")
    conn.receive_data(b"")
    with pytest.raises(RuntimeError, match="^data after the end of the stream$"):
        conn.receive_data(b"x")
    with pytest.raises(ValueError, match="^role must be 'server' or 'client'$"):
        Connection("proxy")
    with pytest.raises(ValueError, match="^unknown framing 'gzip'$"):
        BodyReader(Framing("gzip"))


@st.composite
def _response(draw):
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    status = draw(st.sampled_from([200, 204, 304, 404, 500]))
    kind = draw(st.sampled_from(["length", "chunked"]))
    body = draw(_payload)
    bodiless = method == b"HEAD" or status in (204, 304)
    if kind == "length":
        fields, wire = b"Content-Length: %d\r\n" % len(body), body
    else:
        fields, wire = b"Transfer-Encoding: chunked\r\n", (encode_chunk(body) if body else b"") + b"0\r\n\r\n"
    head = b"HTTP/1.1 %d X\r\nServer: t\r\n%b\r\n" % (status, fields)
    return method, head, (b"" if bodiless else body), (b"" if bodiless else wire)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(st.lists(_response(), min_size=1, max_size=3), st.lists(st.integers(0, 2000), max_size=8))
def test_client_split_responses_give_the_one_shot_events(responses, cuts):
    data = b"".join(head + wire for _, head, _, wire in responses)
    want: list = []
    for method, head, body, _ in responses:
        want.append(Response(parse_response_head(head, method)))
        if body:
            want.append(Data(body))
        want.append(EndOfMessage([]))
    want.append(ConnectionClosed())
    for pieces in ([], [c % (len(data) + 1) for c in cuts]):
        conn = Connection(CLIENT)
        for method, *_ in responses:
            conn.send_request(method)
        got = split_events(conn, data, pieces)
        assert [type(e) for e in got] == [type(e) for e in want]
        for g, w in zip(got, want, strict=True):
            if isinstance(w, Response):
                keys = ("status", "reason", "headers", "framing", "keep_alive")
                assert [getattr(g.head, k) for k in keys] == [getattr(w.head, k) for k in keys]
            else:
                assert g == w


def test_head_end_answers_exactly():
    """The one head-finding rule (the Connection's and the gateway's Stream's): where the head
    ends, where the next search resumes, and which refusal, by reason."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert head_end(head + b"next", 0, 100) == (len(head), 0)
    assert head_end(head, 10, 100) == (len(head), 0)  # found from where the search resumed
    assert head_end(b"", 0, 100) == (-1, 0)
    assert head_end(b"GE", 0, 100) == (-1, 0)
    assert head_end(b"GET", 0, 100) == (-1, 0)
    assert head_end(b"GET ", 0, 100) == (-1, 1)  # the end may begin in the last 3 bytes
    assert head_end(b"GET / HTTP/1.1\r\n", 0, 100) == (-1, 13)
    assert head_end(b"x" * 103, 0, 100) == (-1, 100)  # 100 bytes searched: at the limit, not over it
    with pytest.raises(HttpError) as e:
        head_end(b"x" * 104, 0, 100)  # not found, longer than the limit
    assert (e.value.status, e.value.reason) == (431, "header-too-large")
    with pytest.raises(HttpError) as e:
        head_end(b"x" * 101 + b"\r\n\r\n", 0, 100)  # found, longer than the limit
    assert (e.value.status, e.value.reason) == (431, "header-too-large")
    assert head_end(b"x" * 100 + b"\r\n\r\n", 0, 100) == (104, 0)  # found at the limit
    with pytest.raises(HttpError) as e:
        head_end(b"GET / HTTP/1.1\nHost", 0, 100)
    assert (e.value.status, e.value.reason) == (400, "bare-cr-or-lf")
