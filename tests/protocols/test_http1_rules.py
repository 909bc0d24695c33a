"""The strict HTTP/1.1 parser rule by rule (issue 14): each refusal with its exact status and
reason code, the value next to each boundary, the smuggling openings the fast regex path must
not let through (a bad field name, whitespace before the colon, a bare CR or LF inside a field,
a signed or underscored length), and every public function of ``protocols/http1.py``."""

from __future__ import annotations

import pytest

from ucgate.protocols import http1
from ucgate.protocols.http1 import (
    DEFAULT_LIMITS,
    HOP_BY_HOP,
    LAST_CHUNK,
    REASONS,
    Framing,
    HttpError,
    Limits,
    OwnedFields,
    _parse_field_block,
    _parse_fields,
    check_trailer_line,
    common_request,
    common_response,
    encode_chunk,
    forwardable_headers,
    not_forwarded,
    parse_chunk_size_line,
    parse_request_head,
    parse_response_head,
    request_special_re,
    serialize_forwarded,
    serialize_head,
    squash_field_name,
)


def req(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def get(*fields: bytes, start: bytes = b"GET /ucwa/x HTTP/1.1") -> bytes:
    return req(start, b"Host: gw", *fields)


def refused(head: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[int, str]:
    with pytest.raises(HttpError) as e:
        parse_request_head(head, limits)
    return e.value.status, e.value.reason


def refused_response(head: bytes, method: bytes = b"GET", limits: Limits = DEFAULT_LIMITS) -> tuple[int, str, str]:
    with pytest.raises(HttpError) as e:
        parse_response_head(head, method, limits)
    return e.value.status, e.value.reason, e.value.detail


# --- HttpError ------------------------------------------------------------------------------


def test_http_error_text_and_attributes():
    e = HttpError(400, "bad-host", "a space")
    assert (e.status, e.reason, e.detail, str(e)) == (400, "bad-host", "a space", "400 bad-host: a space")
    e = HttpError(431, "too-many-headers")
    assert (e.status, e.reason, e.detail, str(e)) == (431, "too-many-headers", "", "431 too-many-headers")


# --- the smuggling openings: refused with the right reason whatever path parses them --------

FIELD_REFUSALS = [
    # a field name that is not a token, or whitespace between the name and the colon
    (b"Transfer-Encoding : chunked", "bad-header-name"),
    (b"Content-Length\t: 5", "bad-header-name"),
    (b"Host : gw2", "bad-header-name"),
    (b"X A: 1", "bad-header-name"),
    (b"X(A): 1", "bad-header-name"),
    (b'X"A: 1', "bad-header-name"),
    (b"X@A: 1", "bad-header-name"),
    (b"X/A: 1", "bad-header-name"),
    (b"X\x00A: 1", "bad-header-name"),
    (b"X\x7fA: 1", "bad-header-name"),
    (b"X\xc3\xa9: 1", "bad-header-name"),
    (b": no name", "bad-header-name"),
    (b"no-colon", "bad-header-name"),
    (b"X-A", "bad-header-name"),
    # obsolete line folding
    (b" folded", "obs-fold"),
    (b"\tfolded", "obs-fold"),
    (b" X: 1", "obs-fold"),
    # control characters in a value
    (b"X: a\x00b", "bad-header-value"),
    (b"X: \x01", "bad-header-value"),
    (b"X: a\x7f", "bad-header-value"),
    (b"X: a\x0bb", "bad-header-value"),
    (b"X: \x0b", "bad-header-value"),
    (b"X: a\x0c", "bad-header-value"),
    (b"X: \x1f", "bad-header-value"),
    (b"Content-Length: 5\x00", "bad-header-value"),
]


@pytest.mark.parametrize("field,reason", FIELD_REFUSALS)
def test_field_refusals(field, reason):
    assert refused(get(field)) == (400, reason)
    # also after a well-formed field with a colon in its value (the line-by-line parser
    # must split each line at its first colon)
    assert refused(get(b"X-Time: 12:30:00", field)) == (400, reason)
    assert refused(req(b"GET / HTTP/1.1", field, b"Host: gw")) == (400, reason)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: gw\nX: 1\r\n\r\n",  # a field split by a bare LF
        b"GET / HTTP/1.1\r\nHost: gw\rX: 1\r\n\r\n",  # by a bare CR
        b"GET / HTTP/1.1\r\nX: a\nTransfer-Encoding: chunked\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nX: a\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\n\nX: 1\r\n\r\n",
        b"GET /\n HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.1\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\n\n\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\n\r\r\n\r\n",
    ],
)
def test_bare_cr_or_lf(head):
    assert refused(head) == (400, "bare-cr-or-lf")


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: gw\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\n\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\n\n",
        b"GET / HTTP/1.1\r\nHost: gw\n\r\n",
        b"GET / HTTP/1.1",
        b"",
    ],
)
def test_head_must_end_with_crlf_crlf(head):
    assert refused(head) == (400, "bad-line-ending")


