"""The strict HTTP/1.1 head parser (sans-I/O), with RFC 9112 section references."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols import http1
from ucgate.protocols.http1 import HttpError, parse_chunk_size_line, parse_request_head, parse_response_head

FUZZ = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300"))


def req(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_simple_get():
    r = parse_request_head(req(b"GET /ucwa/x?y=1 HTTP/1.1", b"Host: a.b", b"User-Agent: UCWA/1"))
    assert (r.method, r.target, r.version, r.host) == (b"GET", b"/ucwa/x?y=1", (1, 1), b"a.b")
    assert r.framing.kind == "none" and r.keep_alive
    assert r.get(b"user-agent") == b"UCWA/1"


def test_http10_keep_alive_only_when_asked():
    assert not parse_request_head(req(b"GET / HTTP/1.0")).keep_alive
    assert parse_request_head(req(b"GET / HTTP/1.0", b"Connection: keep-alive")).keep_alive


def test_framing():
    assert parse_request_head(req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 12")).framing == http1.Framing(
        "length", 12
    )
    assert (
        parse_request_head(req(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked")).framing.kind == "chunked"
    )
    assert parse_request_head(req(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 0")).framing.kind == "none"


@pytest.mark.parametrize(
    "lines,status,reason",
    [
        (
            (b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Transfer-Encoding: chunked"),
            400,
            "content-length-and-transfer-encoding",
        ),
        ((b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Content-Length: 1"), 400, "duplicate-content-length"),
        ((b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: gzip"), 501, "unsupported-transfer-encoding"),
        ((b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: gzip, chunked"), 400, "bad-transfer-encoding"),
        ((b"GET / HTTP/1.1", b"Host: a", b" folded"), 400, "obs-fold"),
        ((b"GET / HTTP/1.1",), 400, "missing-or-duplicate-host"),
        ((b"GET / HTTP/3.0", b"Host: a"), 505, "http-version-not-supported"),
        ((b"GET  / HTTP/1.1", b"Host: a"), 400, "bad-request-line"),
        ((b"GET / HTTP/1.1", b"Host: a", b"Expect: 100-continue, x"), 417, "unsupported-expectation"),
        ((b"GET / HTTP/1.1", b"Host: a b"), 400, "bad-host"),
    ],
)
def test_refusals(lines, status, reason):
    with pytest.raises(HttpError) as e:
        parse_request_head(req(*lines))
    assert (e.value.status, e.value.reason) == (status, reason)


def test_chunk_size_lines():
    assert parse_chunk_size_line(b"1a\r\n") == 26
    assert parse_chunk_size_line(b'A;name=value;x="q\\""\r\n') == 10
    for bad in (b"\r\n", b"0x1\r\n", b"+1\r\n", b" 1\r\n", b"1 \r\n", b"g\r\n", b"1\n", b"1" * 17 + b"\r\n", b"1;\r\n"):
        with pytest.raises(HttpError):
            parse_chunk_size_line(bad)


def test_response_framing():
    r = parse_response_head(req(b"HTTP/1.1 200 OK", b"Content-Length: 3"), b"GET")
    assert r.framing == http1.Framing("length", 3) and r.keep_alive
    r = parse_response_head(req(b"HTTP/1.1 200 OK"), b"GET")
    assert r.framing.kind == "close" and not r.keep_alive
    r = parse_response_head(req(b"HTTP/1.1 200 OK", b"Content-Length: 3"), b"HEAD")
    assert r.framing.kind == "none"
    with pytest.raises(HttpError) as e:
        parse_response_head(req(b"HTTP/1.1 200 OK", b"Content-Length: 3", b"Transfer-Encoding: chunked"), b"GET")
    assert e.value.status == 502


def test_forwardable_headers_drop_hop_by_hop_and_connection_named():
    hs = [
        (b"Connection", b"X-A"),
        (b"X-A", b"1"),
        (b"Keep-Alive", b"t"),
        (b"TE", b"trailers"),
        (b"Content-Length", b"4"),
        (b"X-B", b"2"),
        (b"X-Ucgate-User", b"evil"),
    ]
    out = http1.forwardable_headers(hs, frozenset({b"x-a"}), frozenset({b"x-ucgate-user"}))
    assert out == [(b"X-B", b"2")]


@settings(max_examples=FUZZ, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_request_head_only_httperror(data):
    try:
        parse_request_head(data + b"\r\n\r\n")
    except HttpError:
        pass


_line = st.sampled_from(
    [
        b"GET / HTTP/1.1",
        b"POST /ucwa/x HTTP/1.1",
        b"Host: a",
        b"Content-Length: 5",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Expect: 100-continue",
        b"X: \x00",
        b" x",
        b"Content-Length: 5, 5",
        b"\n",
        b"\r",
        b"",
    ]
)


@settings(max_examples=FUZZ, deadline=None)
@given(st.lists(_line, max_size=8))
def test_fuzz_structured_heads(lines):
    try:
        r = parse_request_head(b"\r\n".join(lines) + b"\r\n\r\n")
    except HttpError:
        return
    # whatever parses has exactly one framing and never both length and chunked
    te = [v for k, v in r.headers if k.lower() == b"transfer-encoding"]
    cl = [v for k, v in r.headers if k.lower() == b"content-length"]
    assert not (te and cl)
    assert len(cl) <= 1 and len(te) <= 1


@settings(max_examples=FUZZ, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_chunk_line(data):
    try:
        n = parse_chunk_size_line(data)
    except HttpError:
        return
    assert n >= 0


# The one-pass field-block parser must agree with the line-by-line one (which names errors)
# on every input: same fields, same framing fields, or the same refusal.
_field_piece = st.sampled_from(
    [
        b"Host",
        b"content-length",
        b"X-A",
        b"Connection",
        b"Expect",
        b"te",
        b"a b",
        b":",
        b" ",
        b"\t",
        b"v",
        b"5",
        b"\x00",
        b"\x7f",
        b"\x80\xff",
        b"\r",
        b"\n",
        b"\r\n",
        b";",
        b"=",
        b'"',
    ]
)
_field_line = st.lists(_field_piece, max_size=7).map(b"".join)


@settings(max_examples=FUZZ, deadline=None)
@given(st.lists(_field_line, max_size=8))
def test_field_block_fast_path_agrees_with_line_parser(lines):
    from ucgate.protocols.http1 import DEFAULT_LIMITS, _parse_field_block, _parse_fields

    if any(b"\r" in line or b"\n" in line for line in lines):
        return  # the head splitter refuses these before fields are parsed
    block = b"".join(line + b"\r\n" for line in lines)

    def run(f, arg):
        try:
            return f(arg, DEFAULT_LIMITS)
        except HttpError as e:
            return (e.status, e.reason)

    assert run(_parse_field_block, block) == run(_parse_fields, lines)


# The fast path's heads (common_request / common_response) must never accept what the full
# parser refuses, and must mean the same as the full parser plus the gateway's forwarding rules.
_DROP = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-ucgate-user"})
_OWNED = http1.OwnedFields((b"x-ucgate-user", *http1.OWNED_FIELDS))
_names = st.sampled_from(
    [
        b"Host",
        b"host",
        b"HOST",
        b"Connection",
        b"connection",
        b"Keep-Alive",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Expect",
        b"X-Forwarded-For",
        b"Forwarded",
        b"X-Ucgate-User",
        b"Upgrade",
        b"TE",
        b"Trailer",
        b"Proxy-Connection",
        b"Accept",
        b"X-A",
        b"Cookie",
        b"Content-Type",
        b"Date",
        b"Server",
        b"Bad Name",
        b" Folded",
        b"",
        # look-alikes of the gateway's own fields (issue 13), and near misses
        b"X_Ucgate_User",
        b"x.ucgate.user",
        b"XUcgateUser",
        b"_X-Ucgate-User",
        b"X-Ucgate-User-2",
        b"X_Forwarded_For",
        b"x-forwarded-host.",
        b"Forwarded_",
        b"X-Real-IP",
        b"X_Original_URL",
        b"X-HTTP-Method-Override",
        b"X-Ucgate-Use",
        b"X-Forward",
        b"Host_",
        b"X-Users",
        b"Authorization",
        b"authorization",
    ]
)
_values = st.sampled_from(
    [
        b"gw",
        b"a.example:8443",
        b"[::1]:443",
        b"bad host",
        b"keep-alive",
        b"Keep-Alive",
        b"close",
        b"keep-alive, close",
        b"upgrade",
        b"x-a",
        b"5",
        b"05",
        b"",
        b" 7 ",
        b"5, 5",
        b"-1",
        b"chunked",
        b"100-continue",
        b"v\x00",
        b"v\x7f",
        b"caf\xc3\xa9",
        b"a\tb",
        b"  x  ",
    ]
)
_field = st.tuples(_names, st.sampled_from([b":", b": ", b":\t", b" :"]), _values).map(b"".join)


def _heads(start_lines):
    return st.tuples(
        st.sampled_from(start_lines), st.lists(_field, max_size=7), st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
    ).map(lambda t: t[0] + b"\r\n" + b"".join(f + t[2] for f in t[1]) + b"\r\n")


def _fields(prefix: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a head without its final empty line (start line + field lines), parsed by
    the line-by-line parser, names lower-cased."""
    from ucgate.protocols.http1 import DEFAULT_LIMITS, _parse_fields

    lines = prefix.split(b"\r\n")[1:-1]
    return [(k.lower(), v) for k, v in _parse_fields(lines, DEFAULT_LIMITS)[0]]


