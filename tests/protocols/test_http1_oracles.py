"""Property tests of the HTTP/1.1 parser with oracles (issue 14), next to the "only HttpError"
fuzz tests of test_http1.py:

- one defect put anywhere into a well-formed head is refused with that defect's reason code,
  whichever path (the one-pass regex or the line-by-line parser) reads the block;
- what the parser accepts, h11 (an independent parser) accepts too and reads the same way —
  method, target, version, fields and body framing — so no front end that parses like h11 sees
  another message than the one we checked;
- an accepted head survives serialize_head and parsing again unchanged, and the fast path
  (common_request) never disagrees with the full parser on it.
"""

from __future__ import annotations

import os

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols.http1 import (
    DEFAULT_LIMITS,
    HttpError,
    common_request,
    parse_request_head,
    request_special_re,
    serialize_head,
)

FUZZ = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300"))

_token = st.text("abcxyzABCXYZ0189-_.!#$%&'*+^`|~", min_size=1, max_size=8).map(str.encode)
_value = st.text('abc XYZ09\t:;,=/"()?@[]{}\\', max_size=12).map(lambda s: s.strip(" \t").encode()) | st.sampled_from(
    [b"caf\xc3\xa9", b"\x80\xff", b"a  b", b""]
)
_plain_field = st.tuples(st.sampled_from([b"X-", b"Accept", b"User-Agent", b"Cookie", b"X-Ms-"]), _token, _value).map(
    lambda t: (t[0] + t[1] if t[0].endswith(b"-") else t[0], t[2])
)
_ows = st.sampled_from([b"", b" ", b"\t", b"  "])
_framing = st.sampled_from(
    [
        (),
        (b"Content-Length: 0",),
        (b"Content-Length: 5",),
        (b"Content-Length: 0012",),
        (b"Transfer-Encoding: chunked",),
        (b"Transfer-Encoding: Chunked",),
    ]
)
_connection = st.sampled_from([(), (b"Connection: close",), (b"Connection: keep-alive",), (b"Connection: X-A, close",)])
_start = st.sampled_from(
    [b"GET /ucwa/x HTTP/1.1", b"POST /x?y=1 HTTP/1.1", b"PUT /a/b HTTP/1.1", b"OPTIONS * HTTP/1.1", b"POST /x HTTP/1.2"]
)


@st.composite
def good_heads(draw) -> tuple[bytes, list[bytes]]:
    """A well-formed request head (start line, field lines) with one Host and valid framing."""
    fields = [name + b":" + draw(_ows) + value + draw(_ows) for name, value in draw(st.lists(_plain_field, max_size=6))]
    fields += list(draw(_framing)) + list(draw(_connection))
    fields.insert(
        draw(st.integers(0, len(fields))),
        b"Host:" + draw(_ows) + draw(st.sampled_from([b"gw", b"gw:443", b"[::1]:8443"])),
    )
    order = draw(st.permutations(range(len(fields))))
    return draw(_start), [fields[i] for i in order]


def head_of(start: bytes, fields: list[bytes]) -> bytes:
    return start + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


# one defect and the reason it must be refused with, wherever it is
DEFECTS = [
    (b"Transfer-Encoding : chunked", "bad-header-name"),
    (b"X-A\t: 1", "bad-header-name"),
    (b"X A: 1", "bad-header-name"),
    (b"X@: 1", "bad-header-name"),
    (b": v", "bad-header-name"),
    (b"NoColon", "bad-header-name"),
    (b"X\xc3\xa9: 1", "bad-header-name"),
    (b" X: 1", "obs-fold"),
    (b"\tv", "obs-fold"),
    (b"X: a\x00", "bad-header-value"),
    (b"X: \x7f", "bad-header-value"),
    (b"X: a\x0bb", "bad-header-value"),
    (b"X: a\nTransfer-Encoding: chunked", "bare-cr-or-lf"),
    (b"X: a\rb", "bare-cr-or-lf"),
    (b"X: a\r", "bare-cr-or-lf"),
    (b"\n", "bare-cr-or-lf"),
]


@settings(max_examples=FUZZ, deadline=None)
@given(good_heads(), st.sampled_from(DEFECTS), st.data())
def test_one_defect_anywhere_is_refused_with_its_reason(head, defect, data):
    start, fields = head
    assert parse_request_head(head_of(start, fields))  # the head is well-formed without it
    line, reason = defect
    fields = list(fields)
    fields.insert(data.draw(st.integers(0, len(fields))), line)
    try:
        parse_request_head(head_of(start, fields))
    except HttpError as e:
        assert (e.status, e.reason) == (400, reason), (fields, e)
    else:
        raise AssertionError(f"accepted {fields!r}")