def test_an_empty_line_inside_the_field_block():
    assert refused(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\nX: 1\r\n\r\n") == (400, "empty-header-line")


@pytest.mark.parametrize(
    "value",
    [
        b"-1",
        b"+5",
        b"-0",
        b"1_000",
        b"1_0",
        b"0x10",
        b"5.0",
        b"5,5",
        b"5, 5",
        b"5 5",
        b"",
        b"five",
        b"1e3",
        b"\xd9\xa5",
        b"\xef\xbc\x95",
        b"9" * 20,
        b"0" * 20,
        b"12345678901234567890",
    ],
)
def test_content_length_digits_only(value):
    assert refused(get(b"Content-Length: " + value, start=b"POST / HTTP/1.1")) == (400, "bad-content-length")


@pytest.mark.parametrize(
    "value,length",
    [
        (b"1", 1),
        (b"9" * 19, 10**19 - 1),
        (b"0" * 19, 0),
        (b"007", 7),
        (b"  42\t ", 42),
        (b"1234567890", 1234567890),
    ],
)
def test_content_length_accepted(value, length):
    r = parse_request_head(get(b"Content-Length:" + value, start=b"POST / HTTP/1.1"))
    assert r.framing == (Framing("length", length) if length else Framing("none"))


def test_content_length_zero_means_no_body():
    assert parse_request_head(get(b"Content-Length: 0")).framing == Framing("none", 0)


@pytest.mark.parametrize(
    "fields,status,reason",
    [
        ((b"Content-Length: 1", b"Content-Length: 1"), 400, "duplicate-content-length"),
        ((b"Content-Length: 1", b"content-length: 2"), 400, "duplicate-content-length"),
        ((b"Content-Length: 1", b"Transfer-Encoding: chunked"), 400, "content-length-and-transfer-encoding"),
        ((b"Transfer-Encoding: chunked", b"Content-Length: -1"), 400, "content-length-and-transfer-encoding"),
        ((b"Transfer-Encoding: gzip, chunked",), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: gzip,chunked",), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: chunked, chunked",), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: gzip,\tCHUNKED ",), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"), 400, "bad-transfer-encoding"),
        ((b"Transfer-Encoding: gzip",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding: xchunked",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding: Xchunked",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding: gzip, Xchunked",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding: chunked;",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding: chunked x",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding:",), 501, "unsupported-transfer-encoding"),
        ((b"Transfer-Encoding: gzip", b"Transfer-Encoding: br"), 501, "unsupported-transfer-encoding"),
        ((b"Expect: 100-continue, x",), 417, "unsupported-expectation"),
        ((b"Expect: 100-continue", b"Expect: 100-continue"), 417, "unsupported-expectation"),
        ((b"Expect: foo",), 417, "unsupported-expectation"),
        ((b"Expect:",), 417, "unsupported-expectation"),
        ((b"Host: gw2",), 400, "missing-or-duplicate-host"),
        ((b"Connection: a b",), 400, "bad-connection-header"),
        ((b"Connection: close;",), 400, "bad-connection-header"),
        ((b"Connection: close", b"Connection: x/y"), 400, "bad-connection-header"),
    ],
)
def test_framing_refusals(fields, status, reason):
    assert refused(get(*fields, start=b"POST /x HTTP/1.1")) == (status, reason)


@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b"CHUNKED", b"  chunked  "])
def test_chunked_accepted(te):
    assert parse_request_head(get(b"Transfer-Encoding: " + te, start=b"POST / HTTP/1.1")).framing == Framing("chunked")


def test_transfer_encoding_in_http10():
    assert refused(req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked")) == (400, "transfer-encoding-in-http10")
    # the CL.TE check comes first
    assert refused(req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", b"Content-Length: 1")) == (
        400,
        "content-length-and-transfer-encoding",
    )


# --- request line, target, version, limits ---------------------------------------------------


@pytest.mark.parametrize(
    "line,status,reason",
    [
        (b"GET  / HTTP/1.1", 400, "bad-request-line"),
        (b"GET / HTTP/1.1 ", 400, "bad-request-line"),
        (b" GET / HTTP/1.1", 400, "bad-request-line"),
        (b"GET /", 400, "bad-request-line"),
        (b"GET / http/1.1", 400, "bad-request-line"),
        (b"GET / HTTP/1.10", 400, "bad-request-line"),
        (b"GET / HTTP/11", 400, "bad-request-line"),
        (b"G@T / HTTP/1.1", 400, "bad-request-line"),
        (b"GET\t/ HTTP/1.1", 400, "bad-request-line"),
        (b"GET / HTTP/2.0", 505, "http-version-not-supported"),
        (b"GET / HTTP/0.9", 505, "http-version-not-supported"),
        (b"GET /a\x7f HTTP/1.1", 400, "bad-request-target"),
        (b"GET /caf\xc3\xa9 HTTP/1.1", 400, "bad-request-target"),
        (b"GET /a\x00 HTTP/1.1", 400, "bad-request-target"),
        (b"GET /a\x01b HTTP/1.1", 400, "bad-request-target"),
    ],
)
def test_request_line_refusals(line, status, reason):
    assert refused(req(line, b"Host: gw")) == (status, reason)


@pytest.mark.parametrize(
    "line,method,target,version",
    [
        (b"GET /ucwa/x?y=1 HTTP/1.1", b"GET", b"/ucwa/x?y=1", (1, 1)),
        (b"get / HTTP/1.1", b"get", b"/", (1, 1)),  # the method is a token; the service map decides
        (b"M-SEARCH * HTTP/1.1", b"M-SEARCH", b"*", (1, 1)),
        (b"GET http://a/b HTTP/1.1", b"GET", b"http://a/b", (1, 1)),
        (b"GET / HTTP/1.2", b"GET", b"/", (1, 2)),
        (b"GET / HTTP/1.9", b"GET", b"/", (1, 9)),
    ],
)
def test_request_line_accepted(line, method, target, version):
    r = parse_request_head(req(line, b"Host: gw"))
    assert (r.method, r.target, r.version) == (method, target, version)


def test_leading_empty_lines_are_skipped():
    r = parse_request_head(b"\r\n\r\n" + get())
    assert (r.method, r.target, r.host) == (b"GET", b"/ucwa/x", b"gw")


def test_header_bytes_limit():
    head = get(b"X: " + b"a" * 100)
    assert parse_request_head(head, Limits(max_header_bytes=len(head))).host == b"gw"
    assert refused(head, Limits(max_header_bytes=len(head) - 1)) == (431, "header-too-large")


def test_header_count_limit():
    head = get(b"X-1: a", b"X-2: b")  # Host + 2
    assert len(parse_request_head(head, Limits(max_header_count=3)).headers) == 3
    assert refused(head, Limits(max_header_count=2)) == (431, "too-many-headers")
    # also when the block is malformed (the limit comes first)
    bad = get(b"X-1: a", b"X 2: b")
    assert refused(bad, Limits(max_header_count=2)) == (431, "too-many-headers")
    assert refused(bad, Limits(max_header_count=3)) == (400, "bad-header-name")


def test_target_limit():
    target = b"/" + b"a" * 99
    head = req(b"GET " + target + b" HTTP/1.1", b"Host: gw")
    assert parse_request_head(head, Limits(max_target_bytes=100)).target == target
    assert refused(head, Limits(max_target_bytes=99)) == (414, "uri-too-long")
    bad = req(b"GET " + target[:-1] + b"\x7f HTTP/1.1", b"Host: gw")
    assert refused(bad, Limits(max_target_bytes=99)) == (414, "uri-too-long")  # the length first
    assert refused(bad, Limits(max_target_bytes=100)) == (400, "bad-request-target")


# --- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"a b",
        b"a/b",
        b"a@b",
        b"a:123456",
        b"[::1",
        b"::1]",
        b"a:b",
        b"a?b",
        b"a#b",
        b"a\\b",
        b"[::1]x",
        b"a:",
        b'"a"',
        b"a\xc3\xa9",
    ],
)
def test_bad_host(value):
    assert refused(req(b"GET / HTTP/1.1", b"Host: " + value)) == (400, "bad-host")
    assert refused(req(b"GET / HTTP/1.0", b"Host: " + value)) == (400, "bad-host")