@settings(max_examples=FUZZ * 4, deadline=None)
@given(
    _heads(
        [
            b"GET /ucwa/x HTTP/1.1",
            b"GET /a?b=c HTTP/1.1",
            b"POST /x HTTP/1.1",
            b"GET /x HTTP/1.0",
            b"GET http://a/x HTTP/1.1",
            b"GET /x HTTP/1.1 ",
            b"G@T /x HTTP/1.1",
            b"GET /x\x7f HTTP/1.1",
        ]
    )
)
def test_common_request_agrees_with_the_full_parser(head):
    from ucgate.protocols.http1 import DEFAULT_LIMITS, common_request, not_forwarded, request_special_re

    simple = common_request(head, DEFAULT_LIMITS, request_special_re(_DROP, _OWNED))
    if simple is None:
        return
    full = parse_request_head(head)  # must not raise: the fast path accepts nothing it refuses
    assert (simple.method, simple.target, simple.host, simple.keep_alive, simple.version) == (
        full.method,
        full.target,
        full.host,
        full.keep_alive,
        full.version,
    )
    assert full.framing.kind == "none" and not full.expect_continue
    skip = not_forwarded(_DROP)
    expected = [
        (k.lower(), v)
        for k, v in full.headers
        if k.lower() not in skip and k.lower() not in full.connection_tokens and k not in _OWNED
    ]
    assert _fields(simple.prefix) == expected
    # an authenticated forward drops Authorization (Gateway._skip_authenticated)
    assert simple.authorization == full.get(b"authorization")
    if simple.authorization is not None:
        assert _fields(simple.prefix_authenticated) == [f for f in expected if f[0] != b"authorization"]
    else:
        assert simple.prefix_authenticated is None