@settings(max_examples=FUZZ, deadline=None)
@given(
    good_heads(),
    st.sampled_from([b"-1", b"+5", b"1_0", b"0x5", b"5,5", b"5 5", b"", b"\xd9\xa5", b"9" * 20]),
    st.data(),
)
def test_a_bad_content_length_anywhere_is_refused(head, value, data):
    start, fields = head
    fields = [f for f in fields if not f.lower().startswith((b"content-length", b"transfer-encoding"))]
    fields.insert(data.draw(st.integers(0, len(fields))), b"Content-Length: " + value)
    try:
        parse_request_head(head_of(start, fields))
    except HttpError as e:
        assert (e.status, e.reason) == (400, "bad-content-length")
    else:
        raise AssertionError(f"accepted {fields!r}")


def h11_read(head: bytes, body: bytes):
    """What h11 reads from ``head`` + ``body``: (request, body bytes, whether the message ended)."""
    c = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1024)
    c.receive_data(head + body)
    event = c.next_event()
    assert isinstance(event, h11.Request), event
    got, ended = b"", False
    while True:
        e = c.next_event()
        if isinstance(e, h11.Data):
            got += bytes(e.data)
        elif isinstance(e, h11.EndOfMessage):
            ended = True
            break
        else:
            break
    return event, got, ended


def check_like_h11(head: bytes) -> None:
    r = parse_request_head(head)
    body = {"none": b"", "length": b"x" * r.framing.length, "chunked": b"3\r\nabc\r\n0\r\n\r\n"}[r.framing.kind]
    event, got, ended = h11_read(head, body)
    assert (bytes(event.method), bytes(event.target), bytes(event.http_version)) == (
        r.method,
        r.target,
        b"%d.%d" % r.version,
    )
    # h11 lower-cases the value of Transfer-Encoding (it compares it to "chunked")
    assert [(bytes(k), bytes(v)) for k, v in event.headers.raw_items()] == [
        (k, v.lower() if k.lower() == b"transfer-encoding" else v) for k, v in r.headers
    ]
    assert ended, (r.framing, got)
    assert got == (b"abc" if r.framing.kind == "chunked" else body)


@settings(max_examples=FUZZ, deadline=None)
@given(good_heads())
def test_what_we_accept_h11_reads_the_same(head):
    check_like_h11(head_of(*head))


_piece = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.1\r\n",
        b"GET / HTTP/1.0\r\n",
        b"Host: gw\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: 03\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b"Expect: 100-continue\r\n",
        b"X: a\r\n",
        b"X : a\r\n",
        b" x\r\n",
        b"X: \x00\r\n",
        b"\n",
        b"\r",
        b"\r\n",
        b":",
        b" ",
        b"\t",
        b"-1",
        b"+",
        b"_",
        b"a",
        b"5",
        b"Content-Length:",
        b"Transfer-Encoding:",
        b"chunked",
        b",",
    ]
)


@settings(max_examples=FUZZ * 2, deadline=None)
@given(st.lists(_piece, max_size=12).map(b"".join))
def test_accepted_heads_read_the_same_by_h11_again_and_on_the_fast_path(data):
    head = data + b"\r\n"
    try:
        r = parse_request_head(head)
    except HttpError as e:
        assert e.status in (400, 417, 431, 501, 505)
        return
    if not head.startswith(b"\r\n"):
        check_like_h11(head)
    again = parse_request_head(serialize_head(b"%b %b HTTP/%d.%d" % (r.method, r.target, *r.version), r.headers))
    assert again == r
    # the one parser's common route (when the head has the common shape) reads it the same
    common = parse_request_head(head, DEFAULT_LIMITS, request_special_re(frozenset()))
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
    assert [getattr(common, k) for k in keys] == [getattr(r, k) for k in keys]
    assert (common.prefix is not None) == (
        common_request(head, DEFAULT_LIMITS, request_special_re(frozenset())) is not None
    )
    simple = common_request(head, DEFAULT_LIMITS, request_special_re(frozenset()))
    if simple is not None:
        assert (simple.method, simple.target, simple.host, simple.keep_alive) == (
            r.method,
            r.target,
            r.host,
            r.keep_alive,
        )