@pytest.mark.parametrize(
    "value",
    [b"gw", b"gw:443", b"a.example:8443", b"[::1]", b"[2001:db8::1]:443", b"192.0.2.1:80", b"", b"a-b_c~d%41", b"x:1"],
)
def test_good_host(value):
    assert parse_request_head(req(b"GET / HTTP/1.1", b"Host: " + value)).host == value


def test_host_rules_by_version():
    assert refused(req(b"GET / HTTP/1.1")) == (400, "missing-or-duplicate-host")
    assert refused(req(b"GET / HTTP/1.1", b"Host: a", b"host: a")) == (400, "missing-or-duplicate-host")
    assert refused(req(b"GET / HTTP/1.2")) == (400, "missing-or-duplicate-host")
    assert parse_request_head(req(b"GET / HTTP/1.0")).host == b""
    assert parse_request_head(req(b"GET / HTTP/1.0", b"Host: gw")).host == b"gw"
    assert refused(req(b"GET / HTTP/1.0", b"Host: a", b"Host: a")) == (400, "bad-host")


# --- Connection, keep-alive, Expect ----------------------------------------------------------


@pytest.mark.parametrize(
    "version,fields,keep_alive,tokens",
    [
        (b"1.1", (), True, set()),
        (b"1.1", (b"Connection: close",), False, {b"close"}),
        (b"1.1", (b"Connection: Close",), False, {b"close"}),
        (b"1.1", (b"Connection: keep-alive",), True, {b"keep-alive"}),
        (b"1.1", (b"Connection: Upgrade",), True, {b"upgrade"}),
        (b"1.1", (b"Connection: X-Custom",), True, {b"x-custom"}),
        (b"1.1", (b"Connection: close, X-A",), False, {b"close", b"x-a"}),
        (b"1.1", (b"Connection: X-A ,  TE",), True, {b"x-a", b"te"}),
        (b"1.1", (b"Connection: a,,b",), True, {b"a", b"b"}),
        (b"1.1", (b"Connection: , close ,",), False, {b"close"}),
        (b"1.1", (b"Connection:",), True, set()),
        (b"1.1", (b"Connection: keep-alive", b"Connection: close"), False, {b"keep-alive", b"close"}),
        (b"1.1", (b"Connection: X-A", b"Connection: close"), False, {b"x-a", b"close"}),
        (b"1.1", (b"Connection: close", b"Connection: X-A"), False, {b"x-a", b"close"}),
        (b"1.0", (), False, set()),
        (b"1.0", (b"Connection: keep-alive",), True, {b"keep-alive"}),
        (b"1.0", (b"Connection: Keep-Alive",), True, {b"keep-alive"}),
        (b"1.0", (b"Connection: close",), False, {b"close"}),
        (b"1.0", (b"Connection: X-A, keep-alive",), True, {b"x-a", b"keep-alive"}),
    ],
)
def test_connection_and_keep_alive(version, fields, keep_alive, tokens):
    r = parse_request_head(req(b"GET / HTTP/" + version, b"Host: gw", *fields))
    assert r.keep_alive is keep_alive
    assert r.connection_tokens == frozenset(tokens)


@pytest.mark.parametrize(
    "version,value,expected",
    [
        (b"1.1", b"100-continue", True),
        (b"1.1", b"100-Continue", True),
        (b"1.1", b"100-CONTINUE ", True),
        (b"1.0", b"100-continue", False),
        (b"1.2", b"100-continue", True),
    ],
)
def test_expect_continue(version, value, expected):
    r = parse_request_head(req(b"POST / HTTP/" + version, b"Host: gw", b"Expect: " + value, b"Content-Length: 3"))
    assert r.expect_continue is expected


def test_no_expect():
    assert parse_request_head(get()).expect_continue is False


# --- the parsed head -------------------------------------------------------------------------