@settings(max_examples=FUZZ * 4, deadline=None)
@given(
    _heads(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 404 Not Found",
            b"HTTP/1.1 204 No Content",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 101 Switching",
            b"HTTP/1.1 103 Early",
            b"HTTP/2.0 200 OK",
            b"HTTP/1.1 200 O\x00K",
        ]
    ),
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
)
def test_common_response_agrees_with_the_full_parser(head, method):
    from ucgate.protocols.http1 import HOP_BY_HOP, common_response, parse_response_head

    simple = common_response(head, method)
    if simple is None:
        return
    full = parse_response_head(head, method)  # must not raise
    assert full.status == simple.status and full.status >= 200
    assert (full.framing.kind, full.framing.length) == ("length", simple.length)
    assert full.keep_alive == simple.keep_alive
    assert simple.prefix.split(b"\r\n", 1)[0] == b"HTTP/1.1 %d %b" % (full.status, full.reason)
    # what the client gets: the full path's fields less hop-by-hop ones, Content-Length as framing
    expected = [
        (k.lower(), v)
        for k, v in full.headers
        if k.lower() not in HOP_BY_HOP and k.lower() not in full.connection_tokens
    ]
    got = _fields(simple.prefix)
    assert [f for f in got if f[0] != b"content-length"] == [f for f in expected if f[0] != b"content-length"]
    assert [v for k, v in got if k == b"content-length"] == [b"%d" % simple.length]


def test_simple_heads_take_the_common_shapes():
    from ucgate.protocols.http1 import DEFAULT_LIMITS, common_request, common_response, request_special_re

    sp = request_special_re(_DROP)
    r = common_request(
        b"GET /meet/x?y=1 HTTP/1.1\r\nHost: gw:443\r\nConnection: Keep-Alive\r\nAccept: */*\r\n\r\n", DEFAULT_LIMITS, sp
    )
    assert r is not None and r.prefix == b"GET /meet/x?y=1 HTTP/1.1\r\nHost: gw:443\r\nAccept: */*\r\n"
    assert r.keep_alive and r.host == b"gw:443"
    # each of these needs the full parser (a body, a dropped field, HTTP/1.0, two Hosts...)
    for head in (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nX-A: 1\r\n\r\n",
    ):
        assert common_request(head, DEFAULT_LIMITS, sp) is None
    s = common_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\nX: y\r\n\r\n", b"GET")
    assert s is not None and not s.keep_alive and s.length == 2
    assert s.prefix == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n"
    for head in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    ):
        assert common_response(head, b"GET") is None


# Issue 13: a client field is the gateway's own when its squashed name (lower case, letters and
# digits only) starts with one of ours — the names CGI/WSGI/PHP map to the same variable.
@pytest.mark.parametrize(
    "name,owned",
    [
        (b"X-Ucgate-User", True),
        (b"x_ucgate_user", True),
        (b"X.Ucgate.User", True),
        (b"X~Ucgate~User", True),
        (b"XUcgateUser", True),
        (b"X--Ucgate--User", True),
        (b"_X-Ucgate-User", True),
        (b"X-Ucgate-User_", True),
        (b"X-Ucgate-User-2", True),
        (b"X_Forwarded_For", True),
        (b"X-Forwarded-Server", True),
        (b"Forwarded", True),
        (b"X-Real-IP", True),
        (b"x_real_ip", True),
        (b"X-MS-Forwarded-Client-IP", True),
        (b"X-Original-URL", True),
        (b"X-Rewrite-URL", True),
        (b"X-HTTP-Method-Override", True),
        (b"X-HTTP-Method", True),
        (b"X-Method-Override", True),
        (b"True-Client-IP", True),
        (b"X-Client-IP", True),
        (b"X-Ucgate-Use", False),
        (b"X-Users", False),
        (b"X-Forward", False),
        (b"Host", False),
        (b"Accept", False),
        (b"X-MS-Namespace", False),
        (b"User-Agent", False),
        (b"Authorization", False),
    ],
)
def test_owned_fields(name, owned):
    assert (name in _OWNED) is owned


_token_piece = st.sampled_from(
    [
        b"x",
        b"X",
        b"-",
        b"_",
        b".",
        b"~",
        b"!",
        b"u",
        b"cgate",
        b"user",
        b"forwarded",
        b"for",
        b"real",
        b"ip",
        b"2",
        b"Forwarded",
        b"UCGATE",
        b"User",
        b"original",
        b"url",
    ]
)


@settings(max_examples=FUZZ, deadline=None)
@given(st.lists(_token_piece, min_size=1, max_size=8).map(b"".join))
def test_owned_pattern_agrees_with_membership(name):
    """The fast path finds owned names with a regex in the lower-cased head; it must match
    exactly the names ``in`` the set."""
    import re

    found = re.fullmatch(rb"\n(" + _OWNED.pattern() + rb"):", b"\n" + name.lower() + b":") is not None
    assert found == (name in _OWNED)