def test_request_head_fields_and_lookups():
    r = parse_request_head(
        req(
            b"POST /ucwa/x HTTP/1.1",
            b"Host:gw",
            b"X-A:  1 ",
            b"x-a: 2",
            b"Cookie: a=b; c=d",
            b"X-Empty:",
            b"X-Tab:\tv\tw\t",
            b"Content-Length: 4",
        )
    )
    assert r.headers == [
        (b"Host", b"gw"),
        (b"X-A", b"1"),
        (b"x-a", b"2"),
        (b"Cookie", b"a=b; c=d"),
        (b"X-Empty", b""),
        (b"X-Tab", b"v\tw"),
        (b"Content-Length", b"4"),
    ]
    assert r.get(b"x-a") == b"1" and r.get(b"cookie") == b"a=b; c=d" and r.get(b"nope") is None
    assert r.get_all(b"x-a") == [b"1", b"2"] and r.get_all(b"nope") == []
    assert r.get(b"x-empty") == b""
    assert (r.method, r.target, r.version, r.host, r.keep_alive, r.expect_continue) == (
        b"POST",
        b"/ucwa/x",
        (1, 1),
        b"gw",
        True,
        False,
    )
    assert r.framing == Framing("length", 4)


def test_values_keep_obs_text_and_inner_whitespace():
    r = parse_request_head(get(b"X-Name: Zo\xc3\xab  Example", b"X-Bytes: \x80\xff"))
    assert r.get(b"x-name") == b"Zo\xc3\xab  Example" and r.get(b"x-bytes") == b"\x80\xff"


# --- the one-pass field block and the line-by-line parser -----------------------------------


BLOCKS = [
    [b"Host: gw"],
    [b"Host: a:443", b"X-T: 12:30", b"Content-Length:  5 ", b"Transfer-Encoding: chunked"],
    [b"HOST: a", b"Connection: close", b"CONNECTION: x", b"Expect: 100-continue", b"Accept: */*"],
    [b"X:", b"Y: \t", b"Z:\tz\t"],
    [b"content-length: 1", b"Content-Length: 2"],
]


@pytest.mark.parametrize("lines", BLOCKS)
def test_line_parser_and_block_parser_return_the_same(lines):
    block = b"".join(line + b"\r\n" for line in lines)
    fast = _parse_field_block(block, DEFAULT_LIMITS)
    slow = _parse_fields(lines, DEFAULT_LIMITS)
    assert fast == slow
    headers, framing = slow
    assert [n for n, _ in headers] == [line.partition(b":")[0] for line in lines]
    for _name, value in headers:
        assert value == value.strip(b" \t")
    for lname, values in framing.items():
        assert lname in (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect")
        assert values == [v for n, v in headers if n.lower() == lname]
    names = {n.lower() for n, _ in headers} & {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"expect",
    }
    assert set(framing) == names


def test_line_parser_values():
    headers, framing = _parse_fields(
        [b"Host:  a:443  ", b"X: \x80v", b"Content-Length:\t5", b"Y: XtX "], DEFAULT_LIMITS
    )
    assert headers == [(b"Host", b"a:443"), (b"X", b"\x80v"), (b"Content-Length", b"5"), (b"Y", b"XtX")]
    assert framing == {b"host": [b"a:443"], b"content-length": [b"5"]}
    assert _parse_fields([], DEFAULT_LIMITS) == ([], {})
    assert _parse_field_block(b"", DEFAULT_LIMITS) == ([], {})


def test_line_parser_count_limit():
    lines = [b"A: 1", b"B: 2", b"C: 3"]
    assert len(_parse_fields(lines, Limits(max_header_count=3))[0]) == 3
    with pytest.raises(HttpError) as e:
        _parse_fields(lines, Limits(max_header_count=2))
    assert (e.value.status, e.value.reason) == (431, "too-many-headers")


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"", "empty-header-line"),
        (b" a: b", "obs-fold"),
        (b"\ta: b", "obs-fold"),
        (b"a b: c", "bad-header-name"),
        (b"ab", "bad-header-name"),
        (b"a: \x0b", "bad-header-value"),
        (b"a: b\x00", "bad-header-value"),
    ],
)
def test_line_parser_refusals(line, reason):
    for lines in ([line], [b"X-T: 12:30", line]):
        with pytest.raises(HttpError) as e:
            _parse_fields(lines, DEFAULT_LIMITS)
        assert (e.value.status, e.value.reason) == (400, reason)