# --- one parser, two routes: the common route (regex) and the full route agree ---------------


def _common_attrs(r):
    return (
        r.method,
        r.target,
        r.version,
        r.headers,
        r.framing,
        r.host,
        r.keep_alive,
        r.expect_continue,
        r.connection_tokens,
    )


def _outcome(f, *args, **kw):
    try:
        return f(*args, **kw)
    except HttpError as e:
        return ("error", e.status, e.reason, e.detail)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(
    _heads(
        [
            b"GET /ucwa/x HTTP/1.1",
            b"GET /a?b=c HTTP/1.1",
            b"POST /x HTTP/1.1",
            b"GET /x HTTP/1.0",
            b"GET http://a/x HTTP/1.1",
            b"GET /x HTTP/1.1 ",
            b"G@T /x HTTP/1.1",
            b"GET /x\x7f HTTP/1.1",
        ]
    )
)
def test_request_routes_agree(head):
    from ucgate.protocols.http1 import DEFAULT_LIMITS, common_request, request_special_re

    sp = request_special_re(_DROP, _OWNED)
    full = _outcome(parse_request_head, head, full=True)
    assert _outcome(parse_request_head, head) == full  # no pattern: the full route
    assert _outcome(parse_request_head, head, DEFAULT_LIMITS, sp, full=True) == full
    got = _outcome(parse_request_head, head, DEFAULT_LIMITS, sp)
    simple = common_request(head, DEFAULT_LIMITS, sp)
    if simple is None:
        assert got == full  # the full route: prefix, authorization, prefix_authenticated None
        if not isinstance(full, tuple):
            assert (full.prefix, full.authorization, full.prefix_authenticated) == (None, None, None)
        return
    assert not isinstance(full, tuple)
    assert got._headers is None  # not materialised yet
    assert _common_attrs(got) == _common_attrs(full)
    assert got == simple and type(got) is type(simple) is http1.RequestHead and simple.prefix is not None
    assert got.prefix is not None and got.authorization == full.get(b"authorization")
    for name in (b"host", b"authorization", b"connection", b"accept", b"x-a"):
        assert got.get(name) == full.get(name) and got.get_all(name) == full.get_all(name)


@settings(max_examples=FUZZ * 4, deadline=None)
@given(
    _heads(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 404 Not Found",
            b"HTTP/1.1 204 No Content",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 101 Switching",
            b"HTTP/1.1 103 Early",
            b"HTTP/2.0 200 OK",
            b"HTTP/1.1 200 O\x00K",
        ]
    ),
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
)
def test_response_routes_agree(head, method):
    from ucgate.protocols.http1 import common_response

    full = _outcome(parse_response_head, head, method, full=True)
    got = _outcome(parse_response_head, head, method)
    simple = common_response(head, method)
    if simple is None:
        assert got == full
        if not isinstance(full, tuple):
            assert (full.prefix, full.length) == (None, None)
        return
    assert not isinstance(full, tuple) and got._headers is None
    keys = ("version", "status", "reason", "headers", "framing", "keep_alive", "connection_tokens")
    assert [getattr(got, k) for k in keys] == [getattr(full, k) for k in keys]
    assert got == simple and type(simple) is http1.ResponseHead and simple.prefix is not None
    assert got.length == full.framing.length and got.prefix is not None
    assert got.get(b"content-length") == full.get(b"content-length")