# --- responses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head,method,framing,keep_alive",
    [
        (req(b"HTTP/1.1 200 OK", b"Content-Length: 3"), b"GET", Framing("length", 3), True),
        (req(b"HTTP/1.1 200 OK", b"Content-Length: 0"), b"GET", Framing("length", 0), True),
        (req(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), b"GET", Framing("chunked"), True),
        (req(b"HTTP/1.1 200 OK", b"Transfer-Encoding: Chunked"), b"POST", Framing("chunked"), True),
        (req(b"HTTP/1.1 200 OK"), b"GET", Framing("close"), False),
        (req(b"HTTP/1.1 200 OK", b"Connection: keep-alive"), b"GET", Framing("close"), False),
        (req(b"HTTP/1.1 200 OK", b"Content-Length: 3"), b"HEAD", Framing("none"), True),
        (req(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip", b"Content-Length: 3"), b"HEAD", Framing("none"), True),
        (req(b"HTTP/1.1 204 No Content", b"Content-Length: 3"), b"GET", Framing("none"), True),
        (req(b"HTTP/1.1 304 Not Modified", b"Content-Length: 3"), b"GET", Framing("none"), True),
        (req(b"HTTP/1.1 205 Reset Content", b"Content-Length: 0"), b"GET", Framing("length", 0), True),
        (req(b"HTTP/1.1 305 Use Proxy", b"Content-Length: 2"), b"GET", Framing("length", 2), True),
        (req(b"HTTP/1.1 100 Continue"), b"POST", Framing("none"), True),
        (req(b"HTTP/1.1 101 Switching Protocols", b"Connection: upgrade"), b"GET", Framing("none"), True),
        (req(b"HTTP/1.1 199 X"), b"GET", Framing("none"), True),
        (req(b"HTTP/1.1 200 OK", b"Content-Length: 3", b"Connection: close"), b"GET", Framing("length", 3), False),
        (req(b"HTTP/1.0 200 OK", b"Content-Length: 3"), b"GET", Framing("length", 3), False),
        (req(b"HTTP/1.0 200 OK", b"Content-Length: 3", b"Connection: keep-alive"), b"GET", Framing("length", 3), True),
    ],
)
def test_response_framing(head, method, framing, keep_alive):
    r = parse_response_head(head, method)
    assert (r.framing, r.keep_alive) == (framing, keep_alive)


def test_response_head_fields():
    r = parse_response_head(req(b"HTTP/1.1 404 Not Found", b"Content-Length: 0", b"X-A:  v "), b"GET")
    assert (r.version, r.status, r.reason) == ((1, 1), 404, b"Not Found")
    assert r.headers == [(b"Content-Length", b"0"), (b"X-A", b"v")]
    assert r.get(b"x-a") == b"v" and r.get(b"content-length") == b"0" and r.get(b"nope") is None
    assert r.connection_tokens == frozenset()
    r = parse_response_head(req(b"HTTP/1.1 200", b"Content-Length: 0"), b"GET")
    assert r.reason == b"" and r.status == 200
    r = parse_response_head(req(b"HTTP/1.1 200 ", b"Content-Length: 0", b"Connection: close, X-B"), b"GET")
    assert r.reason == b"" and r.connection_tokens == {b"close", b"x-b"}
    assert parse_response_head(req(b"HTTP/1.5 200 OK", b"Content-Length: 0"), b"GET").version == (1, 5)
    assert parse_response_head(req(b"HTTP/1.0 200 OK", b"Content-Length: 0"), b"GET").version == (1, 0)
    assert parse_response_head(req(b"HTTP/1.1 200 caf\xc3\xa9\tok", b"Content-Length: 0"), b"GET").reason == (
        b"caf\xc3\xa9\tok"
    )


@pytest.mark.parametrize(
    "head,detail",
    [
        (req(b"HTTP/1.1 20 OK"), "bad-status-line"),
        (req(b"HTTP/1.1 099 OK"), "bad-status-line"),
        (req(b"HTTP/1.1 2000 OK"), "bad-status-line"),
        (req(b"HTTP/1.1  200 OK"), "bad-status-line"),
        (req(b"HTTP/1.1 200 O\x00K"), "bad-status-line"),
        (req(b"http/1.1 200 OK"), "bad-status-line"),
        (req(b"HTTP/2.0 200 OK"), "bad-upstream-version"),
        (req(b"HTTP/0.9 200 OK"), "bad-upstream-version"),
        (req(b"HTTP/1.1 200 OK", b"X : 1"), "bad-header-name"),
        (req(b"HTTP/1.1 200 OK", b" X: 1"), "obs-fold"),
        (req(b"HTTP/1.1 200 OK", b"X: \x01"), "bad-header-value"),
        (b"HTTP/1.1 200 OK\r\nX: 1\nY: 2\r\n\r\n", "bare-cr-or-lf"),
        (b"HTTP/1.1 200 OK\r\nX: 1\r\n", "bad-line-ending"),
    ],
)
def test_response_refusals(head, detail):
    assert refused_response(head) == (502, "bad-upstream-response", detail)


def test_response_limits():
    head = req(b"HTTP/1.1 200 OK", b"Content-Length: 0", b"X: 1")
    assert parse_response_head(head, b"GET", Limits(max_header_bytes=len(head))).status == 200
    assert refused_response(head, limits=Limits(max_header_bytes=len(head) - 1)) == (
        502,
        "bad-upstream-response",
        "upstream-header-too-large",
    )
    assert len(parse_response_head(head, b"GET", Limits(max_header_count=2)).headers) == 2
    assert refused_response(head, limits=Limits(max_header_count=1)) == (
        502,
        "bad-upstream-response",
        "too-many-headers",
    )


@pytest.mark.parametrize(
    "fields,reason",
    [
        ((b"Content-Length: 3", b"Transfer-Encoding: chunked"), "bad-upstream-framing"),
        ((b"Transfer-Encoding: gzip",), "bad-upstream-framing"),
        ((b"Transfer-Encoding: gzip, chunked",), "bad-upstream-framing"),
        ((b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), "bad-upstream-framing"),
        ((b"Content-Length: -1",), "bad-upstream-content-length"),
        ((b"Content-Length: +1",), "bad-upstream-content-length"),
        ((b"Content-Length: 1_0",), "bad-upstream-content-length"),
        ((b"Content-Length: 1", b"Content-Length: 1"), "bad-upstream-content-length"),
        ((b"Content-Length: " + b"1" * 20,), "bad-upstream-content-length"),
    ],
)
def test_response_framing_refusals(fields, reason):
    with pytest.raises(HttpError) as e:
        parse_response_head(req(b"HTTP/1.1 200 OK", *fields), b"GET")
    assert (e.value.status, e.value.reason) == (502, reason)


# --- chunked bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,size",
    [
        (b"0\r\n", 0),
        (b"1a\r\n", 26),
        (b"1A\r\n", 26),
        (b"ffffffffffffffff\r\n", 2**64 - 1),
        (b"0010\r\n", 16),
        (b"a;x\r\n", 10),
        (b"a ; x = y\r\n", 10),
        (b'a;x="q\\"";y\r\n', 10),
        (b"a\t;\tx\r\n", 10),
        (b"1;" + b"x" * 4092 + b"\r\n", 1),  # exactly MAX_CHUNK_LINE_BYTES
    ],
)
def test_chunk_size_accepted(line, size):
    assert parse_chunk_size_line(line) == size


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"1;" + b"x" * 4093 + b"\r\n", "chunk-line-too-long"),
        (b"1\n", "bad-chunk-size"),
        (b"1\r", "bad-chunk-size"),
        (b"1", "bad-chunk-size"),
        (b"\r\n", "bad-chunk-size"),
        (b"0x1\r\n", "bad-chunk-size"),
        (b"+1\r\n", "bad-chunk-size"),
        (b"-1\r\n", "bad-chunk-size"),
        (b" 1\r\n", "bad-chunk-size"),
        (b"1 \r\n", "bad-chunk-size"),
        (b"g\r\n", "bad-chunk-size"),
        (b"1" * 17 + b"\r\n", "bad-chunk-size"),
        (b"1;\r\n", "bad-chunk-size"),
        (b"1_0\r\n", "bad-chunk-size"),
        (b"1\r\r\n", "bad-chunk-size"),
        (b'1;a="b\r\n', "bad-chunk-size"),
    ],
)
def test_chunk_size_refused(line, reason):
    with pytest.raises(HttpError) as e:
        parse_chunk_size_line(line)
    assert (e.value.status, e.value.reason) == (400, reason)