def test_heads_equality_repr_and_header_setter():
    from ucgate.protocols.http1 import DEFAULT_LIMITS, Framing, RequestHead, ResponseHead, request_special_re

    head = b"GET /a HTTP/1.1\r\nHost: gw\r\nX-A:  1 \r\nConnection: close\r\n\r\n"
    r = parse_request_head(head, DEFAULT_LIMITS, request_special_re(frozenset()))
    assert r.headers == [(b"Host", b"gw"), (b"X-A", b"1"), (b"Connection", b"close")]
    assert r.get(b"connection") == b"close" and r.get(b"x-b") is None and r.get_all(b"x-a") == [b"1"]
    r.headers = [(b"Host", b"gw")]
    assert r.headers == [(b"Host", b"gw")] and r.get(b"x-a") is None
    full = parse_request_head(head)
    assert r != full and full != 1 and (full == 1) is False
    assert repr(full).startswith("RequestHead(b'GET', b'/a', (1, 1), [(b'Host', b'gw')")
    with pytest.raises(TypeError):
        hash(full)
    built = RequestHead(b"GET", b"/a", (1, 1), [(b"Host", b"gw")], Framing("none"), b"gw", True)
    assert (
        built.expect_continue,
        built.connection_tokens,
        built.prefix,
        built.authorization,
        built.prefix_authenticated,
    ) == (False, frozenset(), None, None, None)
    assert built.get(b"host") == b"gw"
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: y\r\n\r\n", b"GET")
    assert resp.get(b"x") == b"y" and resp.get(b"z") is None and resp.prefix is not None
    resp.headers = []
    assert resp.get(b"x") is None
    again = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: y\r\n\r\n", b"GET", full=True)
    assert again != resp and again != "x" and repr(again).startswith("ResponseHead((1, 1), 200, b'OK'")
    with pytest.raises(TypeError):
        hash(again)
    built = ResponseHead((1, 1), 200, b"OK", [], Framing("close"), False)
    assert (built.connection_tokens, built.prefix, built.length) == (frozenset(), None, None)


def test_get_on_the_full_route_reads_the_fields():
    r = parse_request_head(b"GET / HTTP/1.0\r\nAuthorization: Basic x\r\n\r\n")
    assert r.prefix is None and r.host == b"" and r.get(b"host") is None
    assert r.get(b"authorization") == b"Basic x" and r.authorization is None


def test_common_route_authorization_and_connection_in_any_order():
    from ucgate.protocols.http1 import DEFAULT_LIMITS, request_special_re

    sp = request_special_re(frozenset())
    for fields, without in (
        (b"Connection: close\r\nAuthorization: Basic QX\r\nX: 1\r\n", b"X: 1\r\n"),
        (b"Authorization:  Basic QX \r\nX: 1\r\nConnection: close\r\n", b"X: 1\r\n"),
        (b"X: 1\r\nAuthorization:Basic QX\r\n", b"X: 1\r\n"),
    ):
        head = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
        r = parse_request_head(head, DEFAULT_LIMITS, sp)
        assert r.authorization == b"Basic QX" and r.get(b"authorization") == b"Basic QX"
        assert r.prefix_authenticated == b"GET / HTTP/1.1\r\nHost: a\r\n" + without
        assert r.prefix == b"GET / HTTP/1.1\r\nHost: a\r\n" + fields.replace(b"Connection: close\r\n", b"")
        assert r.connection_tokens == (frozenset({b"close"}) if b"Connection" in fields else frozenset())
        assert r.keep_alive is (b"Connection" not in fields)
    # a second Authorization: the full route
    head = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n"
    r = parse_request_head(head, DEFAULT_LIMITS, sp)
    assert r.prefix is None and r.authorization is None and r.get(b"authorization") == b"a"


def test_response_routes_types_limits_and_keep_alive():
    from ucgate.protocols.http1 import Limits, ResponseHead

    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    common = parse_response_head(head, b"GET")
    assert type(common) is ResponseHead and common.prefix is not None
    assert common.connection_tokens == frozenset({b"close"}) and common.keep_alive is False
    full = parse_response_head(head, b"GET", full=True)
    assert type(full) is ResponseHead and full.prefix is None and full.length is None
    assert full.connection_tokens == frozenset({b"close"}) and full.keep_alive is False
    assert parse_response_head(head, b"GET", Limits(max_header_bytes=len(head)), full=True).status == 200
    with pytest.raises(HttpError) as e:
        parse_response_head(head, b"GET", Limits(max_header_bytes=len(head) - 1), full=True)
    assert (e.value.status, e.value.reason, e.value.detail) == (
        502,
        "bad-upstream-response",
        "upstream-header-too-large",
    )
    keep = parse_response_head(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", b"GET", full=True
    )
    assert keep.keep_alive is True and keep.connection_tokens == frozenset({b"keep-alive"})