def test_chunk_size_line_detail():
    with pytest.raises(HttpError) as e:
        parse_chunk_size_line(b"1\n")
    assert e.value.detail == "chunk-size line must end with CRLF"


@pytest.mark.parametrize(
    "line",
    [
        b"X: y\r\n",
        b"X:\r\n",
        b"X:  v  \r\n",
        b"X: a:b\r\n",
        b"X: caf\xc3\xa9\r\n",
        b"Server-Timing: a;dur=1, b\r\n",
        b"X:\tv\tw\r\n",
    ],
)
def test_trailer_line_accepted(line):
    assert check_trailer_line(line) is False


def test_trailer_end():
    assert check_trailer_line(b"\r\n") is True


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"X: yz", "bad-trailer"),
        (b"X: y\n", "bad-trailer"),
        (b"X: y\r", "bad-trailer"),
        (b"\n", "bad-trailer"),
        (b"X: a\rb\r\n", "bad-trailer"),
        (b"X: a\nb\r\n", "bad-trailer"),
        (b"X\r: a\r\n", "bad-trailer"),
        (b"X: a\r\r\n", "bad-trailer"),
        (b" X: y\r\n", "obs-fold"),
        (b"\tX: y\r\n", "obs-fold"),
        (b" \r\n", "obs-fold"),
        # a bare CR or LF is named before a fold: wherever it is in the line
        (b" a\nb\r\n", "bad-trailer"),
        (b" ab\n\r\n", "bad-trailer"),
        (b" a\rb\r\n", "bad-trailer"),
        (b" ab\r\r\n", "bad-trailer"),
        (b"\t\n\r\n", "bad-trailer"),
        (b" \r\r\n", "bad-trailer"),
        (b"X y\r\n", "bad-trailer"),
        (b"X : y\r\n", "bad-trailer"),
        (b": y\r\n", "bad-trailer"),
        (b"X@: y\r\n", "bad-trailer"),
        (b"X: \x00\r\n", "bad-trailer"),
        (b"X: a\x7f\r\n", "bad-trailer"),
        (b"X: \x0b\r\n", "bad-trailer"),
        (b"X: \x0c \r\n", "bad-trailer"),
    ],
)
def test_trailer_line_refused(line, reason):
    with pytest.raises(HttpError) as e:
        check_trailer_line(line)
    assert (e.value.status, e.value.reason) == (400, reason)


@pytest.mark.parametrize("data", [b"", b"a", b"0123456789", b"x" * 255, b"\r\n" * 8, bytes(range(256)) * 17])
def test_encode_chunk(data):
    chunk = encode_chunk(data)
    size_line, _, rest = chunk.partition(b"\r\n")
    assert size_line == b"%x" % len(data) and size_line == size_line.lower()
    assert parse_chunk_size_line(size_line + b"\r\n") == len(data)
    assert rest == data + b"\r\n"


def test_encode_chunk_exact_and_last_chunk():
    assert encode_chunk(b"hello world") == b"b\r\nhello world\r\n"
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n" and parse_chunk_size_line(LAST_CHUNK[:3]) == 0 and check_trailer_line(b"\r\n")


# --- serialising and forwarding --------------------------------------------------------------


def test_serialize_head():
    assert serialize_head(b"HTTP/1.1 200 OK", []) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert serialize_head(b"HTTP/1.1 200 OK", [(b"A", b"1"), (b"B", b"")]) == b"HTTP/1.1 200 OK\r\nA: 1\r\nB: \r\n\r\n"
    head = serialize_head(b"GET /x HTTP/1.1", [(b"Host", b"gw"), (b"X-A", b"v w")])
    r = parse_request_head(head)
    assert (r.target, r.headers) == (b"/x", [(b"Host", b"gw"), (b"X-A", b"v w")])


def test_serialize_head_uses_the_reason_table():
    for status, reason in REASONS.items():
        head = serialize_head(b"HTTP/1.1 %d %b" % (status, reason), [(b"Content-Length", b"0")])
        assert parse_response_head(head, b"GET").reason == reason


HEADERS = [
    (b"Host", b"gw"),
    (b"Connection", b"close, X-Hop"),
    (b"X-Hop", b"1"),
    (b"Keep-Alive", b"t=5"),
    (b"TE", b"trailers"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Upgrade", b"h2c"),
    (b"Trailer", b"x"),
    (b"Proxy-Connection", b"k"),
    (b"Proxy-Authorization", b"Basic x"),
    (b"Proxy-Authenticate", b"Basic"),
    (b"Content-Length", b"4"),
    (b"content-length", b"4"),
    (b"X-B", b"2"),
    (b"x-ucgate-user", b"evil"),
    (b"Accept", b"*/*"),
]


def test_forwardable_headers_drop_exactly_the_listed_ones():
    tokens = frozenset({b"close", b"x-hop"})
    out = forwardable_headers(HEADERS, tokens, frozenset({b"x-ucgate-user"}))
    assert out == [(b"Host", b"gw"), (b"X-B", b"2"), (b"Accept", b"*/*")]
    assert forwardable_headers(HEADERS[:1] + HEADERS[-3:], frozenset(), frozenset()) == (HEADERS[:1] + HEADERS[-3:])


def test_not_forwarded():
    assert not_forwarded() == HOP_BY_HOP | {b"content-length"}
    assert not_forwarded(frozenset({b"x-a"})) == HOP_BY_HOP | {b"content-length", b"x-a"}
    assert b"host" not in not_forwarded()


@pytest.mark.parametrize("drop", [frozenset(), frozenset({b"x-ucgate-user"}), frozenset({b"accept", b"host"})])
@pytest.mark.parametrize("tokens", [frozenset(), frozenset({b"close", b"x-hop"}), frozenset({b"x-b"})])
def test_serialize_forwarded_is_serialize_head_of_forwardable_headers(drop, tokens):
    extra = [(b"X-Forwarded-For", b"192.0.2.1"), (b"X-Ucgate-User", b"alice")]
    start = b"GET /ucwa/x HTTP/1.1"
    assert serialize_forwarded(start, HEADERS, tokens, not_forwarded(drop), extra) == serialize_head(
        start, forwardable_headers(HEADERS, tokens, drop) + extra
    )


def test_serialize_forwarded_exact():
    out = serialize_forwarded(
        b"GET / HTTP/1.1",
        [(b"Host", b"gw"), (b"Connection", b"x-a"), (b"X-A", b"1"), (b"Content-Length", b"0"), (b"X", b"y")],
        frozenset({b"x-a"}),
        not_forwarded(),
        [(b"X-E", b"e")],
    )
    assert out == b"GET / HTTP/1.1\r\nHost: gw\r\nX: y\r\nX-E: e\r\n\r\n"
    assert serialize_forwarded(b"GET / HTTP/1.1", [], frozenset(), frozenset(), []) == b"GET / HTTP/1.1\r\n\r\n"


# --- owned field names -----------------------------------------------------------------------


def test_squash_field_name():
    assert squash_field_name(b"X_Ucgate-User.2") == b"xucgateuser2"
    assert squash_field_name(b"X-MS-Forwarded-Client-IP") == b"xmsforwardedclientip"
    assert squash_field_name(b"~!#$%&'*+-.^_`|") == b""
    assert squash_field_name(b"ABCxyz019") == b"abcxyz019"


def test_owned_fields_prefixes_and_refusal():
    o = OwnedFields([b"X-Ucgate-User", b"x_ucgate_user", b"Forwarded", b"a"])
    assert o.prefixes == (b"a", b"forwarded", b"xucgateuser")
    with pytest.raises(ValueError):
        OwnedFields([b"X-A", b"--"])
    with pytest.raises(ValueError):
        OwnedFields([b""])


def test_owned_fields_cache_is_bounded_and_right():
    o = OwnedFields([b"x-ucgate-user"])
    assert b"X-Ucgate-User" in o and b"X-Ucgate-User" in o  # asked twice: the cached answer
    assert b"Accept" not in o and b"Accept" not in o
    assert o._seen == {b"X-Ucgate-User": True, b"Accept": False}
    for i in range(5000):
        name = b"X-Ucgate-User-%d" % i if i % 2 else b"X-Other-%d" % i
        assert (name in o) is bool(i % 2)
        assert len(o._seen) <= 4096
    assert len(o._seen) == 2 + 5000 - 4096  # emptied once, when it held 4096 names
    assert b"x.ucgate.user" in o and b"X-Ucgate-Use" not in o


@pytest.mark.parametrize(
    "names,name,owned",
    [
        ((b"ab", b"ac"), b"a-b", True),
        ((b"ab", b"ac"), b"A_C", True),
        ((b"ab", b"ac"), b"ad", False),
        ((b"ab", b"ac"), b"a", False),
        ((b"ab", b"abc"), b"ab", True),
        ((b"ab", b"abc"), b"abx", True),
        ((b"abc", b"abd", b"xy"), b"x.y.z", True),
        ((b"abc", b"abd", b"xy"), b"abe", False),
        ((b"abc", b"abd", b"xy"), b"-a-b-d-", True),
        ((b"x",), b"y", False),
        ((b"x",), b"_x_", True),
    ],
)
def test_owned_pattern_small_sets(names, name, owned):
    import re

    o = OwnedFields(names)
    assert (name in o) is owned
    assert (re.fullmatch(rb"\n(" + o.pattern() + rb"):", b"\n" + name.lower() + b":") is not None) is owned


# --- the fast path's heads -------------------------------------------------------------------

_DROP = frozenset({b"x-forwarded-for", b"x-ucgate-user"})


def simple(head: bytes, limits: Limits = DEFAULT_LIMITS, special=None):
    # the pattern is built here, not at import: a module-level one would not see a mutant
    if special is None:
        special = request_special_re(_DROP, OwnedFields((b"x-ucgate-user", *http1.OWNED_FIELDS)))
    return common_request(head, limits, special)


def test_common_request_exact():
    r = simple(
        b"GET /meet/x?y=1 HTTP/1.1\r\nAccept: */*\r\nhost:\t gw:443 \t\r\nConnection: close \t\r\nCookie: a=b\r\n\r\n"
    )
    assert r is not None
    assert (r.method, r.target, r.host, r.keep_alive, r.version) == (b"GET", b"/meet/x?y=1", b"gw:443", False, (1, 1))
    assert r.prefix == b"GET /meet/x?y=1 HTTP/1.1\r\nAccept: */*\r\nhost:\t gw:443 \t\r\nCookie: a=b\r\n"
    r = simple(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
    assert r.keep_alive and r.prefix == b"GET / HTTP/1.1\r\nHost: gw\r\n" and r.host == b"gw"
    r = simple(b"GET / HTTP/1.1\r\nConnection: Close\r\nHost: gw\r\n\r\n")
    assert not r.keep_alive and r.prefix == b"GET / HTTP/1.1\r\nHost: gw\r\n"
    r = simple(b"GET /x HTTP/1.1\r\nHost: XBOX.X\r\n\r\n")
    assert r.host == b"XBOX.X" and r.prefix == b"GET /x HTTP/1.1\r\nHost: XBOX.X\r\n"
    r = simple(b"HEAD /x HTTP/1.1\r\nHOST: GW.Example\r\n\r\n")
    assert r.keep_alive and r.host == b"GW.Example" and r.method == b"HEAD"
    assert r.prefix == b"HEAD /x HTTP/1.1\r\nHOST: GW.Example\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /x HTTP/1.1\r\n\r\n",  # no Host
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, x\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX_Ucgate_User: evil\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Real-IP: 1\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        b"\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_common_request_leaves_the_rest_to_the_full_parser(head):
    assert simple(head) is None


def test_common_request_limits():
    head = b"GET /abc HTTP/1.1\r\nHost: a\r\nX-1: 1\r\n\r\n"
    assert simple(head, Limits(max_header_bytes=len(head))) is not None
    assert simple(head, Limits(max_header_bytes=len(head) - 1)) is None
    assert simple(head, Limits(max_target_bytes=4)) is not None
    assert simple(head, Limits(max_target_bytes=3)) is None
    assert simple(head, Limits(max_header_count=2)) is not None
    assert simple(head, Limits(max_header_count=1)) is None


def test_request_special_re_without_owned_names():
    sp = request_special_re(frozenset({b"x-drop"}))
    assert simple(b"GET / HTTP/1.1\r\nHost: a\r\nX-Drop: 1\r\n\r\n", special=sp) is None
    r = simple(b"GET / HTTP/1.1\r\nHost: a\r\nX_Ucgate_User: 1\r\n\r\n", special=sp)
    assert r is not None and r.prefix.endswith(b"X_Ucgate_User: 1\r\n")
    assert simple(b"GET / HTTP/1.1\r\nHost: a\r\nX_Ucgate_User: 1\r\n\r\n") is None  # with owned names


def test_common_response_exact():
    s = common_response(b"HTTP/1.1 200 OK\r\nX: y\r\nConnection: close  \r\nContent-Length: 12 \r\n\r\n", b"GET")
    assert s is not None and (s.status, s.length, s.keep_alive) == (200, 12, False)
    assert s.prefix == b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 12 \r\n"
    s = common_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", b"POST")
    assert (s.status, s.length, s.keep_alive, s.prefix) == (
        404,
        0,
        True,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n",
    )
    s = common_response(b"HTTP/1.1 503 Busy\r\ncontent-length:\t" + b"9" * 19 + b"\r\n\r\n", b"GET")
    assert s.length == 10**19 - 1 and s.keep_alive


@pytest.mark.parametrize("value,length", [(b"0", 0), (b"1", 1), (b"10", 10), (b"12", 12), (b"9" * 19, 10**19 - 1)])
def test_common_response_canonical_lengths(value, length):
    s = common_response(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n", b"GET")
    assert s is not None and s.length == length


@pytest.mark.parametrize(
    "head,method",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"HEAD"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 101 Switching\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 00\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 20 + b"\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-a\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\nConnection: close\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: t=1\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX : 1\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\nX: 1\r\n\r\n", b"GET"),
    ],
)
def test_common_response_leaves_the_rest_to_the_full_parser(head, method):
    assert common_response(head, method) is None


def test_common_response_limits():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: 1\r\n\r\n"
    assert common_response(head, b"GET", Limits(max_header_bytes=len(head))) is not None
    assert common_response(head, b"GET", Limits(max_header_bytes=len(head) - 1)) is None
    assert common_response(head, b"GET", Limits(max_header_count=2)) is not None
    assert common_response(head, b"GET", Limits(max_header_count=1)) is None
    assert common_response(head, b"GET") == common_response(head, b"GET", DEFAULT_LIMITS)


def test_split_lines():
    from ucgate.protocols.http1 import _split_lines

    assert _split_lines(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\r\n") == [b"GET / HTTP/1.1", b"Host: a", b"X: b"]
    assert _split_lines(b"GET / HTTP/1.1\r\n\r\n") == [b"GET / HTTP/1.1"]


# The detail of a refusal is what the log line says besides the reason code.
@pytest.mark.parametrize(
    "head,reason,detail",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n", "bad-line-ending", "header section must end with CRLF CRLF"),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare-cr-or-lf", "bare CR or LF in the header section"),
        (get(b" x"), "obs-fold", "obsolete line folding in header section"),
        (get(b"X : y"), "bad-header-name", "malformed header field name"),
        (get(b"X-Abc: \x00"), "bad-header-value", "control character in b'X-Abc'"),
        (get(b"N" * 50 + b": \x00"), "bad-header-value", "control character in " + repr(b"N" * 40)),
        (get(b"A: 1", b"B: 2"), "too-many-headers", "more than 2 header fields"),
        (get(b"A: 1", b"B 2"), "too-many-headers", "more than 2 header fields"),
    ],
)
def test_refusal_details(head, reason, detail):
    with pytest.raises(HttpError) as e:
        parse_request_head(head, Limits(max_header_count=2) if reason == "too-many-headers" else DEFAULT_LIMITS)
    assert (e.value.reason, e.value.detail) == (reason, detail)


def test_line_parser_refusal_details():
    with pytest.raises(HttpError) as e:
        _parse_fields([b"A: 1", b"B: 2"], Limits(max_header_count=1))
    assert e.value.detail == "more than 1 header fields"
